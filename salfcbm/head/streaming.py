"""The sparse head out of core: the regularisation path of Eq. 2 over chunks read from disk (or from ranks).

`fit_sparse_head_streaming` solves the same problem as `fit_sparse_head`,

    minimise  mean_n CE(W x_n + b, y_n) + lam * [(1 - alpha)/2 * ||W||_F^2 + alpha * ||W||_1],

but never holds the ``(N, M)`` features: every quantity it needs is a sum over rows, accumulated
one chunk at a time (`salfcbm.head.chunks`) and, under ``torch.distributed``, summed over the
ranks, each of which reads only its own chunks. Memory: one chunk, the ``(M+1)^2`` Gram matrix,
and a few ``(L, M)`` parameter-sized buffers.

The method, per path point (warm-started, as in memory):

1. The sequential strong rule picks the active features (and the non-zeros of the warm start).
2. An accelerated variable-metric proximal gradient method on the active set, one pass over the
   data per iteration: the metric is a Kronecker model of the cross-entropy's Hessian,
   ``A (x) S``, with ``A = mean(diag(p) - p p^T)`` over the rows (the classes' coupling, measured in
   each pass) and ``S = [X_A, 1]^T [X_A, 1] / N`` the features' Gram matrix (their correlation,
   the cause of slow first-order convergence, computed once in the first pass). Each step solves
   the small ``L x (|A| + 1)`` model problem in memory; Nesterov momentum with adaptive restart
   on top, the step undone and the metric stiffened when the objective rises.
3. One pass computes the gradient on *all* features: the exact KKT violation (the certificate
   recorded in `PathPoint.kkt`) and the features that violate it, which are added before re-solving.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from salfcbm._utils.progress import close_bar
from salfcbm.errors import InputError
from salfcbm.head.chunks import ArrayChunks, Ranks, iter_chunks
from salfcbm.head.inputs import check_positive, resolve_device
from salfcbm.head.objective import PI_FLOOR, kkt_max, soft_threshold
from salfcbm.head.path import check_path_options, lambda_grid
from salfcbm.head.results import HeadFit, PathPoint
from salfcbm.head.selection import criterion_name, select_point

__all__ = ["fit_sparse_head_streaming"]

_FLOAT_NOISE = 1e-7  # losses are float32 logits summed in float64: relative changes below this are noise
_ROUNDS = 8  # active-set rounds per path point at most (a round adds violators, or re-solves a point the full check refused)


@dataclass
class _Data:
    """A chunk source and how to read it."""

    source: Any
    ranks: Ranks
    device: torch.device
    mean: Tensor | None
    std: Tensor | None
    what: str = "train"
    passes: int = 0

    def chunks(self, check: bool = False):
        self.passes += 1
        return iter_chunks(self.source, self.ranks, device=self.device, mean=self.mean, std=self.std, what=self.what,
                           check_finite=check)


@dataclass
class _Stats:
    n: int
    m: int
    counts: Tensor  # (L,) float64
    gram: Tensor  # (M+1, M+1) float64: [X, 1]^T [X, 1]
    class_sums: Tensor  # (L, M) float64: Y^T X


@dataclass
class _State:
    """The current point and what the last pass measured there (sums over all rows, divided by N)."""

    w: Tensor  # (L, M)
    b: Tensor  # (L,)
    loss: float
    g: Tensor  # (L, M) gradient of the mean CE (all features after a full pass, else stale off the active set)
    gb: Tensor  # (L,)
    d: Tensor  # (L, L) class curvature: mean of diag(p) - p p^T
    correct: int
    lam_prev: float


def _grow(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] >= rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))])


def _stats_pass(data: _Data, num_classes: int | None) -> _Stats:
    """One pass: row count, class counts, class sums ``Y^T X`` and the Gram matrix, summed over the ranks."""
    n, m, counts, cs, gram, hi, lo = 0, None, None, None, None, -1, 0
    for x, y in data.chunks(check=True):
        if m is None:
            m = x.shape[1]
            counts = torch.zeros(1, dtype=torch.float64, device=x.device)
            cs = torch.zeros(1, m, dtype=torch.float64, device=x.device)
            gram = torch.zeros(m + 1, m + 1, dtype=torch.float64, device=x.device)
        elif x.shape[1] != m:
            raise InputError(f"A chunk has {x.shape[1]} features but the first had {m}; every chunk must have the same M.")
        if y.numel() == 0:
            continue
        lo, hi = min(lo, int(y.min())), max(hi, int(y.max()))
        if lo < 0:
            raise InputError(f"y_{data.what} holds a negative label ({lo}); labels must be class indices >= 0.")
        counts, cs = _grow(counts, hi + 1), _grow(cs, hi + 1)
        counts += torch.bincount(y, minlength=counts.shape[0]).to(torch.float64)
        cs.index_add_(0, y, x.to(torch.float64))
        xe = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
        gram += (xe.T @ xe).to(torch.float64)
        n += x.shape[0]
    m = data.ranks.max_int(-1 if m is None else m)
    if m < 1:
        raise InputError(f"The {data.what} data yielded no chunk; expected at least one (x, y) chunk.")
    n_cls = data.ranks.max_int(hi + 1)
    if num_classes is not None:
        if n_cls > num_classes:
            raise InputError(f"y_{data.what} holds labels up to {n_cls - 1} but num_classes={num_classes}; "
                             "pass the right num_classes or remap the labels.")
        n_cls = num_classes
    dev = data.device
    counts = _grow(counts if counts is not None else torch.zeros(1, dtype=torch.float64, device=dev), n_cls)
    cs = _grow(cs if cs is not None else torch.zeros(1, m, dtype=torch.float64, device=dev), n_cls)
    gram = gram if gram is not None else torch.zeros(m + 1, m + 1, dtype=torch.float64, device=dev)
    nt, counts, cs, gram = data.ranks.sum([torch.tensor([float(n)], dtype=torch.float64, device=dev), counts, cs, gram])
    return _Stats(n=int(nt.item()), m=m, counts=counts, gram=gram, class_sums=cs)


def _ce_sums(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Summed cross-entropy (float64), the residual ``softmax(z) - onehot(y)`` and the probabilities."""
    lse = torch.logsumexp(z, 1)
    loss = (lse - z.gather(1, y[:, None]).squeeze(1)).sum(dtype=torch.float64)
    p = torch.exp(z - lse[:, None])
    r = p.clone()
    r[torch.arange(z.shape[0], device=z.device), y] -= 1.0
    return loss, r, p


