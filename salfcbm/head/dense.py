"""The paper's non-sparse final layer (L2 only): `fit_dense_head`, full-batch L-BFGS."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from torch import Tensor
from tqdm.auto import tqdm

from salfcbm._utils.tensors import accuracy as tensor_accuracy
from salfcbm.errors import InputError
from salfcbm.head.inputs import check_positive, prepare_data
from salfcbm.head.objective import accuracy, ce_loss_grad, prior_bias
from salfcbm.head.results import HeadFit, PathPoint
from salfcbm.head.selection import select_point

__all__ = ["fit_dense_head"]


def fit_dense_head(
    x_train: Any,
    y_train: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    *,
    num_classes: int | None = None,
    weight_decay: float | Sequence[float] = 1e-4,
    max_iter: int = 500,
    tol: float = 1e-6,
    device: Any = None,
    progress: bool = True,
) -> HeadFit:
    """Fit a non-sparse final layer (the paper's "non-sparse" rows of Table 1).

    Minimises ``mean CE(W x + b, y) + weight_decay/2 * ||W||_F^2`` with full-batch L-BFGS
    (strong-Wolfe line search). With several ``weight_decay`` values (largest first,
    warm-started) the one with the best validation accuracy is selected (ties: the larger
    decay); otherwise the single fit is returned.

    Args:
        x_train: ``(N, M)`` features, or an iterable of ``(x, y[, idx])`` batches.
        y_train: ``(N,)`` integer labels.
        x_val: Optional validation features.
        y_val: Optional validation labels.
        num_classes: Number of classes (default: largest label + 1).
        weight_decay: L2 strength, or a sequence of strengths to choose from on validation data.
        max_iter: L-BFGS iterations per strength.
        tol: Gradient tolerance (infinity norm) at which L-BFGS stops.
        device: Where to compute (default: the device of ``x_train``).
        progress: Show a tqdm bar over the strengths.

    Returns:
        A `HeadFit` with ``criterion="dense"`` (``alpha = 0``).

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(200, 10); y = (x[:, 0] > 0).long()
        >>> fit = fit_dense_head(x, y, progress=False)
        >>> fit.point.train_acc > 0.95
        True
    """
    wds = [weight_decay] if isinstance(weight_decay, (int, float)) else list(weight_decay)
    if not wds or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0) or not math.isfinite(v) for v in wds):
        raise InputError(f"weight_decay must be a number >= 0 or a non-empty sequence of them; received {weight_decay!r}.")
    if len(wds) > 1 and x_val is None:
        raise InputError("Several weight_decay values need x_val and y_val to choose between them.")
    check_positive("max_iter", max_iter, integer=True)
    check_positive("tol", tol)
    wds = sorted((float(v) for v in wds), reverse=True)
    xt, yt, xv, yv, n_cls, dev = prepare_data(x_train, y_train, x_val, y_val, num_classes, device)
    m = xt.shape[1]
    w = torch.zeros(n_cls, m, device=dev, requires_grad=True)
    b = prior_bias(yt, n_cls).to(dev).requires_grad_(True)
    path: list[PathPoint] = []
    for wd in tqdm(wds, desc="dense head", disable=not progress, leave=False):
        t0 = time.perf_counter()
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            opt.zero_grad()
            z = torch.addmm(b, xt, w.T)
            loss = torch.nn.functional.cross_entropy(z, yt) + 0.5 * wd * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
        with torch.no_grad():
            wd_w, wd_b = w.detach(), b.detach()
            z = torch.addmm(wd_b, xt, wd_w.T)
            train_loss, r = ce_loss_grad(z, yt, grad=True)
            kkt = max(float((r.T @ xt + wd * wd_w).abs().max()), float(r.sum(0).abs().max()))
            val_acc = accuracy(wd_w, wd_b, xv, yv) if xv is not None else None
            nnz = int((wd_w != 0).sum())
            path.append(
                PathPoint(
                    lam=wd,
                    weight=wd_w.cpu().clone(),
                    bias=wd_b.cpu().clone(),
                    train_loss=train_loss,
                    train_acc=tensor_accuracy(z, yt),
                    val_acc=val_acc,
                    nnz=nnz,
                    nec=nnz / n_cls,
                    objective=train_loss + 0.5 * wd * float(wd_w.pow(2).sum()),
                    kkt=kkt,
                    n_iter=n_iter,
                    seconds=time.perf_counter() - t0,
                )
            )
    selected = select_point(path, "val_acc") if xv is not None else len(path) - 1
    p = path[selected]
    return HeadFit(
        weight=p.weight,
        bias=p.bias,
        lam=p.lam,
        path=path,
        selected=selected,
        criterion="dense",
        lam_max=float("inf"),
        alpha=0.0,
        info={"num_classes": n_cls, "num_features": m, "num_train": xt.shape[0]},
    )
