"""How explanation results print and serialise: JSON records and short reprs.

The result classes of `salfcbm.explain.results` derive from `JSONRecord` (``to_json`` over their
own ``to_dict``) and print with `short_repr` (tensors by shape, long lists cut) instead of the
dataclass repr, which prints every tensor (19,000 characters for one batch).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from salfcbm._utils.io import atomic_write_text
from salfcbm.errors import InputError

__all__ = ["HEATMAP_MODES", "JSONRecord", "as_floats", "heatmaps_to_json", "short_repr"]

#: How ``to_json`` writes heatmaps: a summary per map, nothing, or every value.
HEATMAP_MODES = ("summary", "drop", "full")


def as_floats(t: torch.Tensor) -> list[float]:
    """A tensor as a flat list of Python floats (detached, on the CPU), for JSON."""
    return [float(v) for v in t.detach().cpu().flatten().tolist()]


def _heatmap_summary(h: torch.Tensor) -> dict[str, Any]:
    h = h.detach().float().cpu()
    flat = int(h.argmax())
    return {
        "shape": list(h.shape),
        "min": float(h.min()),
        "max": float(h.max()),
        "mean": float(h.mean()),
        "argmax_yx": [flat // h.shape[-1], flat % h.shape[-1]],
    }


def heatmaps_to_json(h: torch.Tensor | None, mode: str) -> Any:
    """``(k, H, W)`` heatmaps for JSON: a summary per map, nothing, or every value (`HEATMAP_MODES`)."""
    if mode not in HEATMAP_MODES:
        raise InputError(f"`heatmaps` must be one of {HEATMAP_MODES}, got {mode!r}.")
    if h is None or mode == "drop":
        return None
    if mode == "summary":
        return [_heatmap_summary(x) for x in h]
    return [[[round(float(v), 6) for v in row] for row in x.detach().float().cpu().tolist()] for x in h]


class JSONRecord:
    """Base of the result classes: ``to_json`` over the class's own ``to_dict``."""

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike | None = None, *, heatmaps: str = "summary", indent: int | None = 2) -> str:
        """Serialise `to_dict` to JSON; with ``path``, also write it there atomically.

        Args:
            path: optional file to write.
            heatmaps: ``"summary"`` (shape, min, max, mean, argmax per map), ``"drop"`` or ``"full"``.
            indent: JSON indentation.
        """
        text = json.dumps(self.to_dict(heatmaps=heatmaps), indent=indent)
        if path is not None:
            atomic_write_text(path, text)
        return text


def _short(value: Any, depth: int = 0) -> str:
    """A value in a few characters: tensors by shape (or a few values), long lists cut."""
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4:
            return repr([round(v, 4) for v in value.detach().float().flatten().tolist()])
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "__dataclass_fields__"):
        return short_repr(value) if depth == 0 else f"{type(value).__name__}(...)"
    if isinstance(value, (list, tuple)):
        if value and hasattr(value[0], "__dataclass_fields__"):
            return f"[{len(value)} x {type(value[0]).__name__}]"
        items = [_short(v, depth + 1) for v in value[:4]]
        more = f", ... +{len(value) - 4}" if len(value) > 4 else ""
        return "[" + ", ".join(items) + more + "]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def short_repr(self: Any) -> str:
    """``Name(field=value, ...)`` with tensors as shapes and long lists cut: a few hundred characters."""
    from dataclasses import fields as _fields

    parts = [f"{f.name}={_short(getattr(self, f.name), 1)}" for f in _fields(self) if f.repr]
    return f"{type(self).__name__}(" + ", ".join(parts) + ")"
