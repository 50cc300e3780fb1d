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
_CUTOFF: dict[str, Source] = {
    "interpretability_cutoff": Source(
        paper="not stated (the paper keeps 4,741 ImageNet, 2,544 Places365 and 370 CUB concepts, section 4.1)",
        lfcbm="0.45 (--interpretability_cutoff default; not overridden in training_commands.txt)",
        authors="no training code released (cbm.py loads trained weights)",
        source="LF-CBM train_cbm.py (argparse, 'delete concepts that are not interpretable'); paper 4.1",
        reason="The paper reuses LF-CBM's settings ('the same ... as in [19]'); Table 2's recipe keeps every class "
               "concept instead.",
    ),
    "cutoff_statistic": Source(
        paper="not stated",
        lfcbm="cos_similarity_cubed_single(val_clip_features, proj_layer(val_target_features)) > cutoff: the "
              "projection of the pooled features against CLIP's similarities of the unprompted validation images, "
              "strictly greater",
        authors="no training code released",
        source="LF-CBM train_cbm.py (after the projection layer is trained) and similarity.py "
               "(cos_similarity_cubed_single), commit fa2869d",
        reason="'lfcbm' transcribes it: SALF-CBM's pooled concept maps c*(x) stand for LF-CBM's projection "
               "(identical under mean pooling of a bias-free 1x1 conv). The library default "
               "('cell', Eq. 1 per grid cell) is not the paper's; see docs/training.md for the comparison.",
    ),
    "cutoff_guard": Source(
        paper="not stated",
        lfcbm="removes every concept below the cutoff, whether or not the final layer would use it",
        authors="no training code released",
        source="LF-CBM train_cbm.py (the cutoff runs before glm_saga fits the final layer)",
        reason="'warn' reproduces LF-CBM (the concept is removed); fit lists in metrics['cutoff']['needed_by_head'] "
               "the removed concepts a head on every concept uses, and warns when that head is better on "
               "validation. The library default 'keep' keeps them instead.",
    ),
}


# ------------------------------------------------------------------ pooling, filters, bottleneck optimisation
_POOLING_FILTERS_OPTIM: dict[str, Source] = {}


#: Every documented recipe field -> its provenance.
SOURCES: dict[str, Source] = {**_GENERAL, **_CUTOFF, **_POOLING_FILTERS_OPTIM}
