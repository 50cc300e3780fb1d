"""Compatibility: the names of the former ``salfcbm.training.pipeline`` module, re-exported.

The training pipeline now lives in one module per responsibility: `salfcbm.training.loss`,
`salfcbm.training.config`, `salfcbm.training.features`, `salfcbm.training.bottleneck`,
`salfcbm.training.cutoff` / `cutoff_stage`, `salfcbm.training.head_stage`,
`salfcbm.training.rundir`, `salfcbm.training.filters` and `salfcbm.training.fit`. Import from
`salfcbm.training` (or those modules); this module only keeps older imports working.
"""

from salfcbm.training.bottleneck import train_bottleneck
from salfcbm.training.config import (
    BOTTLENECK_INITS,
    CUTOFF_STATISTICS,
    MAX_BOTTLENECK_LR,
    BottleneckConfig,
    BottleneckReport,
    FitResult,
    Splits,
)
from salfcbm.training.cutoff import apply_cutoff, cutoff_similarities
from salfcbm.training.features import (
    OnTheFlyFeatures,
    feature_store,
    fit_standardization,
    labels_of,
    store_concept_activations,
    store_pooled_features,
)
from salfcbm.training.fit import fit
from salfcbm.training.head_stage import PAPER_LAMBDAS, HeadConfig, fit_head, lam_for_solver
from salfcbm.training.loss import bottleneck_loss, cubic_cosine_similarity, init_bottleneck

__all__ = [
    "cubic_cosine_similarity",
    "bottleneck_loss",
    "init_bottleneck",
    "BottleneckConfig",
    "HeadConfig",
    "PAPER_LAMBDAS",
    "BottleneckReport",
    "FitResult",
    "Splits",
    "feature_store",
    "OnTheFlyFeatures",
    "train_bottleneck",
    "apply_cutoff",
    "cutoff_similarities",
    "CUTOFF_STATISTICS",
    "BOTTLENECK_INITS",
    "MAX_BOTTLENECK_LR",
    "lam_for_solver",
    "labels_of",
    "concept_activations",
    "pooled_features",
    "standardize",
    "store_concept_activations",
    "store_pooled_features",
    "fit_standardization",
    "fit_head",
    "fit",
]

# the former single module's names for these (they read like the model's own methods, which take tensors)
concept_activations = store_concept_activations
pooled_features = store_pooled_features
standardize = fit_standardization
