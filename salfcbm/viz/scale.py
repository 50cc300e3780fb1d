"""One colour scale for every heatmap of a figure, with its colour bar (never a per-map min-max)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from salfcbm.viz.display import heatmap_to_rgb, resize_map, to_display
from salfcbm.viz.overlays import overlay_heatmap

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from salfcbm.core.model import SALFCBM
    from salfcbm.explain.results import ClassExplanation

__all__ = ["MIN_STD_SCALE", "ColorScale"]

#: The smallest half-range of the shared colour scale of standardised maps, in training standard
#: deviations: a figure whose maps all stay within +-1 std of their training means looks faint.
MIN_STD_SCALE = 1.0


class ColorScale:
    """One colour scale for every heatmap of a figure (never a per-map min-max).

    Standardised maps (``ClassExplanation.standardized_heatmaps``) get a diverging scale centred
    on the training mean, ``+-max(|value|, MIN_STD_SCALE)`` over the whole figure; explanations
    without training statistics fall back to the raw maps on their common min and max.
    """

    def __init__(self, ces: Sequence[ClassExplanation], cmap: str | None) -> None:
        std = [ce.standardized_heatmaps() for ce in ces]
        self.standardized = all(h is not None for h in std) and any(ce.heatmaps is not None for ce in ces)
        self.maps = std if self.standardized else [ce.heatmaps for ce in ces]
        values = [h.detach().float() for h in self.maps if h is not None and h.numel()]
        if self.standardized:
            self._signed(values, cmap)
        else:
            self.vmin = min([float(v.min()) for v in values], default=0.0)
            self.vmax = max([float(v.max()) for v in values], default=1.0)
            if self.vmax <= self.vmin:
                self.vmax = self.vmin + 1e-6
            self.cmap = cmap or "viridis"
            self.label = "concept map (raw: no training statistics, one scale for the figure)"

    @classmethod
    def signed(cls, standardized_maps: Sequence[torch.Tensor], cmap: str | None = None) -> "ColorScale":
        """The diverging scale for maps already standardised (``(c_up[m] - mean[m]) / std[m]``)."""
        self = cls.__new__(cls)
        self.standardized, self.maps = True, list(standardized_maps)
        self._signed([h.detach().float() for h in self.maps if h.numel()], cmap)
        return self

    def _signed(self, values: list[torch.Tensor], cmap: str | None) -> None:
        top = max([float(v.abs().max()) for v in values] + [MIN_STD_SCALE])
        self.vmin, self.vmax = -top, top
        self.cmap = cmap or "RdBu_r"
        self.label = "concept map in training stds from its training mean"

    def overlay(self, image: Any, heatmap: Any, alpha: float, model: SALFCBM | None) -> np.ndarray:
        """Blend ``heatmap`` over the image; on the diverging scale, opacity grows with ``|value|``
        so the training mean shows the bare image and a faint map stays faint."""
        if not self.standardized:
            return overlay_heatmap(image, heatmap, alpha=alpha, cmap=self.cmap, vmin=self.vmin, vmax=self.vmax,
                                   model=model)
        img = to_display(image, model)
        h = resize_map(heatmap, img.shape[:2])
        rgb = heatmap_to_rgb(h, cmap=self.cmap, vmin=self.vmin, vmax=self.vmax)
        a = alpha * np.clip(np.abs(h.numpy()) / self.vmax, 0, 1)[..., None] ** 0.5
        return ((1 - a) * img + a * rgb).astype(np.float32)

    def colorbar(self, fig: Figure, axes: Any) -> None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        sm = ScalarMappable(norm=Normalize(self.vmin, self.vmax), cmap=self.cmap)
        cb = fig.colorbar(sm, ax=axes, fraction=0.025, pad=0.01, shrink=0.9)
        cb.set_label(self.label, fontsize=7)
        cb.ax.tick_params(labelsize=7)
