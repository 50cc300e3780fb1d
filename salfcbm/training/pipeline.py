"""Training a SALF-CBM: concept bottleneck (paper 3.3, Eq. 1) and sparse head (3.4, Eq. 2).

The pipeline, each stage resumable from its artefact in a run directory:

1. prompted similarities of the training and validation images (`salfcbm.supervision.store`);
2. backbone features, resized to the grid, cached in a sharded store (or computed on the fly);
3. the 1x1-conv bottleneck, trained with the cubic cosine loss, early stopping on validation,
   then the interpretability cutoff removes concepts that the bottleneck cannot follow;
4. the sparse elastic-net head on the pooled, standardised concept activations, and the
   "standard, sparse" baseline: the same head on the backbone's pooled features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from salfcbm._utils.io import (
    atomic_write_bytes,
    checked_safetensors,
    read_checked_metadata,
)
from salfcbm._utils.progress import close_bar
from salfcbm._utils.workers import resolve_num_workers
from salfcbm.core.backbones import backbone_fingerprint
from salfcbm.core.images import align_dataset
from salfcbm._utils.tensors import autocast, check_precision, to_device
from salfcbm.core.model import SALFCBM
from salfcbm.errors import AlignmentError, AllConceptsCutError, DegenerateResultWarning, InputError, SalfCBMError
from salfcbm.supervision.concepts import ConceptFilterReport, unprompted_activity
from salfcbm.supervision.concepts import filter_concepts as _filter
from salfcbm.head.solver import HeadFit, fit_dense_head, fit_sparse_head, lambda_max
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.provenance import dataset_identity, resolve_inputs
from salfcbm.supervision.scorers import ConceptScorer
from salfcbm.training import diagnostics, presence
from salfcbm.training.cutoff import LFCBM_STATISTIC, lfcbm_similarity, unprompted_similarities
from salfcbm.training.batches import Prefetched, map_features, project_channels_last, shard_batches, shard_tensors
from salfcbm.supervision.store import (
    ShardedStore,
    SimilarityStore,
    compute_similarity_store,
    compute_store,
)

__all__ = [
    "cubic_cosine_similarity",
    "bottleneck_loss",
    "BottleneckConfig",
    "HeadConfig",
    "PAPER_LAMBDAS",
    "BottleneckReport",
    "FitResult",
    "feature_store",
    "OnTheFlyFeatures",
    "train_bottleneck",
    "apply_cutoff",
    "cutoff_similarities",
    "CUTOFF_STATISTICS",
    "lam_for_solver",
    "concept_activations",
    "pooled_features",
    "fit_head",
    "fit",
]

logger = logging.getLogger("salfcbm")


# ----------------------------------------------------------------------------- the loss
def _cube_unit(x: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    x = x - (x.mean(0, keepdim=True) if mean is None else mean)
    x = x**3
    return x / x.norm(dim=0, keepdim=True).clamp_min(1e-12)


def cubic_cosine_similarity(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sim(q, p) of Eq. 1 for every concept and grid cell: ``(B, M, Hg, Wg) -> (M, Hg, Wg)``.

    For each ``(m, h, w)`` the batch vectors ``q = C[:, m, h, w]`` and
    ``p = P[:, m, h, w]`` are mean-centred over the batch, cubed elementwise and
    compared by cosine similarity (LF-CBM's ``cos_similarity_cubed_single``, per cell).

    Examples:
        >>> x = torch.randn(16, 3, 2, 2)
        >>> torch.allclose(cubic_cosine_similarity(x, 2 * x + 1), torch.ones(3, 2, 2), atol=1e-5)
        True
    """
    if pred.shape != target.shape:
        raise InputError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    if pred.shape[0] < 2:
        raise InputError("The cubic cosine similarity is taken across the batch; use a batch of at least 2.")
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return (_cube_unit(pred.to(dtype)) * _cube_unit(target.to(dtype))).sum(0)


