"""salfcbm: spatially-aware, label-free concept bottleneck models for any vision backbone.

Show where, tell what: :func:`wrap` turns a timm or torchvision model into a
:class:`SALFCBM` whose predictions are explained by concepts and their maps.
"""

from __future__ import annotations

from . import errors
from .errors import SalfCBMError
from .model import SALFCBM, SALFCBMOutput, wrap
from .tap import FeatureTap, default_layer
from .prompts import PromptGrid
from .scorers import CLIPScorer, ConceptScorer
from .store import ShardedStore, SimilarityStore, compute_similarity_store, compute_store
from .concepts import (
    ConceptFilterReport,
    concepts_from_templates,
    filter_concepts,
    generate_concepts,
    load_concepts,
    save_concepts,
)
from .explain import ClassExplanation, Explanation, ExplanationBatch, InterventionResult, RegionExplanation
from .attribution import SALFCBMAttribution
from .video import track_concepts
from .training import BottleneckConfig, FitResult, HeadConfig, fit
from .head import HeadFit, PathPoint, fit_dense_head, fit_sparse_head
from .synthetic import GroundTruthScorer, SmallConvNet, SyntheticScenes, pretrain_backbone

__version__ = "0.1.0.dev0"

__all__ = [
    "BottleneckConfig",
    "CLIPScorer",
    "ClassExplanation",
    "ConceptFilterReport",
    "ConceptScorer",
    "Explanation",
    "ExplanationBatch",
    "FitResult",
    "GroundTruthScorer",
    "HeadFit",
    "PathPoint",
    "SmallConvNet",
    "SyntheticScenes",
    "pretrain_backbone",
    "HeadConfig",
    "InterventionResult",
    "PromptGrid",
    "RegionExplanation",
    "SALFCBMAttribution",
    "ShardedStore",
    "SimilarityStore",
    "compute_similarity_store",
    "compute_store",
    "concepts_from_templates",
    "filter_concepts",
    "fit",
    "fit_dense_head",
    "fit_sparse_head",
    "generate_concepts",
    "load_concepts",
    "save_concepts",
    "track_concepts",
    "SALFCBM",
    "SALFCBMOutput",
    "FeatureTap",
    "SalfCBMError",
    "default_layer",
    "errors",
    "wrap",
    "__version__",
]
