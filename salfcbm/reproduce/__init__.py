"""Reproduce the paper: named recipes, full-size dry runs, cost estimates and tables.

* `recipes`: `Recipe` and `RECIPES` (the paper's settings);
* `run`: `run_recipe`, `dry_run`;
* `cost`: `estimate_cost`, `measure_throughput`;
* `tables`: the paper's numbers and comparison tables;
* `sources`: where every recipe setting comes from;
* `cli`: the ``salfcbm reproduce`` command.

The names below are imported on first use, so ``salfcbm reproduce --help`` (and the recipes)
load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "PAPER": "salfcbm.reproduce.tables",
    "RECIPES": "salfcbm.reproduce.recipes",
    "CostEstimate": "salfcbm.reproduce.cost",
    "Recipe": "salfcbm.reproduce.recipes",
    "dry_run": "salfcbm.reproduce.run",
    "estimate_cost": "salfcbm.reproduce.cost",
    "format_table": "salfcbm.reproduce.tables",
    "get_recipe": "salfcbm.reproduce.recipes",
    "list_recipes": "salfcbm.reproduce.recipes",
    "measure_throughput": "salfcbm.reproduce.cost",
    "run_recipe": "salfcbm.reproduce.run",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from salfcbm.reproduce.cost import CostEstimate, estimate_cost, measure_throughput
    from salfcbm.reproduce.recipes import RECIPES, Recipe, get_recipe, list_recipes
    from salfcbm.reproduce.run import dry_run, run_recipe
    from salfcbm.reproduce.tables import PAPER, format_table


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'salfcbm.reproduce' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
