"""Intervention curves as a figure: accuracy and true-class probability against the number of corrected concepts.

The numbers come from `salfcbm.evaluation.intervention_curve` (this module only draws them; it takes
the result's ``to_dict()``, so the picture can be redrawn from a saved JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from salfcbm.errors import InputError
from salfcbm.viz.canvas import new_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_intervention_curves"]


def plot_intervention_curves(curves: Mapping[str, Any], *, title: str | None = None,
                             panel_size: tuple[float, float] = (4.2, 3.2)) -> Figure:
    """Two panels (accuracy, true-class probability) with one line per policy; the legend gives each area.

    Args:
        curves: ``InterventionCurves.to_dict()`` (or the object itself).
        title: a title above both panels (default: the mode and the targets' source).
        panel_size: inches per panel.
    """
    if hasattr(curves, "to_dict"):
        curves = curves.to_dict()
    if not isinstance(curves, Mapping) or not curves.get("accuracy"):
        raise InputError("Nothing to plot: pass the result of salfcbm.evaluation.intervention_curve() (or its to_dict()).")
    ks = curves["ks"]
    fig = new_figure((2 * panel_size[0], panel_size[1]))
    for i, (key, label) in enumerate((("accuracy", "accuracy"), ("true_class_probability", "true-class probability"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, ys in curves[key].items():
            ax.plot(ks, ys, marker="o", ms=3, label=f"{name} (AUC {curves['auc'][name][key]:.3f})")
        ax.set_xlabel("concepts corrected per image (k)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    meta = curves.get("meta", {})
    fig.suptitle(title or f"Intervention curves ({curves.get('mode', '?')} mode; targets: {meta.get('targets', '?')}; "
                 f"{curves.get('n_images', '?')} images)", fontsize=9)
    fig.tight_layout()
    return fig
