"""Where each recipe setting comes from: the paper, LF-CBM, the authors' released code, and why a recipe differs.

`docs/method.md` is generated from these entries and the recipe objects (`get_recipe(...).to_dict()`);
a test keeps the page in sync. One `Source` per `Recipe` field; the value a recipe actually uses is
read from the recipe itself, never copied here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Source", "SOURCES"]


@dataclass(frozen=True)
class Source:
    """The provenance of one recipe setting.

    Attributes:
        paper: the SALF-CBM paper's value (``""`` when the paper does not state it).
        lfcbm: LF-CBM's value at its pinned commit (``""`` when not applicable).
        authors: the value in the authors' released code (``cbm.py``, notebooks; ``""`` when absent).
        source: where each value is stated (paper section, file and function).
        reason: why the recipe's value differs from the paper's / LF-CBM's, if it does.
    """

    paper: str = ""
    lfcbm: str = ""
    authors: str = ""
    source: str = ""
    reason: str = ""


# ------------------------------------------------------------------ general settings (owner: table2 / method.md)
_GENERAL: dict[str, Source] = {}


# ------------------------------------------------------------------ cutoffs (owner: cutoff statistic)
_CUTOFF: dict[str, Source] = {}


# ------------------------------------------------------------------ pooling, filters, bottleneck optimisation
_POOLING_FILTERS_OPTIM: dict[str, Source] = {}


#: Every documented recipe field -> its provenance.
SOURCES: dict[str, Source] = {**_GENERAL, **_CUTOFF, **_POOLING_FILTERS_OPTIM}
