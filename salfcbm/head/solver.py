"""The head's one entry point from a `HeadConfig`: `fit_head` (sparse path, fixed ``lam`` or dense).

`salfcbm.fit` calls `fit_head`; the solvers it dispatches to live in their own modules:
`salfcbm.head.path` (the in-memory elastic-net path), `salfcbm.head.streaming` (the same path out
of core, over chunks), `salfcbm.head.dense` (L2 only). Selection is `salfcbm.head.selection`.
This module also re-exports the names ``salfcbm.head.solver`` always offered.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from salfcbm.errors import DegenerateResultWarning
from salfcbm.head.chunks import ArrayChunks, Ranks
from salfcbm.head.config import HeadConfig
from salfcbm.head.dense import fit_dense_head
from salfcbm.head.objective import elastic_net_objective, kkt_violation, lambda_max
from salfcbm.head.path import fit_sparse_head
from salfcbm.head.results import HeadFit, PathPoint
from salfcbm.head.selection import fixed_lambda_path, lam_for_solver
from salfcbm.head.streaming import fit_sparse_head_streaming

__all__ = [
    "fit_head",
    "fit_fixed_lambda",
    "fit_head_from_chunks",
    "fit_head_at_nec",
    "HeadFit",
    "PathPoint",
    "fit_sparse_head",
    "fit_dense_head",
    "lambda_max",
    "elastic_net_objective",
    "kkt_violation",
]


def fit_head(
    x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, num_classes: int,
    config: HeadConfig | None = None, *, progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """Fit the final layer on standardised features with the configured solver and selection.

    Args:
        x_train: ``(N, M)`` standardised training features.
        y_train: ``(N,)`` labels.
        x_val: Validation features.
        y_val: Validation labels.
        num_classes: Number of classes.
        config: The head's settings (default `HeadConfig()`); an automatic ``n_lambdas`` is set from ``N``.
        progress: Show a tqdm bar over the path.
        desc: The bar's label.

    Returns:
        A `HeadFit` whose ``criterion`` names the rule used.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(200, 6); y = (x[:, 0] > 0).long()
        >>> fit = fit_head(x[:150], y[:150], x[150:], y[150:], 2, HeadConfig(lam=1e-3), progress=False)
        >>> fit.criterion, round(fit.lam, 6)
        ('fixed', 0.00101)
    """
    cfg = (config or HeadConfig()).for_data(len(x_train))
    if not cfg.sparse:
        return fit_dense_head(x_train, y_train, x_val, y_val, num_classes=num_classes)
    if cfg.select == "fixed":
        return fit_fixed_lambda(x_train, y_train, x_val, y_val, num_classes, cfg, progress=progress, desc=desc)
    if _streams(cfg, x_train):
        return fit_sparse_head_streaming(
            ArrayChunks(x_train, y_train, cfg.chunk_rows), _val_pair(x_val, y_val, cfg), num_classes=num_classes,
            alpha=cfg.alpha, n_lambdas=cfg.n_lambdas, lambda_min_ratio=cfg.lambda_min_ratio, select=cfg.select,
            target_nec=cfg.target_nec, val_tolerance=cfg.val_tolerance, progress=progress, desc=desc,
        )
    return fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, n_lambdas=cfg.n_lambdas,
        lambda_min_ratio=cfg.lambda_min_ratio, select=cfg.select, target_nec=cfg.target_nec,
        val_tolerance=cfg.val_tolerance, max_iter=cfg.max_iter, progress=progress, desc=desc,
    )


def fit_fixed_lambda(
    x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, num_classes: int,
    cfg: HeadConfig, *, progress: bool = True, desc: str = "Sparse head path", stacklevel: int = 3,
) -> HeadFit:
    """The paper's head: Eq. 2 solved at LF-CBM's fixed ``cfg.lam`` (GLM-SAGA's scaling; warm-started from ``lam_max``)."""
    lam_top = lambda_max(x_train, y_train, num_classes, cfg.alpha)
    lam = lam_for_solver(cfg.lam, cfg.alpha)
    if lam >= lam_top:
        warnings.warn(
            f"The fixed lam={cfg.lam:g} (solved at lam/alpha={lam:.4g}, as GLM-SAGA does) is at or above "
            f"lam_max={lam_top:.4g} for these features: the head has no "
            "non-zero weight and predicts the majority class. Lower lam (LF-CBM's default is 7e-4).",
            DegenerateResultWarning, stacklevel=stacklevel,
        )
    lams = fixed_lambda_path(lam_top, lam, cfg.n_lambdas or 40)
    if _streams(cfg, x_train):
        return fit_sparse_head_streaming(
            ArrayChunks(x_train, y_train, cfg.chunk_rows), _val_pair(x_val, y_val, cfg), num_classes=num_classes,
            alpha=cfg.alpha, lambdas=lams, select="fixed", progress=progress, desc=f"{desc} (fixed lambda {lam:g})",
        )
    return fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, lambdas=lams, select="fixed",
        max_iter=cfg.max_iter, progress=progress, desc=f"{desc} (fixed lambda {lam:g})",
    )