def _full_pass(data: _Data, st: _State, n: int) -> None:
    """Loss, gradient on *all* features, curvature and accuracy at ``(st.w, st.b)``; updates ``st``."""
    cols = (st.w != 0).any(0).nonzero().squeeze(1)
    wa = st.w.index_select(1, cols)
    L, M = st.w.shape
    loss, g, gb, d, correct = (st.w.new_zeros((), dtype=torch.float64), st.w.new_zeros(L, M), st.w.new_zeros(L),
                               st.w.new_zeros(L, L), st.w.new_zeros((), dtype=torch.float64))
    for x, y in data.chunks():
        z = torch.addmm(st.b, x.index_select(1, cols), wa.T)
        ls, r, p = _ce_sums(z, y)
        loss += ls
        g.addmm_(r.T, x)
        gb += r.sum(0)
        d.diagonal().add_(p.sum(0))
        d.addmm_(p.T, p, alpha=-1.0)
        correct += (z.argmax(1) == y).sum()
    loss, g, gb, d, correct = data.ranks.sum([loss, g, gb, d, correct])
    st.loss, st.g, st.gb, st.d, st.correct = float(loss) / n, g / n, gb / n, d / n, int(correct)


def _penalty(w: Tensor, l1: float, l2: float) -> float:
    return 0.5 * l2 * float(w.pow(2).sum()) + l1 * float(w.abs().sum())


