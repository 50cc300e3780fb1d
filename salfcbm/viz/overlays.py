"""Heatmap overlays: one concept map blended over its image (paper 3.5, "show where")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from salfcbm.errors import InputError
from salfcbm.viz.canvas import new_figure
from salfcbm.viz.display import heatmap_to_rgb, resize_map, to_display

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from salfcbm.core.model import SALFCBM

__all__ = ["overlay_heatmap", "plot_overlay"]


def overlay_heatmap(
    image: Any,
    heatmap: Any,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
    model: SALFCBM | None = None,
) -> np.ndarray:
    """Blend a coloured heatmap over an image: ``(H, W, 3)`` floats in ``[0, 1]``.

    The heatmap is resized (bilinear) to the image if needed.

    Examples:
        >>> import torch
        >>> overlay_heatmap(torch.rand(3, 16, 16), torch.rand(4, 4)).shape
        (16, 16, 3)
    """
    if not 0 <= alpha <= 1:
        raise InputError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    img = to_display(image, model)
    h = resize_map(heatmap, img.shape[:2])
    rgb = heatmap_to_rgb(h, cmap=cmap, vmin=vmin, vmax=vmax)
    return (1 - alpha) * img + alpha * rgb


def plot_overlay(
    image: Any,
    heatmap: Any,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    concept: str | None = None,
    score: float | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
    model: SALFCBM | None = None,
) -> Axes:
    """Draw a heatmap overlay on ``ax`` (a new figure's axes if ``None``), titled with the concept and score.

    The heatmap is scaled to ``[vmin, vmax]`` (default: its own min and max; pass the same limits
    to every panel of a figure to compare them).

    Examples:
        >>> import torch
        >>> ax = plot_overlay(torch.rand(3, 16, 16), torch.rand(4, 4), concept="fur", score=0.3)
        >>> ax.get_title()
        'fur\\nS=+0.300'
    """
    if ax is None:
        ax = new_figure((3, 3)).add_subplot(1, 1, 1)
    ax.imshow(overlay_heatmap(image, heatmap, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, model=model))
    if title is None and concept is not None:
        title = concept if score is None else f"{concept}\nS={score:+.3f}"
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")
    return ax
