"""The model: backbone specs, the feature tap, the ``SALFCBMBase`` module and its Hub persistence.

Paper section 3.3 (bottleneck) and 3.4 (head at inference). Imports only from ``salfcbm.errors``
and ``salfcbm._utils``. The names below are imported on first use, so that a light module (e.g.
`salfcbm.core.pooling`, read by the CLI's ``--help``) can be imported without torch.
``salfcbm.core.SALFCBM`` / ``salfcbm.core.wrap`` are the base model without the explanation
methods; users get ``salfcbm.SALFCBM`` / ``salfcbm.wrap``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "SALFCBM": "salfcbm.core.model",
    "SALFCBMBase": "salfcbm.core.model",
    "SALFCBMOutput": "salfcbm.core.outputs",
    "wrap": "salfcbm.core.model",
    "FeatureTap": "salfcbm.core.tap",
    "default_layer": "salfcbm.core.tap",
    "token_grid": "salfcbm.core.tap",
    "ModelConfig": "salfcbm.core.config",
    "ImageTransform": "salfcbm.core.images",
    "align_dataset": "salfcbm.core.images",
    "load_images": "salfcbm.core.images",
    "build_backbone": "salfcbm.core.backbones",
    "infer_spec": "salfcbm.core.backbones",
    "parse_backbone_name": "salfcbm.core.backbones",
    "POOLINGS": "salfcbm.core.pooling",
    "register_pooling": "salfcbm.core.pooling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'salfcbm.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from salfcbm.core.backbones import build_backbone, infer_spec, parse_backbone_name
    from salfcbm.core.config import ModelConfig
    from salfcbm.core.images import ImageTransform, align_dataset, load_images
    from salfcbm.core.model import SALFCBM, SALFCBMBase, wrap
    from salfcbm.core.outputs import SALFCBMOutput
    from salfcbm.core.pooling import POOLINGS, register_pooling
    from salfcbm.core.tap import FeatureTap, default_layer, token_grid
