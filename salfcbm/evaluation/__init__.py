"""Evaluation: zero-shot segmentation and faithfulness metrics, attribution baselines, the benchmark runner."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline
from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation
from salfcbm.evaluation.localisation import (
    LocalisationMetrics,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
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
    "DeletionInsertion",
    "SegmentationMetrics",
    "deletion_insertion",
    "list_baselines",
    "make_baseline",
]
