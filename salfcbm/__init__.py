"""salfcbm: spatially-aware, label-free concept bottleneck models for any vision backbone.

Show where, tell what: :func:`wrap` turns a timm or torchvision model into a
:class:`SALFCBM` whose predictions are explained by concepts and their maps.
"""

from __future__ import annotations

from . import errors
from .errors import SalfCBMError
from .model import SALFCBM, SALFCBMOutput, wrap
from .tap import FeatureTap, default_layer

__version__ = "0.1.0.dev0"

__all__ = [
    "SALFCBM",
    "SALFCBMOutput",
    "FeatureTap",
    "SalfCBMError",
    "default_layer",
    "errors",
    "wrap",
    "__version__",
]
