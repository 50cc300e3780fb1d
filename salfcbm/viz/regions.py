"""Explain Anything pictures (paper 3.6, figure 5): the regions on the image and each region's top concepts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from salfcbm.errors import InputError
from salfcbm.explain.results import RegionReport
from salfcbm.viz.canvas import new_figure
from salfcbm.viz.colors import REGION_COLORS
from salfcbm.viz.display import to_display

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from salfcbm.core.model import SALFCBM

__all__ = ["plot_region_report"]


def plot_region_report(
    report: RegionReport,
    image: Any,
    *,
    model: SALFCBM | None = None,
    alpha: float = 0.45,
    panel_size: float = 4.0,
) -> Figure:
    """Explain Anything (paper figure 5): the regions drawn on the image, and each region's top concepts.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> x = torch.randn(3, 64, 64)
        >>> fig = plot_region_report(m.explain_region(x, box=(0, 0, 32, 32), top_k=2), x, model=m)
        >>> len(fig.axes)
        2
    """
    from matplotlib.colors import to_rgb

    if not isinstance(report, RegionReport):
        raise InputError(f"Expected the result of model.explain_region(...), got {type(report).__name__}.")
    img = to_display(image, model)
    if img.shape[:2] != tuple(report.masks.shape[-2:]):
        raise InputError(f"The image is {img.shape[:2]} but the regions are {tuple(report.masks.shape[-2:])}.")
    out = img.copy()
    masks = report.masks.detach().float().cpu().numpy()
    for r, m in enumerate(masks):
        c = np.array(to_rgb(REGION_COLORS[r % len(REGION_COLORS)]), dtype=np.float32)
        w = (alpha * np.clip(m / max(float(m.max()), 1e-12), 0, 1))[..., None]
        out = (1 - w) * out + w * c
    fig = new_figure((panel_size * 2, panel_size))
    ax_img, ax_txt = fig.subplots(1, 2)
    ax_img.imshow(out)
    ax_img.set_title(f"pred: {report.predicted_class}", fontsize=10)
    ax_img.axis("off")
    ax_txt.axis("off")
    y = 0.95
    for r, reg in enumerate(report.regions):
        color = REGION_COLORS[r % len(REGION_COLORS)]
        ax_txt.text(0.0, y, f"region {r}", color=color, fontsize=11, fontweight="bold", va="top", transform=ax_txt.transAxes)
        y -= 0.07
        for name, s in reg.pairs():
            ax_txt.text(0.04, y, f"{name}  ({s:.3g})", fontsize=9, va="top", transform=ax_txt.transAxes)
            y -= 0.055
        y -= 0.03
    fig.tight_layout()
    return fig