def _subproblem(w: Tensor, b: Tensor, gw: Tensor, gb: Tensor, a_cls: Tensor, s: Tensor, lip: float, l1: float,
                l2: float, tol: float, max_inner: int) -> tuple[Tensor, Tensor]:
    """Minimise the model ``<G, U> + 1/2 tr(A U S U^T) + penalty(W + U)`` over ``U = [dW, db]`` (the bias is the
    last column of ``S``) by accelerated proximal gradient with adaptive restart; returns the new ``(w, b)``."""
    a = w.shape[1]
    w0 = torch.cat([w, b[:, None]], 1)
    g0 = torch.cat([gw, gb[:, None]], 1)
    step = 1.0 / (lip + l2)
    v = v_prev = w0
    t = 1.0
    for _ in range(max_inner):
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        yv = v + ((t - 1.0) / t_next) * (v - v_prev)
        grad = torch.addmm(g0, a_cls @ (yv - w0), s)
        grad[:, :a].add_(yv[:, :a], alpha=l2)
        vn = yv - step * grad
        vn[:, :a] = soft_threshold(vn[:, :a], step * l1)
        if float(((yv - vn) * (vn - v)).sum()) > 0:  # momentum points uphill: restart
            t_next = 1.0
        v_prev, v, t = v, vn, t_next
        if float((yv - vn).abs().max()) <= tol * step:
            break
    return v[:, :a].contiguous(), v[:, a].contiguous()


def _accel_pass(data: _Data, cols: Tensor, w: Tensor, b: Tensor, w_prev: Tensor, b_prev: Tensor, beta: float,
                n: int) -> tuple[float, float, Tensor, Tensor, Tensor, int]:
    """One pass on the active columns: the mean loss at ``(w, b)``, and at the extrapolated point
    ``y = (w, b) + beta ((w, b) - (w_prev, b_prev))`` its loss, gradient and class curvature (logits of ``y``
    are the same combination of the two points' logits). Also the correct count at ``(w, b)``."""
    L, a = w.shape
    loss_w, loss_y = w.new_zeros((), dtype=torch.float64), w.new_zeros((), dtype=torch.float64)
    g, gb, h, correct = w.new_zeros(L, a), w.new_zeros(L), w.new_zeros(L, L), w.new_zeros((), dtype=torch.float64)
    for x, y in data.chunks():
        xa = x if cols.numel() == x.shape[1] else x.index_select(1, cols)
        z = torch.addmm(b, xa, w.T)
        correct += (z.argmax(1) == y).sum()
        if beta:
            loss_w += (torch.logsumexp(z, 1) - z.gather(1, y[:, None]).squeeze(1)).sum(dtype=torch.float64)
            z = z.mul_(1.0 + beta).sub_(torch.addmm(b_prev, xa, w_prev.T), alpha=beta)
        ls, r, p = _ce_sums(z, y)
        loss_y += ls
        if not beta:
            loss_w += ls
        g.addmm_(r.T, xa)
        gb += r.sum(0)
        h.diagonal().add_(p.sum(0))
        h.addmm_(p.T, p, alpha=-1.0)
    loss_w, loss_y, g, gb, h, correct = data.ranks.sum([loss_w, loss_y, g, gb, h, correct])
    return float(loss_w) / n, float(loss_y) / n, g / n, gb / n, h / n, int(correct)


def _accelerated(data: _Data, st: _State, cols: Tensor, stats: _Stats, lam: float, alpha: float, tol_abs: float,
                 max_iter: int, max_inner: int) -> tuple[int, bool]:
    """Accelerated variable-metric proximal gradient on the active columns, one pass per iteration.

    The metric of the step from the extrapolated point ``y`` is the Kronecker model of the Hessian at ``y``,
    ``A_y (x) S`` (class curvature ``mean(diag(p) - p p^T)`` times the features' Gram matrix ``S``, which holds
    their correlation), scaled by ``mu``; Nesterov momentum with adaptive restart (O'Donoghue & Candes)
    on top. When the objective rises, the step is undone, ``mu`` doubles and momentum restarts."""
    n, l1, l2 = stats.n, lam * alpha, lam * (1.0 - alpha)
    idx = torch.cat([cols, torch.tensor([stats.m], device=cols.device)])
    s_act = (stats.gram.index_select(0, idx).index_select(1, idx) / n).to(st.w.dtype)
    s_max = float(torch.linalg.eigvalsh(s_act.double()).max())
    w, b = st.w.index_select(1, cols), st.b
    gy, gby, hy, f_w = st.g.index_select(1, cols), st.gb, st.d, st.loss + _penalty(st.w, l1, l2)
    w_prev, b_prev, t, mu, it, conv = w, b, 1.0, 1.0, 0, False
    while it < max_iter:
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_next
        yw, yb = (w + beta * (w - w_prev), b + beta * (b - b_prev)) if beta else (w, b)
        kkt = kkt_max(yw, gy + l2 * yw, gby, l1)
        if kkt <= tol_abs:  # the extrapolated point is certified on the active set: the answer
            w, b, conv = yw, yb, True
            break
        it += 1
        lip = mu * float(torch.linalg.eigvalsh(hy.double()).max()) * s_max
        nw, nb = _subproblem(yw, yb, gy, gby, mu * hy, s_act, lip, l1, l2, 0.1 * kkt, max_inner)
        uphill = float(((yw - nw) * (nw - w)).sum() + ((yb - nb) * (nb - b)).sum()) > 0
        t_after = 1.0 if uphill else t_next
        b_after = (t_after - 1.0) / (0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t_after * t_after)))
        loss_n, _, gy, gby, hy, st.correct = _accel_pass(data, cols, nw, nb, w, b, b_after, n)
        f_n = loss_n + _penalty(nw, l1, l2)
        if f_n > f_w + _FLOAT_NOISE * abs(f_w):  # went up: undo, stiffen the metric, restart momentum
            mu, t = 2.0 * mu, 1.0
            _, _, gy, gby, hy, st.correct = _accel_pass(data, cols, w, b, w, b, 0.0, n)
            w_prev, b_prev = w, b
            continue
        w_prev, b_prev, w, b, f_w, t = w, b, nw, nb, f_n, t_after
        st.loss = loss_n
        if not b_after:  # the pass's gradient is at w itself: a plain step
            mu = max(1.0, 0.8 * mu)
    st.w = torch.zeros_like(st.w).index_copy_(1, cols, w)
    st.b = b
    return it, conv


