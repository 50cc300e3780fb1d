"""Reproduce the paper: named recipes, full-size dry runs, cost estimates and tables.

* `recipes`: `Recipe` and `RECIPES` (the paper's settings);
* `run`: `run_recipe`, `dry_run`;
* `cost`: `estimate_cost`, `measure_throughput`;
* `tables`: the paper's numbers and comparison tables.
"""

from salfcbm.reproduce.cost import CostEstimate, estimate_cost, measure_throughput
from salfcbm.reproduce.recipes import RECIPES, Recipe, get_recipe, list_recipes
from salfcbm.reproduce.run import dry_run, run_recipe
from salfcbm.reproduce.tables import PAPER, format_table

__all__ = ["PAPER", "RECIPES", "CostEstimate", "Recipe", "dry_run", "estimate_cost", "format_table", "get_recipe",
           "list_recipes", "measure_throughput", "run_recipe"]
