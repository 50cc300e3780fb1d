"""Evaluation: segmentation and faithfulness metrics, baselines, the benchmark runner, sanity checks, concept accuracy."""

from salfcbm.evaluation.baselines import Attributor, list_baselines, make_baseline
from salfcbm.evaluation.concepts import ConceptAnnotations, ConceptMetrics, concept_metrics
from salfcbm.evaluation.sanity import RandomisationResult, model_randomisation_test
from salfcbm.evaluation.metrics import DeletionInsertion, SegmentationMetrics, deletion_insertion

__all__ = [
    "Attributor",
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
