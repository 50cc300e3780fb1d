"""Reproduce the paper: named recipes, full-size dry runs, cost estimates and tables.

* :mod:`~salfcbm.reproduce.recipes`: :class:`Recipe` and :data:`RECIPES` (the paper's settings);
* :mod:`~salfcbm.reproduce.run`: :func:`run_recipe`, :func:`dry_run`;
* :mod:`~salfcbm.reproduce.cost`: :func:`estimate_cost`, :func:`measure_throughput`;
* :mod:`~salfcbm.reproduce.tables`: the paper's numbers and comparison tables;
* :mod:`~salfcbm.reproduce.neurons`: top-activating images of a concept neuron (appendix C).
"""

from salfcbm.reproduce.cost import CostEstimate, estimate_cost, measure_throughput
from salfcbm.reproduce.recipes import RECIPES, Recipe, get_recipe, list_recipes
from salfcbm.reproduce.run import dry_run, run_recipe
from salfcbm.reproduce.tables import PAPER, format_table

__all__ = ["PAPER", "RECIPES", "CostEstimate", "Recipe", "dry_run", "estimate_cost", "format_table", "get_recipe",
           "list_recipes", "measure_throughput", "run_recipe"]
