"""The settings and results of training: `BottleneckConfig` (the one home of the bottleneck's
settings), `BottleneckReport`, `FitResult`, and `Splits`, the train/val/test triple the stages of
`salfcbm.training.fit` pass between them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from salfcbm.errors import InputError
from salfcbm.training.cutoff import LFCBM_STATISTIC

if TYPE_CHECKING:
    from salfcbm.core.model import SALFCBM
    from salfcbm.head.solver import HeadFit

__all__ = [
    "BOTTLENECK_INITS",
    "BottleneckConfig",
    "BottleneckReport",
    "CUTOFF_STATISTICS",
    "FitResult",
    "MAX_BOTTLENECK_LR",
    "Splits",
]

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Splits(Generic[T]):
    """One value per split: ``train``, ``val`` and an optional ``test`` (``None`` when there is none).

    The stages of `fit` pass their inputs and outputs (datasets, feature sources, labels,
    activations) as one `Splits` rather than loose ``x_train, x_val, x_test`` arguments.

    Examples:
        >>> s = Splits(train=[1, 2, 3], val=[4])
        >>> s.map(len)
        Splits(train=3, val=1, test=None)
        >>> s.names()
        ('train', 'val')
    """

    train: T
    val: T
    test: T | None = None

    def map(self, fn: Callable[[T], U]) -> Splits[U]:
        """``fn`` applied to every split that is present (a missing test split stays ``None``)."""
        return Splits(fn(self.train), fn(self.val), None if self.test is None else fn(self.test))

    def names(self) -> tuple[str, ...]:
        """The names of the splits present, in order."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def items(self) -> list[tuple[str, T]]:
        """``(name, value)`` of every split present."""
        return [(n, getattr(self, n)) for n in self.names()]


#: The largest bottleneck learning rate accepted (the CLI's `--lr` has the same bound).
MAX_BOTTLENECK_LR = 10.0
#: The statistics the interpretability cutoff can be compared with (`BottleneckConfig.cutoff_statistic`).
CUTOFF_STATISTICS = ("cell", "pooled", LFCBM_STATISTIC)
#: Initialisations of the bottleneck (`BottleneckConfig.init`).
BOTTLENECK_INITS = ("normal", "lf-cbm")


@dataclass
class BottleneckConfig:
    """Hyper-parameters of the concept bottleneck stage (paper 3.3).

    The one home of the bottleneck's settings: the demo's and the recipes' configurations nest a
    `BottleneckConfig` rather than repeating its fields.

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
    ranks: int = 1  # the torch.distributed ranks that trained the bottleneck together


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

