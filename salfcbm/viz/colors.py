"""The colours of every picture: positive/negative weights, evidence kinds, regions."""

from __future__ import annotations

from salfcbm.explain.evidence import ABSENT_OPPOSES, ABSENT_SUPPORTS, NO_WEIGHT, PRESENT_OPPOSES, PRESENT_SUPPORTS

__all__ = ["POS_COLOR", "NEG_COLOR", "EVIDENCE_COLORS", "REGION_COLORS"]

#: Bands and numbers of positive weights/contributions (blue) and negative ones (red).
POS_COLOR = "#3b75af"
NEG_COLOR = "#d1495b"
#: Frame and text colour of each evidence kind in pictures and reports (absent kinds are drawn dashed).
EVIDENCE_COLORS = {
    PRESENT_SUPPORTS: "#1a7f37",
    PRESENT_OPPOSES: "#b3263a",
    ABSENT_SUPPORTS: "#57606a",
    ABSENT_OPPOSES: "#9a6700",
    NO_WEIGHT: "#999999",
}
#: One colour per region of an Explain Anything picture (cycled).
REGION_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999"]
