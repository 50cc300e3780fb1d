"""The in-memory regularisation path of the sparse head (paper 3.4, Eq. 2): `fit_sparse_head`.

A full-batch accelerated proximal gradient method (FISTA with backtracking and adaptive restart) on an
active set chosen by the sequential strong rule (as glmnet does), with every point checked against
the exact KKT conditions on *all* features before it is accepted.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torch import Tensor
from tqdm.auto import tqdm

from salfcbm._utils.tensors import accuracy as tensor_accuracy
from salfcbm._utils.progress import close_bar
from salfcbm.errors import InputError
from salfcbm.head.inputs import check_positive, prepare_data
from salfcbm.head.objective import (
    accuracy,
    ce_loss_grad,
    grad_at_zero,
    kkt_max,
    lipschitz_bound,
    prior_bias,
    soft_threshold,
)
from salfcbm.head.results import HeadFit, PathPoint
from salfcbm.head.selection import SOLVER_SELECT, criterion_name, select_point

__all__ = ["fit_sparse_head", "check_path_options", "lambda_grid"]


def _fista(
    x: Tensor,
    y: Tensor,
    w: Tensor,
    b: Tensor,
    lam: float,
    alpha: float,
    lip: float,
    max_iter: int,
    tol_abs: float,
) -> tuple[Tensor, Tensor, Tensor, float, int, bool]:
    """Accelerated proximal gradient on ``(w, b)`` for the features ``x``.

    Returns ``(w, b, z, lip, iterations, converged)`` where ``z`` are the logits at ``(w, b)``.
    Convergence is declared when the exact KKT violation at the extrapolated point is below
    ``tol_abs``; the returned point is the proximal step taken from there (so it is exactly sparse).
    """
    l1, l2 = lam * alpha, lam * (1.0 - alpha)
    z = torch.addmm(b, x, w.T)
    f, _ = ce_loss_grad(z, y)
    obj = f + 0.5 * l2 * float(w.pow(2).sum()) + l1 * float(w.abs().sum())
    w_prev, b_prev, z_prev = w, b, z
    t = 1.0
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_next
        if beta > 0:
            yw = w + beta * (w - w_prev)
            yb = b + beta * (b - b_prev)
            yz = z + beta * (z - z_prev)  # logits are linear in (w, b): no matmul needed
        else:
            yw, yb, yz = w, b, z
        fy, r = ce_loss_grad(yz, y, grad=True)
        gw = r.T @ x
        if l2:
            gw.add_(yw, alpha=l2)
        gb = r.sum(0)
        gy = fy + 0.5 * l2 * float(yw.pow(2).sum())
        done = kkt_max(yw, gw, gb, l1) <= tol_abs
        # backtracking line search on the step 1/lip
        while True:
            step = 1.0 / lip
            wn = soft_threshold(yw - step * gw, step * l1)
            bn = yb - step * gb
            zn = torch.addmm(bn, x, wn.T)
            fn, _ = ce_loss_grad(zn, y)
            gn = fn + 0.5 * l2 * float(wn.pow(2).sum())
            dw, db = wn - yw, bn - yb
            sq = float(dw.pow(2).sum() + db.pow(2).sum())
            lin = float((gw * dw).sum() + (gb * db).sum())
            if gn <= gy + lin + 0.5 * lip * sq + 1e-6 * abs(gy) or sq == 0.0:
                break
            lip *= 2.0
        obj_n = gn + l1 * float(wn.abs().sum())
        if done:
            w, b, z = wn, bn, zn
            converged = True
            break
        # adaptive restart (O'Donoghue & Candes 2015): objective went up or momentum points uphill
        uphill = float(((yw - wn) * (wn - w)).sum() + ((yb - bn) * (bn - b)).sum()) > 0
        if obj_n > obj or uphill:
            t_next = 1.0
        w_prev, b_prev, z_prev = w, b, z
        w, b, z, obj = wn, bn, zn, obj_n
        t = t_next
        lip *= 0.9  # let the step grow again; backtracking catches overshoot
    return w, b, z, lip, it, converged


def fit_sparse_head(
    x_train: Any,
    y_train: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    *,
    num_classes: int | None = None,
    alpha: float = 0.99,
    n_lambdas: int = 50,
    lambda_min_ratio: float = 1e-3,
    lambdas: Sequence[float] | None = None,
    select: str = "val_acc",
    target_nec: float | None = None,
    patience: int | None = None,
    val_tolerance: float = 0.0,
    max_iter: int = 2000,
    tol: float = 1e-4,
    screen: bool = True,
    device: Any = None,
    progress: bool = True,
    verbose: bool = False,
    desc: str = "Sparse head path",
) -> HeadFit:
    """Fit the elastic-net regularisation path of the final layer (paper 3.4, Eq. 2).

    Solves ``min mean CE(W x + b, y) + lam * ((1-alpha)/2 ||W||_F^2 + alpha ||W||_1)`` for a
    geometric grid of ``lam`` from ``lam_max`` (where ``W = 0``) down to
    ``lam_max * lambda_min_ratio``, warm-starting each point from the previous one, and selects
    one point. The features should be standardised by the caller (training mean and std), as
    in the paper; any real features are accepted.

    Each point is solved by accelerated proximal gradient (FISTA, backtracking, adaptive
    restart) on the features kept by the sequential strong rule, then checked against the KKT
    conditions on all features; features that violate them are added back and the point is
    re-solved. A point is accepted when its largest KKT violation is at most
    ``tol * lam_max * alpha`` (the gradient size at ``W = 0``).

    Selection:
        * ``"val_acc"``: best validation accuracy; ties go to the sparser (earlier) point.
        * ``"nec"``: among points with ``nec <= target_nec``, the densest one (ties: better
          validation accuracy, else the earlier point). The path stops once a point exceeds
          ``target_nec``. The chosen point is used as is (no pruning or refit, unlike VLG-CBM).
        * ``"last"``: the last point computed (use with ``lambdas=[lam]`` for a single ``lam``,
          as LF-CBM does).

    Args:
        x_train: ``(N, M)`` features (tensor or array), or an iterable of ``(x, y[, idx])``
            batches such as a ``DataLoader`` (then ``y_train`` stays ``None``); batches are
            concatenated in memory.
        y_train: ``(N,)`` integer labels.
        x_val: Optional validation features, same forms as ``x_train``.
        y_val: Optional validation labels.
        num_classes: Number of classes ``L`` (default: largest label + 1).
        alpha: Elastic-net mixing in ``(0, 1]`` (0.99 in the paper).
        n_lambdas: Number of path points.
        lambda_min_ratio: Smallest ``lam`` as a fraction of ``lam_max``.
        lambdas: Explicit decreasing ``lam`` values (overrides the grid).
        select: ``"val_acc"``, ``"nec"``, ``"fixed"`` or ``"last"`` (`salfcbm.head.selection.SELECT`;
            ``"fixed"`` is ``"last"`` on a path that ends at the chosen ``lam``).
        target_nec: Target non-zero weights per class, required by ``select="nec"``.
        patience: Stop the path after this many points without a better validation accuracy
            (``None``: run the whole path).
        val_tolerance: With ``select="val_acc"``, take the sparsest point within this much of the best
            validation accuracy (criterion ``"val_acc_tolerance"``); 0 = the best.
        max_iter: Iteration cap per path point (per active-set round).
        tol: Relative KKT tolerance.
        screen: Use the strong rule to solve on a subset of features (always KKT-checked).
        device: Where to compute (default: the device of ``x_train``).
        progress: Show a tqdm bar over the path.
        desc: The bar's label.
        verbose: Print one line per path point.

    Returns:
        A `HeadFit`; ``fit.path`` holds every point, ``fit.summary()`` a table.

    Raises:
        InputError: On malformed features or labels, NaN/inf features, labels outside
            ``[0, num_classes)``, or inconsistent options.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(300, 20); y = x[:, :3].argmax(1)  # 3 classes, 3 informative features
        >>> fit = fit_sparse_head(x[:200], y[:200], x[200:], y[200:], n_lambdas=20, progress=False)
        >>> fit.weight.shape, fit.point.val_acc > 0.8, (fit.weight[:, 3:] == 0).float().mean() > 0.8
        (torch.Size([3, 20]), True, tensor(True))
    """
    lams_user = check_path_options(alpha, select, target_nec, x_val, max_iter, tol, patience, n_lambdas,
                                   lambda_min_ratio, lambdas, val_tolerance)
    xt, yt, xv, yv, n_cls, dev = prepare_data(x_train, y_train, x_val, y_val, num_classes, device)
    n, m = xt.shape

    g0 = grad_at_zero(xt, yt, n_cls)
    gmax0 = float(g0.abs().max())
    if not gmax0 > 0:
        raise InputError(
            "The features carry no information about the labels: the loss gradient at W = 0 is exactly "
            "zero (are all features constant or zero?). Check the pooled concept activations."
        )
    lam_max = gmax0 / alpha
    lams = lams_user if lams_user is not None else lambda_grid(lam_max, n_lambdas, lambda_min_ratio)
    tol_abs = tol * max(gmax0, 1e-12)

    state = _PathState(w=torch.zeros(n_cls, m, device=dev), b=prior_bias(yt, n_cls).to(dev), g=g0,
                       lam_prev=lam_max, lip=lipschitz_bound(xt) * 0.25)
    path: list[PathPoint] = []
    best_val, since_best = -1.0, 0
    stop = ""
    bar = tqdm(total=len(lams), desc=desc, disable=not progress, leave=False)
    try:
        for lam in lams:
            t0 = time.perf_counter()
            iters, rounds, conv, train_loss, z, r = _solve_point(state, xt, yt, lam, alpha, screen, max_iter, tol_abs)
            if not conv:
                warnings.warn(
                    f"The solver hit max_iter={max_iter} at lam={lam:.4g} before reaching the KKT "
                    f"tolerance; raise max_iter or tol.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            pt = _path_point(state, lam, alpha, train_loss, z, r, yt, xv, yv, n_cls, iters, time.perf_counter() - t0)
            path.append(pt)
            state.lam_prev = lam
            _report_point(bar, verbose, len(path) - 1, pt, rounds)
            if select == "nec" and pt.nec > target_nec:
                stop = f"stopped at point {len(path)}/{len(lams)}: NEC {pt.nec:.1f} passed target_nec {target_nec}"
                break
            if patience is not None and pt.val_acc is not None:
                best_val, since_best = (pt.val_acc, 0) if pt.val_acc > best_val else (best_val, since_best + 1)
                if since_best >= patience:
                    stop = f"stopped at point {len(path)}/{len(lams)}: no validation gain in {patience} points"
                    break
    finally:
        close_bar(bar, len(path), stop or f"all {len(lams)} points")

    selected = select_point(path, select, target_nec, val_tolerance)
    p = path[selected]
    return HeadFit(
        weight=p.weight,
        bias=p.bias,
        lam=p.lam,
        path=path,
        selected=selected,
        criterion=criterion_name(select, val_tolerance),
        lam_max=lam_max,
        alpha=float(alpha),
        info={"num_classes": n_cls, "num_features": m, "num_train": n, "tol_abs": tol_abs},
    )


def check_path_options(
    alpha: Any, select: str, target_nec: Any, x_val: Any, max_iter: Any, tol: Any, patience: Any,
    n_lambdas: Any, lambda_min_ratio: Any, lambdas: Sequence[float] | None, val_tolerance: Any = 0.0,
) -> list[float] | None:
    """Validate `fit_sparse_head`'s options eagerly; return the user's lambdas as floats (or None)."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha <= 1):
        raise InputError(
            f"alpha must lie in (0, 1] for a sparse head; received {alpha!r}. "
            "Use fit_dense_head for alpha = 0 (L2 only)."
        )
    if select not in SOLVER_SELECT:
        raise InputError(f"select must be one of {SOLVER_SELECT}; received {select!r}.")
    if select == "nec":
        if target_nec is None:
            raise InputError('select="nec" needs target_nec= (non-zero weights per class, e.g. 5).')
        check_positive("target_nec", target_nec)
    elif target_nec is not None:
        raise InputError(f'target_nec={target_nec!r} is only used with select="nec"; received select={select!r}.')
    if select == "val_acc" and (x_val is None):
        raise InputError(
            'select="val_acc" needs validation data: pass x_val and y_val, or use select="nec" '
            '(with target_nec=) or select="last".'
        )
    if isinstance(val_tolerance, bool) or not isinstance(val_tolerance, (int, float)) or not 0 <= val_tolerance < 1:
        raise InputError(f"val_tolerance must be in [0, 1); received {val_tolerance!r}.")
    check_positive("max_iter", max_iter, integer=True)
    check_positive("tol", tol)
    if patience is not None:
        check_positive("patience", patience, integer=True)
    if lambdas is None:
        check_positive("n_lambdas", n_lambdas, integer=True)
        check_positive("lambda_min_ratio", lambda_min_ratio)
        if lambda_min_ratio > 1:
            raise InputError(f"lambda_min_ratio must be in (0, 1]; received {lambda_min_ratio!r}.")
        return None
    lams_user = [float(v) for v in lambdas]
    if not lams_user or any(not (v >= 0 and math.isfinite(v)) for v in lams_user):
        raise InputError(f"lambdas must be non-empty, finite and >= 0; received {list(lambdas)!r}.")
    if any(a < b for a, b in zip(lams_user, lams_user[1:])):
        raise InputError("lambdas must be in decreasing order (warm starts run from sparse to dense).")
    return lams_user