def fit_head_from_chunks(
    chunks: Any, val: tuple[Tensor, Tensor] | None, num_classes: int, cfg: HeadConfig, *, mean: Tensor,
    std: Tensor, lambda_max_fn: Callable[[], float], progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """`fit_head` out of core: the sparse head over ``chunks`` of unstandardised features (standardised on the
    fly with ``mean`` / ``std``), selected by ``cfg`` as `fit_head` selects (``lambda_max_fn()`` gives the
    path's top for the fixed lambda; called only then). ``val``: the validation pair in memory, or ``None``."""
    kw = {"num_classes": num_classes, "mean": mean, "std": std, "alpha": cfg.alpha, "progress": progress}
    if cfg.select != "fixed":
        return fit_sparse_head_streaming(
            chunks, val, n_lambdas=cfg.n_lambdas, lambda_min_ratio=cfg.lambda_min_ratio, select=cfg.select,
            target_nec=cfg.target_nec, val_tolerance=cfg.val_tolerance, desc=desc, **kw)
    lam_top, lam = lambda_max_fn(), lam_for_solver(cfg.lam, cfg.alpha)
    if lam >= lam_top:
        warnings.warn(
            f"The fixed lam={cfg.lam:g} (solved at lam/alpha={lam:.4g}, as GLM-SAGA does) is at or above "
            f"lam_max={lam_top:.4g} for these features: the head has no non-zero weight and predicts the majority "
            "class. Lower lam (LF-CBM's default is 7e-4).", DegenerateResultWarning, stacklevel=4)
    return fit_sparse_head_streaming(chunks, val, lambdas=fixed_lambda_path(lam_top, lam, cfg.n_lambdas or 40),
                                     select="fixed", desc=f"{desc} (fixed lambda {lam:g})", **kw)


def fit_head_at_nec(
    x_train: Tensor, y_train: Tensor, x_val: Tensor, y_val: Tensor, num_classes: int, cfg: HeadConfig,
    target_nec: float, *, progress: bool = True, desc: str = "Sparse head path (at a target NEC)",
) -> HeadFit:
    """The sparse head re-selected at a given sparsity: the densest path point with ``nec <= target_nec``.

    Used to compare two heads at the same number of non-zero weights per class (`salfcbm.fit`'s
    matched-NEC row): the path is `HeadConfig.matched_points` points long (finer than the head's) and
    reaches at least ``1e-3 * lam_max``.
    """
    return fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, n_lambdas=cfg.matched_points(),
        lambda_min_ratio=min(cfg.lambda_min_ratio, 1e-3), select="nec", target_nec=target_nec,
        max_iter=cfg.max_iter, progress=progress, desc=desc,
    )


def _val_pair(x_val: Tensor | None, y_val: Tensor | None, cfg: HeadConfig) -> ArrayChunks | None:
    return None if x_val is None else ArrayChunks(x_val, y_val, cfg.chunk_rows)


def _streams(cfg: HeadConfig, x_train: Tensor) -> bool:
    """Out of core when the config says so, or (``"auto"``) under ``torch.distributed`` with several ranks:
    then every rank fits its share of the chunks instead of each fitting the whole head."""
    return cfg.streams(*x_train.shape) or (cfg.out_of_core == "auto" and Ranks().world > 1)
