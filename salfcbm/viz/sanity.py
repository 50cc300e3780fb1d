"""The picture of a model-parameter randomisation test (`salfcbm.evaluation.sanity`): compute there, draw here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salfcbm.errors import InputError
from salfcbm.viz.canvas import new_figure, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_randomisation"]


def plot_randomisation(result: Any, path: str | os.PathLike | None = None, *, examples: bool = True) -> Figure:
    """Similarity to the intact model's maps along the cascade, and the first image's maps at each step.

    Args:
        result: a `RandomisationResult` (from `model_randomisation_test`).
        path: also save the figure there (``.png``, ``.pdf``, ``.svg``).
        examples: draw the maps of the first image (one row per method) under the curves.

    Left of the curves is the intact model; a filled marker is a step whose weights the map depends on
    (it should fall), an open one a step it does not depend on; a red cross marks a failure.
    """
    need = ("steps", "methods", "spearman", "ssim", "expected_change", "failures")
    if not all(hasattr(result, a) for a in need):
        raise InputError(
            f"Expected a RandomisationResult (from model_randomisation_test), got {type(result).__name__}."
        )
    steps, methods = list(result.steps), list(result.methods)
    ex = getattr(result, "examples", {}) if examples else {}
    rows = [m for m in methods if m in ex]
    n_cols = len(steps) + 1
    fig = new_figure((max(8.0, 1.5 * n_cols), 3.6 + 1.4 * len(rows)))
    outer = fig.add_gridspec(2 if rows else 1, 1, height_ratios=[3.0, 1.4 * len(rows)] if rows else None, hspace=0.45)
    top = outer[0].subgridspec(1, 2, wspace=0.25)
    maps = outer[1].subgridspec(len(rows), n_cols, hspace=0.08, wspace=0.05) if rows else None
    bad = set(map(tuple, result.failures))
    for k, (key, label) in enumerate((("spearman", "|Spearman| with intact map"), ("ssim", "SSIM with intact map"))):
        ax = fig.add_subplot(top[0, k])
        xs = list(range(len(steps) + 1))
        for m in methods:
            ys = [1.0, *getattr(result, key)[m]]
            line = ax.plot(xs, ys, label=m, lw=1.5)[0]
            for i, (y, dep) in enumerate(zip(ys[1:], result.expected_change[m]), start=1):
                ax.plot(i, y, "o", color=line.get_color(), mfc=line.get_color() if dep else "none")
                if (m, steps[i - 1]) in bad:
                    ax.plot(i, y, "x", color="red", ms=12, mew=2)
        ax.set_xticks(xs, ["intact", *steps], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(-1.05 if key == "ssim" else -0.05, 1.05)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    for r, m in enumerate(rows, start=1):
        for c, heat in enumerate(ex[m][: n_cols]):
            ax = fig.add_subplot(maps[r - 1, c])
            ax.imshow(heat.float().numpy(), cmap="jet", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(m, fontsize=7)
            if r == 1:
                ax.set_title(["intact", *steps][c], fontsize=6)
    title = "Model-parameter randomisation (cascading): " + ("passed" if result.passed else "FAILED")
    fig.suptitle(title, color="black" if result.passed else "red")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.94, bottom=0.03)
    if path is not None:
        save_figure(fig, Path(path))
    return fig
