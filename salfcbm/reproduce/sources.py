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
_LFCBM_TRAIN = "LF-CBM train_cbm.py (train_cbm_and_save; read at commit bacf7bd)"
_AUTHORS_CBM = "authors' cbm.py (github.com/itaybenou/show-and-tell, commit e45f864: SoftmaxPooling2D, CBM_model)"
_REGIME = "docs/training.md, 'The bottleneck regime of the recipes' (benchmarks/bench_bottleneck_regime.py)"

_POOLING_FILTERS_OPTIM: dict[str, Source] = {
    "pooling": Source(
        paper="not stated (Sec. 3.3-3.4: the maps are pooled to c*(x))",
        lfcbm="no maps (the projection is applied to globally average-pooled features)",
        authors="SoftmaxPooling2D(kernel_size=map_size): softmax over all cells, weighted sum",
        source=_AUTHORS_CBM,
        reason="the recipes follow the authors' released model; salfcbm's library default stays 'mean' "
               "(linear, so Explain Anything and interventions are exact; the same pooling as the standard baseline)",
    ),
    "softmax_temperature": Source(
        paper="not stated", lfcbm="", authors="1 (F.softmax of the raw cell values)", source=_AUTHORS_CBM,
    ),
    "activation_cutoff": Source(
        paper="not stated (\"the same ... as in [19]\")",
        lfcbm="--clip_cutoff 0.28 ImageNet and Places365, 0.26 CUB (default 0.25); kept if top-5 mean > cutoff",
        authors="",
        source=_LFCBM_TRAIN + "; LF-CBM training_commands.txt",
        reason="LF-CBM's statistic exactly: mean of the 5 highest similarities to the unprompted training images, "
               "cropped by the scorer's own preprocessing (CLIP: shorter side to 224, centre crop), through the same "
               "filter_concepts as salfcbm.fit. Table 2 keeps all 1,000 class concepts (0.0, filters off)",
    ),
    "concept_filters": Source(
        paper="Sec. 3.1: LF-CBM's filters (length, class and concept similarity, absent from the data)",
        lfcbm="the text filters made the published *_filtered.txt lists (GPT_conceptset_processor.ipynb); "
              "train_cbm.py then runs only the top-5 clip_cutoff",
        authors="",
        source="LF-CBM conceptset_utils.py, GPT_conceptset_processor.ipynb, train_cbm.py",
        reason="'activation' on the published lists, as LF-CBM's training does; 'lf-cbm' (text filters too, pairs "
               "in LF-CBM's sorted order) for an unfiltered list; 'none' for Table 2's class concepts",
    ),
    "bottleneck_lr": Source(
        paper="not stated", lfcbm="1e-3 (Adam)", authors="", source=_LFCBM_TRAIN,
    ),
    "bottleneck_batch": Source(
        paper="not stated",
        lfcbm="--proj_batch_size 50000 images, min(50000, training images) per step, drawn anew each step",
        authors="",
        source=_LFCBM_TRAIN + "; " + _REGIME,
        reason="a spatial step holds 49 cells of features and targets per image: one step costs 6.0 MB per image "
               "at ImageNet's shapes (measured, benchmarks/bench_bottleneck_regime.py --memory), about 300 GB for "
               "LF-CBM's 50,000. CUB takes LF-CBM's batch as it is (the whole training set, about 3 GB); "
               "ImageNet and Places365 take 8,192 (about 49 GB on ImageNet), the largest power of two that fits "
               "an 80 GB GPU with room for the rest. On the demo world (docs/training.md) 256 images a step and the "
               "whole set ended alike (64 was worse), so a cap far above 256 should cost nothing measurable",
    ),
    "bottleneck_steps": Source(
        paper="not stated", lfcbm="--proj_steps 1000", authors="", source=_LFCBM_TRAIN + "; " + _REGIME,
        reason="LF-CBM's. On the demo world its stop at the first decrease ended after 800 to 1,350 steps; "
               "v1's 5,000 steps with patience 10 ran about 4,500 for at most 0.016 of validation similarity, "
               "one concept and no accuracy difference beyond the seed spread",
    ),
    "bottleneck_patience": Source(
        paper="not stated", lfcbm="stop at the first validation loss increase (patience 1)", authors="",
        source=_LFCBM_TRAIN, reason="LF-CBM's (v1 of the recipes waited 10 checks)",
    ),
    "bottleneck_val_every": Source(
        paper="not stated", lfcbm="50 steps (i % 50 == 0)", authors="", source=_LFCBM_TRAIN,
        reason="LF-CBM's; LF-CBM validates on the test split, the recipes on a held-out part of the training set",
    ),
    "bottleneck_init": Source(
        paper="not stated", lfcbm="torch.nn.Linear's default: U(-1/sqrt(C), 1/sqrt(C))", authors="",
        source=_LFCBM_TRAIN, reason="LF-CBM's (v1 of the recipes drew N(0, 1/C))",
    ),
}


#: Every documented recipe field -> its provenance.
SOURCES: dict[str, Source] = {**_GENERAL, **_CUTOFF, **_POOLING_FILTERS_OPTIM}
