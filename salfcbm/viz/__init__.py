"""Pictures (overlays, explanation grids, Sankey decision rules, HTML reports) and video tracking.

One kind of picture per module: `overlays` (one map over its image), `grids` (explanation rows),
`regions` (Explain Anything), `reports` (HTML), `sankey` (decision rules), `video`, `neurons`,
`interventions`, `sanity`; their plumbing in `canvas` (figures and files), `display` (images
and maps for display), `scale` (one colour scale per figure) and `colors`. Import the public
names from here.
"""

from salfcbm.viz.canvas import new_figure, save_figure
from salfcbm.viz.display import denormalize, heatmap_to_rgb, to_display
from salfcbm.viz.grids import plot_explanation, save_explanation_grid
from salfcbm.viz.overlays import overlay_heatmap, plot_overlay
from salfcbm.viz.regions import plot_region_report
from salfcbm.viz.reports import write_html_report
from salfcbm.viz.sankey import sankey_layout, sankey_svg, save_sankey
from salfcbm.viz.scale import ColorScale
from salfcbm.viz.interventions import plot_intervention_curves
from salfcbm.viz.neurons import plot_top_images
from salfcbm.viz.sanity import plot_randomisation
from salfcbm.viz.video import ConceptTrack, read_video_frames, save_video_gif, save_video_strip, track_concepts

__all__ = [
    "ColorScale",
    "ConceptTrack",
    "denormalize",
    "heatmap_to_rgb",
    "new_figure",
    "overlay_heatmap",
    "plot_explanation",
    "plot_intervention_curves",
    "plot_overlay",
    "plot_randomisation",
    "plot_region_report",
    "plot_top_images",
    "read_video_frames",
    "sankey_layout",
    "sankey_svg",
    "save_explanation_grid",
    "save_figure",
    "save_sankey",
    "save_video_gif",
    "save_video_strip",
    "to_display",
    "track_concepts",
    "write_html_report",
]
