"""The sparse final layer of SALF-CBM (paper section 3.4, Eq. 2).

Once the concept bottleneck is trained, the pooled concept activations
``c*(x)`` (standardised with the training mean and std) are classified by a
linear layer ``z = W c* + b``. To keep every class explained by a handful of
concepts, ``W`` is fitted with the elastic-net multinomial logistic regression
of GLM-SAGA (Wong et al. 2021), as LF-CBM and SALF-CBM do::

    minimise  mean_n CE(W x_n + b, y_n) + lam * [(1 - alpha)/2 * ||W||_F^2 + alpha * ||W||_1]

with ``alpha = 0.99`` and the bias unregularised. (The paper writes the sum of
the losses and ``||W||_F`` without the square; like the GLM-SAGA code it cites,
salfcbm uses the mean and the squared norm, which only rescales ``lam``.)

`fit_sparse_head` computes the whole regularisation path, from
``lam_max`` (the smallest ``lam`` whose solution is ``W = 0``) down to
``lam_max * lambda_min_ratio`` on a geometric grid, each point warm-started
from the previous one, and picks one point by validation accuracy or by a
target number of non-zero weights per class (NEC). `fit_dense_head` fits
the paper's non-sparse rows (L2 only).

The solver is not GLM-SAGA's minibatch SAGA: it is a full-batch accelerated
proximal gradient method (FISTA with backtracking and adaptive restart) on an
active set chosen by the sequential strong rule (as glmnet does), with every
point checked against the exact KKT conditions on *all* features before it is
accepted. It solves the same problem, to a stated tolerance, faster (see
``benchmarks/bench_glm_saga.py``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from salfcbm._utils.progress import close_bar
from salfcbm.errors import InputError

__all__ = [
    "PathPoint",
    "HeadFit",
    "fit_sparse_head",
    "fit_dense_head",
    "lambda_max",
    "elastic_net_objective",
    "kkt_violation",
]

_SELECT = ("val_acc", "nec", "last")
_PI_FLOOR = 1e-12  # class prior floor for classes absent from the training set


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class PathPoint:
    """One point of the regularisation path.

    Attributes:
        lam: Regularisation strength of this point.
        weight: ``(L, M)`` class weights, on the CPU.
        bias: ``(L,)`` class biases, on the CPU.
        train_loss: Mean training cross-entropy (without the penalty).
        train_acc: Training accuracy in ``[0, 1]``.
        val_acc: Validation accuracy, or ``None`` without validation data.
        nnz: Number of non-zero entries of ``weight``.
        nec: Average number of non-zero weights per class, ``nnz / L``.
        objective: The penalised objective of Eq. 2 (mean loss + ``lam * R(W)``).
        kkt: Largest violation of the optimality conditions, in gradient units.
        n_iter: Solver iterations spent on this point.
        seconds: Wall time spent on this point.
    """

    lam: float
    weight: Tensor
    bias: Tensor
    train_loss: float
    train_acc: float
    val_acc: float | None
    nnz: int
    nec: float
    objective: float = float("nan")
    kkt: float = float("nan")
    n_iter: int = 0
    seconds: float = 0.0


@dataclass
class HeadFit:
    """A fitted final layer and the path it was chosen from.

    Attributes:
        weight: ``(L, M)`` weights of the selected point (CPU).
        bias: ``(L,)`` biases of the selected point (CPU).
        lam: Regularisation strength of the selected point.
        path: Every point computed, from the strongest to the weakest regularisation.
        selected: Index of the selected point in ``path``.
        criterion: How it was selected: ``"val_acc"``, ``"nec"``, ``"last"`` or ``"dense"``.
        lam_max: Smallest ``lam`` giving ``W = 0`` (``inf`` for a dense head).
        alpha: Elastic-net mixing parameter (``0`` for a dense head).
    """

    weight: Tensor
    bias: Tensor
    lam: float
    path: list[PathPoint]
    selected: int
    criterion: str
    lam_max: float = float("inf")
    alpha: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def point(self) -> PathPoint:
        """The selected `PathPoint`."""
        return self.path[self.selected]

    def logits(self, x: Tensor) -> Tensor:
        """Class scores ``x @ W.T + b`` for standardised features ``x`` of shape ``(B, M)``."""
        w = self.weight.to(device=x.device, dtype=x.dtype)
        return torch.addmm(self.bias.to(device=x.device, dtype=x.dtype), x, w.T)

    def summary(self) -> list[dict[str, Any]]:
        """One JSON-able row per path point: ``lam``, losses, accuracies, ``nnz``, ``nec``, ``selected``."""
        rows = []
        for i, p in enumerate(self.path):
            rows.append(
                {
                    "index": i,
                    "lam": float(p.lam),
                    "train_loss": float(p.train_loss),
                    "objective": float(p.objective),
                    "train_acc": float(p.train_acc),
                    "val_acc": None if p.val_acc is None else float(p.val_acc),
                    "nnz": int(p.nnz),
                    "nec": float(p.nec),
                    "kkt": float(p.kkt),
                    "n_iter": int(p.n_iter),
                    "seconds": float(p.seconds),
                    "selected": i == self.selected,
                }
            )
        return rows


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------


def _to_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    raise InputError(
        f"{what} must be a torch.Tensor, a numpy array or an iterable of (x, y) batches; "
        f"received {type(a).__name__}."
    )


def _collect(x: Any, y: Any, what: str) -> tuple[Tensor, Tensor]:
    """Turn tensors/arrays or an iterable of ``(x, y, ...)`` batches into two tensors."""
    if y is not None:
        return _to_tensor(x, f"x_{what}"), _to_tensor(y, f"y_{what}")
    if isinstance(x, (Tensor, np.ndarray)):
        raise InputError(
            f"y_{what} is missing: received features x_{what} of shape {tuple(x.shape)} but y_{what}=None. "
            f"Pass the labels, or pass x_{what} as an iterable of (x, y) batches (e.g. a DataLoader)."
        )
    if not isinstance(x, Iterable):
        raise InputError(
            f"x_{what} must be a tensor, a numpy array or an iterable of (x, y) batches; "
            f"received {type(x).__name__}."
        )
    xs, ys = [], []
    for i, batch in enumerate(x):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise InputError(
                f"Batch {i} of x_{what} is {type(batch).__name__}; expected a tuple (x, y) or (x, y, index)."
            )
        xs.append(_to_tensor(batch[0], f"x_{what} batch {i}"))
        ys.append(_to_tensor(batch[1], f"y_{what} batch {i}"))
    if not xs:
        raise InputError(f"x_{what} yielded no batches; expected at least one (x, y) batch.")
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as e:
        raise InputError(
            f"The batches of x_{what} do not stack: {e}. Every batch must be (B, M) features with (B,) labels."
        ) from e


def _check_xy(x: Tensor, y: Tensor, what: str, m: int | None) -> None:
    if x.dim() != 2:
        raise InputError(
            f"x_{what} must be 2-D (N, M) pooled concept activations; received shape {tuple(x.shape)}. "
            "Pool the concept maps first (e.g. x.mean((2, 3)) or x.amax((2, 3)))."
        )
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise InputError(f"x_{what} must hold real numbers; received dtype {x.dtype}.")
    if y.dim() != 1:
        raise InputError(
            f"y_{what} must be 1-D integer class indices of shape (N,); received shape {tuple(y.shape)}. "
            "Convert one-hot labels with y.argmax(1)."
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if y.is_floating_point() and bool(torch.all(y == y.round())):
            pass  # integral floats are accepted
        else:
            raise InputError(f"y_{what} must hold integer class indices; received dtype {y.dtype}.")
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"x_{what} has {x.shape[0]} rows but y_{what} has {y.shape[0]} labels; they must match."
        )
    if x.shape[0] == 0:
        raise InputError(f"x_{what} is empty (0 rows); expected at least one example.")
    if m is not None and x.shape[1] != m:
        raise InputError(
            f"x_{what} has {x.shape[1]} features but x_train has {m}; both must use the same concepts."
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise InputError(
            f"x_{what} contains NaN or infinite values in {bad} row(s). Drop those rows or check the "
            "standardisation (a concept with zero training std divides by zero)."
        )


def _check_labels(y: Tensor, what: str, num_classes: int) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(
            f"y_{what} holds labels in [{lo}, {hi}] but num_classes={num_classes}; labels must lie in "
            f"[0, {num_classes - 1}]. Pass num_classes= explicitly or remap the labels."
        )


def _resolve_device(device: Any, x: Any) -> torch.device:
    if device is None:
        return x.device if isinstance(x, Tensor) else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device={device!r} is not a torch device; pass e.g. 'cpu' or 'cuda:0'.") from e


def _prepare(
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    num_classes: int | None,
    device: Any,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, int, torch.device]:
    dev = _resolve_device(device, x_train)
    xt, yt = _collect(x_train, y_train, "train")
    _check_xy(xt, yt, "train", None)
    xv = yv = None
    if x_val is not None or y_val is not None:
        if x_val is None:
            raise InputError("y_val was given without x_val; pass both or neither.")
        xv, yv = _collect(x_val, y_val, "val")
        _check_xy(xv, yv, "val", xt.shape[1])
    if num_classes is None:
        num_classes = int(yt.max()) + 1
        if yv is not None:
            num_classes = max(num_classes, int(yv.max()) + 1)
    elif not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int; received {num_classes!r}.")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise InputError(
            f"The labels name only {num_classes} class; a classifier needs at least 2. "
            "Pass num_classes= if some classes are absent from these labels."
        )
    _check_labels(yt, "train", num_classes)
    present = int((torch.bincount(yt, minlength=num_classes) > 0).sum())
    if present < 2:
        raise InputError(
            f"y_train holds a single class ({int(yt[0])}); a classifier needs examples of at least 2 classes."
        )
    if yv is not None:
        _check_labels(yv, "val", num_classes)
    xt = xt.to(device=dev, dtype=torch.float32)
    yt = yt.to(device=dev, dtype=torch.long)
    if xv is not None:
        xv = xv.to(device=dev, dtype=torch.float32)
        yv = yv.to(device=dev, dtype=torch.long)
    return xt, yt, xv, yv, num_classes, dev


def _check_positive(name: str, v: Any, integer: bool = False) -> None:
    ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.floating, np.integer))
    if isinstance(v, bool) or not ok or not (v > 0) or (not integer and not math.isfinite(v)):
        kind = "a positive int" if integer else "a positive finite number"
        raise InputError(f"{name} must be {kind}; received {v!r}.")


# --------------------------------------------------------------------------------------
# Numerical kernels
# --------------------------------------------------------------------------------------


def _ce(z: Tensor, y: Tensor, grad: bool = False) -> tuple[float, Tensor | None]:
    """Mean cross-entropy of logits ``z`` (summed in float64) and, if ``grad``, its gradient
    w.r.t. the logits, ``(softmax(z) - onehot(y)) / N``."""
    n = z.shape[0]
    mx = z.amax(1, keepdim=True)
    e = torch.exp(z - mx)
    s = e.sum(1, keepdim=True)
    nll = torch.log(s).add_(mx).squeeze(1).sub_(z.gather(1, y[:, None]).squeeze(1))
    loss = float(nll.sum(dtype=torch.float64)) / n
    if not grad:
        return loss, None
    r = e.div_(s)
    r[torch.arange(n, device=z.device), y] -= 1.0
    return loss, r.div_(n)


def _soft(v: Tensor, thr: float) -> Tensor:
    return torch.sign(v) * torch.clamp_min(v.abs() - thr, 0.0)


def _kkt(w: Tensor, gw: Tensor, gb: Tensor, l1: float) -> float:
    """Largest violation of the optimality conditions; ``gw`` includes the L2 term."""
    nz = w != 0
    v_nz = torch.where(nz, (gw + l1 * torch.sign(w)).abs(), torch.zeros_like(gw))
    v_z = torch.where(nz, torch.zeros_like(gw), torch.clamp_min(gw.abs() - l1, 0.0))
    out = float(gb.abs().max()) if gb.numel() else 0.0
    if w.numel():
        out = max(out, float(v_nz.max()), float(v_z.max()))
    return out


def _prior_bias(y: Tensor, num_classes: int) -> Tensor:
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    pi = (counts / counts.sum()).clamp_min(_PI_FLOOR)
    return torch.log(pi)


def _lipschitz_bound(x: Tensor, iters: int = 20) -> float:
    """``0.5 * sigma_max([X, 1])^2 / N``: a bound on the curvature of the mean softmax CE."""
    n, m = x.shape
    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(m + 1, generator=g).to(x.device)
    v /= v.norm()
    s = 1.0
    for _ in range(iters):
        u = x @ v[:m] + v[m]
        w = torch.cat([x.T @ u, u.sum().reshape(1)])
        s = float(w.norm())
        if s == 0:
            return 1.0
        v = w / s
    return 0.5 * s / n


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
    f, _ = _ce(z, y)
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
        fy, r = _ce(yz, y, grad=True)
        gw = r.T @ x
        if l2:
            gw.add_(yw, alpha=l2)
        gb = r.sum(0)
        gy = fy + 0.5 * l2 * float(yw.pow(2).sum())
        done = _kkt(yw, gw, gb, l1) <= tol_abs
        # backtracking line search on the step 1/lip
        while True:
            step = 1.0 / lip
            wn = _soft(yw - step * gw, step * l1)
            bn = yb - step * gb
            zn = torch.addmm(bn, x, wn.T)
            fn, _ = _ce(zn, y)
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


def elastic_net_objective(
    weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, lam: float, alpha: float = 0.99
) -> float:
    """The objective of Eq. 2 (mean form), evaluated in float64.

    Args:
        weight: ``(L, M)`` weights.
        bias: ``(L,)`` biases.
        x: ``(N, M)`` features.
        y: ``(N,)`` labels.
        lam: Regularisation strength.
        alpha: Elastic-net mixing (1 = lasso, 0 = ridge).

    Returns:
        ``mean CE(W x + b, y) + lam * ((1 - alpha)/2 * ||W||_F^2 + alpha * ||W||_1)``.

    Examples:
        >>> import torch
        >>> x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
        >>> round(elastic_net_objective(torch.zeros(2, 3), torch.zeros(2), x, y, 0.1), 4)
        0.6931
    """
    w = weight.detach().to(device=x.device, dtype=torch.float64)
    b = bias.detach().to(device=x.device, dtype=torch.float64)
    z = torch.addmm(b, x.to(torch.float64), w.T)
    ce = torch.nn.functional.cross_entropy(z, y.to(device=x.device, dtype=torch.long))
    pen = lam * (0.5 * (1 - alpha) * w.pow(2).sum() + alpha * w.abs().sum())
    return float(ce + pen)


def kkt_violation(
    weight: Tensor, bias: Tensor, x: Tensor, y: Tensor, lam: float, alpha: float = 0.99
) -> float:
    """Largest violation of the optimality (sub-gradient) conditions of Eq. 2, in float64.

    Zero at an exact minimiser: the bias gradient vanishes, every non-zero weight has
    ``grad + lam*alpha*sign(w) = 0`` and every zero weight has ``|grad| <= lam*alpha``
    (``grad`` includes the L2 term). Compare it with ``lambda_max(...) * alpha``, the size of
    the gradient at ``W = 0``.

    Args:
        weight: ``(L, M)`` weights.
        bias: ``(L,)`` biases.
        x: ``(N, M)`` features.
        y: ``(N,)`` labels.
        lam: Regularisation strength.
        alpha: Elastic-net mixing.

    Returns:
        The largest violation (a non-negative float).

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
        >>> fit = fit_sparse_head(x, y, select="last", n_lambdas=3, progress=False)
        >>> kkt_violation(fit.weight, fit.bias, x, y, fit.lam) < 1e-3
        True
    """
    xd = x.to(torch.float64)
    w = weight.detach().to(device=x.device, dtype=torch.float64)
    b = bias.detach().to(device=x.device, dtype=torch.float64)
    z = torch.addmm(b, xd, w.T)
    _, r = _ce(z, y.to(device=x.device, dtype=torch.long), grad=True)
    gw = r.T @ xd + lam * (1 - alpha) * w
    return _kkt(w, gw, r.sum(0), lam * alpha)


def lambda_max(x: Tensor, y: Tensor, num_classes: int | None = None, alpha: float = 0.99) -> float:
    """The smallest ``lam`` for which ``W = 0`` solves Eq. 2.

    At ``W = 0`` the optimal bias is ``log`` of the class frequencies, and ``W = 0`` is optimal
    iff every entry of the cross-entropy gradient ``X^T (softmax(b) - Y) / N`` is at most
    ``lam * alpha`` in absolute value.

    Args:
        x: ``(N, M)`` features.
        y: ``(N,)`` labels in ``[0, num_classes)``.
        num_classes: Number of classes (default ``y.max() + 1``).
        alpha: Elastic-net mixing, in ``(0, 1]``.

    Returns:
        ``max |X^T (pi - Y)| / (N * alpha)``.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[1.0], [-1.0]]); y = torch.tensor([0, 1])
        >>> lambda_max(x, y, alpha=1.0)
        0.5
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= 1):
        raise InputError(f"alpha must lie in (0, 1] for a sparse head; received {alpha!r}.")
    xt, yt, _, _, c, _ = _prepare(x, y, None, None, num_classes, None)
    return _grad_at_zero(xt, yt, c).abs().max().item() / alpha