def _solve_point(data: _Data, st: _State, stats: _Stats, lam: float, alpha: float, tol_abs: float, max_iter: int,
                 max_inner: int) -> tuple[int, int, bool]:
    """One path point: strong-rule active set, the accelerated solve on it, full-gradient KKT check, re-solve with
    the violators. Returns (iterations, rounds, converged); ``st`` holds the full gradient at the answer."""
    l1 = lam * alpha
    active = (st.w != 0).any(0) | (st.g.abs() >= alpha * (2 * lam - st.lam_prev)).any(0)
    iters, rounds, conv = 0, 0, False
    while True:
        rounds += 1
        cols = active.nonzero().squeeze(1)
        if cols.numel():
            k, conv = _accelerated(data, st, cols, stats, lam, alpha, tol_abs, max_iter - iters, max_inner)
            iters += k
        _full_pass(data, st, stats.n)
        viol = (~active) & ((st.g.abs() - l1) > tol_abs).any(0)
        full_ok = kkt_max(st.w, st.g + lam * (1 - alpha) * st.w, st.gb, l1) <= tol_abs
        if full_ok or iters >= max_iter or rounds >= _ROUNDS or not (bool(viol.any()) or conv):
            conv = conv or not cols.numel()
            break
        active |= viol  # add the violators; without any, re-solve from here (the full gradient is exact)
    return iters, rounds, conv


def _val_accuracy(val: _Data | None, w: Tensor, b: Tensor) -> float | None:
    if val is None:
        return None
    cols = (w != 0).any(0).nonzero().squeeze(1)
    wa = w.index_select(1, cols)
    correct = w.new_zeros((), dtype=torch.float64)
    n = w.new_zeros((), dtype=torch.float64)
    for x, y in val.chunks():
        correct += (torch.addmm(b, x.index_select(1, cols), wa.T).argmax(1) == y).sum()
        n += y.numel()
    correct, n = val.ranks.sum([correct, n])
    return float(correct) / max(float(n), 1.0)


def _point(st: _State, lam: float, alpha: float, stats: _Stats, val: _Data | None, iters: int,
           seconds: float) -> PathPoint:
    l1, l2 = lam * alpha, lam * (1 - alpha)
    nnz = int((st.w != 0).sum())
    n_cls = st.w.shape[0]
    return PathPoint(
        lam=float(lam), weight=st.w.detach().cpu().clone(), bias=st.b.detach().cpu().clone(), train_loss=st.loss,
        train_acc=st.correct / stats.n, val_acc=_val_accuracy(val, st.w, st.b), nnz=nnz, nec=nnz / n_cls,
        objective=st.loss + _penalty(st.w, l1, l2), kkt=kkt_max(st.w, st.g + l2 * st.w, st.gb, l1),
        n_iter=iters, seconds=seconds,
    )


