"""The explorer's panels as plain functions: images and tables in, images, tables and a message out.

`Explorer` holds a model and, optionally, a set of images to search. Each ``*_panel``
method is one callback of the web app (`salfcbm.app.ui` only lays them out) and calls the
library's public API: `explain`, `explain_region`,
`intervene`, `decision_rules` and the
`salfcbm.viz` pictures. A panel never raises: bad input comes back as a message for the page
(the last value every panel returns), so a user sees what to fix instead of a stack trace.

Coordinates: the page shows images at ``view_scale`` times the model's input size; clicks and
brush strokes are mapped back to the model's input pixels, which is what the library takes.
"""

from __future__ import annotations

import functools
import html
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from salfcbm.core.outputs import SALFCBMOutput
from salfcbm.errors import InputError, SalfCBMError, closest
from salfcbm.explain import upsample_maps
from salfcbm.viz import ColorScale, sankey_svg, to_display
from salfcbm.app.images import list_images, load_image

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["Current", "Explorer", "REGION_HEADERS", "REGION_MODES", "TRAINING_RANGE_STDS", "colorbar_html"]

log = logging.getLogger("salfcbm.app")
REGION_MODES = ("box", "points", "brush")
PREDICTED = "(predicted class)"
MAX_CACHED_MAP_VALUES = 25_000_000  # concept maps of the searchable images kept in memory (float32: 100 MB)
HEATMAP_ALPHA = 0.6  # as in the reports (salfcbm.viz.plot_explanation)
# The model keeps each concept's training mean and std only: its activations were standardised to mean 0,
# std 1 on the training set, so beyond +-3 stds lie few training images (at most 1/9 of them whatever the
# distribution, Chebyshev) and the head was fitted on almost nothing there.
TRAINING_RANGE_STDS = 3.0
REGION_HEADERS = [
    "rank",
    "concept",
    "sum over the region (map units x px)",  # what explain_region ranks by: sum(I * c_up[m])
    "mean per px (map units)",
    "mean per px (training stds from the mean)",  # (mean - mean[m]) / std[m]: the heatmaps' colour scale
]


@dataclass
class Current:
    """One image as every panel sees it: pixels at the model's input size and one forward pass."""

    image: torch.Tensor  # (3, H, W) in [0, 1], the model's input size
    x: torch.Tensor  # (1, 3, H, W) backbone-ready
    output: Any  # SALFCBMOutput of model(x), reused by every panel
    notes: list[str] = field(default_factory=list)


def guarded(n_outputs: int):
    """Turn any exception of a panel into ``(None, ..., message)``: the page shows the message.

    A successful panel's message ends with the time it took on the server.
    """

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
                return (*out[:-1], f"{out[-1]} _({time.perf_counter() - t0:.3f} s)_")
            except SalfCBMError as e:
                msg = f"**Cannot do that:** {e}"
            except Exception as e:  # noqa: BLE001 - the page gets a message, the log the traceback
                log.exception("explorer panel %s failed", fn.__name__)
                msg = f"**Unexpected error** ({type(e).__name__}: {e}). The server log has the details."
            return (None,) * (n_outputs - 1) + (msg,)

        return wrapper

    return deco


def _u8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _fmt(v: float) -> str:
    return f"{v:+.6f}"


def colorbar_html(scale: ColorScale) -> str:
    """The colour bar of a heatmap scale, as a small HTML legend (the reports' `plot_explanation` one)."""
    import matplotlib

    cmap = matplotlib.colormaps[scale.cmap]
    stops = ", ".join(
        "#{:02x}{:02x}{:02x} {:.0f}%".format(*(int(255 * c + 0.5) for c in cmap(i / 10)[:3]), 10 * i) for i in range(11)
    )
    mid = (scale.vmin + scale.vmax) / 2
    ticks = "".join(f"<span>{v:+.2f}</span>" for v in (scale.vmin, mid, scale.vmax))
    return (
        f'<div class="salfcbm-colorbar" style="max-width:420px;font-size:85%">'
        f'<div style="height:12px;border:1px solid #888;background:linear-gradient(to right, {stops})"></div>'
        f'<div style="display:flex;justify-content:space-between">{ticks}</div>'
        f'<div>Colour: {html.escape(scale.label)}'
        + (" (faint near 0, where the map is at its training mean)" if scale.standardized else "")
        + "</div></div>"
    )


