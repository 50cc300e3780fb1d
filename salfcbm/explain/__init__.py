"""Explanations (paper 3.5, 3.6): contributions and heatmaps, Explain Anything, intervention,
decision rules, and a Captum-style attribution adapter."""

from salfcbm.explain.attribution import SALFCBMAttribution
from salfcbm.explain.explanations import (
    ClassExplanation,
    DecisionRule,
    Explanation,
    ExplanationBatch,
    InterventionResult,
    RegionExplanation,
    RegionReport,
    box_mask,
    class_index,
    decision_rules,
    explain,
    explain_region,
    intervene,
    points_mask,
    upsample_maps,
)
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
    "points_mask",
    "top_activating_images",
    "upsample_maps",
]
