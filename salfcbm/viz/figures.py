"""Pictures of explanations: heatmap overlays, top-k grids, HTML reports and Sankey diagrams.

Paper section 3.5 and figure 3 (concept contributions with heatmaps, decision rules as Sankey
diagrams), section 3.6 (Explain Anything) and appendices D-E. Everything renders with
matplotlib's Agg canvas (no display needed, no pyplot state) or plain SVG, and every file is
written atomically.

Images for display may be ``[0, 1]`` tensors ``(3, H, W)``, ``(H, W, 3)`` arrays, PIL images, or
backbone-ready (normalised) tensors together with ``model=`` (its ``input_mean``/``input_std``
undo the normalisation, see `denormalize`).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from salfcbm._utils.io import atomic_write
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError
from salfcbm.explain.evidence import (
    ABSENT_OPPOSES,
    ABSENT_SUPPORTS,
    EVIDENCE_LABELS,
    NO_WEIGHT,
    PRESENT_OPPOSES,
    PRESENT_SUPPORTS,
)
from salfcbm.explain.explanations import ClassExplanation, DecisionRule, Explanation, ExplanationBatch, RegionReport

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from salfcbm.core.model import SALFCBM

__all__ = [
    "denormalize",
    "to_display",
    "heatmap_to_rgb",
    "overlay_heatmap",
    "plot_overlay",
    "plot_explanation",
    "save_explanation_grid",
    "plot_region_report",
    "write_html_report",
    "sankey_layout",
    "sankey_svg",
    "save_sankey",
    "save_figure",
]

POS_COLOR = "#3b75af"
NEG_COLOR = "#d1495b"
#: Frame and text colour of each evidence kind in pictures and reports (absent kinds are drawn dashed).
EVIDENCE_COLORS = {
    PRESENT_SUPPORTS: "#1a7f37",
    PRESENT_OPPOSES: "#b3263a",
    ABSENT_SUPPORTS: "#57606a",
    ABSENT_OPPOSES: "#9a6700",
    NO_WEIGHT: "#999999",
}
#: The smallest half-range of the shared colour scale of standardised maps, in training standard
#: deviations: a figure whose maps all stay within +-1 std of their training means looks faint.
MIN_STD_SCALE = 1.0
REGION_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999"]


# ---------------------------------------------------------------------- files
def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically; the format comes from the suffix (``.png``, ``.pdf``, ``.svg``)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def _new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _fig_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


# ---------------------------------------------------------------------- images
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
        model: a SALF-CBM whose ``config["input_mean"]`` / ``config["input_std"]`` are used.
        mean: explicit mean (overrides the model's).
        std: explicit std (overrides the model's).

    Examples:
        >>> denormalize(torch.zeros(3, 2, 2), mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]).max().item()
        0.5
    """
    if mean is None or std is None:
        if model is None:
            raise InputError("denormalize needs `model=` or both `mean=` and `std=`.")
        mean = model.config["input_mean"] if mean is None else mean
        std = model.config["input_std"] if std is None else std
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


def _resize2d(h: Any, size: tuple[int, int]) -> torch.Tensor:
    t = h.detach().float().cpu() if isinstance(h, torch.Tensor) else torch.as_tensor(np.asarray(h), dtype=torch.float32)
    t = t.squeeze()
    return upsample_bilinear(t, size)


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
        >>> overlay_heatmap(torch.rand(3, 16, 16), torch.rand(4, 4)).shape
        (16, 16, 3)
    """
    if not 0 <= alpha <= 1:
        raise InputError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    img = to_display(image, model)
    h = _resize2d(heatmap, img.shape[:2])
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
        >>> ax = plot_overlay(torch.rand(3, 16, 16), torch.rand(4, 4), concept="fur", score=0.3)
        >>> ax.get_title()
        'fur\\nS=+0.300'
    """
    if ax is None:
        ax = _new_figure((3, 3)).add_subplot(1, 1, 1)
    ax.imshow(overlay_heatmap(image, heatmap, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax, model=model))
    if title is None and concept is not None:
        title = concept if score is None else f"{concept}\nS={score:+.3f}"
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")
    return ax