def lambda_grid(lam_max: float, n_lambdas: int, lambda_min_ratio: float) -> list[float]:
    """Geometric grid from ``lam_max`` down to ``lam_max * lambda_min_ratio``."""
    if n_lambdas == 1:
        return [lam_max]
    ratio = lambda_min_ratio ** (1.0 / (n_lambdas - 1))
    return [lam_max * ratio**k for k in range(n_lambdas)]


@dataclass
class _PathState:
    """The warm start carried from one path point to the next."""

    w: Tensor
    b: Tensor
    g: Tensor  # gradient of the mean CE at (w, b), all features
    lam_prev: float
    lip: float


def _solve_point(
    s: _PathState, xt: Tensor, yt: Tensor, lam: float, alpha: float, screen: bool, max_iter: int, tol_abs: float,
) -> tuple[int, int, bool, float, Tensor, Tensor]:
    """Solve one path point in place on ``s``: FISTA on the strong-rule active set, KKT-checked on all
    features, re-solved with the violators added. Returns (iterations, rounds, converged, train loss,
    logits, CE residuals)."""
    m = xt.shape[1]
    l1 = lam * alpha
    active = (s.w != 0).any(0)
    if screen:
        active |= (s.g.abs() >= alpha * (2 * lam - s.lam_prev)).any(0)
    else:
        active[:] = True
    iters, rounds = 0, 0
    while True:
        rounds += 1
        cols = active.nonzero().squeeze(1)
        full = cols.numel() > 0.6 * m
        xa = xt if full else xt.index_select(1, cols)
        wa = s.w if full else s.w.index_select(1, cols)
        wa, s.b, z, s.lip, k, conv = _fista(xa, yt, wa, s.b, lam, alpha, s.lip, max_iter, tol_abs)
        iters += k
        s.w = wa if full else torch.zeros_like(s.w).index_copy_(1, cols, wa)
        del xa
        train_loss, r = ce_loss_grad(z, yt, grad=True)
        s.g = r.T @ xt
        if full:
            break
        viol = (~active) & ((s.g.abs() - l1) > tol_abs).any(0)
        if not bool(viol.any()):
            break
        active |= viol
    return iters, rounds, conv, train_loss, z, r


