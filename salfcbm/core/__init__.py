"""The model: backbone specs, the feature tap, the ``SALFCBM`` module and its Hub persistence.

Paper section 3.3 (bottleneck) and 3.4 (head at inference). Imports only from ``salfcbm.errors``
and ``salfcbm._utils``.
"""

from salfcbm.core.backbones import build_backbone, infer_spec, parse_backbone_name
from salfcbm.core.config import ModelConfig
from salfcbm.core.images import ImageTransform, align_dataset, load_images
from salfcbm.core.model import SALFCBM, SALFCBMOutput, wrap
from salfcbm.core.tap import FeatureTap, default_layer, token_grid

__all__ = [
    "SALFCBM",
    "SALFCBMOutput",
    "FeatureTap",
    "ModelConfig",
    "ImageTransform",
    "align_dataset",
    "build_backbone",
    "default_layer",
    "infer_spec",
    "load_images",
    "parse_backbone_name",
    "token_grid",
    "wrap",
]