class Explorer:
    """The panels of ``salfcbm app`` for one model, usable without a browser.

    Args:
        model: a `SALFCBM` (not modified: no mode switch, no weight change).
        images: what Concept search looks through: a folder, a list of paths/images/tensors, or a
            dataset of ``(image, label)`` pairs; ``None`` disables the folder search.
        top_k: concepts shown per class or region.
        max_images: at most this many images are indexed.
        batch_size: images per forward pass while indexing.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.app.explorer import Explorer
        >>> from salfcbm.demo import SmallConvNet
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["sky", "grass"], num_classes=2,
        ...                  input_size=(32, 32), backbone_weights=None)
        >>> ex = Explorer(m)
        >>> state, view, msg = ex.load(torch.rand(32, 32, 3).numpy())
        >>> view.shape
        (320, 320, 3)
    """

    def __init__(self, model: SALFCBM, images: Any = None, *, top_k: int = 5, max_images: int = 1000, batch_size: int = 32):
        self.model = model
        self.top_k = top_k
        self.size = tuple(int(s) for s in model.config["input_size"])
        self.view_scale = max(1, math.ceil(320 / max(self.size)))
        self.index_names: list[str] = []
        self.index_activations: torch.Tensor | None = None
        self._index_items: list[Any] = []
        self._index_maps: torch.Tensor | None = None  # grid features (N, C, Hg, Wg) or maps (N, M, Hg, Wg), if they fit
        self._index_lazy = False  # whether _index_maps holds grid features (maps built on demand)
        if images is not None:
            self._build_index(images, max_images, batch_size)

    # ------------------------------------------------------------------ images
    def prepare(self, image: Any) -> Current:
        """An uploaded image (path, PIL, array) -> `Current`, with one forward pass."""
        x, notes = self.model_input(image)
        with torch.no_grad():
            out = self.model(x)
        shown = to_display(x[0], self.model)  # what the model sees, denormalised
        return Current(image=torch.from_numpy(shown).permute(2, 0, 1), x=x, output=out, notes=notes)

    def model_input(self, image: Any) -> tuple[torch.Tensor, list[str]]:
        """An image (path, PIL, array, tensor) -> ``(backbone-ready (1, 3, H, W), notes)``; no forward pass."""
        if image is None:
            raise InputError("No image yet: upload one or pick an example.")
        pixels, notes = load_image(image, self.size)
        return self.model.preprocess(pixels[None].to(self._device())), notes

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def view(self, current: Current, overlay: np.ndarray | None = None) -> np.ndarray:
        """The image (or an overlay) at ``view_scale`` x the model's size, as uint8 ``(H, W, 3)``."""
        img = overlay if overlay is not None else current.image.permute(1, 2, 0).numpy()
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        s = self.view_scale
        if s > 1:
            t = F.interpolate(t, scale_factor=s, mode="bilinear", align_corners=False)
        return _u8(t[0].permute(1, 2, 0).numpy())

    def to_model_xy(self, xy: Sequence[float]) -> tuple[float, float]:
        """A click on the shown image -> ``(x, y)`` in the model's input pixels."""
        s = self.view_scale
        W, H = self.size[1], self.size[0]
        return min(max(float(xy[0]) / s, 0.0), W - 1.0), min(max(float(xy[1]) / s, 0.0), H - 1.0)

    @guarded(3)
    def load(self, image: Any):
        """Upload callback: ``(state, the picture to show, a note)``."""
        cur = self.prepare(image)
        return cur, self.view(cur), " ".join(["Image loaded.", *cur.notes])

    # ------------------------------------------------------------------ 1. predict and explain
    @guarded(5)
    def predict_panel(self, current: Current | None, target: str | None = None, top_k: int | None = None):
        """Top classes, the top-k contributions as a bar chart, their heatmaps, and a summary.

        The heatmaps share the reports' signed scale (training stds from each concept's training
        mean, `salfcbm.viz.plot_explanation`). Returns ``(probabilities {class: p}, bar chart (HTML),
        [(overlay, caption)], colour bar (HTML), message)``.
        """
        cur = self._require(current)
        k = int(top_k or self.top_k)
        t = None if target in (None, "", PREDICTED) else target
        ex = self.model.explain(cur.x, target=t, top_k=k, output=cur.output)[0]
        ce = ex.top
        probs = {n: float(p) for n, p in zip(self.model.class_names, ex.probabilities.tolist())}
        scale = ColorScale([ce], None)
        gallery = [
            (_u8(scale.overlay(cur.image, h, HEATMAP_ALPHA, None)), f"{c} ({s:+.3f})")
            for c, s, h in zip(ce.concepts, ce.scores.tolist(), scale.maps[0])
        ]
        msg = (
            f"Prediction: **{ex.predicted_class}** (p={float(ex.probabilities[ex.prediction]):.3f}). "
            f"Explaining **{ce.class_name}**: logit {ce.logit:.4f} = bias {ce.bias:.4f} + the contributions of "
            f"{int((ce.contributions != 0).sum())} concepts."
        )
        if not ce.concepts:
            msg += " No concept contributes to this class (its head row is all zero)."
        return probs, self._bar_chart(ce.concepts, ce.scores.tolist(), ce.class_name), gallery, colorbar_html(scale), msg

    @staticmethod
    def _bar_chart(names: list[str], scores: list[float], title: str) -> str:
        """Signed contributions as horizontal bars (plain HTML: no plotting library, nothing to render)."""
        from salfcbm.viz.figures import NEG_COLOR, POS_COLOR

        top = max([abs(v) for v in scores] + [1e-12])
        rows = []
        for n, v in zip(names, scores):
            w = 50 * abs(v) / top
            left = 50 if v >= 0 else 50 - w
            rows.append(
                f'<div style="display:flex;align-items:center;margin:2px 0"><span style="width:38%;text-align:right;'
                f'padding-right:8px">{html.escape(n)}</span><span style="width:50%;position:relative;height:1.3em;'
                f'border-left:1px solid #888;border-right:1px solid #eee"><span style="position:absolute;left:{left:.1f}%;'
                f'width:{w:.1f}%;height:100%;background:{POS_COLOR if v >= 0 else NEG_COLOR}"></span><span '
                f'style="position:absolute;left:50%;height:100%;border-left:1px solid #444"></span></span>'
                f'<span style="width:12%;padding-left:6px;font-family:monospace">{v:+.4f}</span></div>'
            )
        head = f'<div style="font-size:90%;margin-bottom:4px">Contributions to <b>{html.escape(title)}</b></div>'
        return f'<div class="salfcbm-bars">{head}{"".join(rows)}</div>'

    # ------------------------------------------------------------------ regions
    def region_kwargs(self, mode: str, clicks: Sequence[Sequence[float]] | None, drawing: Any) -> dict[str, Any]:
        """The region a user gave, as ``box=``, ``points=`` or ``mask=`` in the model's input pixels."""
        clicks = list(clicks or [])
        if mode == "box":
            if len(clicks) < 2:
                raise InputError(f"A box needs two clicks (opposite corners); got {len(clicks)}. Click on the image.")
            (xa, ya), (xb, yb) = clicks[-2], clicks[-1]
            x0, x1 = sorted((xa, xb))
            y0, y1 = sorted((ya, yb))
            box = (int(math.floor(x0)), int(math.floor(y0)), int(math.floor(x1)) + 1, int(math.floor(y1)) + 1)
            return {"box": box}
        if mode == "points":
            if not clicks:
                raise InputError("No points yet: click on the image to add points.")
            return {"points": [tuple(p) for p in clicks]}
        if mode == "brush":
            return {"mask": self.brush_mask(drawing)}
        raise InputError(f"Unknown region mode {mode!r}; expected one of {REGION_MODES}.")

    def brush_mask(self, drawing: Any) -> torch.Tensor:
        """The painted pixels of an image-editor value, as an ``(H, W)`` weight mask at the model's size."""
        layers = drawing.get("layers") if isinstance(drawing, dict) else None
        painted = None
        for layer in layers or []:
            a = np.asarray(layer)
            if a.ndim == 3 and a.shape[-1] == 4:
                m = a[..., 3] > 0
                painted = m if painted is None or painted.shape != m.shape else painted | m
        if painted is None or not painted.any():
            raise InputError("The drawing is empty: paint over the region with the brush first.")
        m = torch.from_numpy(painted.astype(np.float32))[None, None]
        return F.adaptive_avg_pool2d(m, self.size)[0, 0]  # the fraction of each model pixel painted

    def region_view(self, current: Current, kwargs: dict[str, Any]) -> np.ndarray:
        """The image with the region outlined (box), dotted (points) or shaded (mask)."""
        from salfcbm.explain.explanations import region_masks

        mask = region_masks(self.size, **kwargs, grid=self.model.grid)[0].clamp(0, 1)
        img = current.image.permute(1, 2, 0).numpy()
        tint = np.array([0.9, 0.1, 0.1], dtype=np.float32)
        m = mask.numpy()[..., None]
        return self.view(current, img * (1 - 0.45 * m) + tint * 0.45 * m)

    def click(self, current: Current | None, clicks: list | None, mode: str, xy: Sequence[float] | None):
        """Add a click (model pixels): ``(clicks, picture, note)``. A third click starts a new box."""
        if current is None or xy is None:
            return list(clicks or []), None, "Upload an image first."
        p = self.to_model_xy(xy)
        clicks = [p] if mode == "box" and len(clicks or []) >= 2 else list(clicks or []) + [p]
        if mode == "box" and len(clicks) == 1:
            return clicks, self.view(current), f"Box corner at ({p[0]:.0f}, {p[1]:.0f}): click the opposite corner."
        try:
            kw = self.region_kwargs(mode, clicks, None)
        except SalfCBMError as e:
            return clicks, self.view(current), str(e)
        return clicks, self.region_view(current, kw), f"Region: {self.describe(kw)}."

    def describe(self, kw: dict[str, Any]) -> str:
        """A region's arguments as text, e.g. ``box=(2, 3, 21, 13)``, in the model's input pixels."""
        if not kw:
            return "the whole image"
        k, v = next(iter(kw.items()))
        if k == "mask":
            return f"a painted mask of {float((v > 0).sum()):.0f} px"
        if k == "points":
            v = [(round(x, 1), round(y, 1)) for x, y in v]
        return f"{k}={v}"

    # ------------------------------------------------------------------ 2. explain anything
    @guarded(4)
    def region_panel(self, current: Current | None, mode: str, clicks: list | None, drawing: Any = None,
                     top_k: int | None = None):
        """Concepts inside a drawn region, ranked by ``sum(I * c_up[m])``; their maps restricted to it.

        Returns ``(rows (columns: `REGION_HEADERS`), [(map, caption)], colour bar (HTML), message)``:
        the sum over the region, its mean per pixel, and that mean in training stds from the
        concept's training mean (the heatmaps' signed scale).
        """
        cur = self._require(current)
        kw = self.region_kwargs(mode, clicks, drawing)
        rep = self.model.explain_region(cur.x, **kw, top_k=int(top_k or self.top_k), output=cur.output)
        r = rep[0]
        idx = torch.as_tensor(r.concept_indices)
        mean, std = (self.model.concept_mean.detach().float().cpu()[idx], self.model.concept_std.detach().float().cpu()[idx])
        per_px = r.scores.detach().float().cpu() / r.area
        rows = [
            [i + 1, c, round(float(s), 6), round(float(p), 6), round(float(z), 4)]
            for i, (c, s, p, z) in enumerate(zip(r.concepts, r.scores.tolist(), per_px, (per_px - mean) / std))
        ]
        top = cur.output.concept_maps_at(r.concept_indices)[0]  # the k maps shown, not all M
        maps = upsample_maps(top.detach().float().cpu(), self.size)
        inside = (rep.masks[0] > 0).cpu()
        z = torch.where(inside, (maps - mean[:, None, None]) / std[:, None, None], 0.0)
        scale = ColorScale.signed(list(z))
        gallery = []
        for c, h in zip(r.concepts, z):
            shown = scale.overlay(cur.image, h, HEATMAP_ALPHA, None)
            shown = np.where(inside.numpy()[..., None], shown, 0.35 * cur.image.permute(1, 2, 0).numpy())
            gallery.append((self.view(cur, shown), c))
        msg = (
            f"Region: {self.describe(kw)} in the model's {self.size[1]}x{self.size[0]} input "
            f"({100 * r.area_fraction:.1f}% of the image). Top concept: **{r.concepts[0]}**."
        )
        return rows, gallery, colorbar_html(scale), msg

    # ------------------------------------------------------------------ 3. intervene
    @guarded(2)
    def intervene_panel(self, current: Current | None, concept: str | None, mode: str, clicks: list | None,
                        drawing: Any = None, beta: float = 1.0, target: str | None = None):
        """Add ``beta`` x the region to a concept's map; logits and top classes before and after.

        ``mode`` may also be ``"whole image"``. Returns ``(rows [[class, before, after, change,
        p before, p after]], message)``. The message warns when ``beta`` is beyond the suggested
        range (`beta_range`) and when the edit takes the concept's activation outside its training
        range (beyond `TRAINING_RANGE_STDS` training stds from its training mean), where the
        head's answer is an extrapolation.
        """
        cur = self._require(current)
        if not concept:
            raise InputError("Choose a concept to add or remove.")
        if beta is None:  # an emptied number box
            raise InputError("Type a beta: positive adds the concept, negative removes it.")
        kw = {} if mode == "whole image" else self.region_kwargs(mode, clicks, drawing)
        t = None if target in (None, "", PREDICTED) else target
        res = self.model.intervene(cur.x, concept, **kw, beta=float(beta), target=t, output=cur.output)
        names = self.model.class_names
        top = torch.cat([res.logits_before.topk(min(5, len(names))).indices, res.logits_after.topk(min(5, len(names))).indices])
        order = list(dict.fromkeys(top.tolist()))
        d = res.delta_logits
        rows = [
            [names[i], round(float(res.logits_before[i]), 6), round(float(res.logits_after[i]), 6), _fmt(float(d[i])),
             round(float(res.probabilities_before[i]), 4), round(float(res.probabilities_after[i]), 4)]
            for i in order
        ]
        tgt = names[res.target]
        verdict = (f"changes **{res.class_before}** -> **{res.class_after}**" if res.changed
                   else f"stays **{res.class_before}**")
        msg = (
            f"{'Adding' if beta >= 0 else 'Removing'} **{res.concepts[0]}** (beta={float(beta):+g}) over "
            f"{self.describe(kw)} ({100 * float(res.region.mean()):.1f}% of the grid): the prediction {verdict}. "
            f"Exact change of the logit of **{tgt}**: <span id='delta-logit'>{_fmt(float(d[res.target]))}</span>."
        )
        return rows, " ".join([msg, *self._range_warnings(res, float(beta))])

    def _range_warnings(self, res: Any, beta: float) -> list[str]:
        """Warnings for a beta beyond the suggested range and an edit that leaves the training range."""
        notes = []
        r = self.beta_range()
        if abs(beta) > r:
            notes.append(f"**Note:** beta={beta:+g} is beyond the suggested range +-{r:g} (4 x the largest training "
                         f"std of a concept activation, {float(self.model.concept_std.max()):.3g}).")
        z_b = self.model.standardize(res.activations_before[None].float())[0]
        z_a = self.model.standardize(res.activations_after[None].float())[0]
        for name, m in zip(res.concepts, res.concept_indices):
            if abs(float(z_a[m])) > TRAINING_RANGE_STDS:
                notes.append(
                    f"**Outside the training range:** the edit takes **{name}** to {float(z_a[m]):+.1f} training stds "
                    f"from its training mean (before: {float(z_b[m]):+.1f}); training images rarely go beyond "
                    f"+-{TRAINING_RANGE_STDS:g}, so the head never learnt what this means and the logit change is an "
                    "extrapolation. A smaller |beta| or a smaller region stays in range."
                )
        return notes

    # ------------------------------------------------------------------ 4. decision rules
    @guarded(3)
    def rules_panel(self, classes: Sequence[str] | str | None, max_concepts: int = 8):
        """Non-zero weights of the chosen classes, and their Sankey diagram (inline SVG).

        Returns ``(rows [[class, concept, weight]], svg html, message)``.
        """
        if isinstance(classes, str):
            classes = [classes]
        if not classes:
            raise InputError("Pick at least one class.")
        rules = self.model.decision_rules(list(classes))
        rows = [[r.class_name, c, round(w, 6)] for r in rules for c, w in r.pairs()]
        empty = [r.class_name for r in rules if len(r) == 0]
        svg = "" if len(empty) == len(rules) else sankey_svg(rules, max_concepts=int(max_concepts))
        msg = "; ".join(f"**{r.class_name}**: {len(r)} non-zero weights, bias {r.bias:+.4f}" for r in rules) + "."
        if empty:
            msg += f" No concept is connected to {', '.join(empty)}."
        return rows, svg, msg

    # ------------------------------------------------------------------ 5. concept search
    def find_concept(self, query: str | None) -> str:
        """The concept a user typed: exact or case-insensitive name, or one unique substring match."""
        q = (query or "").strip()
        if not q:
            raise InputError("Type a concept to search for.")
        names = self.model.concepts
        if q in names:
            return q
        low = [n for n in names if n.lower() == q.lower()] or [n for n in names if q.lower() in n.lower()]
        if len(low) == 1:
            return low[0]
        near = low[:8] or closest(q, names, n=8)
        hint = f" Did you mean: {', '.join(repr(n) for n in near)}?" if near else ""
        raise InputError(f"No concept named {q!r} among the model's {len(names)} concepts.{hint}")

    @guarded(4)
    def search_panel(self, current: Current | None, query: str | None, k: int = 6):
        """A concept's map on the current image and the indexed images where it fires most.

        Every map is on one signed scale (training stds from the concept's training mean).
        Returns ``(overlay or None, [(overlay, caption)], colour bar (HTML), message)``.
        """
        name = self.find_concept(query)
        m = self.model.concept_index(name)
        notes, images, maps = [f"Concept **{name}**."], [], []
        if current is not None:
            images.append(current.image)
            maps.append(current.output.concept_maps_at([m])[0, 0].detach().float().cpu())
            z = float(self.model.standardize(current.output.concept_activations.detach().float())[0, m])
            notes.append(f"Pooled activation on this image: {float(current.output.concept_activations[0, m]):.4f} "
                         f"({z:+.2f} training stds from its training mean).")
        else:
            notes.append("Upload an image to see its map.")
        if self.index_activations is None:
            notes.append("No image folder to search: start the app with `--images FOLDER`.")
            captions = []
        else:
            act = self.index_activations[:, m]
            top = act.topk(min(int(k), len(act))).indices.tolist()
            x = torch.cat([self.model_input(self._index_items[i])[0] for i in top])
            maps += list(self.index_maps(top, m, x))
            images += [to_display(xi, self.model) for xi in x]
            captions = [f"{self.index_names[i]} ({float(act[i]):.3f})" for i in top]
            notes.append(f"Top {len(top)} of {len(act)} indexed images.")
        mean, std = float(self.model.concept_mean[m]), float(self.model.concept_std[m])
        z = [(upsample_maps(h, self.size) - mean) / std for h in maps]
        scale = ColorScale.signed(z)
        shown = None if current is None else self.view(current, scale.overlay(images[0], z[0], HEATMAP_ALPHA, None))
        found = list(zip(images, z))[current is not None:]
        gallery = [(_u8(scale.overlay(im, h, HEATMAP_ALPHA, None)), c) for (im, h), c in zip(found, captions)]
        return shown, gallery, colorbar_html(scale), " ".join(notes)

    def _build_index(self, images: Any, max_images: int, batch_size: int) -> None:
        """Pooled concept activations of every searchable image: one forward pass each, batched.

        The forward pass pools before it projects (mean pooling), so no concept map is built here;
        the grid features are kept (when they fit `MAX_CACHED_MAP_VALUES`) to build the maps of one
        concept on the top images at search time. A model that builds its maps to pool them (softmax
        or max pooling) keeps those maps instead, under the same limit.
        """
        if isinstance(images, (str, bytes)) or hasattr(images, "__fspath__"):
            files = list_images(images, max_images)
            items, names = list(files), [str(p.relative_to(images)) for p in files]
        else:
            n = min(len(images), max_images)
            items = [images[i][0] if isinstance(images[i], tuple) else images[i] for i in range(n)]
            names = [f"#{i}" for i in range(n)]
        acts, kept = [], []
        for a in range(0, len(items), batch_size):
            x = torch.cat([self.model_input(it)[0] for it in items[a: a + batch_size]])
            with torch.no_grad():
                out = self.model(x)
            acts.append(out.concept_activations.detach().float().cpu())
            kept.append(self._index_cache(out, len(items)))
        self._index_items, self.index_names = items, names
        self.index_activations = torch.cat(acts) if acts else None
        self._index_maps = torch.cat(kept) if kept and all(k is not None for k in kept) else None
        self._index_lazy = bool(kept) and kept[0] is not None and not self._maps_built(out)

    @staticmethod
    def _maps_built(out: Any) -> bool:
        return bool(getattr(out, "maps_computed", True))

    def _index_cache(self, out: Any, n: int) -> torch.Tensor | None:
        """What a batch keeps for search: its grid features (lazy maps) or its maps; ``None`` past the limit."""
        Hg, Wg = self.model.grid
        if self._maps_built(out):
            fits = n * self.model.num_concepts * Hg * Wg <= MAX_CACHED_MAP_VALUES
            return out.concept_maps.detach().float().cpu() if fits else None
        fits = n * int(self.model.bottleneck.weight.shape[1]) * Hg * Wg <= MAX_CACHED_MAP_VALUES  # C channels
        return out.grid_features.detach().cpu() if fits else None

    def index_maps(self, rows: Sequence[int], m: int, x: torch.Tensor | None = None) -> torch.Tensor:
        """Concept ``m``'s map on the indexed images ``rows``, ``(k, Hg, Wg)`` float32: one map per image.

        Built from the kept grid features (the 1x1 bottleneck restricted to row ``m``), read from the
        kept maps, or, when nothing could be kept, from one forward pass over ``x`` (the images' inputs).
        """
        rows = list(rows)
        if self._index_maps is not None and self._index_lazy:
            w = self.model.bottleneck.weight.detach()
            b = self.model.bottleneck.bias
            out = SALFCBMOutput(torch.zeros(len(rows), 1, device=w.device),
                                features=self._index_maps[rows].to(w.device, w.dtype),
                                grid=self.model.grid, weight=w, bias=None if b is None else b.detach())
            return out.concept_maps_at([m])[:, 0].float().cpu()
        if self._index_maps is not None:
            return self._index_maps[rows, m]
        if x is None:
            x = torch.cat([self.model_input(self._index_items[i])[0] for i in rows])
        with torch.no_grad():
            return self.model(x).concept_maps_at([m])[:, 0].detach().float().cpu()

    def warm_up(self) -> None:
        """Run every panel once on a gray image, so that a user's first click pays no start-up cost."""
        cur = self.prepare(np.full((*self.size, 3), 0.5, dtype=np.float32))
        corners = [(0.0, 0.0), (self.size[1] / 2, self.size[0] / 2)]
        self.predict_panel(cur)
        self.region_panel(cur, "box", corners)
        self.intervene_panel(cur, self.model.concepts[0], "box", corners, None, 1.0)
        self.rules_panel(self.model.class_names[:1])
        self.search_panel(cur, self.model.concepts[0])

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _require(current: Current | None) -> Current:
        if current is None:
            raise InputError("No image yet: upload one or pick an example first.")
        return current

    def class_choices(self) -> list[str]:
        return [PREDICTED, *self.model.class_names]

    def beta_range(self) -> float:
        """The suggested range of beta, ``+-`` this: 4 x the largest training std of a concept activation
        (at least 1). Over the whole image, beta moves a concept's pooled activation by beta (mean
        pooling), i.e. by ``beta / std[m]`` training stds. Larger values are accepted, with a note."""
        std = self.model.concept_std.detach().float()
        return float(max(1.0, round(4 * float(std.max()), 1)))

    def beta_info(self) -> str:
        """Why the suggested range is what it is, for the page (the beta box's help text)."""
        std = self.model.concept_std.detach().float()
        return (f"Added to the concept's map (its raw units). Suggested +-{self.beta_range():g}: 4 x the largest "
                f"training std of a concept activation (stds {float(std.min()):.3g} to {float(std.max()):.3g}). "
                f"Any value is accepted; an edit that takes the concept beyond +-{TRAINING_RANGE_STDS:g} training "
                "stds (outside the training range) is flagged.")
