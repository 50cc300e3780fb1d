"""Training: the Eq. 1 bottleneck loss and loop, feature sources, and the ``fit`` pipeline."""

from salfcbm.training.pipeline import (
    BottleneckConfig,
    BottleneckReport,
    FitResult,
    HeadConfig,
    OnTheFlyFeatures,
    PAPER_LAMBDAS,
    apply_cutoff,
    bottleneck_loss,
    cubic_cosine_similarity,
    feature_store,
    fit,
    train_bottleneck,
)

__all__ = [
    "BottleneckConfig",
    "BottleneckReport",
    "FitResult",
    "HeadConfig",
    "OnTheFlyFeatures",
    "PAPER_LAMBDAS",
    "apply_cutoff",
    "bottleneck_loss",
    "cubic_cosine_similarity",
    "feature_store",
    "fit",
    "train_bottleneck",
]
