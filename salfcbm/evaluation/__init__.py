"""Evaluation: zero-shot segmentation and faithfulness metrics, attribution baselines, intervention curves,
the benchmark runner."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline
from salfcbm.evaluation.interventions import (
    ConceptTargets,
    InterventionCurves,
    PolicyState,
    intervention_curve,
    presence_threshold,
    targets_from_activations,
    targets_from_labels,
    targets_from_masks,
    targets_from_similarities,
)
from salfcbm.evaluation.metrics import DeletionInsertion, SegmentationMetrics, deletion_insertion

__all__ = [
    "Attributor",
    "ConceptTargets",
    "DeletionInsertion",
    "InterventionCurves",
    "PolicyState",
    "SegmentationMetrics",
    "deletion_insertion",
    "intervention_curve",
    "list_baselines",
    "make_baseline",
    "presence_threshold",
    "targets_from_activations",
    "targets_from_labels",
    "targets_from_masks",
    "targets_from_similarities",
]
