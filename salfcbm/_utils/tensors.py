"""Tensor helpers shared by every layer: the one map upsampler, the one accuracy, the one logits check,
the one precision table (`PRECISIONS`), and the resize-as-matrix and device helpers of the fast paths.

Bilinear resizing with ``align_corners=False`` is linear and separable, so it is a pair of small
matrices: ``resize(f) = A_h f A_w^T``. The model uses this to pool before projecting (the mean of
the resized map is a weighted sum of the unresized one), the explanations to pull a region back to
the grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dimensions to ``size`` (``align_corners=False``).

    Accepts (h, w), (C, h, w) or (B, C, h, w) and returns the same rank. This is the paper's
    upsampling of concept maps to the input (section 3.5) and the one used for every heatmap.

    Example:
        >>> upsample_bilinear(torch.ones(2, 3, 7, 7), (14, 14)).shape
        torch.Size([2, 3, 14, 14])
        >>> upsample_bilinear(torch.ones(7, 7), (28, 21)).shape
        torch.Size([28, 21])
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` (N, L) against integer ``labels`` (N,); 0.0 for N = 0."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


def check_logits(logits: object, who: str = "The model", fix: str = "") -> torch.Tensor:
    """``logits`` if it is a ``(B, num_classes)`` tensor; else `InputError` saying what ``who`` returned (and ``fix``).

    Examples:
        >>> check_logits(torch.zeros(2, 5)).shape
        torch.Size([2, 5])
        >>> check_logits(torch.zeros(5), who="The classifier")
        Traceback (most recent call last):
        ...
        salfcbm.errors.InputError: The classifier must return a (B, num_classes) tensor of logits, got (5,).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        from salfcbm.errors import InputError

        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"{who} must return a (B, num_classes) tensor of logits, got {got}.{' ' + fix if fix else ''}")
    return logits


def interp_matrix(n_in: int, n_out: int, device=None, dtype=None) -> torch.Tensor:
    """``(n_out, n_in)`` matrix ``A`` with linear-resizing(v) == ``A @ v`` (same rule as ``F.interpolate``).

    Examples:
        >>> interp_matrix(2, 4).sum(1)
        tensor([1., 1., 1., 1.])
    """
    eye = torch.eye(n_in, device=device, dtype=dtype).unsqueeze(0)  # (1, C=n_in, L=n_in)
    if n_in == n_out:
        return eye[0]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T


def grid_mean_weights(hw: tuple[int, int], grid: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """``(h, w)`` weights ``k`` with ``mean(resize(f, grid)) == sum(k * f)`` for any ``(..., h, w)`` map ``f``.

    The resize is bilinear with ``align_corners=False``, as `salfcbm.SALFCBM.resize_to_grid`.

    Examples:
        >>> f = torch.randn(2, 5, 3)
        >>> r = F.interpolate(f[None], size=(7, 7), mode="bilinear", align_corners=False)[0]
        >>> torch.allclose(r.mean((-2, -1)), (grid_mean_weights((5, 3), (7, 7)) * f).sum((-2, -1)), atol=1e-6)
        True
    """
    a = interp_matrix(hw[0], grid[0], device, torch.float32).mean(0)
    b = interp_matrix(hw[1], grid[1], device, torch.float32).mean(0)
    return torch.outer(a, b).to(dtype or torch.float32)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """Validate a ``--precision`` value (``"fp32"``, ``"bf16"`` or ``"fp16"``)."""
    from salfcbm.errors import InputError

    if precision not in PRECISIONS:
        raise InputError(f"`precision` must be one of {sorted(PRECISIONS)}, got {precision!r}.")
    return precision


def autocast(device: torch.device | str, precision: str):
    """A ``torch.autocast`` context for ``precision`` on ``device`` (a no-op for ``"fp32"``).

    Examples:
        >>> with autocast("cpu", "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    import contextlib

    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Copy a CPU tensor to ``device``: through pinned memory and without blocking when it is a GPU."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)
