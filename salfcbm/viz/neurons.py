"""The top-activating images of concept neurons as a figure (paper appendix C, Figure 9)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from salfcbm.errors import InputError
from salfcbm.viz.canvas import new_figure
from salfcbm.viz.overlays import plot_overlay

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from salfcbm.explain.neurons import NeuronTopImages

__all__ = ["plot_top_images"]


def plot_top_images(tops: Sequence[NeuronTopImages], *, alpha: float = 0.5, cmap: str = "jet") -> Figure:
    """One row per neuron: its top images with the concept map overlaid, titled with the activation."""
    tops = list(tops)
    if not tops:
        raise InputError("Nothing to plot: pass the result of top_activating_images().")
    cols = max(len(t.indices) for t in tops)
    fig = new_figure((2.2 * cols, 2.4 * len(tops)))
    for r, t in enumerate(tops):
        for c in range(len(t.indices)):
            ax = fig.add_subplot(len(tops), cols, r * cols + c + 1)
            plot_overlay(t.images[c], t.maps[c], ax=ax, alpha=alpha, cmap=cmap,
                         title=f"{t.concept}\nc*={float(t.activations[c]):.3f}" if c == 0 else
                         f"c*={float(t.activations[c]):.3f}")
    fig.tight_layout()
    return fig
