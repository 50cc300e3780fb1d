"""The model: backbone specs, the feature tap, the ``SALFCBM`` module and its Hub persistence.

Paper section 3.3 (bottleneck) and 3.4 (head at inference). Imports only from ``salfcbm.errors``
and ``salfcbm._utils``. The names below are imported on first use, so the torch-free modules
(`salfcbm.core.config`'s constants, `salfcbm.core.backbones`' specs) load without torch: the
command line builds its parser from them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "SALFCBM": "salfcbm.core.model",
    "SALFCBMOutput": "salfcbm.core.outputs",
    "FeatureTap": "salfcbm.core.tap",
    "ModelConfig": "salfcbm.core.config",
    "ImageTransform": "salfcbm.core.images",
    "align_dataset": "salfcbm.core.images",
    "build_backbone": "salfcbm.core.backbones",
    "default_layer": "salfcbm.core.tap",
    "infer_spec": "salfcbm.core.backbones",
    "load_images": "salfcbm.core.images",
    "parse_backbone_name": "salfcbm.core.backbones",
    "token_grid": "salfcbm.core.tap",
    "wrap": "salfcbm.core.model",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from salfcbm.core.backbones import build_backbone, infer_spec, parse_backbone_name
    from salfcbm.core.config import ModelConfig
    from salfcbm.core.images import ImageTransform, align_dataset, load_images
    from salfcbm.core.model import SALFCBM, wrap
    from salfcbm.core.outputs import SALFCBMOutput
    from salfcbm.core.tap import FeatureTap, default_layer, token_grid


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'salfcbm.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
