"""salfcbm: spatially-aware, label-free concept bottleneck models for any vision backbone.

Show where, tell what: `wrap` turns a timm or torchvision model into a `SALFCBM` whose
predictions are explained by concepts and their maps.

The pipeline, one subpackage per stage (each imports only from the ones before it):

- `salfcbm.core`: backbone specs, the feature tap, the `SALFCBM` module and Hub persistence;
- `salfcbm.supervision`: concept sets, visual prompts, concept scorers, the prompted-embedding store;
- `salfcbm.datasets`: dataset readers;
- `salfcbm.training` and `salfcbm.head`: the Eq. 1 bottleneck, the sparse head, `fit`;
- `salfcbm.explain` and `salfcbm.viz`: explanations, pictures, video;
- `salfcbm.evaluation`: segmentation and faithfulness metrics, baselines, the benchmark runner;
- `salfcbm.demo`: the offline demo world (not loaded by ``import salfcbm``).

The names below are the whole public API; they are imported on first use, so
``import salfcbm`` stays light (no matplotlib, Captum or demo world).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from salfcbm import errors
from salfcbm.errors import SalfCBMError

__version__ = "0.1.0.dev0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # the model
    "wrap": "salfcbm.explain.mixin",
    "SALFCBM": "salfcbm.explain.mixin",
    "SALFCBMOutput": "salfcbm.core.outputs",
    "SALFCBMClassifier": "salfcbm.core.outputs",
    "FeatureTap": "salfcbm.core.tap",
    "default_layer": "salfcbm.core.tap",
    # supervision
    "PromptGrid": "salfcbm.supervision.prompts",
    "ConceptScorer": "salfcbm.supervision.scorers",
    "CLIPScorer": "salfcbm.supervision.scorers",
    "load_concepts": "salfcbm.supervision.concept_lists",
    "save_concepts": "salfcbm.supervision.concept_lists",
    "concepts_from_templates": "salfcbm.supervision.concept_lists",
    "generate_concepts": "salfcbm.supervision.concept_generation",
    "filter_concepts": "salfcbm.supervision.concept_filter",
    "ConceptFilterReport": "salfcbm.supervision.concept_filter",
    "compute_similarity_store": "salfcbm.supervision.store",
    "compute_store": "salfcbm._utils.shard_compute",
    "PromptedEmbeddingStore": "salfcbm.supervision.store",
    "SimilarityStore": "salfcbm.supervision.store",  # deprecated alias of PromptedEmbeddingStore
    "ShardedStore": "salfcbm._utils.shards",
    # data
    "ImageFolderDataset": "salfcbm.datasets.folder",
    # training
    "fit": "salfcbm.training.fit",
    "BottleneckConfig": "salfcbm.training.config",
    "HeadConfig": "salfcbm.head.config",
    "FitResult": "salfcbm.training.config",
    # explanations
    "Explanation": "salfcbm.explain.results",
    "ExplanationBatch": "salfcbm.explain.results",
    "ClassExplanation": "salfcbm.explain.results",
    "RegionExplanation": "salfcbm.explain.results",
    "RegionReport": "salfcbm.explain.results",
    "InterventionResult": "salfcbm.explain.results",
    "DecisionRule": "salfcbm.explain.results",
    "SALFCBMAttribution": "salfcbm.explain.attribution",
    "track_concepts": "salfcbm.viz.video",
}

# names that moved to a subpackage; still reachable from the top level with a FutureWarning
_MOVED: dict[str, str] = {
    "HeadFit": "salfcbm.head",
    "PathPoint": "salfcbm.head",
    "fit_sparse_head": "salfcbm.head",
    "fit_dense_head": "salfcbm.head",
    "SyntheticScenes": "salfcbm.demo",
    "GroundTruthScorer": "salfcbm.demo",
    "SmallConvNet": "salfcbm.demo",
    "pretrain_backbone": "salfcbm.demo",
}

_SUBPACKAGES = {"core", "supervision", "datasets", "training", "head", "explain", "viz", "evaluation", "demo", "cli"}

__all__ = sorted([*_LAZY, "SalfCBMError", "errors", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        import warnings

        warnings.warn(
            f"salfcbm.{name} moved to {_MOVED[name]}.{name}; import it from there "
            "(the top-level alias will be removed in 0.2).",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"salfcbm.{name}")
    raise AttributeError(f"module 'salfcbm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBPACKAGES)


if TYPE_CHECKING:  # static analysers and IDEs see the real objects
    from salfcbm._utils.shard_compute import compute_store
    from salfcbm._utils.shards import ShardedStore
    from salfcbm.core.outputs import SALFCBMClassifier, SALFCBMOutput
    from salfcbm.core.tap import FeatureTap, default_layer
    from salfcbm.datasets.folder import ImageFolderDataset
    from salfcbm.explain.attribution import SALFCBMAttribution
    from salfcbm.explain.mixin import SALFCBM, wrap
    from salfcbm.explain.results import (
        ClassExplanation,
        DecisionRule,
        Explanation,
        ExplanationBatch,
        InterventionResult,
        RegionExplanation,
        RegionReport,
    )
    from salfcbm.supervision.concept_filter import ConceptFilterReport, filter_concepts
    from salfcbm.supervision.concept_generation import generate_concepts
    from salfcbm.supervision.concept_lists import concepts_from_templates, load_concepts, save_concepts
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.scorers import CLIPScorer, ConceptScorer
    from salfcbm.supervision.store import PromptedEmbeddingStore, SimilarityStore, compute_similarity_store
    from salfcbm.training.config import BottleneckConfig, FitResult
    from salfcbm.training.fit import fit
    from salfcbm.head.config import HeadConfig
    from salfcbm.viz.video import track_concepts
