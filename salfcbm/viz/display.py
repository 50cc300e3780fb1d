"""Images and maps for display: undo the normalisation, to ``(H, W, 3)`` arrays, colour a heatmap.

Images for display may be ``[0, 1]`` tensors ``(3, H, W)``, ``(H, W, 3)`` arrays, PIL images, or
backbone-ready (normalised) tensors together with ``model=`` (its ``input_mean``/``input_std``
undo the normalisation, see `denormalize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["denormalize", "to_display", "heatmap_to_rgb", "resize_map"]


def denormalize(
    images: torch.Tensor,
    model: SALFCBM | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Undo the backbone's normalisation: ``x * std + mean``, clamped to ``[0, 1]``.

    Args:
        images: ``(B, 3, H, W)`` or ``(3, H, W)`` backbone-ready images.
        model: a SALF-CBM whose ``config.input_mean`` / ``config.input_std`` are used.
        mean: explicit mean (overrides the model's).
        std: explicit std (overrides the model's).

    Examples:
        >>> denormalize(torch.zeros(3, 2, 2), mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]).max().item()
        0.5
    """
    if mean is None or std is None:
        if model is None:
            raise InputError("denormalize needs `model=` or both `mean=` and `std=`.")
        mean = model.config.input_mean if mean is None else mean
        std = model.config.input_std if std is None else std
    x = images.detach().float()
    shape = (1, 3, 1, 1) if x.dim() == 4 else (3, 1, 1)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise InputError(f"Expected (B, 3, H, W) or (3, H, W) images, got shape {tuple(x.shape)}.")
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(shape)
    return (x * s + m).clamp(0, 1)


def to_display(image: Any, model: SALFCBM | None = None) -> np.ndarray:
    """Turn an image into an ``(H, W, 3)`` float array in ``[0, 1]`` for display.

    Accepts PIL images, ``(H, W, 3)``/``(3, H, W)`` arrays or tensors (uint8 or float), and a batch
    of one. With ``model``, float tensors are taken as backbone-ready and denormalised; without
    it, floats outside ``[0, 1]`` are min-max rescaled.

    Examples:
        >>> to_display(torch.rand(3, 8, 6)).shape
        (8, 6, 3)
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise InputError(f"Cannot display an image of type {type(image).__name__}; pass a tensor, array or PIL image.")
    x = image.detach().cpu()
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(3, -1, -1)
    if x.dim() != 3:
        raise InputError(f"Expected one image (3, H, W) or (H, W, 3), got shape {tuple(image.shape)}.")
    channels_last = x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3)
    if channels_last:
        x = x.permute(2, 0, 1)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if x.shape[0] != 3:
        raise InputError(f"Expected 3 colour channels, got shape {tuple(image.shape)}.")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
        if model is not None:
            x = denormalize(x, model)
        elif float(x.min()) < 0 or float(x.max()) > 1:
            lo, hi = float(x.min()), float(x.max())
            x = (x - lo) / max(hi - lo, 1e-12)
    return x.permute(1, 2, 0).numpy().astype(np.float32)


def heatmap_to_rgb(
    heatmap: Any, *, cmap: str = "jet", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Colour a 2-D heatmap with a matplotlib colormap: ``(H, W, 3)`` floats in ``[0, 1]``.

    The map is scaled to ``[vmin, vmax]`` (default: its own min and max).
    """
    import matplotlib

    h = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap, dtype=np.float32)
    h = np.squeeze(h)
    if h.ndim != 2:
        raise InputError(f"A heatmap is 2-D (H, W), got shape {h.shape}.")
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    norm = np.clip((h - lo) / max(hi - lo, 1e-12), 0, 1)
    return matplotlib.colormaps[cmap](norm)[..., :3].astype(np.float32)


def resize_map(h: Any, size: tuple[int, int]) -> torch.Tensor:
    """A 2-D map (tensor or array) resized bilinearly to ``size``, as a float CPU tensor."""
    t = h.detach().float().cpu() if isinstance(h, torch.Tensor) else torch.as_tensor(np.asarray(h), dtype=torch.float32)
    t = t.squeeze()
    return upsample_bilinear(t, size)
