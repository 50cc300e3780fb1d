"""Evaluation: zero-shot segmentation and faithfulness metrics, attribution baselines, the benchmark runner."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline
from salfcbm.evaluation.sanity import RandomisationResult, model_randomisation_test
from salfcbm.evaluation.metrics import DeletionInsertion, SegmentationMetrics, deletion_insertion

__all__ = [
    "Attributor",
    "DeletionInsertion",
    "RandomisationResult",
    "SegmentationMetrics",
    "deletion_insertion",
    "list_baselines",
    "make_baseline",
    "model_randomisation_test",
]