def _grad_at_zero(x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    b0 = _prior_bias(y, num_classes)
    z = b0.expand(x.shape[0], num_classes).contiguous()
    _, r = _ce(z, y, grad=True)
    return r.T @ x


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def _accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor, chunk: int = 1 << 16) -> float:
    correct = 0
    for s in range(0, x.shape[0], chunk):
        z = torch.addmm(b, x[s : s + chunk], w.T)
        correct += int((z.argmax(1) == y[s : s + chunk]).sum())
    return correct / x.shape[0]


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
        select: ``"val_acc"``, ``"nec"`` or ``"last"``.
        target_nec: Target non-zero weights per class, required by ``select="nec"``.
        patience: Stop the path after this many points without a better validation accuracy
            (``None``: run the whole path).
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
    lams_user = _check_path_options(alpha, select, target_nec, x_val, max_iter, tol, patience, n_lambdas,
                                    lambda_min_ratio, lambdas)
    xt, yt, xv, yv, n_cls, dev = _prepare(x_train, y_train, x_val, y_val, num_classes, device)
    n, m = xt.shape

    g0 = _grad_at_zero(xt, yt, n_cls)
    gmax0 = float(g0.abs().max())
    if not gmax0 > 0:
        raise InputError(
            "The features carry no information about the labels: the loss gradient at W = 0 is exactly "
            "zero (are all features constant or zero?). Check the pooled concept activations."
        )
    lam_max = gmax0 / alpha
    lams = lams_user if lams_user is not None else _lambda_grid(lam_max, n_lambdas, lambda_min_ratio)
    tol_abs = tol * max(gmax0, 1e-12)

    state = _PathState(w=torch.zeros(n_cls, m, device=dev), b=_prior_bias(yt, n_cls).to(dev), g=g0,
                       lam_prev=lam_max, lip=_lipschitz_bound(xt) * 0.25)
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

    selected = _select(path, select, target_nec)
    p = path[selected]
    return HeadFit(
        weight=p.weight,
        bias=p.bias,
        lam=p.lam,
        path=path,
        selected=selected,
        criterion=select,
        lam_max=lam_max,
        alpha=float(alpha),
        info={"num_classes": n_cls, "num_features": m, "num_train": n, "tol_abs": tol_abs},
    )


