"""Sankey diagrams of global decision rules (paper 3.5, figure 3): concept -> class bands.

Band widths are proportional to ``|weight|``; `sankey_layout` computes the geometry once, drawn as
inline SVG (`sankey_svg`, no JavaScript, no CDN) or with matplotlib (`save_sankey` to ``.png``).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salfcbm._utils.io import atomic_write
from salfcbm.errors import InputError
from salfcbm.explain.results import DecisionRule
from salfcbm.viz.canvas import new_figure, save_figure
from salfcbm.viz.colors import NEG_COLOR, POS_COLOR

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["sankey_layout", "sankey_svg", "save_sankey"]


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
    fig = new_figure((W / 100, H / 100 + (0.4 if title else 0)))
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