def _start(data: _Data, num_classes: int | None, alpha: float) -> tuple[_Stats, _State, float]:
    """The statistics pass, the warm start ``W = 0, b = log(prior)`` and ``lam_max`` (closed form)."""
    stats = _stats_pass(data, num_classes)
    n_cls = stats.counts.shape[0]
    if int((stats.counts > 0).sum()) < 2:
        raise InputError("y_train holds a single class; a classifier needs examples of at least 2 classes.")
    pi = (stats.counts / stats.n).clamp_min(PI_FLOOR)
    b0 = torch.log(pi.float())
    p0 = torch.softmax(b0.double(), 0)
    g0 = (p0[:, None] * stats.gram[stats.m, : stats.m][None, :] - stats.class_sums) / stats.n
    gmax0 = float(g0.abs().max())
    if not gmax0 > 0:
        raise InputError(
            "The features carry no information about the labels: the loss gradient at W = 0 is exactly "
            "zero (are all features constant or zero?). Check the pooled concept activations."
        )
    dt = torch.float32
    loss0 = float(-(stats.counts * torch.log(p0)).sum()) / stats.n
    st = _State(w=torch.zeros(n_cls, stats.m, dtype=dt, device=data.device), b=b0.to(data.device), loss=loss0,
                g=g0.to(dt), gb=(p0 - stats.counts / stats.n).to(dt), d=(torch.diag(p0) - torch.outer(p0, p0)).to(dt),
                correct=int(stats.counts.max()), lam_prev=gmax0 / alpha)
    return stats, st, gmax0


def _as_source(x: Any, y: Any, chunk_rows: int) -> Any:
    if x is not None and y is not None:
        return ArrayChunks(x, y, chunk_rows)
    if isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, (Tensor, np.ndarray)) for v in x) and x[0].ndim == 2:
        return ArrayChunks(x[0], x[1], chunk_rows)  # (features, labels)
    if y is not None:
        raise InputError("Labels were given without features; pass both, or one chunk source of (x, y) chunks.")
    return x