def _check_path_options(
    alpha: Any, select: str, target_nec: Any, x_val: Any, max_iter: Any, tol: Any, patience: Any,
    n_lambdas: Any, lambda_min_ratio: Any, lambdas: Sequence[float] | None,
) -> list[float] | None:
    """Validate `fit_sparse_head`'s options eagerly; return the user's lambdas as floats (or None)."""
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha <= 1):
        raise InputError(
            f"alpha must lie in (0, 1] for a sparse head; received {alpha!r}. "
            "Use fit_dense_head for alpha = 0 (L2 only)."
        )
    if select not in _SELECT:
        raise InputError(f"select must be one of {_SELECT}; received {select!r}.")
    if select == "nec":
        if target_nec is None:
            raise InputError('select="nec" needs target_nec= (non-zero weights per class, e.g. 5).')
        _check_positive("target_nec", target_nec)
    elif target_nec is not None:
        raise InputError(f'target_nec={target_nec!r} is only used with select="nec"; received select={select!r}.')
    if select == "val_acc" and (x_val is None):
        raise InputError(
            'select="val_acc" needs validation data: pass x_val and y_val, or use select="nec" '
            '(with target_nec=) or select="last".'
        )
    _check_positive("max_iter", max_iter, integer=True)
    _check_positive("tol", tol)
    if patience is not None:
        _check_positive("patience", patience, integer=True)
    if lambdas is None:
        _check_positive("n_lambdas", n_lambdas, integer=True)
        _check_positive("lambda_min_ratio", lambda_min_ratio)
        if lambda_min_ratio > 1:
            raise InputError(f"lambda_min_ratio must be in (0, 1]; received {lambda_min_ratio!r}.")
        return None
    lams_user = [float(v) for v in lambdas]
    if not lams_user or any(not (v >= 0 and math.isfinite(v)) for v in lams_user):
        raise InputError(f"lambdas must be non-empty, finite and >= 0; received {list(lambdas)!r}.")
    if any(a < b for a, b in zip(lams_user, lams_user[1:])):
        raise InputError("lambdas must be in decreasing order (warm starts run from sparse to dense).")
    return lams_user


