"""Evaluation: segmentation and faithfulness metrics, baselines, the benchmark runner, sanity checks, concept accuracy."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline
from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation
from salfcbm.evaluation.localisation import (
    LocalisationMetrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from salfcbm.evaluation.concepts import ConceptAnnotations, ConceptMetrics, concept_metrics
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
    "DeletionInsertion",
    "concept_metrics",
    "RandomisationResult",
    "SegmentationMetrics",
    "deletion_insertion",
    "list_baselines",
    "make_baseline",
    "model_randomisation_test",
]
