"""Compatibility: the names that lived here before the pictures were split by responsibility.

Kept so that existing imports (``from salfcbm.viz.figures import plot_explanation``) keep
working. New code imports from `salfcbm.viz` (the package) or from the module that owns the name:

* `salfcbm.viz.canvas`: `new_figure`, `save_figure`, `figure_png_bytes`;
* `salfcbm.viz.display`: `denormalize`, `to_display`, `heatmap_to_rgb`;
* `salfcbm.viz.colors`: `POS_COLOR`, `NEG_COLOR`, `EVIDENCE_COLORS`, `REGION_COLORS`;
* `salfcbm.viz.overlays`: `overlay_heatmap`, `plot_overlay`;
* `salfcbm.viz.scale`: `ColorScale`, `MIN_STD_SCALE`;
* `salfcbm.viz.grids`: `plot_explanation`, `save_explanation_grid`;
* `salfcbm.viz.regions`: `plot_region_report`;
* `salfcbm.viz.reports`: `write_html_report`;
* `salfcbm.viz.sankey`: `sankey_layout`, `sankey_svg`, `save_sankey`.

``_Scale`` is the old private spelling of `ColorScale`, kept only until `salfcbm.app.explorer` (and its
tests) switch to the public name.
"""

from __future__ import annotations

from salfcbm.viz.canvas import new_figure, save_figure
from salfcbm.viz.colors import EVIDENCE_COLORS, NEG_COLOR, POS_COLOR, REGION_COLORS
from salfcbm.viz.display import denormalize, heatmap_to_rgb, to_display
from salfcbm.viz.grids import plot_explanation, save_explanation_grid
from salfcbm.viz.overlays import overlay_heatmap, plot_overlay
from salfcbm.viz.regions import plot_region_report
from salfcbm.viz.reports import write_html_report
from salfcbm.viz.sankey import sankey_layout, sankey_svg, save_sankey
from salfcbm.viz.scale import MIN_STD_SCALE, ColorScale

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
    # also importable from here before the split
    "new_figure",
    "ColorScale",
    "POS_COLOR",
    "NEG_COLOR",
    "EVIDENCE_COLORS",
    "REGION_COLORS",
    "MIN_STD_SCALE",
]

_Scale = ColorScale  # compatibility: app/explorer.py and its tests