def _lambda_grid(lam_max: float, n_lambdas: int, lambda_min_ratio: float) -> list[float]:
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
        train_loss, r = _ce(z, yt, grad=True)
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
        train_acc=float((z.argmax(1) == yt).float().mean()),
        val_acc=_accuracy(w, b, xv, yv) if xv is not None else None,
        nnz=nnz,
        nec=nnz / n_cls,
        objective=train_loss + lam * (0.5 * (1 - alpha) * float(w.pow(2).sum()) + alpha * float(w.abs().sum())),
        kkt=_kkt(w, gw, r.sum(0), lam * alpha),
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


def _select(path: list[PathPoint], select: str, target_nec: float | None) -> int:
    if select == "last":
        return len(path) - 1
    if select == "val_acc":
        best = 0
        for i, p in enumerate(path):
            if p.val_acc is not None and p.val_acc > (path[best].val_acc or -1.0):
                best = i  # strict '>' keeps the earlier (sparser) point on ties
        return best
    ok = [i for i, p in enumerate(path) if p.nec <= target_nec]  # path[0] has nec 0 for lam_max grids
    if not ok:
        raise InputError(
            f"No path point has nec <= target_nec={target_nec}; the sparsest has nec={path[0].nec:.2f}. "
            "Start the path at lam_max (lambdas=None) or raise target_nec."
        )

    def key(i: int) -> tuple[float, float, int]:
        p = path[i]
        acc = p.val_acc if p.val_acc is not None else p.train_acc
        return (p.nec, acc, -i)

    return max(ok, key=key)


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
    _check_positive("max_iter", max_iter, integer=True)
    _check_positive("tol", tol)
    wds = sorted((float(v) for v in wds), reverse=True)
    xt, yt, xv, yv, n_cls, dev = _prepare(x_train, y_train, x_val, y_val, num_classes, device)
    m = xt.shape[1]
    w = torch.zeros(n_cls, m, device=dev, requires_grad=True)
    b = _prior_bias(yt, n_cls).to(dev).requires_grad_(True)
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
            train_loss, r = _ce(z, yt, grad=True)
            kkt = max(float((r.T @ xt + wd * wd_w).abs().max()), float(r.sum(0).abs().max()))
            val_acc = _accuracy(wd_w, wd_b, xv, yv) if xv is not None else None
            nnz = int((wd_w != 0).sum())
            path.append(
                PathPoint(
                    lam=wd,
                    weight=wd_w.cpu().clone(),
                    bias=wd_b.cpu().clone(),
                    train_loss=train_loss,
                    train_acc=float((z.argmax(1) == yt).float().mean()),
                    val_acc=val_acc,
                    nnz=nnz,
                    nec=nnz / n_cls,
                    objective=train_loss + 0.5 * wd * float(wd_w.pow(2).sum()),
                    kkt=kkt,
                    n_iter=n_iter,
                    seconds=time.perf_counter() - t0,
                )
            )
    selected = _select(path, "val_acc", None) if xv is not None else len(path) - 1
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
