"""Pictures (overlays, explanation grids, Sankey decision rules, HTML reports) and video tracking."""

from salfcbm.viz.figures import (
    overlay_heatmap,
    plot_explanation,
    plot_overlay,
    plot_region_report,
    save_explanation_grid,
    save_sankey,
    sankey_svg,
    write_html_report,
)
from salfcbm.viz.interventions import plot_intervention_curves
from salfcbm.viz.neurons import plot_top_images
from salfcbm.viz.sanity import plot_randomisation
from salfcbm.viz.video import ConceptTrack, read_video_frames, save_video_gif, save_video_strip, track_concepts

__all__ = [
    "ConceptTrack",
    "overlay_heatmap",
    "plot_explanation",
    "plot_intervention_curves",
    "plot_overlay",
    "plot_randomisation",
    "plot_region_report",
    "plot_top_images",
    "read_video_frames",
    "sankey_svg",
    "save_explanation_grid",
    "save_sankey",
    "save_video_gif",
    "save_video_strip",
    "track_concepts",
    "write_html_report",
]
