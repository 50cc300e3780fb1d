"""Evaluation: segmentation and faithfulness metrics, baselines, the benchmark runner, sanity checks, concept
accuracy, intervention curves."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline, register_baseline
from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation
from salfcbm.evaluation.localisation import (
    LocalisationMetrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from salfcbm.evaluation.concepts import ConceptAnnotations, ConceptMetrics, concept_metrics
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
from salfcbm.evaluation.sanity import RandomisationResult, model_randomisation_test
from salfcbm.evaluation.metrics import DeletionInsertion, SegmentationMetrics, deletion_insertion

__all__ = [
    "Attributor",
    "LocalisationMetrics",
    "average_drop_increase",
    "faithfulness_correlation",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
    "ConceptAnnotations",
    "ConceptMetrics",
    "ConceptTargets",
    "DeletionInsertion",
    "InterventionCurves",
    "PolicyState",
    "concept_metrics",
    "RandomisationResult",
    "SegmentationMetrics",
    "deletion_insertion",
    "intervention_curve",
    "list_baselines",
    "make_baseline",
    "model_randomisation_test",
    "register_baseline",
    "presence_threshold",
    "targets_from_activations",
    "targets_from_labels",
    "targets_from_masks",
    "targets_from_similarities",
]