def _class_explanation(expl: Any, target: int) -> tuple[ClassExplanation, Explanation | None]:
    if isinstance(expl, ClassExplanation):
        return expl, None
    if isinstance(expl, Explanation):
        if not 0 <= target < len(expl.classes):
            raise InputError(f"`target` picks one of the {len(expl.classes)} explained classes, got {target}.")
        return expl.classes[target], expl
    raise InputError(
        f"Expected an Explanation (one item of model.explain(...)) or a ClassExplanation, got {type(expl).__name__}."
    )


class _Scale:
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
    def signed(cls, standardized_maps: Sequence[torch.Tensor], cmap: str | None = None) -> "_Scale":
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
        h = _resize2d(heatmap, img.shape[:2])
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


def _evidence_title(concept: str, score: float, kind: str | None) -> str:
    if kind is None:
        return f"{concept}\nS={score:+.3f}"
    label = EVIDENCE_LABELS.get(kind, kind)
    if kind in (ABSENT_SUPPORTS, ABSENT_OPPOSES):
        return f"ABSENT: {concept}\nS={score:+.3f} ({label.split('; ', 1)[1]})"
    return f"{concept}\nS={score:+.3f} ({label})"


def _style_panel(ax: Axes, kind: str | None) -> None:
    """Frame a panel in its evidence colour (dashed when the concept is absent); no ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    color = EVIDENCE_COLORS.get(kind or "", "#cccccc")
    dashed = kind in (ABSENT_SUPPORTS, ABSENT_OPPOSES, NO_WEIGHT)
    for sp in ax.spines.values():
        sp.set_visible(True)
        sp.set_edgecolor(color)
        sp.set_linewidth(2.5)
        sp.set_linestyle((0, (4, 2)) if dashed else "-")
    ax.title.set_color(color)


def _draw_explanation_row(axes, ce: ClassExplanation, ex: Explanation | None, image, model, alpha, scale, maps, k) -> None:
    axes[0].imshow(to_display(image, model))
    head = f"{ce.class_name}  logit={ce.logit:.2f}  p={ce.probability:.2f}"
    if ex is not None and ex.prediction != ce.target:
        head = f"{ce.class_name} (pred: {ex.predicted_class})\nlogit={ce.logit:.2f}  p={ce.probability:.2f}"
    axes[0].set_title(head, fontsize=9)
    axes[0].axis("off")
    scores = ce.scores.detach().float().cpu().tolist()
    kinds = list(ce.evidence) if len(ce.evidence) == len(ce.concepts) else [None] * len(ce.concepts)
    if not ce.concepts:
        axes[1].text(0.5, 0.5, "no concept contributes\n(all weights are zero:\ndegenerate head)", ha="center",
                     va="center", fontsize=8, color=NEG_COLOR)
    for j in range(k):
        ax = axes[1 + j]
        ax.axis("off")
        if j >= len(ce.concepts):
            continue
        title = _evidence_title(ce.concepts[j], scores[j], kinds[j])
        if maps is not None:
            ax.axis("on")
            ax.imshow(scale.overlay(image, maps[j], alpha, model))
        else:
            ax.text(0.5, 0.5, title, ha="center", va="center", fontsize=9)
        ax.set_title(title, fontsize=8)
        if maps is not None:
            _style_panel(ax, kinds[j])


def plot_explanation(
    expl: Explanation | ClassExplanation,
    image: Any,
    *,
    model: SALFCBM | None = None,
    target: int = 0,
    alpha: float = 0.6,
    cmap: str | None = None,
    panel_size: float = 2.6,
    masks: Any = None,
) -> Figure:
    """The image and one heatmap overlay per top-k concept, titled with the concept, its contribution and its evidence kind.

    Every map of the figure shares one colour scale, shown by a colour bar: the standardised
    concept map (0 = the concept's training mean, in training standard deviations), so a concept
    that is weak everywhere looks weak. Panels are framed by evidence kind
    (`EVIDENCE_COLORS`): solid for a present concept, dashed and titled ``ABSENT`` for a
    concept whose *absence* is what contributes.

    Args:
        expl: one item of ``model.explain(...)`` (or one of its ``classes``).
        image: the image (``[0, 1]``, or backbone-ready with ``model=``).
        model: the SALF-CBM, to denormalise backbone-ready images.
        target: which explained class of ``expl`` to draw (index into ``expl.classes``).
        alpha: largest overlay opacity (reached at the ends of the scale).
        cmap: matplotlib colormap (default: diverging ``"RdBu_r"``; ``"viridis"`` for raw maps).
        panel_size: inches per panel.
        masks: optional ``(k, H, W)`` ground-truth masks of the shown concepts (data with known
            concept masks, such as `SyntheticScenes`), drawn in a
            second row under their heatmaps.

    Returns:
        A matplotlib ``Figure`` (Agg canvas; save it with `save_figure`).

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> fig = plot_explanation(m.explain(x, top_k=2)[0], x[0], model=m)
        >>> len(fig.axes)  # the image, two concepts, the colour bar
        4
    """
    ce, ex = _class_explanation(expl, target)
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() != 3 or masks.shape[0] != len(ce.concepts):
            raise InputError(
                f"`masks` must be (k, H, W) with k={len(ce.concepts)} (one per shown concept), got shape "
                f"{tuple(masks.shape)}."
            )
    return _explanation_figure([(ce, ex)], [image], model, alpha, cmap, panel_size, masks)


def _explanation_figure(rows, imgs, model, alpha, cmap, panel_size, masks=None) -> Figure:
    k = max(1, max(len(ce.concepts) for ce, _ in rows))
    scale = _Scale([ce for ce, _ in rows], cmap)
    n_rows = len(rows) + (masks is not None)
    fig = _new_figure((panel_size * (k + 1) + 0.8, panel_size * 1.2 * n_rows))
    fig.set_layout_engine("constrained")
    axes = fig.subplots(n_rows, k + 1, squeeze=False)
    for r, ((ce, ex), img) in enumerate(zip(rows, imgs)):
        _draw_explanation_row(axes[r], ce, ex, img, model, alpha, scale, scale.maps[r], k)
    if masks is not None:
        _draw_mask_row(axes[-1], rows[0][0], masks, k)
    if any(m is not None for m in scale.maps):
        scale.colorbar(fig, axes[: len(rows), 1:].ravel().tolist())
    return fig


def _draw_mask_row(axes, ce: ClassExplanation, masks: torch.Tensor, k: int) -> None:
    axes[0].text(0.5, 0.5, "ground truth\n(concept masks)", ha="center", va="center", fontsize=8)
    for ax in axes:
        ax.axis("off")
    for j in range(min(k, len(ce.concepts))):
        m = masks[j].detach().float().cpu().numpy()
        axes[1 + j].imshow(m, cmap="gray", vmin=0, vmax=1)
        empty = not (m > 0).any()
        axes[1 + j].set_title(f"mask: {ce.concepts[j]}" + (" (EMPTY)" if empty else ""), fontsize=7,
                              color=NEG_COLOR if empty else "#222222")


def _items(explanations: Any) -> list[Explanation]:
    if isinstance(explanations, ExplanationBatch):
        return list(explanations)
    if isinstance(explanations, Explanation):
        return [explanations]
    if isinstance(explanations, Sequence) and all(isinstance(e, Explanation) for e in explanations):
        return list(explanations)
    raise InputError(f"Expected the result of model.explain(...) (or a list of Explanation), got {type(explanations).__name__}.")


def _images_list(images: Any, n: int) -> list[Any]:
    if isinstance(images, torch.Tensor) and images.dim() == 3:
        images = images.unsqueeze(0)
    imgs = list(images)
    if len(imgs) != n:
        raise InputError(f"{len(imgs)} images for {n} explanations; pass the images that were explained.")
    return imgs


def save_explanation_grid(
    path: str | os.PathLike,
    images: Any,
    explanations: ExplanationBatch | Sequence[Explanation],
    *,
    model: SALFCBM | None = None,
    target: int = 0,
    alpha: float = 0.6,
    cmap: str | None = None,
    panel_size: float = 2.4,
    dpi: int = 100,
) -> Path:
    """Save one row per image (the image, then its top-k overlays) to ``path`` (PNG, PDF or SVG).

    Drawn as `plot_explanation` draws one row, with one colour scale for the whole grid.

    Examples:
        >>> import tempfile, timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> p = save_explanation_grid(tempfile.mkdtemp() + "/grid.png", x, m.explain(x, top_k=2), model=m)
        >>> p.suffix
        '.png'
    """
    items = _items(explanations)
    imgs = _images_list(images, len(items))
    rows = [_class_explanation(e, target) for e in items]
    fig = _explanation_figure(rows, imgs, model, alpha, cmap, panel_size)
    return save_figure(fig, path, dpi=dpi)


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
    fig = _new_figure((panel_size * 2, panel_size))
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


_EVIDENCE_LEGEND = (
    "<p>Each concept's contribution is its head weight times its standardised activation. "
    "<b>Present</b> means the model detects the concept, not that it is certainly there: for a model "
    "trained by salfcbm.fit, the peak of its standardised map is above the concept's own threshold "
    "(calibrated on validation images against the targets); for an uncalibrated model, its activation is "
    "above its training mean. "
    '<span class="ev-present_supports">present, supports</span>: detected, positive contribution. '
    '<span class="ev-present_opposes">present, opposes</span>: detected, negative contribution. '
    '<span class="ev-absent_supports">absent; its absence supports</span>: not detected, and its absence '
    "raises the class score (negative weight; its map is drawn dashed and marked ABSENT). "
    '<span class="ev-absent_opposes">absent; its absence opposes</span>: not detected, positive weight. '
    "Maps share one colour scale per picture (the colour bar; 0 is the training mean).</p>"
)


def _evidence_table(ce: ClassExplanation) -> str:
    esc = html.escape
    if not ce.concepts:
        return (
            '<p class="warn">No concept contributes to this class: every head weight for it is zero. '
            "The head is empty or constant (a degenerate fit); check metrics.json of the training run.</p>"
        )
    kinds = list(ce.evidence) if len(ce.evidence) == len(ce.concepts) else [None] * len(ce.concepts)
    act = _floats_or_none(ce.activations, len(ce.concepts))
    rows = "".join(
        f'<tr><td>{r + 1}</td><td>{esc(c)}</td><td class="{"pos" if s >= 0 else "neg"}">{s:+.4f}</td>'
        f'<td class="ev-{k}">{esc(EVIDENCE_LABELS.get(k, "-") if k else "-")}</td>'
        f"<td>{'-' if a is None else format(a, '+.2f')}</td></tr>"
        for r, ((c, s), k, a) in enumerate(zip(ce.pairs(), kinds, act))
    )
    return (
        "<table><tr><th>#</th><th>concept</th><th>contribution</th><th>evidence</th>"
        f"<th>standardised activation</th></tr>{rows}</table>"
    )


def _floats_or_none(t: torch.Tensor | None, n: int) -> list[float | None]:
    return [None] * n if t is None else [float(v) for v in t.detach().cpu().flatten().tolist()]


def write_html_report(
    path: str | os.PathLike,
    images: Any,
    explanations: ExplanationBatch | Sequence[Explanation],
    *,
    model: SALFCBM | None = None,
    title: str = "SALF-CBM explanations",
    names: Sequence[str] | None = None,
    embed: bool = True,
    alpha: float = 0.6,
    cmap: str | None = None,
) -> Path:
    """Write a self-contained HTML report: per image, its prediction, the top-k concepts and their heatmaps.

    Each concept's row says what kind of evidence it is (present and supporting, present and
    opposing, absent and its absence supporting or opposing; `salfcbm.evidence`), and
    pictures are drawn as `plot_explanation` draws them (one colour scale with a colour bar).
    A class that no concept contributes to is reported as a degenerate head, not as an empty table.

    Args:
        path: the ``.html`` file (written atomically).
        images: the explained images (``[0, 1]``, or backbone-ready with ``model=``).
        explanations: the result of ``model.explain(images, ...)``.
        model: to denormalise backbone-ready images.
        title: page title.
        names: a caption per image (e.g. file names).
        embed: embed PNGs as base64 (one file); ``False`` writes them to ``<stem>_files/`` next to it.
        alpha: largest overlay opacity.
        cmap: matplotlib colormap of the heatmaps (see `plot_explanation`).

    Examples:
        >>> import tempfile, timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> p = write_html_report(tempfile.mkdtemp() + "/r.html", x, m.explain(x, top_k=2), model=m)
        >>> "<img" in p.read_text()
        True
    """
    path = Path(path)
    items = _items(explanations)
    imgs = _images_list(images, len(items))
    if names is not None and len(names) != len(items):
        raise InputError(f"{len(names)} names for {len(items)} images.")
    files_dir = path.parent / f"{path.stem}_files"
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "section{border-top:1px solid #ccc;padding:1em 0}img{max-width:100%}"
        "table{border-collapse:collapse;font-size:14px}td,th{padding:2px 10px;text-align:left}"
        ".pos{color:#1f5fa0}.neg{color:#b3263a}.warn{color:#b3263a;font-weight:bold}"
        + "".join(f".ev-{k}{{color:{c}}}" for k, c in EVIDENCE_COLORS.items())
        + "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        _EVIDENCE_LEGEND,
    ]
    for i, (ex, img) in enumerate(zip(items, imgs)):
        caption = names[i] if names is not None else f"image {ex.index}"
        parts.append(f"<section><h2>{esc(str(caption))}</h2>")
        parts.append(
            f"<p>Prediction: <b>{esc(ex.predicted_class)}</b> (p = {float(ex.probabilities[ex.prediction]):.3f})</p>"
        )
        for t, ce in enumerate(ex.classes):
            fig = plot_explanation(ex, img, model=model, target=t, alpha=alpha, cmap=cmap)
            png = _fig_png_bytes(fig)
            if embed:
                src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            else:
                files_dir.mkdir(parents=True, exist_ok=True)
                fname = f"img{i:04d}_class{ce.target}.png"
                atomic_write(files_dir / fname, lambda tmp, png=png: Path(tmp).write_bytes(png))
                src = f"{files_dir.name}/{fname}"
            parts.append(
                f"<h3>Class {esc(ce.class_name)}: logit {ce.logit:.3f} = sum of contributions + bias {ce.bias:.3f}</h3>"
            )
            parts.append(f'<img src="{src}" alt="top concepts for {esc(ce.class_name)}">')
            parts.append(_evidence_table(ce))
        parts.append("</section>")
    parts.append("</body></html>")
    text = "\n".join(parts)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------------- Sankey diagrams (paper figure 3)
def _rules_list(rules: Any) -> list[DecisionRule]:
    if isinstance(rules, DecisionRule):
        return [rules]
    if isinstance(rules, Sequence) and rules and all(isinstance(r, DecisionRule) for r in rules):
        return list(rules)
    raise InputError(
        f"Expected a DecisionRule or a non-empty list of them (model.decision_rules([...])), got {type(rules).__name__}."
    )


def sankey_layout(
    rules: DecisionRule | Sequence[DecisionRule],
    *,
    max_concepts: int | None = 8,
    width: float = 900,
    height: float | None = None,
    node_width: float = 14,
    gap: float = 10,
    label_space: float = 260,
) -> dict[str, Any]:
    """Geometry of a concept -> class Sankey diagram: band widths are proportional to ``|weight|``.

    Concepts (left) are ordered by their summed ``|weight|``; each class (right) keeps its
    ``max_concepts`` largest weights. Positive and negative weights get different colours.

    Returns:
        ``{"width", "height", "nodes": [...], "links": [...]}`` with pixel coordinates (y down).
    """
    rules = _rules_list(rules)
    if max_concepts is not None and (not isinstance(max_concepts, int) or max_concepts < 1):
        raise InputError(f"`max_concepts` must be a positive int or None, got {max_concepts!r}.")
    raw = []
    for r in rules:
        for c, w in r.pairs()[: max_concepts or None]:
            raw.append((c, r.class_name, w))
    if not raw:
        raise InputError("The classes have no non-zero weights; there is nothing to draw.")
    total: dict[str, float] = {}
    for c, _, w in raw:
        total[c] = total.get(c, 0.0) + abs(w)
    concepts = sorted(total, key=lambda c: -total[c])
    classes = list(dict.fromkeys(r.class_name for r in rules))
    value = sum(abs(w) for _, _, w in raw)
    n = max(len(concepts), len(classes))
    if height is None:
        height = max(240.0, 26.0 * n + 40)
    pad = 20.0
    scale = (height - 2 * pad - gap * (n - 1)) / value
    x_left = label_space
    x_right = width - label_space * 0.75 - node_width

    def place(names: list[str], vals: dict[str, float], x: float, side: str) -> dict[str, dict[str, Any]]:
        used = sum(vals[k] for k in names) * scale + gap * (len(names) - 1)
        y = (height - used) / 2
        out = {}
        for k in names:
            h = vals[k] * scale
            out[k] = {"name": k, "side": side, "x": x, "y": y, "w": node_width, "h": h, "value": vals[k], "cursor": y}
            y += h + gap
        return out

    cls_val = {k: 0.0 for k in classes}
    for _, k, w in raw:
        cls_val[k] += abs(w)
    left = place(concepts, total, x_left, "concept")
    right = place(classes, cls_val, x_right, "class")
    order_c = {c: i for i, c in enumerate(concepts)}
    order_k = {k: i for i, k in enumerate(classes)}
    links = []
    # stack bands in each node in the order of the other end, so bands do not cross inside a node
    for c, k, w in sorted(raw, key=lambda t: (order_c[t[0]], order_k[t[1]])):
        h = abs(w) * scale
        s = left[c]
        links.append({"concept": c, "class": k, "weight": w, "x0": s["x"] + node_width, "y0": s["cursor"], "h": h})
        s["cursor"] += h
    for link in sorted(links, key=lambda d: (order_k[d["class"]], order_c[d["concept"]])):
        t = right[link["class"]]
        link["x1"], link["y1"] = t["x"], t["cursor"]
        t["cursor"] += link["h"]
    nodes = [{k: v for k, v in d.items() if k != "cursor"} for d in list(left.values()) + list(right.values())]
    return {"width": float(width), "height": float(height), "nodes": nodes, "links": links}


def _band_path(link: dict[str, Any]) -> str:
    x0, x1, y0, y1, h = link["x0"], link["x1"], link["y0"], link["y1"], link["h"]
    xm = (x0 + x1) / 2
    return (
        f"M{x0:.2f},{y0:.2f} C{xm:.2f},{y0:.2f} {xm:.2f},{y1:.2f} {x1:.2f},{y1:.2f} "
        f"L{x1:.2f},{y1 + h:.2f} C{xm:.2f},{y1 + h:.2f} {xm:.2f},{y0 + h:.2f} {x0:.2f},{y0 + h:.2f} Z"
    )


def sankey_svg(rules: DecisionRule | Sequence[DecisionRule], *, title: str | None = None, **layout_kw: Any) -> str:
    """An inline SVG Sankey diagram of the classes' decision rules (no JavaScript, no CDN).

    Examples:
        >>> import torch
        >>> r = DecisionRule(0, "crate", 0.0, torch.tensor([0, 1]), ["wood", "box"], torch.tensor([0.8, -0.2]))
        >>> sankey_svg(r).startswith("<svg")
        True
    """
    lay = sankey_layout(rules, **layout_kw)
    esc = html.escape
    top = 30.0 if title else 0.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lay["width"]:.0f}" height="{lay["height"] + top:.0f}" '
        f'viewBox="0 0 {lay["width"]:.0f} {lay["height"] + top:.0f}" font-family="sans-serif" font-size="13">'
    ]
    if title:
        out.append(f'<text x="{lay["width"] / 2:.1f}" y="20" text-anchor="middle" font-size="16">{esc(title)}</text>')
    out.append(f'<g transform="translate(0,{top:.0f})">')
    for link in lay["links"]:
        color = POS_COLOR if link["weight"] >= 0 else NEG_COLOR
        out.append(
            f'<path d="{_band_path(link)}" fill="{color}" fill-opacity="0.45" stroke="none">'
            f'<title>{esc(link["concept"])} \u2192 {esc(link["class"])}: {link["weight"]:+.4f}</title></path>'
        )
    for nd in lay["nodes"]:
        fill = "#555" if nd["side"] == "concept" else "#222"
        out.append(
            f'<rect x="{nd["x"]:.2f}" y="{nd["y"]:.2f}" width="{nd["w"]:.2f}" height="{max(nd["h"], 1):.2f}" fill="{fill}">'
            f'<title>{esc(nd["name"])}: {nd["value"]:.4f}</title></rect>'
        )
        cy = nd["y"] + nd["h"] / 2
        if nd["side"] == "concept":
            out.append(f'<text x="{nd["x"] - 6:.2f}" y="{cy:.2f}" text-anchor="end" dominant-baseline="middle">{esc(nd["name"])}</text>')
        else:
            out.append(
                f'<text x="{nd["x"] + nd["w"] + 6:.2f}" y="{cy:.2f}" text-anchor="start" dominant-baseline="middle" '
                f'font-weight="bold">{esc(nd["name"])}</text>'
            )
    out.append("</g></svg>")
    return "\n".join(out)


def _sankey_figure(rules: Any, title: str | None, **layout_kw: Any) -> Figure:
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path as MPath

    lay = sankey_layout(rules, **layout_kw)
    W, H = lay["width"], lay["height"]
    fig = _new_figure((W / 100, H / 100 + (0.4 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 1 if not title else H / (H + 40)))
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.axis("off")
    for link in lay["links"]:
        x0, x1, y0, y1, h = link["x0"], link["x1"], link["y0"], link["y1"], link["h"]
        xm = (x0 + x1) / 2
        verts = [(x0, y0), (xm, y0), (xm, y1), (x1, y1), (x1, y1 + h), (xm, y1 + h), (xm, y0 + h), (x0, y0 + h), (x0, y0)]
        codes = [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.CLOSEPOLY]
        color = POS_COLOR if link["weight"] >= 0 else NEG_COLOR
        ax.add_patch(PathPatch(MPath(verts, codes), facecolor=color, alpha=0.45, edgecolor="none"))
    for nd in lay["nodes"]:
        ax.add_patch(Rectangle((nd["x"], nd["y"]), nd["w"], max(nd["h"], 1), color="#555" if nd["side"] == "concept" else "#222"))
        cy = nd["y"] + nd["h"] / 2
        if nd["side"] == "concept":
            ax.text(nd["x"] - 6, cy, nd["name"], ha="right", va="center", fontsize=9)
        else:
            ax.text(nd["x"] + nd["w"] + 6, cy, nd["name"], ha="left", va="center", fontsize=10, fontweight="bold")
    if title:
        fig.suptitle(title)
    return fig


def save_sankey(
    path: str | os.PathLike,
    rules: DecisionRule | Sequence[DecisionRule],
    *,
    title: str | None = None,
    max_concepts: int | None = 8,
    dpi: int = 100,
    **layout_kw: Any,
) -> Path:
    """Save a Sankey diagram of decision rules (paper figure 3) as ``.html``/``.svg`` (inline SVG) or ``.png``/``.pdf``.

    The HTML file is self-contained: one inline SVG, no scripts and no CDN.

    Args:
        path: target file; the suffix picks the format.
        rules: ``model.decision_rules([...])`` for a few classes.
        title: optional title.
        max_concepts: the largest weights kept per class.
        dpi: resolution for raster formats.
        **layout_kw: passed to `sankey_layout` (``width``, ``height``, ...).

    Examples:
        >>> import tempfile, torch
        >>> r = DecisionRule(0, "crate", 0.0, torch.tensor([0, 1]), ["wood", "box"], torch.tensor([0.8, -0.2]))
        >>> save_sankey(tempfile.mkdtemp() + "/rules.html", r).suffix
        '.html'
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".html", ".htm", ".svg"):
        svg = sankey_svg(rules, title=title, max_concepts=max_concepts, **layout_kw)
        if suffix == ".svg":
            text = '<?xml version="1.0" encoding="UTF-8"?>\n' + svg
        else:
            t = html.escape(title or "SALF-CBM decision rules")
            text = (
                f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title></head>'
                f"<body style=\"font-family:sans-serif\">\n{svg}\n</body></html>\n"
            )
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if suffix in (".png", ".pdf", ".jpg", ".jpeg"):
        fig = _sankey_figure(rules, title, max_concepts=max_concepts, **layout_kw)
        return save_figure(fig, path, dpi=dpi)
    raise InputError(f"Cannot save a Sankey diagram as {suffix or 'a file without suffix'!r}; use .html, .svg, .png or .pdf.")
