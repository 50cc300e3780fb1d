"""The concept bottleneck's loss (paper 3.3, Eq. 1) and its initialisation.

Eq. 1 compares the bottleneck's maps with the prompted similarities cell by cell with LF-CBM's
cubic cosine similarity, taken across the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from salfcbm.errors import InputError

__all__ = ["cubic_cosine_similarity", "bottleneck_loss", "init_bottleneck"]


def _cube_unit(x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    x = x - (x.mean(0, keepdim=True) if mean is None else mean)
    x = x**3
    return x / x.norm(dim=0, keepdim=True).clamp_min(1e-12)


def cubic_cosine_similarity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sim(q, p) of Eq. 1 for every concept and grid cell: ``(B, M, Hg, Wg) -> (M, Hg, Wg)``.

    For each ``(m, h, w)`` the batch vectors ``q = C[:, m, h, w]`` and
    ``p = P[:, m, h, w]`` are mean-centred over the batch, cubed elementwise and
    compared by cosine similarity (LF-CBM's ``cos_similarity_cubed_single``, per cell).

    Examples:
        >>> x = torch.randn(16, 3, 2, 2)
        >>> torch.allclose(cubic_cosine_similarity(x, 2 * x + 1), torch.ones(3, 2, 2), atol=1e-5)
        True
    """
    if pred.shape != target.shape:
        raise InputError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    if pred.shape[0] < 2:
        raise InputError("The cubic cosine similarity is taken across the batch; use a batch of at least 2.")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return (_cube_unit(pred.to(dtype)) * _cube_unit(target.to(dtype))).sum(0)


def bottleneck_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``-sum_{m,h,w} sim(C[:, m, h, w], P[:, m, h, w])``."""
    return -cubic_cosine_similarity(pred, target).sum()


def init_bottleneck(conv: nn.Conv2d, init: str = "normal") -> None:
    """Initialise the 1x1 bottleneck: ``"normal"`` N(0, 1/C), or ``"lf-cbm"`` U(+-1/sqrt(C)) (``nn.Linear``'s default)."""
    bound = 1.0 / math.sqrt(conv.in_channels)
    if init == "lf-cbm":
        nn.init.uniform_(conv.weight, -bound, bound)
    else:
        nn.init.normal_(conv.weight, std=bound)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)

