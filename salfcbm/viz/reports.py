"""Self-contained HTML reports of explanations: per image, its prediction, top concepts and heatmaps."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.io import atomic_write
from salfcbm.errors import InputError
from salfcbm.explain.evidence import EVIDENCE_LABELS
from salfcbm.explain.results import ClassExplanation, Explanation, ExplanationBatch
from salfcbm.viz.canvas import figure_png_bytes
from salfcbm.viz.colors import EVIDENCE_COLORS
from salfcbm.viz.grids import explanation_items, images_for, plot_explanation

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["write_html_report"]


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
    items = explanation_items(explanations)
    imgs = images_for(images, len(items))
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
            png = figure_png_bytes(fig)
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