def fit_sparse_head_streaming(
    train: Any,
    val: Any = None,
    *,
    y_train: Any = None,
    y_val: Any = None,
    chunk_rows: int = 65536,
    num_classes: int | None = None,
    mean: Any = None,
    std: Any = None,
    alpha: float = 0.99,
    n_lambdas: int = 50,
    lambda_min_ratio: float = 1e-3,
    lambdas: Sequence[float] | None = None,
    select: str = "val_acc",
    target_nec: float | None = None,
    patience: int | None = None,
    val_tolerance: float = 0.0,
    max_iter: int = 500,
    max_inner: int = 300,
    tol: float = 1e-4,
    device: Any = None,
    process_group: Any = None,
    progress: bool = True,
    desc: str = "Sparse head path (out of core)",
) -> HeadFit:
    """The elastic-net path of Eq. 2 (as `fit_sparse_head`) over chunks of data that need not fit in memory.

    Args:
        train: A chunk source of ``(x, y)`` training chunks (`salfcbm.head.chunks`: `ArrayChunks`,
            `StoreChunks`, a list, a ``DataLoader``, a function returning an iterator), or ``(N, M)``
            features with ``y_train`` (then served in chunks of ``chunk_rows``).
        val: Validation chunks, an ``(x_val, y_val)`` pair, or features with ``y_val``; needed by
            ``select="val_acc"``.
        y_train: Labels when ``train`` is a tensor or array.
        y_val: Labels when ``val`` is a tensor or array.
        chunk_rows: Rows per chunk when tensors are given.
        num_classes: Number of classes (default: largest label + 1).
        mean: Optional ``(M,)`` mean subtracted from every chunk (standardise on the fly).
        std: Optional ``(M,)`` std every chunk is divided by.
        alpha: Elastic-net mixing in ``(0, 1]``.
        n_lambdas: Path points.
        lambda_min_ratio: Smallest ``lam`` relative to ``lam_max``.
        lambdas: Explicit decreasing ``lam`` values.
        select: A rule of `salfcbm.head.selection.SELECT`.
        target_nec: The NEC target of ``select="nec"``.
        patience: Stop after this many points without a better validation accuracy.
        val_tolerance: With ``select="val_acc"``, the sparsest point this close to the best.
        max_iter: Iterations per path point (each one pass over the data).
        max_inner: Iterations of the in-memory model-problem solver per iteration.
        tol: Relative KKT tolerance: a point is certified when its largest KKT violation on all
            features is at most ``tol * lam_max * alpha``.
        device: Where to compute (chunks are moved there one at a time; default: CPU).
        process_group: The ``torch.distributed`` group whose ranks share the chunks (default: the
            world, when initialised). Every rank must call this with the same arguments.
        progress: Show a tqdm bar over the path.
        desc: The bar's label.

    Returns:
        A `HeadFit`; ``fit.path[i].kkt`` is the certificate of point ``i``, ``fit.info`` holds the
        tolerance, whether every point met it, and the passes over the data.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(300, 20); y = x[:, :3].argmax(1)
        >>> fit = fit_sparse_head_streaming(x, y_train=y, chunk_rows=64, select="last", n_lambdas=5,
        ...                                 lambda_min_ratio=0.1, progress=False)
        >>> fit.info["kkt_ok"], (fit.weight[:, 3:] == 0).float().mean() > 0.8
        (True, tensor(True))
    """
    train, val = _as_source(train, y_train, chunk_rows), _as_source(val, y_val, chunk_rows)
    lams_user = check_path_options(alpha, select, target_nec, val, max_iter, tol, patience, n_lambdas,
                                   lambda_min_ratio, lambdas, val_tolerance)
    check_positive("max_inner", max_inner, integer=True)
    dev = resolve_device(device, None)
    ranks = Ranks(process_group)
    mu = None if mean is None else torch.as_tensor(mean, dtype=torch.float32, device=dev)
    sd = None if std is None else torch.as_tensor(std, dtype=torch.float32, device=dev)
    data = _Data(train, ranks, dev, mu, sd)
    vdata = None if val is None else _Data(val, ranks, dev, mu, sd, what="val")
    stats, st, gmax0 = _start(data, num_classes, alpha)
    lams = lams_user if lams_user is not None else lambda_grid(gmax0 / alpha, n_lambdas, lambda_min_ratio)
    tol_abs = tol * max(gmax0, 1e-12)
    path = _run_path(data, vdata, st, stats, lams, alpha, tol_abs, max_iter, max_inner, select, target_nec,
                     patience, progress and ranks.rank == 0, desc)
    selected = select_point(path, select, target_nec, val_tolerance)
    p = path[selected]
    return HeadFit(
        weight=p.weight, bias=p.bias, lam=p.lam, path=path, selected=selected,
        criterion=criterion_name(select, val_tolerance), lam_max=gmax0 / alpha, alpha=float(alpha),
        info={"num_classes": st.w.shape[0], "num_features": stats.m, "num_train": stats.n, "tol_abs": tol_abs,
              "kkt_ok": all(q.kkt <= tol_abs for q in path), "kkt_max": max(q.kkt for q in path),
              "passes": data.passes, "ranks": ranks.world, "solver": "out-of-core accelerated variable-metric proximal gradient"},
    )


def _run_path(data: _Data, vdata: _Data | None, st: _State, stats: _Stats, lams: list[float], alpha: float,
              tol_abs: float, max_iter: int, max_inner: int, select: str, target_nec: float | None,
              patience: int | None, progress: bool, desc: str) -> list[PathPoint]:
    path: list[PathPoint] = []
    best_val, since_best, stop = -1.0, 0, ""
    bar = tqdm(total=len(lams), desc=desc, disable=not progress, leave=False)
    try:
        for lam in lams:
            t0 = time.perf_counter()
            iters, _, conv = _solve_point(data, st, stats, lam, alpha, tol_abs, max_iter, max_inner)
            pt = _point(st, lam, alpha, stats, vdata, iters, time.perf_counter() - t0)
            if pt.kkt > tol_abs:
                warnings.warn(
                    f"The out-of-core solver stopped at lam={lam:.4g} with a KKT violation of {pt.kkt:.3g}, above the "
                    f"tolerance {tol_abs:.3g} ({'iteration limit' if not conv else 'float precision'}); raise max_iter "
                    "or tol.", RuntimeWarning, stacklevel=3)
            path.append(pt)
            st.lam_prev = lam
            bar.update(1)
            bar.set_postfix(lam=f"{pt.lam:.3g}", nec=f"{pt.nec:.1f}", kkt=f"{pt.kkt:.1e}")
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
    return path