def bottleneck_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``-sum_{m,h,w} sim(C[:, m, h, w], P[:, m, h, w])``."""
    return -cubic_cosine_similarity(pred, target).sum()


# ----------------------------------------------------------------------------- configs
#: The largest bottleneck learning rate accepted (the CLI's `--lr` has the same bound).
MAX_BOTTLENECK_LR = 10.0
#: The statistics the interpretability cutoff can be compared with (`BottleneckConfig.cutoff_statistic`).
CUTOFF_STATISTICS = ("cell", "pooled", LFCBM_STATISTIC)
#: Initialisations of the bottleneck (`BottleneckConfig.init`).
BOTTLENECK_INITS = ("normal", "lf-cbm")


def init_bottleneck(conv: nn.Conv2d, init: str = "normal") -> None:
    """Initialise the 1x1 bottleneck: ``"normal"`` N(0, 1/C), or ``"lf-cbm"`` U(+-1/sqrt(C)) (``nn.Linear``'s default)."""
    bound = 1.0 / math.sqrt(conv.in_channels)
    if init == "lf-cbm":
        nn.init.uniform_(conv.weight, -bound, bound)
    else:
        nn.init.normal_(conv.weight, std=bound)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@dataclass
class BottleneckConfig:
    """Hyper-parameters of the concept bottleneck stage (paper 3.3).

    Attributes:
        lr: Adam learning rate.
        batch_size: images per step (the cubic cosine is taken across the batch).
        max_steps: upper bound on optimisation steps; ``None`` (default): scaled with the data
            (`for_data`: 200 epochs, between 500 and 5000 steps).
        val_every: steps between validation checks; ``None``: scaled with the data (`for_data`).
        patience: validation checks without improvement before stopping; ``None``: scaled with the
            data, so training stops after about 20 epochs (between 50 and 500 steps) without a gain.
        weight_decay: Adam weight decay.
        cutoff: interpretability cutoff (LF-CBM's, 0.45; the paper states none): concepts whose
            validation similarity (``cutoff_statistic``) is below it are removed. Similarities lie
            in [-1, 1], so a cutoff below -1 is no cutoff: every concept is kept, even one whose
            similarity is undefined (a map that never varies, NaN).
        seed: seed of the initialisation and the batch order.
        cutoff_statistic: what the cutoff is compared with. ``"cell"`` (default): the Eq. 1
            similarity of every grid cell, averaged over the cells, i.e. how well the concept's
            *map* is learned. ``"lfcbm"``: LF-CBM's statistic exactly (``train_cbm.py``): the
            cubic cosine similarity (``cos_similarity_cubed_single``) of the pooled activation
            ``c*(x)`` with the scorer's similarity of the *unprompted* image, across validation
            images, kept when strictly above the cutoff (`salfcbm.training.cutoff`; needs a
            scorer with ``embed_images``). ``"pooled"``: the same cubic cosine against the
            pooled *prompted* targets (not LF-CBM's). The comparison on the demo world is in
            ``docs/training.md``.
        cutoff_guard: what happens to a concept the head needs that the cutoff removes (a concept the
            head fitted on every concept uses, when that head is better on validation than the head
            on the concepts that pass the cutoff). ``"keep"`` (default): it is kept, and listed in
            ``FitResult.cutoff["kept_for_head"]`` (and ``metrics.json``, the demo report);
            ``"warn"``: it is removed, listed in ``["needed_by_head"]``, and `fit` warns (the
            paper's recipes: LF-CBM removes it).
        init: the bottleneck's initial weights. ``"normal"`` (default): ``N(0, 1/C)`` for ``C``
            input channels. ``"lf-cbm"``: LF-CBM's projection layer, an ``nn.Linear`` with
            PyTorch's default init, ``U(-1/sqrt(C), 1/sqrt(C))`` (Kaiming-uniform with ``a = sqrt(5)``).
    """

    lr: float = 1e-3
    batch_size: int = 256
    max_steps: int | None = None
    val_every: int | None = None
    patience: int | None = None
    weight_decay: float = 0.0
    cutoff: float = 0.45
    seed: int = 0
    cutoff_statistic: str = "cell"
    cutoff_guard: str = "keep"
    init: str = "normal"

    def __post_init__(self):
        if self.cutoff_statistic not in CUTOFF_STATISTICS:
            raise InputError(
                f"BottleneckConfig.cutoff_statistic must be one of {list(CUTOFF_STATISTICS)} ('lfcbm' is LF-CBM's), "
                f"got {self.cutoff_statistic!r}."
            )
        if self.cutoff_guard not in ("keep", "warn"):
            raise InputError(f"BottleneckConfig.cutoff_guard must be 'keep' (keep concepts the head needs) or 'warn' "
                             f"(remove them and warn), got {self.cutoff_guard!r}.")
        if self.init not in BOTTLENECK_INITS:
            raise InputError(f"BottleneckConfig.init must be one of {BOTTLENECK_INITS} (LF-CBM's is 'lf-cbm'), "
                             f"got {self.init!r}.")
        for k in ("lr", "batch_size", "max_steps", "val_every", "patience"):
            v = getattr(self, k)
            if v is None and k in _AUTO_BOTTLENECK:
                continue  # scaled with the data by `for_data`
            if k != "lr" and (not isinstance(v, int) or isinstance(v, bool)):
                raise InputError(f"BottleneckConfig.{k} must be a positive int, got {v!r}.")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise InputError(f"BottleneckConfig.{k} must be a finite positive number, got {v!r}.")
        for k in ("weight_decay", "cutoff"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"BottleneckConfig.{k} must be a finite number, got {v!r}.")
        if self.batch_size < 2:
            raise InputError("BottleneckConfig.batch_size must be at least 2 (the loss is taken across the batch).")
        if self.lr > MAX_BOTTLENECK_LR:  # Adam's step is lr-sized: past this the weights overflow fp32
            raise InputError(f"BottleneckConfig.lr={self.lr!r} is beyond {MAX_BOTTLENECK_LR} (the paper and LF-CBM use "
                             "1e-3); pass a learning rate in (0, 10].")

    def for_data(self, n_train: int) -> BottleneckConfig:
        """This config with every automatic (``None``) field set from the number of training images.

        With ``E = ceil(n_train / batch_size)`` steps per epoch: ``max_steps = clip(200 E, 500, 5000)``;
        training stops when the validation similarity has not improved for ``W = clip(20 E, 50, 500)``
        steps, checked every ``val_every = clip(W / 5, 10, 50)`` steps (``patience = W / val_every``).
        Large data keeps the former fixed defaults (5000, 50, 10); 36 images stop after 50 steps
        without a gain instead of 500. Fields set explicitly are kept.

        Examples:
            >>> c = BottleneckConfig().for_data(36)
            >>> c.max_steps, c.val_every, c.patience
            (500, 10, 5)
            >>> c = BottleneckConfig().for_data(1_281_167)
            >>> c.max_steps, c.val_every, c.patience
            (5000, 50, 10)
        """
        if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0:
            raise InputError(f"n_train must be the number of training images (an int >= 0), got {n_train!r}.")
        epoch = max(1, math.ceil(n_train / self.batch_size))
        window = min(500, max(50, 20 * epoch))  # steps without a validation gain before stopping
        val_every = self.val_every or min(50, max(10, window // 5))
        auto = {
            "max_steps": min(5000, max(500, 200 * epoch)),
            "val_every": val_every,
            "patience": max(1, round(window / val_every)),
        }
        return replace(self, **{k: v for k, v in auto.items() if getattr(self, k) is None})

    @classmethod
    def quick(cls, **overrides: Any) -> BottleneckConfig:
        """Settings for a first try: at most 300 steps, stopping after 30 without a validation gain."""
        return cls(**{"max_steps": 300, "val_every": 10, "patience": 3, **overrides})


_AUTO_BOTTLENECK = ("max_steps", "val_every", "patience")

#: LF-CBM's fixed lambda per dataset (``training_commands.txt`` of LF-CBM), which SALF-CBM reuses (paper 3.4):
#: ``(SALF-CBM / LF-CBM head, standard-sparse baseline)``. "default" is LF-CBM's ``--lam`` default (CIFAR).
PAPER_LAMBDAS: dict[str, tuple[float, float]] = {
    "imagenet": (1e-4, 1e-4),
    "places365": (3e-4, 7e-4),
    "cub": (2e-4, 2e-5),
    "cifar10": (7e-4, 0.0125),
    "cifar100": (7e-4, 3e-3),
    "default": (7e-4, 7e-4),
}
_PRESET_ALIASES = {"places": "places365", "cub200": "cub", "cub-200-2011": "cub", "in1k": "imagenet"}


@dataclass
class HeadConfig:
    """Hyper-parameters of the final layer (paper 3.4).

    Selection of the regularisation strength ``lam``:

    * ``"fixed"``: the paper's choice. SALF-CBM reuses LF-CBM's single fixed ``lam`` per
      dataset (`PAPER_LAMBDAS`; `paper` builds it); the validation set plays no
      part in choosing the head.
    * ``"val_acc"`` (salfcbm's default, an extension): the path point with the best
      validation accuracy (optionally the sparsest within ``val_tolerance``).
    * ``"nec"`` (extension, as in VLG-CBM): the densest point with at most ``target_nec``
      non-zero weights per class.

    Attributes:
        sparse: elastic-net head (GLM-SAGA objective) if True, else a dense L2 head.
        alpha: elastic-net mixing (0.99 in the paper).
        n_lambdas: points on the regularisation path (with ``"fixed"``: at most this many
            warm-start points from ``lam_max`` down to ``lam``; the solution is the same).
            ``None`` (default): scaled with the data (`for_data`: one point per 25 training
            images, between 10 and 40).
        lambda_min_ratio: end of the path relative to ``lam_max``.
        select: ``"fixed"``, ``"val_acc"`` or ``"nec"``.
        target_nec: the NEC target with ``select="nec"``.
        max_iter: solver iterations per path point.
        val_tolerance: with ``select="val_acc"``, take the sparsest point whose validation
            accuracy is within this much of the best (like glmnet's ``lambda.1se``); 0 = the best.
        lam: the regularisation strength with ``select="fixed"``, LF-CBM's ``--lam``: LF-CBM passes
            it to GLM-SAGA as ``max_reg`` with ``k=1``, and GLM-SAGA solves at ``lam / max(0.001, alpha)``
            (``glm_saga/elasticnet.py``), i.e. mean cross-entropy + ``lam * ||W||_1 +
            lam (1 - alpha) / (2 alpha) * ||W||_F^2``. salfcbm solves the same point (`lam_for_solver`),
            so ``HeadConfig(lam=1e-4)`` is LF-CBM's ``--lam 0.0001``; the solved value is ``HeadFit.lam``.
            ``HeadConfig(lam=...)`` alone means ``select="fixed"``.
        baseline_lam: ``lam`` of the standard-sparse baseline with ``select="fixed"``
            (LF-CBM fits it with its own value); ``None`` = ``lam``.

    Examples:
        >>> HeadConfig.paper("imagenet").lam
        0.0001
        >>> HeadConfig(select="fixed", lam=7e-4).select
        'fixed'
    """

    sparse: bool = True
    alpha: float = 0.99
    n_lambdas: int | None = None
    lambda_min_ratio: float = 1e-3
    select: str = "val_acc"
    target_nec: float | None = None
    max_iter: int = 2000
    val_tolerance: float = 0.0
    lam: float | None = None
    baseline_lam: float | None = None

    def __post_init__(self):
        if self.lam is not None and self.select == "val_acc":
            self.select = "fixed"  # a lam given alone is the paper's fixed-lambda selection
        if self.select not in ("val_acc", "nec", "fixed"):
            raise InputError(f"HeadConfig.select must be 'fixed', 'val_acc' or 'nec', got {self.select!r}.")
        if not 0 <= self.val_tolerance < 1:
            raise InputError(f"HeadConfig.val_tolerance must be in [0, 1), got {self.val_tolerance!r}.")
        if self.select == "nec" and not self.target_nec:
            raise InputError("HeadConfig.select='nec' needs target_nec (non-zero weights per class), e.g. 5.")
        if self.select == "fixed" and self.lam is None:
            raise InputError(
                "HeadConfig.select='fixed' needs lam (e.g. 7e-4, LF-CBM's default), or use "
                f"HeadConfig.paper(dataset) with dataset in {sorted(PAPER_LAMBDAS)}."
            )
        for k in ("lam", "baseline_lam"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf):
                raise InputError(f"HeadConfig.{k} must be a positive number, got {v!r}.")
        if self.lam is not None and self.select != "fixed":
            raise InputError(f"HeadConfig.lam={self.lam!r} is only used with select='fixed'; got select={self.select!r}.")
        v = self.n_lambdas
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"HeadConfig.n_lambdas must be a positive int or None (scaled with the data), got {v!r}.")

    def for_data(self, n_train: int) -> HeadConfig:
        """This config with ``n_lambdas`` set from the number of training images when it is ``None``.

        ``clip(n_train // 25, 10, 40)`` path points: with few images the validation accuracy that
        selects a point takes few distinct values, so a fine path buys nothing; from 1000 images on,
        the former fixed 40.

        Examples:
            >>> HeadConfig().for_data(36).n_lambdas, HeadConfig().for_data(600).n_lambdas, HeadConfig().for_data(10**6).n_lambdas
            (10, 24, 40)
            >>> HeadConfig(n_lambdas=7).for_data(36).n_lambdas
            7
        """
        if self.n_lambdas is not None:
            return self
        return replace(self, n_lambdas=min(40, max(10, int(n_train) // 25)))

    @classmethod
    def quick(cls, **overrides: Any) -> HeadConfig:
        """Settings for a first try: a 10-point path."""
        return cls(**{"n_lambdas": 10, **overrides})

    @classmethod
    def paper(cls, dataset: str = "default", **overrides: Any) -> HeadConfig:
        """The paper's head selection: LF-CBM's fixed ``lam`` for ``dataset``, ``alpha = 0.99``.

        ``dataset`` is one of ``imagenet``, ``places365``, ``cub``, ``cifar10``, ``cifar100`` or
        ``default`` (LF-CBM's ``--lam`` default, 7e-4, for any other data).
        """
        key = _PRESET_ALIASES.get(str(dataset).lower(), str(dataset).lower())
        if key not in PAPER_LAMBDAS:
            from salfcbm.errors import closest

            near = closest(key, list(PAPER_LAMBDAS))
            raise InputError(
                f"No paper preset for dataset {dataset!r}; expected one of {sorted(PAPER_LAMBDAS)}"
                + (f" (closest: {', '.join(near)})" if near else "")
                + ". Use 'default' (lam = 7e-4) for other data, or HeadConfig(select='fixed', lam=...)."
            )
        lam, base = PAPER_LAMBDAS[key]
        return cls(**{"select": "fixed", "lam": lam, "baseline_lam": base, "alpha": 0.99, **overrides})

    def for_baseline(self) -> HeadConfig:
        """The configuration of the standard-sparse baseline (its own ``lam`` when fixed)."""
        if self.select == "fixed" and self.baseline_lam is not None:
            return replace(self, lam=self.baseline_lam)
        return self


@dataclass
class BottleneckReport:
    """What the bottleneck stage measured."""

    steps: int
    best_step: int
    best_val_similarity: float
    concept_similarity: dict[str, float]
    kept: list[str]
    dropped: list[tuple[str, float]]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    initial_val_similarity: float = float("nan")
    stop_reason: str = ""
    data_seconds: float = 0.0  # time the optimisation loop waited for batches
    pooled_similarity: dict[str, float] = field(default_factory=dict)
    cell_similarity: dict[str, float] = field(default_factory=dict)
    statistic: str = "cell"
    lfcbm_similarity: dict[str, float] = field(default_factory=dict)
    kept_for_head: list[str] = field(default_factory=list)


@dataclass
class FitResult:
    """The trained model and everything measured on the way."""

    model: SALFCBM
    bottleneck: BottleneckReport
    head: HeadFit
    baseline: HeadFit | None
    metrics: dict[str, Any]
    run_dir: Path | None = None
    cutoff: dict[str, Any] = field(default_factory=dict)
    """What the interpretability cutoff did (also ``metrics["cutoff"]``): ``statistic``, ``cutoff``,
    ``guard``, ``dropped`` (names), ``needed_by_head`` (dropped concepts the head on every concept
    uses), ``kept_for_head`` (those kept anyway with ``cutoff_guard="keep"``) and
    ``val_accuracy_without_cutoff``."""


# ----------------------------------------------------------------------------- data helpers
def labels_of(dataset) -> torch.Tensor:
    """The integer class labels of ``dataset`` (its ``labels``/``targets``, else read item by item)."""
    lab = getattr(dataset, "labels", None)
    if callable(lab):
        lab = lab()
    if lab is None:
        lab = getattr(dataset, "targets", None)
    if lab is not None:
        return _int_labels(lab)
    return _int_labels([dataset[i][1] for i in range(len(dataset))])


def _int_labels(values) -> torch.Tensor:
    """Class indices as a long tensor; a string or fractional label is an `InputError`, never silently cast."""
    import numbers

    if torch.is_tensor(values) and not values.is_floating_point() and not values.is_complex():
        return values.long().reshape(-1)
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    for i, v in enumerate(items):
        v = v.item() if torch.is_tensor(v) and v.numel() == 1 else v
        if isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()):
            items[i] = int(v)
            continue
        raise InputError(
            f"Labels must be integer class indices (0 to num_classes - 1); item {i} has the label {v!r} "
            f"({type(v).__name__}). Map class names to indices first (e.g. with the dataset's class_to_idx), or "
            "use salfcbm.datasets.ImageFolderDataset, whose labels are indices of its sorted class folders."
        )
    return torch.tensor(items, dtype=torch.long)


def feature_store(
    model: SALFCBM,
    dataset,
    root: str | os.PathLike,
    *,
    batch_size: int = 64,
    shard_size: int = 512,
    num_workers: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    desc: str = "Backbone features",
    inputs: str = "auto",
    precision: str = "fp32",
) -> ShardedStore:
    """Cache the backbone features of ``dataset`` resized to the grid: ``(N, C, Hg, Wg)`` fp16.

    The manifest records the backbone (spec and a hash of its weights), layer, grid and
    preprocessing, so a different backbone never reads a stale cache; computation is
    resumable shard by shard, each shard checked by its checksum and keyed by its images
    (``inputs``, see `compute_store`). Images are raw ``[0, 1]``
    tensors; each is cropped once with the model's geometry
    (`salfcbm.core.images.align_dataset`) and normalised.
    """
    device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
    dataset = align_dataset(dataset, model.image_transform)
    cfg = model.config
    manifest = {
        "kind": "features",
        "backbone": model.backbone_spec,
        "backbone_sha": backbone_fingerprint(model.backbone),
        "layer": cfg["layer"],
        "cls_concat": cfg["cls_concat"],
        "grid": list(model.grid),
        "input_size": cfg["input_size"],
        "input_mean": cfg["input_mean"],
        "input_std": cfg["input_std"],
        "dataset": dataset_identity(dataset, resolve_inputs(dataset, inputs)),
    }
    store = ShardedStore(
        root,
        manifest=manifest,
        item_shape=(cfg["feature_channels"], *model.grid),
        length=len(dataset),
        shard_size=shard_size,
        dtype=torch.float16,
        resizable=True,
    )

    check_precision(precision)

    @torch.no_grad()
    def fn(images: torch.Tensor, _indices: torch.Tensor) -> torch.Tensor:
        return _grid_features(model, images, device, precision)

    return compute_store(store, dataset, fn, batch_size=batch_size, num_workers=num_workers, progress=progress,
                         desc=desc, inputs=inputs)


def _grid_features(model: SALFCBM, images: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Backbone features of ``[0, 1]`` views (already cropped to the model's geometry) resized to the
    grid, float32 on the CPU."""
    x = model.image_transform.normalize(to_device(images, device))
    with autocast(device, precision):
        f = model.resize_to_grid(model.forward_features(x))
    return f.float().cpu()


class OnTheFlyFeatures:
    """Backbone features computed when read, with the read interface of a feature store.

    Use it instead of `feature_store` when caching ``(N, C, Hg, Wg)`` features does not
    fit on disk: every epoch runs the backbone again, shard by shard, so memory stays bounded
    by ``shard_size`` (``fit(..., cache_features=False)``, or ``"auto"`` above
    ``max_feature_cache_gb``). Bottleneck training computes the next shard in a background
    thread while the current one trains.
    """

    def __init__(self, model: SALFCBM, dataset: Dataset, *, shard_size: int = 512, batch_size: int = 64,
                 num_workers: int = 0, device: str | torch.device | None = None, precision: str = "fp32"):
        dataset = align_dataset(dataset, model.image_transform)
        self.model, self.dataset = model, dataset
        self.precision = check_precision(precision)
        self.length, self.shard_size = len(dataset), int(shard_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.item_shape = (model.config["feature_channels"], *model.grid)
        self.device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
        self.meta = {"kind": "features", "on_the_fly": True, "backbone_sha": backbone_fingerprint(model.backbone),
                     "layer": model.layer, "grid": list(model.grid),
                     "dataset": dataset_identity(dataset, resolve_inputs(dataset, "auto"))}

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.length / self.shard_size)) if self.length else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.length)

    @torch.no_grad()
    def read_shard(self, i: int) -> torch.Tensor:
        a, b = self.shard_range(i)
        subset = torch.utils.data.Subset(self.dataset, range(a, b))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        return torch.cat([_grid_features(self.model, batch[0], self.device, self.precision) for batch in loader])

    def iter_shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        for i in range(self.num_shards):
            yield self.shard_range(i)[0], self.read_shard(i)


def _shard_batches(
    features: ShardedStore, targets: SimilarityStore, concepts: Sequence[str], batch_size: int, rng: random.Random
) -> Prefetched:
    """Shuffled channels-last ``(features, targets)`` batches, epoch after epoch, prepared one shard
    ahead in a background thread (`salfcbm.training.batches.shard_batches`)."""
    return shard_batches(features, targets, concepts, batch_size, rng, repeat=True)


def _val_similarity(
    model: SALFCBM, features: ShardedStore, targets: SimilarityStore, concepts: Sequence[str],
    cache: list | None = None, pooled: bool = False,
) -> torch.Tensor:
    """Cubic cosine similarity over the whole validation set, streamed in two passes: ``(M, Hg, Wg)``.

    ``cache`` (a list) keeps the per-shard targets between calls when they fit in memory.
    ``pooled=True`` compares the pooled maps ``c*(x)`` with the pooled targets instead: ``(M,)``.
    """
    device = model.bottleneck.weight.device
    n = features.length

    def shards():  # channels-last float32 shards, converted once and kept when `cache` is given
        for s in range(features.num_shards):
            if cache is not None and len(cache) > s:
                x, p = cache[s]
            else:
                x, p = shard_tensors(features, targets, concepts, s)
                if cache is not None:
                    cache.append((x, p))
            x, p = to_device(x, device), to_device(p, device)
            yield x, (pool(p) if pooled else p)

    def pool(t):  # channels-last (B, Hg, Wg, M) -> (B, M) with the model's pooling
        return model.pool(t.permute(0, 3, 1, 2))

    def project(x):
        q = project_channels_last(model.bottleneck, x)
        return pool(q) if pooled else q

    sum_q = sum_p = None
    with torch.no_grad():
        for x, p in shards():
            q = project(x)
            sum_q = q.sum(0) if sum_q is None else sum_q + q.sum(0)
            sum_p = p.sum(0) if sum_p is None else sum_p + p.sum(0)
        mq, mp = sum_q / n, sum_p / n
        qp = qq = pp = 0.0
        for x, p in shards():
            q = (project(x) - mq) ** 3
            p = (p - mp) ** 3
            qp = qp + (q * p).sum(0)
            qq = qq + (q * q).sum(0)
            pp = pp + (p * p).sum(0)
    out = qp / (qq.sqrt() * pp.sqrt()).clamp_min(1e-12)
    return out if pooled else out.permute(2, 0, 1)  # (M,) or (M, Hg, Wg)


def _bottleneck_step(model: Any, opt: torch.optim.Optimizer, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """One Adam step of the Eq. 1 loss on a channels-last batch (one addmm); returns the loss."""
    loss = bottleneck_loss(project_channels_last(model.bottleneck, x), p)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _check_prunable(cfg: BottleneckConfig, prune: bool) -> BottleneckConfig:
    if prune and cfg.cutoff_statistic == LFCBM_STATISTIC:
        raise InputError("train_bottleneck(prune=True) cannot apply cutoff_statistic='lfcbm': it needs the unprompted "
                         "validation similarities. Use salfcbm.fit, or prune=False and then apply_cutoff.")
    return cfg


def train_bottleneck(
    model: SALFCBM,
    train_features: ShardedStore,
    train_targets: SimilarityStore,
    val_features: ShardedStore,
    val_targets: SimilarityStore,
    config: BottleneckConfig | None = None,
    *,
    progress: bool = True,
    prune: bool = True,
) -> BottleneckReport:
    """Train the 1x1-conv bottleneck with Eq. 1, keep the best weights, apply the cutoff.

    Only the bottleneck's parameters change. Memory is bounded by the batch size and the
    shard size, not by the number of images. With ``prune=True`` concepts whose mean
    validation similarity is below ``config.cutoff`` are removed from the model (conv rows
    and all) and reported.
    """
    cfg = _check_prunable(config or BottleneckConfig(), prune).for_data(train_features.length)
    concepts = list(model.concepts)
    if train_targets.grid != model.grid:
        raise InputError(
            f"The similarity store's grid {train_targets.grid} differs from the model's grid {model.grid}; "
            "wrap the backbone with the same grid the similarities were computed on."
        )
    if train_features.length != train_targets.length or val_features.length != val_targets.length:
        raise InputError("Feature and similarity stores must cover the same images (lengths differ).")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = model.bottleneck.weight.device
    init_bottleneck(model.bottleneck, cfg.init)
    opt = torch.optim.Adam(model.bottleneck.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    bad, step, done = 0, 0, False
    cells = val_features.item_shape[-1] * val_features.item_shape[-2]
    val_cache: list | None = [] if val_features.length * (model.num_concepts + val_features.item_shape[0]) * cells \
        <= 64_000_000 else None  # keep the converted validation shards in memory when they are small
    # the initial weights are the first candidate: training must beat them to be kept
    initial = _val_similarity(model, val_features, val_targets, concepts, val_cache).mean().item()
    best = (initial, 0, {k: v.detach().clone() for k, v in model.bottleneck.state_dict().items()})
    bar = tqdm(total=cfg.max_steps, desc="Concept bottleneck", disable=not progress, unit="step")
    batches = _shard_batches(train_features, train_targets, concepts, cfg.batch_size, rng)  # epochs back to back
    try:  # closed also when a step raises: the prefetch thread must not outlive the loop
        while not done:
            for x, p in batches:
                loss = _bottleneck_step(model, opt, to_device(x, device), to_device(p, device))
                step += 1
                bar.update(1)
                if step % cfg.val_every == 0 or step == cfg.max_steps:
                    sim = _val_similarity(model, val_features, val_targets, concepts, val_cache).mean().item()
                    history.append({"step": step, "train_loss": loss.item(), "val_similarity": sim})
                    bar.set_postfix(loss=f"{loss.item():.3g}", val_sim=f"{sim:.4f}")
                    if sim > best[0] + 1e-6:
                        best = (sim, step, {k: v.detach().clone() for k, v in model.bottleneck.state_dict().items()})
                        bad = 0
                    else:
                        bad += 1
                    if bad >= cfg.patience:
                        done = True
                if done or step >= cfg.max_steps:
                    done = True
                    break
            else:  # no batch at all: nothing to train on
                done = True
    finally:
        batches.close()
    data_seconds = batches.wait_seconds
    if bad >= cfg.patience:
        reason = (f"early stop at step {step}/{cfg.max_steps}: no validation gain in {cfg.patience} checks; "
                  f"best step {best[1]}")
    else:
        reason = f"max_steps {cfg.max_steps} reached; best step {best[1]}"
    close_bar(bar, step, reason)
    logger.info("Concept bottleneck: %s (validation similarity %.4f, initially %.4f)", reason, best[0], initial)
    model.bottleneck.load_state_dict(best[2])
    per_cell = _val_similarity(model, val_features, val_targets, concepts, val_cache).flatten(1).mean(1).cpu()
    pooled = _val_similarity(model, val_features, val_targets, concepts, val_cache, pooled=True).cpu()
    report = BottleneckReport(
        steps=step,
        best_step=best[1],
        best_val_similarity=float(best[0]),
        concept_similarity={},
        kept=list(concepts),
        dropped=[],
        history=history,
        seconds=time.perf_counter() - t0,
        pooled_similarity={c: float(v) for c, v in zip(concepts, pooled)},
        cell_similarity={c: float(v) for c, v in zip(concepts, per_cell)},
        initial_val_similarity=float(initial),
        stop_reason=reason,
        data_seconds=data_seconds,
    )
    return apply_cutoff(model, report, cfg, prune=prune)


def cutoff_similarities(report: BottleneckReport, statistic: str) -> dict[str, float]:
    """The per-concept validation statistic the cutoff compares with (``cell``, ``pooled`` or ``lfcbm``)."""
    if statistic == LFCBM_STATISTIC:
        if not report.lfcbm_similarity:
            raise InputError(
                "cutoff_statistic='lfcbm' needs the unprompted similarities of the validation images, which "
                "train_bottleneck does not have: use salfcbm.fit (it computes them with the scorer's embed_images), "
                "or set report.lfcbm_similarity from salfcbm.training.cutoff.lfcbm_similarity first."
            )
        return dict(report.lfcbm_similarity)
    return dict(report.pooled_similarity if statistic == "pooled" else report.cell_similarity)


def _passes(sim: float, config: BottleneckConfig) -> bool:
    # LF-CBM keeps ``sim > cutoff`` (a NaN similarity fails); salfcbm's own statistics keep ``>=``.
    # Similarities lie in [-1, 1]: a cutoff below -1 is no cutoff, and keeps every concept (NaN too).
    if config.cutoff < -1:
        return True
    return sim > config.cutoff if config.cutoff_statistic == LFCBM_STATISTIC else sim >= config.cutoff


def apply_cutoff(model: SALFCBM, report: BottleneckReport, config: BottleneckConfig, *, prune: bool = True,
                 keep_also: Sequence[str] = ()) -> BottleneckReport:
    """The interpretability cutoff (LF-CBM's, 0.45 by default) on a trained bottleneck.

    Concepts whose validation similarity (``config.cutoff_statistic``: per cell, pooled, or
    LF-CBM's) is below ``config.cutoff`` are listed in ``report.dropped`` and, with ``prune``,
    removed from ``model`` (bottleneck rows, head columns, statistics). Concepts in
    ``keep_also`` stay whatever their similarity (``report.kept_for_head``). The model must
    still hold every concept of ``report.cell_similarity``.
    """
    stat = config.cutoff_statistic
    sims = cutoff_similarities(report, stat)
    concepts = [c for c in model.concepts if c in sims]
    extra = set(keep_also)
    keep = [c for c in concepts if _passes(sims[c], config) or c in extra]
    dropped = [(c, sims[c]) for c in concepts if not (_passes(sims[c], config) or c in extra)]
    kept_for_head = [c for c in concepts if c in extra and not _passes(sims[c], config)]
    if prune:
        if not keep:
            best = max((v for v in sims.values() if v == v), default=float("nan"))
            raise AllConceptsCutError(
                f"Every concept fell below the interpretability cutoff {config.cutoff} ({stat} validation similarity, "
                f"best {best:.3f}). Lower `cutoff`, use another cutoff_statistic, train longer, or check that the "
                "similarities match the images.",
                sims,
            )
        if dropped:
            model.select_concepts(keep)
            logger.info("Interpretability cutoff removed %d concepts: %s", len(dropped), [d[0] for d in dropped])
    return replace(report, concept_similarity=sims, statistic=stat, kept=keep if prune else concepts,
                   dropped=dropped if prune else [], kept_for_head=kept_for_head if prune else [])


@torch.no_grad()
def concept_activations(model: SALFCBM, features: ShardedStore, batch: int = 1024) -> torch.Tensor:
    """Pooled concept activations c*(x) ``(N, M)`` from cached features (before standardisation)."""
    return map_features(model, features, model.pool, batch)


@torch.no_grad()
def pooled_features(features: ShardedStore) -> torch.Tensor:
    """Spatially averaged backbone features ``(N, C)``: the "standard" model's input."""
    return torch.cat([v.float().mean((2, 3)) for _, v in features.iter_shards()])


def standardize(train: torch.Tensor, *others: torch.Tensor):
    """Standardise ``train`` and ``others`` with ``train``'s per-column mean and std: ``(mean, std, [z, ...])``."""
    mean = train.mean(0)
    std = train.std(0).clamp_min(1e-6)
    return mean, std, [(x - mean) / std for x in (train, *others)]


def fit_head(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    config: HeadConfig | None = None, *, progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """Fit the final layer on standardised features with the configured solver."""
    cfg = (config or HeadConfig()).for_data(len(x_train))
    if not cfg.sparse:
        return fit_dense_head(x_train, y_train, x_val, y_val, num_classes=num_classes)
    if cfg.select == "fixed":
        return _fit_fixed_lambda(x_train, y_train, x_val, y_val, num_classes, cfg, progress=progress, desc=desc)
    fit_ = fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, n_lambdas=cfg.n_lambdas,
        lambda_min_ratio=cfg.lambda_min_ratio, select=cfg.select, target_nec=cfg.target_nec,
        max_iter=cfg.max_iter, progress=progress, desc=desc,
    )
    if cfg.select == "val_acc" and cfg.val_tolerance > 0:
        best = max(p.val_acc for p in fit_.path if p.val_acc is not None)
        ok = [i for i, p in enumerate(fit_.path) if p.val_acc is not None and p.val_acc >= best - cfg.val_tolerance]
        i = min(ok, key=lambda j: (fit_.path[j].nnz, -fit_.path[j].val_acc))
        p = fit_.path[i]
        fit_ = replace(fit_, weight=p.weight, bias=p.bias, lam=p.lam, selected=i, criterion="val_acc_tolerance")
    return fit_


def lam_for_solver(lam: float, alpha: float) -> float:
    """GLM-SAGA's regularisation strength for LF-CBM's ``--lam``: ``lam / max(0.001, alpha)``.

    LF-CBM sets ``metadata['max_reg']['nongrouped'] = lam`` and calls ``glm_saga(..., alpha, epsilon=1, k=1)``;
    GLM-SAGA's path starts at ``max_reg / max(0.001, alpha)`` and, with one point, ends there.

    Examples:
        >>> round(lam_for_solver(1e-4, 0.99), 10)
        0.0001010101
    """
    return float(lam) / max(0.001, float(alpha))


def _fit_fixed_lambda(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    cfg: HeadConfig, *, progress: bool = True, desc: str = "Sparse head path",
) -> HeadFit:
    """The paper's head: Eq. 2 solved at LF-CBM's fixed ``lam`` (GLM-SAGA's scaling; warm-started from ``lam_max``)."""
    lam_top = lambda_max(x_train, y_train, num_classes, cfg.alpha)
    lam = lam_for_solver(cfg.lam, cfg.alpha)
    if lam >= lam_top:
        warnings.warn(
            f"The fixed lam={cfg.lam:g} (solved at lam/alpha={lam:.4g}, as GLM-SAGA does) is at or above "
            f"lam_max={lam_top:.4g} for these features: the head has no "
            "non-zero weight and predicts the majority class. Lower lam (LF-CBM's default is 7e-4).",
            DegenerateResultWarning, stacklevel=3,
        )
        lams = [lam]
    else:
        n = max(2, min(cfg.n_lambdas, 1 + math.ceil(10 * math.log10(lam_top / lam))))
        lams = [lam_top * (lam / lam_top) ** (k / (n - 1)) for k in range(n)]
        lams[-1] = lam
    fit_ = fit_sparse_head(
        x_train, y_train, x_val, y_val, num_classes=num_classes, alpha=cfg.alpha, lambdas=lams, select="last",
        max_iter=cfg.max_iter, progress=progress, desc=f"{desc} (fixed lambda {lam:g})",
    )
    return replace(fit_, criterion="fixed")


def _filter_stage(model: SALFCBM, train_data: Dataset, sims: SimilarityStore, options: bool | dict[str, Any],
                  run: Path, *, batch_size: int, num_workers: int, progress: bool) -> ConceptFilterReport:
    """LF-CBM's concept filters on the model's concepts (resumable); the model keeps the survivors."""
    if not isinstance(options, (bool, dict)):
        raise InputError(f"filter_concepts must be True, False or a dict of filter_concepts options; got {options!r}.")
    opts = {} if options is True else dict(options)
    scorer = sims.scorer
    unprompted = callable(getattr(scorer, "embed_images", None))
    classes = model.config["class_names"] or []
    view, view_name = _unprompted_view(train_data, scorer) if unprompted else (train_data, "")
    key = _stage_key({"concepts": model.concepts, "classes": classes, "opts": opts, "s": sims.store.meta,
                      "unprompted": unprompted, **({"view": view_name} if view is not train_data else {})})
    path = run / "concept_filter.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("key") == key:
        r = saved["report"]
        report = ConceptFilterReport(kept=r["kept"], dropped=[tuple(d) for d in r["dropped"]], settings=r["settings"])
    else:
        top_k = opts.get("top_k", 5)
        if unprompted:
            act = unprompted_activity(scorer, view, model.concepts, top_k=top_k, batch_size=batch_size,
                                      num_workers=num_workers, progress=progress)
        else:
            act = sims.concept_activity(model.concepts, top_k=top_k)
        report = _filter(model.concepts, classes=classes, scorer=scorer, activations=act, **opts)
        report.settings["activation_source"] = f"unprompted images (LF-CBM), {view_name}" if unprompted else \
            "best prompted cell (the scorer has no embed_images)"
        _write_json(path, {"key": key, "report": report.to_dict()})
    if not report.kept:
        raise SalfCBMError(
            f"The concept filters removed every concept ({report}). Check the concept list against the class names "
            "and the data, relax the filter options, or pass filter_concepts=False."
        )
    if report.dropped:
        logger.info("Concept filters removed %d of %d concepts (%s); report in %s", len(report.dropped),
                    len(model.concepts), report.reasons, path)
        model.select_concepts(report.kept)
    return report


def _unprompted_view(data: Dataset, scorer: Any) -> tuple[Dataset, str]:
    """The training images for the unprompted activation test, cropped as the scorer's own preprocessing does.

    LF-CBM embeds them with CLIP's ``preprocess`` (shorter side to 224, centre crop), not
    with the backbone's crop. A dataset that can re-crop its files (``with_transform``) is
    given that geometry; any other keeps the model's view (recorded in the report).
    """
    size = getattr(scorer, "image_size", None)
    if size is None or not callable(getattr(data, "with_transform", None)) or \
            getattr(scorer, "resize_mode", "shortest") != "shortest":
        return data, "the model's crop (the dataset cannot re-crop its images)"
    from salfcbm.core.images import ImageTransform

    interp = getattr(scorer, "interpolation", "bicubic")
    t = ImageTransform(size=tuple(size), crop_pct=1.0, crop_mode="center", interpolation=interp)
    return data.with_transform(t), f"the scorer's own crop ({size[0]}x{size[1]}, {interp}, centre, whole shorter side)"


def _matched_nec(
    salf: dict[str, Any], train: tuple, val: tuple, test: tuple, num_classes: int, cfg: HeadConfig,
    *, progress: bool = True, stacklevel: int = 3,
) -> dict[str, Any]:
    """The standard-sparse baseline re-selected on its path at SALF-CBM's sparsity (same NEC).

    Accuracies of heads with different numbers of non-zero weights per class are not
    comparable; this row compares the baseline at the densest path point whose NEC does not
    exceed SALF-CBM's, so both models explain a class with (about) as many weights.
    """
    target = float(salf["nec"])
    out: dict[str, Any] = {"nec": target, "salfcbm": {k: salf[k] for k in ("val_accuracy", "test_accuracy", "nec")
                                                       if k in salf}}
    if target <= 0:
        warnings.warn("SALF-CBM's head has no non-zero weight: no matched-sparsity comparison.", DegenerateResultWarning,
                      stacklevel=stacklevel)
        return out
    fit_ = fit_sparse_head(
        train[0], train[1], val[0], val[1], num_classes=num_classes, alpha=cfg.alpha, n_lambdas=_matched_points(cfg),
        lambda_min_ratio=min(cfg.lambda_min_ratio, 1e-3), select="nec", target_nec=target, max_iter=cfg.max_iter,
        progress=progress, desc="Sparse head path (standard baseline at SALF-CBM's NEC)",
    )
    row = {"nec": float(fit_.point.nec), "lambda": fit_.lam, "val_accuracy": _accuracy(fit_.logits(val[0]), val[1])}
    if test[0] is not None:
        row["test_accuracy"] = _accuracy(fit_.logits(test[0]), test[1])
    out["standard_sparse"] = row
    return out


def _matched_points(cfg: HeadConfig) -> int:
    """Path points of the matched-NEC baseline: 2.5 times the head's (100 for the 40-point path), at most 100."""
    n = cfg.n_lambdas or 40
    return max(n, min(100, math.ceil(2.5 * n)))


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- the one call
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, default=str).encode())


def _check_same_classes(train: Dataset, others: dict[str, Dataset | None]) -> None:
    """Datasets that name their classes must name the same ones in the same order (labels are indices)."""
    ref = getattr(train, "classes", None)
    for name, data in others.items():
        got = getattr(data, "classes", None) if data is not None else None
        if ref is None or got is None or list(got) == list(ref):
            continue
        only_train, only_other = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
        what = (f"only in train_data: {only_train[:5]}, only in {name}: {only_other[:5]}" if only_train or only_other
                else "the same names in another order")
        raise InputError(
            f"{name} has other classes than train_data ({what}); its label indices would mean other classes and its "
            f"accuracy would be wrong. Give both folders the same class sub-folders."
        )


def _content(features: Any) -> str:
    """What a stage read: a store's content digest (changes with any recomputed shard), else its settings."""
    digest = getattr(features, "content_digest", None)
    return digest() if callable(digest) else _stage_key(features.meta)


def _record_all_cut(run: Path, error: AllConceptsCutError, cutoff: float) -> None:
    """Every concept was cut: say so in the log and in ``metrics.json`` before the error propagates."""
    finding = {"kind": diagnostics.ALL_CONCEPTS_CUT, "cutoff": cutoff, "concept_similarity": error.similarities,
               "message": str(error)}
    logger.error("Degenerate result (%s): %s", finding["kind"], finding["message"])
    _write_json(run / "metrics.json", {"status": "failed", "degenerate": [finding]})


def _stage_key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_store_alignment(store: SimilarityStore | None, data, split: str, inputs: str) -> None:
    """A similarity store passed in must have been computed on the model's views of ``data``
    (the same dataset type, settings and geometry as `align_dataset` gives)."""
    meta = store.store.meta.get("dataset") if store is not None else None
    if not isinstance(meta, dict):
        return
    want = dataset_identity(data, resolve_inputs(data, inputs))
    keys = ("type", "settings", "fingerprint")
    if any(meta.get(k) != want.get(k) for k in keys):
        raise AlignmentError(
            f"The {split} similarity store was computed on other images than the model's views of the {split} data "
            f"(store: {meta.get('type')} {meta.get('settings') or meta.get('fingerprint') or ''}; expected: "
            f"{want.get('type')}, cropped with the backbone's data config), so its prompt grid would not match the "
            "concept cells. Let fit() compute the similarities (pass `scorer=`), or compute them on "
            "salfcbm.core.images.align_dataset(data, model.image_transform)."
        )


def _choose_feature_cache(model: SALFCBM, splits: Sequence[Any], cache_features: bool | str,
                          limit_gb: float) -> tuple[bool, str]:
    """Whether ``fit`` caches backbone features, and why (the size estimate against the limit)."""
    if cache_features not in (True, False, "auto"):
        raise InputError(f"`cache_features` must be True, False or 'auto', got {cache_features!r}.")
    if not isinstance(limit_gb, (int, float)) or isinstance(limit_gb, bool) or limit_gb < 0:
        raise InputError(f"`max_feature_cache_gb` must be a number >= 0, got {limit_gb!r}.")
    n = sum(len(d) for d in splits)
    per_image = 2 * model.config["feature_channels"] * model.grid[0] * model.grid[1]  # fp16
    gb = n * per_image / 1e9
    size = f"{n} images x {per_image / 1e3:.1f} kB = {gb:.3g} GB"
    if cache_features is True:
        return True, f"cached on disk (cache_features=True; {size})"
    if cache_features is False:
        return False, f"computed on the fly every epoch (cache_features=False; a cache would hold {size})"
    if gb <= limit_gb:
        return True, f"cached on disk: {size} is within max_feature_cache_gb={limit_gb:g}"
    return False, (
        f"computed on the fly with prefetch, not cached: {size} exceeds max_feature_cache_gb={limit_gb:g} "
        "(raise it or pass cache_features=True to cache)"
    )


# ----------------------------------------------------------------------------- fit stages
class _RunDir:
    """The run directory: artefact paths, stage keys, resumable stage records and ``metrics.json``."""

    def __init__(self, run_dir: str | os.PathLike | None):
        import tempfile

        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="salfcbm-run-")
        self.path = Path(run_dir)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def load_bottleneck(self, model: SALFCBM, key: str) -> BottleneckReport | None:
        """The saved bottleneck (loaded into ``model``) and its report when its stage key matches, else ``None``."""
        bfile, bjson = self / "bottleneck.safetensors", self / "bottleneck.json"
        meta = read_checked_metadata(bfile) if bfile.exists() and bjson.exists() else None
        if meta is None or meta.get("salfcbm.key") != key:
            return None
        saved = json.loads(bjson.read_text())
        if saved.get("key") != key:
            return None
        from safetensors.torch import load_file

        model.bottleneck.load_state_dict(load_file(bfile))
        r = saved["report"]
        report = BottleneckReport(**{**r, "dropped": [tuple(d) for d in r["dropped"]]})
        logger.info("Resumed the bottleneck stage from %s", bfile)
        return report

    def save_bottleneck(self, model: SALFCBM, key: str, report: BottleneckReport) -> None:
        """Save the trained bottleneck and its report under the stage key."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.bottleneck.state_dict().items()}
        _write_json(self / "bottleneck.json", {"key": key, "report": asdict(report)})
        atomic_write_bytes(self / "bottleneck.safetensors", checked_safetensors(state, {"salfcbm.key": key}))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json``."""
        _write_json(self / "metrics.json", metrics)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block under ``timings[name]`` (not when it raises)."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def _prepare_inputs(model, prompts, train_data, val_data, test_data, train_similarities, val_similarities, *,
                    inputs: str, device):
    """Move the model, check the prompt grid and align every split to the model's view of an image."""
    if device is not None:
        model.to(device)
    prompts = prompts or PromptGrid(grid=model.grid)
    if tuple(prompts.grid) != model.grid:
        raise InputError(f"prompts.grid {prompts.grid} must equal the model's grid {model.grid}.")
    # one geometry: the scorer and the backbone both see the model's view of each image
    view = model.image_transform
    train_data, val_data = align_dataset(train_data, view), align_dataset(val_data, view)
    test_data = align_dataset(test_data, view) if test_data is not None else None
    _check_store_alignment(train_similarities, train_data, "train", inputs)
    _check_store_alignment(val_similarities, val_data, "val", inputs)
    return prompts, train_data, val_data, test_data


def _similarity_stage(run: _RunDir, train_data, val_data, scorer, prompts, train_similarities, val_similarities, *,
                      batch_size: int, num_workers: int, progress: bool, inputs: str):
    """Compute the missing train/val similarity stores (stage 1)."""
    if train_similarities is None or val_similarities is None:
        if scorer is None:
            raise InputError("fit() needs a `scorer` (e.g. CLIPScorer()) or both train/val similarity stores.")
        train_similarities = train_similarities or compute_similarity_store(
            run / "similarities" / "train", train_data, scorer, prompts, batch_size=batch_size, progress=progress,
            num_workers=num_workers, desc="Prompted embeddings (train)", inputs=inputs,
        )
        val_similarities = val_similarities or compute_similarity_store(
            run / "similarities" / "val", val_data, scorer, prompts, batch_size=batch_size, progress=progress,
            num_workers=num_workers, desc="Prompted embeddings (val)", inputs=inputs,
        )
    return train_similarities, val_similarities


def _feature_source(model: SALFCBM, run: _RunDir, splits: list, cache_features: bool | str, max_gb: float, *,
                    progress: bool, inputs: str, **kw):
    """Choose (and log) whether backbone features are cached; return a ``(data, split)`` getter and the choice."""
    cache, reason = _choose_feature_cache(model, splits, cache_features, max_gb)
    (logger.info if cache or cache_features is False else logger.warning)("Backbone features: %s", reason)

    def features(data, split):
        if cache:
            return feature_store(model, data, run / "features" / split, progress=progress,
                                 desc=f"Backbone features ({split})", inputs=inputs, **kw)
        return OnTheFlyFeatures(model, data, **kw)

    return features, cache, reason


def _bottleneck_stage(model: SALFCBM, run: _RunDir, bcfg: BottleneckConfig, f_train, f_val, train_similarities,
                      val_similarities, *, val_data=None, loader: dict[str, Any] | None = None, progress: bool):
    """Train (or resume) the bottleneck on every candidate (stage 3); the cutoff is `_cutoff_stage`'s.

    Returns the report (with LF-CBM's statistic when ``bcfg`` asks for it), the candidate concepts and
    their train/val pooled activations.
    """
    candidates = list(model.concepts)
    trained = {k: v for k, v in asdict(bcfg).items() if k not in ("cutoff", "cutoff_statistic", "cutoff_guard")
               and not (k == "init" and v == "normal")}  # the default init keeps earlier runs' keys
    key = _stage_key({"b": trained, "concepts": candidates, "f": f_train.meta, "s": train_similarities.store.meta,
                      "data": [_content(x) for x in (f_train, f_val, train_similarities.store, val_similarities.store)],
                      "v": 2})
    report = run.load_bottleneck(model, key)
    if report is None:
        report = train_bottleneck(model, f_train, train_similarities, f_val, val_similarities,
                                  replace(bcfg, cutoff_statistic="cell"), progress=progress, prune=False)
        run.save_bottleneck(model, key, report)
    full_train, full_val = concept_activations(model, f_train), concept_activations(model, f_val)
    if bcfg.cutoff_statistic == LFCBM_STATISTIC:
        clip = _unprompted_val(run, val_similarities, val_data, candidates, **(loader or {}))
        report = replace(report, lfcbm_similarity={c: float(v) for c, v in
                                                   zip(candidates, lfcbm_similarity(clip, full_val))})
    return report, candidates, full_train, full_val


def _unprompted_val(run: _RunDir, val_similarities: SimilarityStore, val_data, concepts: list[str], *,
                    batch_size: int = 64, num_workers: int = 0, progress: bool = True) -> torch.Tensor:
    """LF-CBM's ``val_clip_features`` ``(N, M)`` of the validation images (cached in the run directory)."""
    from safetensors.torch import load_file

    if val_data is None:
        raise InputError("cutoff_statistic='lfcbm' needs the validation images (fit's val_data).")
    key = _stage_key({"concepts": concepts, "s": val_similarities.store.meta,
                      "data": _content(val_similarities.store), "n": len(val_data)})
    path = run / "cutoff_unprompted_val.safetensors"
    meta = read_checked_metadata(path) if path.exists() else None
    if meta is not None and meta.get("salfcbm.key") == key:
        return load_file(path)["similarity"]
    sims = unprompted_similarities(val_similarities.scorer, val_data, concepts, batch_size=batch_size,
                                   num_workers=num_workers, progress=progress)
    if sims.shape != (len(val_data), len(concepts)):
        raise InputError(f"The scorer's unprompted similarities have shape {tuple(sims.shape)}; expected "
                         f"({len(val_data)}, {len(concepts)}) (validation images x concepts).")
    atomic_write_bytes(path, checked_safetensors({"similarity": sims.contiguous()}, {"salfcbm.key": key}))
    return sims


def _cutoff_stage(model: SALFCBM, run: _RunDir, report: BottleneckReport, bcfg: BottleneckConfig,
                  candidates: list[str], train: tuple, val: tuple, hcfg: HeadConfig, *, progress: bool
                  ) -> tuple[BottleneckReport, dict[str, Any]]:
    """Apply the interpretability cutoff; first check whether the head needs a concept it removes.

    When the cutoff removes concepts, the head is fitted on every candidate and on the survivors.
    A removed concept that the head on every candidate gives a non-zero weight is "needed by the
    head" when that head is also better on validation than the head on the survivors. With
    ``cutoff_guard="keep"`` such concepts are kept; with ``"warn"`` they are removed (and `fit`
    warns). Either way the returned check lists them with both validation accuracies. When no
    concept passes the cutoff nothing is rescued: `AllConceptsCutError`.
    """
    trial = apply_cutoff(model, report, bcfg, prune=False)
    dropped = [c for c in trial.kept if not _passes(trial.concept_similarity[c], bcfg)]
    check: dict[str, Any] = {"cutoff": bcfg.cutoff, "statistic": bcfg.cutoff_statistic, "guard": bcfg.cutoff_guard,
                             "candidates": len(candidates), "dropped": [], "needed_by_head": [], "kept_for_head": []}
    needed: list[str] = []
    if dropped and len(dropped) < len(candidates):  # every concept cut: AllConceptsCutError, no rescue
        _, _, (z_train, z_val) = standardize(train[0], val[0])
        full = fit_head(z_train, train[1], z_val, val[1], model.num_classes, hcfg, progress=progress,
                        desc="Sparse head path (all concepts, cutoff check)")
        check["val_accuracy_without_cutoff"] = acc_all = _accuracy(full.logits(z_val), val[1])
        cols = [i for i, c in enumerate(candidates) if c not in set(dropped)]
        cut = fit_head(z_train[:, cols], train[1], z_val[:, cols], val[1], model.num_classes, hcfg,
                       progress=progress, desc="Sparse head path (cutoff check)")
        check["val_accuracy_with_cutoff"] = acc_cut = _accuracy(cut.logits(z_val[:, cols]), val[1])
        used = (full.weight != 0).any(0)
        if acc_all > acc_cut:
            needed = [c for c in dropped if used[candidates.index(c)]]
    try:
        report = apply_cutoff(model, report, bcfg, keep_also=needed if bcfg.cutoff_guard == "keep" else ())
    except AllConceptsCutError as e:
        _record_all_cut(run.path, e, bcfg.cutoff)
        raise
    sims = report.concept_similarity
    check["dropped"] = [c for c, _ in report.dropped]
    check["needed_by_head"] = [(c, round(sims[c], 3)) for c in needed]
    check["kept_for_head"] = list(report.kept_for_head)
    check["kept"] = len(report.kept)
    if report.kept_for_head:
        logger.warning("The interpretability cutoff (%s similarity, %s) would remove %d concepts the head uses; "
                       "kept for the head (cutoff_guard='keep'): %s", bcfg.cutoff_statistic, bcfg.cutoff,
                       len(report.kept_for_head), report.kept_for_head)
    return report, check


def _warn_needed(check: dict[str, Any], val_accuracy: float) -> None:
    """With ``cutoff_guard="warn"``: warn when the cutoff removed concepts the better all-concept head uses."""
    needed = [n for n in check["needed_by_head"] if n[0] not in check["kept_for_head"]]
    acc = check.get("val_accuracy_without_cutoff", float("-inf"))
    if needed:
        warnings.warn(
            f"The interpretability cutoff ({check['statistic']} similarity below {check['cutoff']}) removed concepts "
            f"the head uses when they are kept: {', '.join(f'{c!r} ({s})' for c, s in needed)}. Validation accuracy "
            f"with them {acc:.3f}, without {val_accuracy:.3f}. Keep them (BottleneckConfig(cutoff_guard='keep')), "
            "lower the cutoff, or compare another cutoff_statistic.",
            DegenerateResultWarning, stacklevel=4,
        )


def _head_stage(model: SALFCBM, candidates: list[str], full_train, full_val, y_train, y_val, hcfg: HeadConfig, *,
                progress: bool):
    """Fit the head on standardised kept-concept activations and load it into ``model`` (stage 4)."""
    cols = [candidates.index(c) for c in model.concepts]
    a_train, a_val = full_train[:, cols], full_val[:, cols]
    mean, std, (z_train, z_val) = standardize(a_train, a_val)
    head_fit = fit_head(z_train, y_train, z_val, y_val, model.num_classes, hcfg, progress=progress,
                        desc="Sparse head path (SALF-CBM)")
    with torch.no_grad():
        model.concept_mean.copy_(mean)
        model.concept_std.copy_(std)
        model.head.weight.copy_(head_fit.weight)
        model.head.bias.copy_(head_fit.bias)
    return head_fit, z_train, z_val


def _presence_stage(model: SALFCBM, f_val, val_similarities: SimilarityStore) -> dict[str, Any]:
    """Calibrate presence on the validation split (label-free; `salfcbm.training.presence`) and store it."""
    peaks = presence.concept_peaks(model, f_val)
    thresholds, report = presence.calibrate_presence(peaks, presence.target_peaks(val_similarities, model.concepts))
    model.set_presence_threshold(thresholds)
    return report


def _fit_metrics(model: SALFCBM, head_fit: HeadFit, report: BottleneckReport, z_train, z_val, y_train, y_val,
                 cache: bool, reason: str, freport: ConceptFilterReport | None) -> dict[str, Any]:
    """The SALF-CBM, bottleneck, path, features and concept-filter entries of ``metrics.json``."""
    metrics: dict[str, Any] = {
        "salfcbm": {
            "train_accuracy": _accuracy(head_fit.logits(z_train), y_train),
            "val_accuracy": _accuracy(head_fit.logits(z_val), y_val),
            "nnz": int((head_fit.weight != 0).sum()),
            "nec": float((head_fit.weight != 0).sum() / head_fit.weight.shape[0]),
            "lambda": head_fit.lam,
            "selection": head_fit.criterion,
            "concepts": model.num_concepts,
            "concepts_dropped": len(report.dropped),
        },
        "bottleneck": {
            "steps": report.steps,
            "best_step": report.best_step,
            "val_similarity": report.best_val_similarity,
            "initial_val_similarity": report.initial_val_similarity,
            "stop_reason": report.stop_reason,
            "dropped": report.dropped,
        },
        "path": head_fit.summary(),
        "features": {"cached": cache, "reason": reason},
    }
    if freport is not None:
        metrics["concept_filter"] = {"kept": len(freport.kept), "dropped": len(freport.dropped),
                                     "reasons": freport.reasons, "settings": freport.settings}
    return metrics


def _baseline_stage(model: SALFCBM, metrics: dict[str, Any], f_train, f_val, f_test, y_train, y_val, y_test,
                    hcfg: HeadConfig, *, progress: bool):
    """Fit the standard head on pooled backbone features and add its metrics (and matched NEC) to ``metrics``."""
    g_train, g_val = pooled_features(f_train), pooled_features(f_val)
    g_mean, g_std, (s_train, s_val) = standardize(g_train, g_val)
    base_fit = fit_head(s_train, y_train, s_val, y_val, model.num_classes, hcfg.for_baseline(), progress=progress,
                        desc="Sparse head path (standard baseline)")
    name = "standard_sparse" if hcfg.sparse else "standard_dense"
    metrics[name] = {
        "train_accuracy": _accuracy(base_fit.logits(s_train), y_train),
        "val_accuracy": _accuracy(base_fit.logits(s_val), y_val),
        "nnz": int((base_fit.weight != 0).sum()),
        "nec": float((base_fit.weight != 0).sum() / base_fit.weight.shape[0]),
        "lambda": base_fit.lam,
        "features": int(g_train.shape[1]),
    }
    s_test = (pooled_features(f_test) - g_mean) / g_std if f_test is not None else None
    if s_test is not None:
        metrics[name]["test_accuracy"] = _accuracy(base_fit.logits(s_test), y_test)
    if hcfg.sparse:
        metrics["matched_nec"] = _matched_nec(
            metrics["salfcbm"], (s_train, y_train), (s_val, y_val), (s_test, y_test), model.num_classes, hcfg,
            progress=progress, stacklevel=4,
        )
    return base_fit, name, s_val


def _findings(report: BottleneckReport, head_fit: HeadFit, z_val, y_val, base_fit: HeadFit | None, s_val,
              name: str | None) -> list[dict[str, Any]]:
    """Degenerate-result findings for the bottleneck, the head and the baseline head."""
    findings = diagnostics.bottleneck_findings(report.initial_val_similarity, report.best_val_similarity,
                                               report.steps)
    findings += diagnostics.head_findings(head_fit.weight, head_fit.logits(z_val), y_val)
    if base_fit is not None:
        findings += diagnostics.head_findings(base_fit.weight, base_fit.logits(s_val), y_val, head=name)
    return findings


def _save_stage(model: SALFCBM, run: _RunDir, metrics: dict[str, Any]) -> None:
    """Record the head's summary stats, save the model to ``run/model`` and write ``metrics.json``."""
    model.set_head_stats({
        "val_accuracy": round(metrics["salfcbm"]["val_accuracy"], 4),
        "nec": round(metrics["salfcbm"]["nec"], 2),
    })
    model.save_pretrained(run / "model")
    run.write_metrics(metrics)


def fit(
    model: SALFCBM,
    train_data: Dataset,
    val_data: Dataset,
    *,
    scorer: ConceptScorer | None = None,
    prompts: PromptGrid | None = None,
    train_similarities: SimilarityStore | None = None,
    val_similarities: SimilarityStore | None = None,
    run_dir: str | os.PathLike | None = None,
    bottleneck: BottleneckConfig | None = None,
    head: HeadConfig | None = None,
    baseline: bool = True,
    cache_features: bool | str = "auto",
    max_feature_cache_gb: float = 64.0,
    test_data: Dataset | None = None,
    filter_concepts: bool | dict[str, Any] = True,
    batch_size: int = 64,
    shard_size: int = 512,
    num_workers: int | None = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    inputs: str = "auto",
    precision: str = "fp32",
    calibrate_presence: bool = True,
) -> FitResult:
    """Train a wrapped model end to end: similarities, features, bottleneck, head (+ baseline).

    Every stage writes its artefact under ``run_dir`` (similarity and feature stores,
    ``bottleneck.safetensors``, ``head.safetensors``) and is skipped when the run is
    started again with the same settings, so an interrupted run resumes where it stopped.

    Args:
        model: a `SALFCBM` from `salfcbm.wrap` (its concept list is the candidate list).
        train_data: dataset of ``(image, label)`` with raw images ``(3, H, W)`` (float in ``[0, 1]`` or
            uint8) of any size: each is cropped once with the model's geometry
            (`SALFCBM.image_transform`), and the scorer and the backbone both see that crop.
        val_data: validation dataset, same format.
        scorer: a `ConceptScorer` (e.g. CLIP) to compute similarities
            (or pass both similarity stores).
        prompts: the visual prompt grid; its grid must equal the model's.
        train_similarities: an existing similarity store of ``train_data``.
        val_similarities: an existing similarity store of ``val_data``.
        run_dir: where artefacts, ``metrics.json`` and the saved model go (a temporary
            directory if ``None``; nothing is resumable then).
        bottleneck: bottleneck stage hyper-parameters; its automatic fields (``max_steps``,
            ``val_every``, ``patience``) scale with ``len(train_data)`` (`BottleneckConfig.for_data`).
        head: final layer hyper-parameters; an automatic ``n_lambdas`` scales with the data
            (`HeadConfig.for_data`). The settings used are in ``metrics["settings"]``.
        baseline: also fit the "standard, sparse" head on pooled backbone features.
        cache_features: ``True`` caches backbone features in sharded fp16 stores (fast epochs);
            ``False`` recomputes them on the fly every epoch (`OnTheFlyFeatures`, no disk,
            prefetched in the background); ``"auto"`` caches unless the cache would exceed
            ``max_feature_cache_gb``. The choice and its reason are logged and recorded in
            ``metrics["features"]``.
        max_feature_cache_gb: the cache size above which ``"auto"`` computes features on the fly
            (ResNet-50's 2048x7x7 fp16 map is about 200 kB per image, 257 GB for ImageNet).
        test_data: optional held-out dataset; both heads are evaluated on it (``test_accuracy``).
        filter_concepts: run LF-CBM's concept filters (`filter_concepts`)
            on the model's concepts before training: length, class and concept near-duplicates,
            and "never fires" on the unprompted training images when the scorer has
            ``embed_images`` (else on the best prompted cell). A dict passes keyword options
            (e.g. ``{"activation_cutoff": 0.28}`` for ImageNet); ``False`` skips it. The report
            is saved as ``run_dir/concept_filter.json``.
        batch_size: images per batch when computing stores.
        shard_size: images per shard of the feature stores.
        num_workers: DataLoader workers, at most the CPU cores available (``None``: ``min(4, cores - 1)``).
        progress: show tqdm progress bars.
        device: where to run (default: where the model is); CPU-to-GPU copies use pinned memory
            and do not block.
        inputs: how the stores key their shards by the images (``"auto"``, ``"files"``, ``"content"``
            for a full pixel hash, ``"fingerprint"``; see `compute_store`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: autocast for the backbone while computing
            features (stored as fp16 either way); the bottleneck and head train in fp32.
        calibrate_presence: choose a presence threshold per concept on the validation split, against
            the targets (label-free; `salfcbm.training.presence`), and store it in the model
            (`SALFCBM.presence_threshold`): explanations then call a concept present when the peak of
            its standardised map is above it. ``False``: present means above the training mean.

    Returns:
        A `FitResult` with the trained model (saved to ``run_dir/model``) and metrics.

    Examples:
        >>> result = salfcbm.fit(model, train_set, val_set, scorer=salfcbm.CLIPScorer(), run_dir="runs/cub")  # doctest: +SKIP
    """
    n_train = len(train_data)
    bcfg = (bottleneck or BottleneckConfig()).for_data(n_train)  # automatic settings scale with the data
    hcfg = (head or HeadConfig()).for_data(n_train)
    num_workers = resolve_num_workers(num_workers)
    _check_same_classes(train_data, {"val_data": val_data, "test_data": test_data})
    run = _RunDir(run_dir)
    prompts, train_data, val_data, test_data = _prepare_inputs(
        model, prompts, train_data, val_data, test_data, train_similarities, val_similarities,
        inputs=inputs, device=device)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    loader = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}

    # 1. similarities (and the concept filters)
    with _timed(timings, "similarities"):
        train_similarities, val_similarities = _similarity_stage(
            run, train_data, val_data, scorer, prompts, train_similarities, val_similarities, inputs=inputs, **loader)
    freport = None
    if filter_concepts is not False:
        with _timed(timings, "concept_filter"):
            freport = _filter_stage(model, train_data, train_similarities, filter_concepts, run.path, **loader)

    # 2. features
    with _timed(timings, "features"):
        splits = [d for d in (train_data, val_data, test_data) if d is not None]
        features, cache, reason = _feature_source(
            model, run, splits, cache_features, max_feature_cache_gb, progress=progress, inputs=inputs,
            batch_size=batch_size, shard_size=shard_size, num_workers=num_workers, precision=precision)
        f_train, f_val = features(train_data, "train"), features(val_data, "val")

    # 3. bottleneck (resumable; the cutoff is applied after, so changing it does not retrain)
    with _timed(timings, "bottleneck"):
        report, candidates, full_train, full_val = _bottleneck_stage(
            model, run, bcfg, f_train, f_val, train_similarities, val_similarities, val_data=val_data,
            loader=loader, progress=progress)
    y_train, y_val = labels_of(train_data), labels_of(val_data)
    with _timed(timings, "cutoff"):
        report, cut = _cutoff_stage(model, run, report, bcfg, candidates, (full_train, y_train), (full_val, y_val),
                                    hcfg, progress=progress)

    # 4. head on standardised pooled concept activations
    with _timed(timings, "head"):
        head_fit, z_train, z_val = _head_stage(model, candidates, full_train, full_val, y_train, y_val, hcfg,
                                               progress=progress)

    # 4b. presence thresholds, calibrated on the validation split against the targets (label-free)
    model.set_presence_threshold(None)
    if calibrate_presence:
        with _timed(timings, "presence"):
            presence_report = _presence_stage(model, f_val, val_similarities)

    # 5. metrics, cutoff check, test accuracy and the standard baseline
    metrics = _fit_metrics(model, head_fit, report, z_train, z_val, y_train, y_val, cache, reason, freport)
    metrics["presence"] = presence_report if calibrate_presence else None
    metrics["cutoff"] = cut
    _warn_needed(cut, metrics["salfcbm"]["val_accuracy"])
    f_test = y_test = None
    if test_data is not None:
        f_test = features(test_data, "test")
        y_test = labels_of(test_data)
        z_test = model.standardize(concept_activations(model, f_test))
        metrics["salfcbm"]["test_accuracy"] = _accuracy(head_fit.logits(z_test), y_test)
    base_fit = name = s_val = None
    if baseline:
        with _timed(timings, "baseline"):
            base_fit, name, s_val = _baseline_stage(model, metrics, f_train, f_val, f_test, y_train, y_val, y_test,
                                                    hcfg, progress=progress)
    timings["total"] = time.perf_counter() - t_start
    metrics["seconds"] = timings
    metrics["settings"] = {"bottleneck": asdict(bcfg), "head": asdict(hcfg), "num_workers": num_workers}
    metrics["degenerate"] = findings = _findings(report, head_fit, z_val, y_val, base_fit, s_val, name)
    diagnostics.report(findings, stacklevel=3)

    # 6. save
    _save_stage(model, run, metrics)
    return FitResult(model=model, bottleneck=report, head=head_fit, baseline=base_fit, metrics=metrics,
                     run_dir=run.path, cutoff=cut)
