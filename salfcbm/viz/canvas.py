"""Figures without pyplot: a new figure on an Agg canvas, PNG bytes, atomic saves.

Every picture of `salfcbm.viz` is drawn on a figure from `new_figure` (no display needed, no
global pyplot state) and written with `save_figure` (temp file + rename, so a crash never leaves
half a file).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from salfcbm._utils.io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure", "figure_png_bytes"]


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically; the format comes from the suffix (``.png``, ``.pdf``, ``.svg``)."""
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight"))


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib ``Figure`` of ``figsize`` inches on its own Agg canvas (no pyplot state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def figure_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for embedding in a report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()
