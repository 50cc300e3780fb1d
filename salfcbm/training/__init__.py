"""Training: the Eq. 1 bottleneck loss and loop, feature sources, and the ``fit`` pipeline.

One module per responsibility: `loss` (Eq. 1), `config` (settings, results, `Splits`),
`features` (feature stores and sources), `bottleneck` (the training loop), `cutoff` and
`cutoff_stage` (the interpretability cutoff), `head_stage` (the head glue), `filters` (the
concept-filter stage), `rundir` (the run directory) and `fit` (the stages in order).
"""

from salfcbm.training.bottleneck import train_bottleneck
from salfcbm.training.config import BottleneckConfig, BottleneckReport, FitResult, Splits
from salfcbm.training.cutoff import apply_cutoff
from salfcbm.training.features import OnTheFlyFeatures, feature_store
from salfcbm.training.fit import fit
from salfcbm.training.head_stage import PAPER_LAMBDAS, HeadConfig
from salfcbm.training.loss import bottleneck_loss, cubic_cosine_similarity

__all__ = [
    "BottleneckConfig",
    "BottleneckReport",
    "FitResult",
    "HeadConfig",
    "OnTheFlyFeatures",
    "PAPER_LAMBDAS",
    "Splits",
    "apply_cutoff",
    "bottleneck_loss",
    "cubic_cosine_similarity",
    "feature_store",
    "fit",
    "train_bottleneck",
]
