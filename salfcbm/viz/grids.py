"""Explanation grids (paper 3.5, figure 3): the image and its top-k concept overlays, one row per image.

Every map of a figure shares one colour scale (`salfcbm.viz.scale.ColorScale`) shown by a colour
bar, and each panel is framed in the colour of its evidence kind (`salfcbm.viz.colors`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import InputError
from salfcbm.explain.evidence import ABSENT_OPPOSES, ABSENT_SUPPORTS, EVIDENCE_LABELS, NO_WEIGHT
from salfcbm.explain.results import ClassExplanation, Explanation, ExplanationBatch
from salfcbm.viz.canvas import new_figure, save_figure
from salfcbm.viz.colors import EVIDENCE_COLORS, NEG_COLOR
from salfcbm.viz.display import to_display
from salfcbm.viz.scale import ColorScale

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from salfcbm.core.model import SALFCBM

__all__ = ["plot_explanation", "save_explanation_grid", "explanation_figure", "explanation_items", "images_for",
           "explanation_of"]


def explanation_of(expl: Any, target: int) -> tuple[ClassExplanation, Explanation | None]:
    """The `ClassExplanation` to draw, and the `Explanation` it belongs to (``None`` when given alone)."""
    if isinstance(expl, ClassExplanation):
        return expl, None
    if isinstance(expl, Explanation):
        if not 0 <= target < len(expl.classes):
            raise InputError(f"`target` picks one of the {len(expl.classes)} explained classes, got {target}.")
        return expl.classes[target], expl
    raise InputError(
        f"Expected an Explanation (one item of model.explain(...)) or a ClassExplanation, got {type(expl).__name__}."
    )


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
    ce, ex = explanation_of(expl, target)
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() != 3 or masks.shape[0] != len(ce.concepts):
            raise InputError(
                f"`masks` must be (k, H, W) with k={len(ce.concepts)} (one per shown concept), got shape "
                f"{tuple(masks.shape)}."
            )
    return explanation_figure([(ce, ex)], [image], model, alpha, cmap, panel_size, masks)


def explanation_figure(rows, imgs, model, alpha, cmap, panel_size, masks=None) -> Figure:
    """One row per ``(ClassExplanation, Explanation)`` of ``rows``: the image and its top-k overlays on one `ColorScale`."""
    k = max(1, max(len(ce.concepts) for ce, _ in rows))
    scale = ColorScale([ce for ce, _ in rows], cmap)
    n_rows = len(rows) + (masks is not None)
    fig = new_figure((panel_size * (k + 1) + 0.8, panel_size * 1.2 * n_rows))
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


def explanation_items(explanations: Any) -> list[Explanation]:
    """The explanations of ``model.explain(...)`` (a batch, one, or a list) as a list of `Explanation`."""
    if isinstance(explanations, ExplanationBatch):
        return list(explanations)
    if isinstance(explanations, Explanation):
        return [explanations]
    if isinstance(explanations, Sequence) and all(isinstance(e, Explanation) for e in explanations):
        return list(explanations)
    raise InputError(f"Expected the result of model.explain(...) (or a list of Explanation), got {type(explanations).__name__}.")


def images_for(images: Any, n: int) -> list[Any]:
    """The images as a list of ``n``, one per explanation, or an `InputError` naming both counts."""
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
    items = explanation_items(explanations)
    imgs = images_for(images, len(items))
    rows = [explanation_of(e, target) for e in items]
    fig = explanation_figure(rows, imgs, model, alpha, cmap, panel_size)
    return save_figure(fig, path, dpi=dpi)