def _path_point(
    s: _PathState, lam: float, alpha: float, train_loss: float, z: Tensor, r: Tensor, yt: Tensor,
    xv: Tensor | None, yv: Tensor | None, n_cls: int, iters: int, seconds: float,
) -> PathPoint:
    """Record the solution of one path point with its KKT violation, accuracies and sparsity."""
    w, b = s.w, s.b
    gw = s.g + lam * (1 - alpha) * w
    nnz = int((w != 0).sum())
    return PathPoint(
        lam=float(lam),
        weight=w.detach().cpu().clone(),
        bias=b.detach().cpu().clone(),
        train_loss=train_loss,
        train_acc=tensor_accuracy(z, yt),
        val_acc=accuracy(w, b, xv, yv) if xv is not None else None,
        nnz=nnz,
        nec=nnz / n_cls,
        objective=train_loss + lam * (0.5 * (1 - alpha) * float(w.pow(2).sum()) + alpha * float(w.abs().sum())),
        kkt=kkt_max(w, gw, r.sum(0), lam * alpha),
        n_iter=iters,
        seconds=seconds,
    )


def _report_point(bar: Any, verbose: bool, index: int, pt: PathPoint, rounds: int) -> None:
    bar.update(1)
    acc = pt.val_acc if pt.val_acc is not None else pt.train_acc
    bar.set_postfix(lam=f"{pt.lam:.3g}", nec=f"{pt.nec:.1f}", acc=f"{acc:.3f}")
    if verbose:
        tqdm.write(
            f"[{index}] lam={pt.lam:.4g} loss={pt.train_loss:.4f} train_acc={pt.train_acc:.4f} "
            f"val_acc={pt.val_acc} nnz={pt.nnz} nec={pt.nec:.2f} iters={pt.n_iter} rounds={rounds} kkt={pt.kkt:.2e}"
        )


