"""The sparse final layer (paper 3.4, Eq. 2): a GLM-SAGA-style elastic-net path, its selection and its settings.

* `HeadConfig` (`salfcbm.head.config`): the settings; `fit_head` (`salfcbm.head.solver`) fits from them.
* `fit_sparse_head` (`salfcbm.head.path`): the regularisation path in memory.
* `fit_sparse_head_streaming` (`salfcbm.head.streaming`): the same path out of core, over chunks
  (and over the ranks of ``torch.distributed``).
* `fit_dense_head` (`salfcbm.head.dense`): the non-sparse head.
* `select_point` and `SELECT` (`salfcbm.head.selection`): the one vocabulary of selection.
* `elastic_net_objective`, `kkt_violation`, `lambda_max` (`salfcbm.head.objective`): the certificate.
"""

from salfcbm.head.chunks import ArrayChunks, StoreChunks
from salfcbm.head.config import PAPER_LAMBDAS, HeadConfig
from salfcbm.head.dense import fit_dense_head
from salfcbm.head.objective import elastic_net_objective, kkt_violation, lambda_max
from salfcbm.head.path import fit_sparse_head
from salfcbm.head.results import HeadFit, PathPoint
from salfcbm.head.selection import SELECT, lam_for_solver, select_point
from salfcbm.head.solver import fit_fixed_lambda, fit_head, fit_head_at_nec, fit_head_from_chunks
from salfcbm.head.streaming import fit_sparse_head_streaming

__all__ = [
    "ArrayChunks",
    "HeadConfig",
    "PAPER_LAMBDAS",
    "HeadFit",
    "PathPoint",
    "SELECT",
    "elastic_net_objective",
    "fit_dense_head",
    "fit_fixed_lambda",
    "fit_head",
    "fit_head_at_nec",
    "fit_head_from_chunks",
    "fit_sparse_head",
    "kkt_violation",
    "lam_for_solver",
    "lambda_max",
    "StoreChunks",
    "fit_sparse_head_streaming",
    "select_point",
]
