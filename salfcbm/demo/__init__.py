"""The offline demo world: procedural scenes with ground-truth concept masks, a ground-truth scorer
standing in for CLIP, a small CNN backbone, and the end-to-end ``salfcbm demo`` run.

Not loaded by ``import salfcbm``; import it explicitly (``from salfcbm.demo import SyntheticScenes``).
Importing it registers the demo backbone with timm (``salfcbm_demo_convnet``); the rest loads on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from salfcbm.demo.backbone import SmallConvNet  # registers the timm model "salfcbm_demo_convnet"

__all__ = [
    "DemoConfig",
    "DemoResult",
    "GroundTruthScorer",
    "SmallConvNet",
    "SyntheticScenes",
    "demo_bottleneck",
    "load_demo",
    "pretrain_backbone",
    "run_demo",
]

_LAZY = {
    "demo_bottleneck": "salfcbm.demo.config",
    "DemoConfig": "salfcbm.demo.config",
    "DemoResult": "salfcbm.demo.run",
    "load_demo": "salfcbm.demo.run",
    "run_demo": "salfcbm.demo.run",
    "GroundTruthScorer": "salfcbm.demo.scorer",
    "SyntheticScenes": "salfcbm.demo.dataset",
    "pretrain_backbone": "salfcbm.demo.pretrain",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
