"""The choices and defaults the ``salfcbm`` parser shows, from torch-free sources.

The parser is built without importing torch, timm or the training code, so ``salfcbm --help``
and every ``salfcbm COMMAND --help`` start in a blink. Choices the library lists in a torch-free
module are taken from there (the poolings: the pooling registry `salfcbm.core.pooling.POOLINGS`;
the precisions: `salfcbm.core.config.PRECISIONS`; the reproduce datasets: the recipes). The few settings whose
home imports torch (`salfcbm.training.BottleneckConfig`'s defaults, its cutoff statistics, the
head presets) are copied here; ``tests/cli/test_parser.py``
checks every copy against its library source, and the command validates its values against the
live library after importing it (a `BottleneckConfig`, `HeadConfig.paper`, a scorer).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from salfcbm.core.config import PRECISIONS

__all__ = ["BOTTLENECK_DEFAULTS", "CUTOFF_GUARDS", "CUTOFF_STATISTICS", "HEAD_PRESETS", "PRECISIONS", "poolings"]

#: `salfcbm.training.BottleneckConfig()`'s defaults of the settings ``salfcbm train`` exposes.
BOTTLENECK_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"lr": 1e-3, "cutoff": 0.45, "cutoff_statistic": "cell", "cutoff_guard": "keep"})
#: `salfcbm.training.pipeline.CUTOFF_STATISTICS`.
CUTOFF_STATISTICS = ("cell", "pooled", "lfcbm")
#: The values `salfcbm.training.BottleneckConfig.cutoff_guard` takes.
CUTOFF_GUARDS = ("keep", "warn")
#: The keys of `salfcbm.training.PAPER_LAMBDAS` (``HeadConfig.paper``'s presets).
HEAD_PRESETS = ("imagenet", "places365", "cub", "cifar10", "cifar100", "default")


def poolings() -> tuple[str, ...]:
    """The pooling names a model takes: the pooling registry's (`salfcbm.core.pooling.POOLINGS`, torch-free)."""
    from salfcbm.core.pooling import POOLINGS

    return tuple(POOLINGS)
