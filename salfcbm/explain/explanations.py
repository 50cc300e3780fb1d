"""Compatibility: the names that lived here before the explanation code was split by responsibility.

Kept so that existing imports (``from salfcbm.explain.explanations import ExplanationBatch``,
saved pickles, `salfcbm`'s lazy table) keep working. New code imports from `salfcbm.explain`
(the package) or from the module that owns the name:

* `salfcbm.explain.results`: the result types (`ExplanationBatch`, `RegionReport`, ...);
* `salfcbm.explain.regions`: `box_mask`, `points_mask`, `region_masks`, `mask_to_grid`, `upsample_maps`;
* `salfcbm.explain.inputs`: `class_index` and the input checks;
* `salfcbm.explain.explain_image`, `explain_anything`, `intervention`, `rules`: the four operations.
"""

from __future__ import annotations

from salfcbm.errors import ClassNotFoundError
from salfcbm.explain.explain_anything import explain_region
from salfcbm.explain.explain_image import explain
from salfcbm.explain.inputs import Target, class_index  # noqa: F401 (importable here before the split)
from salfcbm.explain.intervention import intervene
from salfcbm.explain.records import HEATMAP_MODES  # noqa: F401 (importable here before the split)
from salfcbm.explain.regions import box_mask, mask_to_grid, points_mask, region_masks, upsample_maps
from salfcbm.explain.results import (
    ClassExplanation,
    DecisionRule,
    Explanation,
    ExplanationBatch,
    InterventionResult,
    RegionExplanation,
    RegionReport,
)
from salfcbm.explain.rules import decision_rules

__all__ = [
    "ClassNotFoundError",
    "ClassExplanation",
    "Explanation",
    "ExplanationBatch",
    "RegionExplanation",
    "RegionReport",
    "InterventionResult",
    "DecisionRule",
    "explain",
    "explain_region",
    "intervene",
    "decision_rules",
    "box_mask",
    "points_mask",
    "region_masks",
    "mask_to_grid",
    "upsample_maps",
]
