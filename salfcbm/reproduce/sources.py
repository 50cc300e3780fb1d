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


# Keys: a `Recipe` field (``"lam"``), or a field for one recipe, table or dataset only
# (``"table2-imagenet-seg:interpretability_cutoff"``, ``"table3:sweep"``, ``"cub:lam"``); the most specific
# key wins (recipe name, then table, then dataset, then the field). A field without an entry is
# rendered with an empty provenance.
_P = "SALF-CBM paper"
_LF = "LF-CBM `train_cbm.py` / `training_commands.txt` (pinned commit)"
_NO_FIELD = "bookkeeping of this library (not a setting of the experiment)"

# ------------------------------------------------------------------ general settings (owner: table2 / method.md)
_GENERAL: dict[str, Source] = {
    "name": Source(source=_NO_FIELD),
    "version": Source(source=_NO_FIELD, reason="bumped when a setting changes; a run directory of another "
                      "version refuses to resume"),
    "key": Source(source=_NO_FIELD),
    "table": Source(source=_NO_FIELD),
    "notes": Source(source=_NO_FIELD),
    "dataset": Source(paper="ImageNet, Places365, CUB-200 (Table 1)", lfcbm="the same (and CIFAR)",
                      source=f"{_P} 4.1"),
    "num_classes": Source(paper="1,000 / 365 / 200", lfcbm="the same", source=f"{_P} 4.1; the datasets"),
    "splits": Source(paper="reports the official validation (ImageNet, Places365) or test (CUB) split",
                     lfcbm="`{dataset}_val`: the same official split, also used for early stopping and the cutoff",
                     source=f"{_P} Table 1; LF-CBM `data_utils.py` (`imagenet_val`, `cub_val` = CUB test)"),
    "val_fraction": Source(paper="not stated", lfcbm="none: validates on the official validation / test split",
                           source="LF-CBM `train_cbm.py` (`d_val`)",
                           reason="documented deviation, kept: the recipes hold out a stratified, seeded share of "
                           "the training set for early stopping, the cutoff and head selection, so the split "
                           "they report never chooses anything (LF-CBM's choices see its test images)"),
    "backbone": Source(paper="ResNet-50 (ImageNet, Places365), ResNet-18 (CUB), ViT-B/16 (appendix B.1)",
                       lfcbm="torchvision `resnet50` IMAGENET1K_V1; pytorchcv `resnet18_cub`",
                       source=f"{_P} 4.1; LF-CBM `data_utils.get_target_model`",
                       reason="the paper does not name the weights; LF-CBM's are the ones whose numbers it "
                       "reports (IMAGENET1K_V1 is the 76.13% ResNet-50 of its standard row)"),
    "figure7:backbone": Source(paper="ViT-B/16", source=f"{_P} B.1",
                               reason="the paper does not name the weights: torchvision's IMAGENET1K_V1"),
    "figure7:layer": Source(paper="the patch tokens, \"reshaped into their original spatial formation\"",
                            source=f"{_P} 3.3, B.1"),
    "layer": Source(paper="the last convolutional stage (7x7 at 224 px)", lfcbm="`layer4` (pooled); CUB "
                    "`features.final_pool` (pooled)", source=f"{_P} 3.3; {_LF}",
                    reason="a spatial model taps the map before the pooling (CUB: `features.stage4`)"),
    "cls_concat": Source(paper="ViT: patch tokens, or patch tokens with the CLS token concatenated (B.1)",
                         source=f"{_P} B.1"),
    "grid": Source(paper="7x7", authors="the released ImageNet demo model uses a 12x12 map at 448 px",
                   source=f"{_P} 4.1, Table 3; the authors' demo notebook",
                   reason="the recipes follow the paper (7x7 at 224 px); the 12x12 / 448 px model is not "
                   "the one the paper reports"),
    "radius": Source(paper="32 px at CLIP's 224 px", source=f"{_P} 4.1, Table 3"),
    "line_width": Source(paper="2 px, red circle", source=f"{_P} 3.2"),
    "scorer": Source(paper="CLIP ViT-B/16", lfcbm="CLIP ViT-B/16 (`--clip_name`)", source=f"{_P} 4.1; {_LF}",
                     reason="open_clip's `ViT-B-16` / `openai` are the same weights as OpenAI's `clip` package"),
    "concepts": Source(paper="LF-CBM's initial concept list", lfcbm="`data/concept_sets/{dataset}_filtered.txt`",
                       source=f"{_P} 4.1; LF-CBM `data/concept_sets` (sha256 pinned in "
                       "`salfcbm.supervision.concept_sets`)"),
    "expected_concepts": Source(paper="ImageNet 4,741 kept of 4,751; CUB 370; Places365 2,544",
                                lfcbm="4,751 / 370 / 2,544 lines in the concept files",
                                source=f"{_P} 4.1; LF-CBM concept files",
                                reason="the count before any filter; the concepts kept are measured by the run"),
    "lam": Source(paper="LF-CBM's (\"the same ... regularization parameters\")", lfcbm="ImageNet 1e-4, Places365 "
                  "3e-4, CUB 2e-4 (`--lam`)", source=f"{_P} 4.1; {_LF}"),
    "standard_lam": Source(paper="LF-CBM's standard sparse model", lfcbm="ImageNet 1e-4, Places365 7e-4, "
                           "CUB 2e-5 (`train_standard.py --lam`)", source=f"{_P} Table 1; {_LF}"),
    "alpha": Source(paper="LF-CBM's", lfcbm="0.99 (`ALPHA`)", source=f"{_P} 3.4; LF-CBM `train_cbm.py`"),
    "solver_iters": Source(lfcbm="GLM-SAGA epochs: ImageNet, Places365 80, CUB 5,000 (`--n_iters`)", source=_LF,
                           reason="recorded only: salfcbm's solver runs the same objective to a KKT tolerance"),
    "batch_size": Source(lfcbm="512 when saving activations (`--batch_size`)", source=_LF,
                         reason="images per forward pass only; no result depends on it"),
    "image_size": Source(paper="224 px", lfcbm="224 px (`CenterCrop(224)`)",
                         authors="the released ImageNet demo model runs at 448 px",
                         source=f"{_P} 4.1; LF-CBM `data_utils.py`; the authors' demo notebook",
                         reason="the recipes follow the paper (see `grid`)"),
    "resize": Source(lfcbm="256 before the 224 px crop (torchvision's `weights.transforms()`; CUB "
                     "`Resize(256)`)", source="LF-CBM `data_utils.get_target_model`"),
    "sweep": Source(paper="Table 3 only", source=f"{_P} Table 3"),
    "segmentation": Source(paper="Table 2 only", source=f"{_P} Table 2"),
    "baselines": Source(paper="Table 2 only", source=f"{_P} Table 2"),
    "dense": Source(paper="Table 1 reports non-sparse rows for SALF-CBM and the standard model",
                    source=f"{_P} Table 1"),
    "standard_dense": Source(paper="\"standard, non-sparse\": the backbone as published (ImageNet 76.13% = "
                             "torchvision ResNet-50 V1; CUB 76.70% = LF-CBM's `resnet18_cub`)",
                             lfcbm="the same numbers in LF-CBM's Table 2 (\"standard\")",
                             source=f"{_P} Table 1; LF-CBM paper Table 2",
                             reason="the backbone's own classifier where it has the dataset's classes"),
    "places365:standard_dense": Source(paper="\"standard, non-sparse\" 48.56%",
                                       lfcbm="a dense head on the ImageNet ResNet-50's features",
                                       source=f"{_P} Table 1; LF-CBM paper Table 2",
                                       reason="the ImageNet ResNet-50 has no Places365 classifier, so the row "
                                       "is a dense head fitted on its pooled features"),
    "table3:sweep": Source(paper="grid 5, 7, 9 x radius 27, 32, 37", source=f"{_P} Table 3"),
    "table3:dense": Source(paper="Table 3 reports the sparse model only", source=f"{_P} Table 3"),
    "table2:dense": Source(paper="Table 2 reports heatmaps only", source=f"{_P} Table 2"),
    "table2:segmentation": Source(paper="ImageNet-segmentation (`gtsegs_ijcv.mat`): pixel accuracy, mIoU, mAP",
                                  source=f"{_P} 4.2, Table 2"),
    "table2:baselines": Source(paper="LRP, IG, GradCAM, GradCAM++, ScoreCAM, FullGrad", source=f"{_P} Table 2"),
    "table2:concepts": Source(paper="\"An image of a {class}\" for every ImageNet class", lfcbm="class names: "
                              "`data/imagenet_classes.txt`", source=f"{_P} 4.2; LF-CBM `data/imagenet_classes.txt`",
                              reason="LF-CBM's list names classes 657 and 744 \"missile\", 836 and 837 "
                              "\"sunglasses\": repeated names get their class index (\"missile (class 744)\", "
                              "`unique_class_names`), so every class has its own concept and map"),
    "table2:expected_concepts": Source(paper="one per class: 1,000", source=f"{_P} 4.2",
                                       reason="1,000 distinct concepts (998 before repeated names were told apart)"),
    "table2:interpretability_cutoff": Source(paper="not stated; Table 2 scores the map of every class's concept",
                                             lfcbm="0.45", source=f"{_P} 4.2",
                                             reason="None = no cutoff: a cutoff (even 0.0) could remove a class's "
                                             "concept, and then that class has no map to score"),
    "table2:activation_cutoff": Source(paper="not stated", lfcbm="0.28 on ImageNet",
                                       source=f"{_P} 4.2; {_LF}",
                                       reason="0 = off: every class concept is kept (see the interpretability cutoff)"),
}


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
        reason="'warn' reproduces LF-CBM (the concept is removed); fit lists in `metrics['cutoff']['needed_by_head']` "
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
    "bottleneck.lr": Source(
        paper="not stated", lfcbm="1e-3 (Adam)", authors="", source=_LFCBM_TRAIN,
    ),
    "bottleneck.batch_size": Source(
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
    "bottleneck.max_steps": Source(
        paper="not stated", lfcbm="--proj_steps 1000", authors="", source=_LFCBM_TRAIN + "; " + _REGIME,
        reason="LF-CBM's. On the demo world its stop at the first decrease ended after 800 to 1,350 steps; "
               "v1's 5,000 steps with patience 10 ran about 4,500 for at most 0.016 of validation similarity, "
               "one concept and no accuracy difference beyond the seed spread",
    ),
    "bottleneck.patience": Source(
        paper="not stated", lfcbm="stop at the first validation loss increase (patience 1)", authors="",
        source=_LFCBM_TRAIN, reason="LF-CBM's (v1 of the recipes waited 10 checks)",
    ),
    "bottleneck.val_every": Source(
        paper="not stated", lfcbm="50 steps (i % 50 == 0)", authors="", source=_LFCBM_TRAIN,
        reason="LF-CBM's; LF-CBM validates on the test split, the recipes on a held-out part of the training set",
    ),
    "bottleneck.init": Source(
        paper="not stated", lfcbm="torch.nn.Linear's default: U(-1/sqrt(C), 1/sqrt(C))", authors="",
        source=_LFCBM_TRAIN, reason="LF-CBM's (v1 of the recipes drew N(0, 1/C))",
    ),
}


#: Every documented recipe field -> its provenance.
SOURCES: dict[str, Source] = {**_GENERAL, **_CUTOFF, **_POOLING_FILTERS_OPTIM}
