"""Explanations (paper 3.5, 3.6): contributions and heatmaps, Explain Anything, intervention,
decision rules, and a Captum-style attribution adapter.

One operation per module, as captum's ``attr/_core``: `explain_image` (`explain`),
`explain_anything` (`explain_region`), `intervention` (`intervene`), `rules`
(`decision_rules`); their result types in `results`, regions in `regions`, the shared input
checks in `inputs`. Import the public names from here.
"""

from salfcbm.explain.attribution import SALFCBMAttribution
from salfcbm.explain.explain_anything import explain_region
from salfcbm.explain.explain_image import explain
from salfcbm.explain.inputs import class_index
from salfcbm.explain.intervention import intervene
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
from salfcbm.explain.neurons import NeuronTopImages, top_activating_images

__all__ = [
    "ClassExplanation",
    "DecisionRule",
    "Explanation",
    "ExplanationBatch",
    "InterventionResult",
    "NeuronTopImages",
    "RegionExplanation",
    "RegionReport",
    "SALFCBMAttribution",
    "box_mask",
    "class_index",
    "decision_rules",
    "explain",
    "explain_region",
    "intervene",
    "mask_to_grid",
    "points_mask",
    "region_masks",
    "top_activating_images",
    "upsample_maps",
]
