"""The sparse final layer (paper 3.4, Eq. 2): a GLM-SAGA-style elastic-net path and its selection."""

from salfcbm.head.solver import (
    HeadFit,
    PathPoint,
    elastic_net_objective,
    fit_dense_head,
    fit_sparse_head,
    kkt_violation,
    lambda_max,
)

__all__ = [
    "HeadFit",
    "PathPoint",
    "elastic_net_objective",
    "fit_dense_head",
    "fit_sparse_head",
    "kkt_violation",
    "lambda_max",
]
