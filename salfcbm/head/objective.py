"""The objective of Eq. 2 and its optimality conditions: cross-entropy kernels, the KKT violation, ``lam_max``.

    minimise  mean_n CE(W x_n + b, y_n) + lam * [(1 - alpha)/2 * ||W||_F^2 + alpha * ||W||_1]

Every solver of `salfcbm.head` (in memory, out of core) is measured with these functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from salfcbm.errors import InputError
from salfcbm.head.inputs import prepare_data

__all__ = [
    "elastic_net_objective", "kkt_violation", "lambda_max", "ce_loss_grad", "soft_threshold", "kkt_max",
    "prior_bias", "lipschitz_bound", "grad_at_zero", "accuracy", "PI_FLOOR",
]

PI_FLOOR = 1e-12  # class prior floor for classes absent from the training set


def ce_loss_grad(z: Tensor, y: Tensor, grad: bool = False) -> tuple[float, Tensor | None]:
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


def soft_threshold(v: Tensor, thr: float) -> Tensor:
    return torch.sign(v) * torch.clamp_min(v.abs() - thr, 0.0)


def kkt_max(w: Tensor, gw: Tensor, gb: Tensor, l1: float) -> float:
    """Largest violation of the optimality conditions; ``gw`` includes the L2 term."""
    nz = w != 0
    v_nz = torch.where(nz, (gw + l1 * torch.sign(w)).abs(), torch.zeros_like(gw))
    v_z = torch.where(nz, torch.zeros_like(gw), torch.clamp_min(gw.abs() - l1, 0.0))
    out = float(gb.abs().max()) if gb.numel() else 0.0
    if w.numel():
        out = max(out, float(v_nz.max()), float(v_z.max()))
    return out


def prior_bias(y: Tensor, num_classes: int) -> Tensor:
    counts = torch.bincount(y, minlength=num_classes).to(torch.float32)
    pi = (counts / counts.sum()).clamp_min(PI_FLOOR)
    return torch.log(pi)


def lipschitz_bound(x: Tensor, iters: int = 20) -> float:
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
        >>> from salfcbm.head import fit_sparse_head
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
    _, r = ce_loss_grad(z, y.to(device=x.device, dtype=torch.long), grad=True)
    gw = r.T @ xd + lam * (1 - alpha) * w
    return kkt_max(w, gw, r.sum(0), lam * alpha)


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
    xt, yt, _, _, c, _ = prepare_data(x, y, None, None, num_classes, None)
    return grad_at_zero(xt, yt, c).abs().max().item() / alpha


def grad_at_zero(x: Tensor, y: Tensor, num_classes: int) -> Tensor:
    b0 = prior_bias(y, num_classes)
    z = b0.expand(x.shape[0], num_classes).contiguous()
    _, r = ce_loss_grad(z, y, grad=True)
    return r.T @ x


def accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor, chunk: int = 1 << 16) -> float:
    correct = 0
    for s in range(0, x.shape[0], chunk):
        z = torch.addmm(b, x[s : s + chunk], w.T)
        correct += int((z.argmax(1) == y[s : s + chunk]).sum())
    return correct / x.shape[0]

