"""Named, versioned recipes: the paper's settings for every experiment (paper 4.1, 4.2, A.2, B.1).

A `Recipe` is a frozen value: backbone and its exact weights, tapped layer, prompt
grid, scorer, concept set, cutoffs, head selection, batch sizes and splits. Its
`Recipe.key` (``name@vN``) is written into every run directory, and a run directory
made by another version refuses to resume. Change a setting = bump the version.

Settings not stated by the SALF-CBM paper are LF-CBM's (the paper: "the same initial concept
list and regularization parameters alpha and lambda as in [19]"), from LF-CBM's
``training_commands.txt``: the concept sets, the top-5 activation cutoff (``clip_cutoff``),
the interpretability cutoff 0.45 and the fixed ``lam`` of the sparse head (and of the
"standard, sparse" baseline), and LF-CBM's projection-layer regime (Adam 1e-3, at most 1,000
steps, a stop at the first validation decrease, ``nn.Linear``'s init) with the batch capped where
49 cells per image do not fit a GPU. The pooling of the concept maps, which the paper does not
state, is the authors' released model's (softmax). ``sources.py`` documents each setting. Deviation: LF-CBM early-stops on the test set; a recipe holds
out ``val_fraction`` of the training set instead (stratified, seeded), and reports the
official validation / test split as the test accuracy, as the paper's Table 1 does (kept:
early stopping on the test split would let the test set choose the model).

The prompt grid is the paper's 7x7 at 224 px (section 4.1, Table 3's best point); the authors'
released ImageNet demo model uses a 12x12 map at 448 px, which the paper does not report, so the
recipes follow the paper. Every setting's provenance (paper, LF-CBM, the authors' code) is in
`salfcbm.reproduce.sources` and rendered in ``docs/method.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from salfcbm.errors import InputError, UnknownRecipeError

__all__ = ["RECIPES", "Recipe", "RecipeBottleneck", "UnknownRecipeError", "get_recipe", "list_recipes"]


@dataclass(frozen=True)
class RecipeBottleneck:
    """The bottleneck regime of a recipe: `salfcbm.training.BottleneckConfig`'s names, without torch.

    LF-CBM's projection-layer regime: Adam 1e-3, at most 1,000 steps, a validation check every 50
    steps and a stop at the first one without a gain, ``nn.Linear``'s init; the batch is capped where
    49 cells per image do not fit a GPU. `config` builds the `BottleneckConfig` a run trains with.

    Attributes:
        lr: Adam learning rate of the bottleneck.
        batch_size: images per bottleneck step, at most the training set (LF-CBM's
            ``min(proj_batch_size, N)``): 50,000 for CUB (the whole set, as LF-CBM), 8,192 for
            ImageNet and Places365 (LF-CBM's 50,000 does not fit a GPU at 49 cells per image).
        max_steps: maximum bottleneck steps (LF-CBM's ``proj_steps``, 1,000).
        patience: validation checks without a gain before the bottleneck stops
            (1: LF-CBM's stop at the first validation increase).
        val_every: steps between validation checks (LF-CBM: 50).
        init: ``"lf-cbm"`` (``nn.Linear``'s default, as LF-CBM's projection) or ``"normal"``.
    """

    lr: float = 1e-3
    batch_size: int = 8192
    max_steps: int = 1000
    patience: int = 1
    val_every: int = 50
    init: str = "lf-cbm"

    def __post_init__(self) -> None:
        if self.init not in BOTTLENECK_INITS:
            raise InputError(f"Recipe bottleneck.init must be one of {BOTTLENECK_INITS}, got {self.init!r}.")

    def config(self, n_train: int, **settings: Any):
        """The `BottleneckConfig` of this regime for ``n_train`` training images (a step sees at most all of
        them, never an image twice, like LF-CBM's ``min(proj_batch_size, len(train))``), with ``settings``."""
        from salfcbm.training import BottleneckConfig

        return BottleneckConfig(lr=self.lr, batch_size=max(2, min(self.batch_size, n_train)), max_steps=self.max_steps,
                                patience=self.patience, val_every=self.val_every, init=self.init, **settings)


#: `RecipeBottleneck.init` values (`salfcbm.training.BottleneckConfig`'s inits).
BOTTLENECK_INITS = ("lf-cbm", "normal")


@dataclass(frozen=True)
class Recipe:
    """One experiment of the paper with all its settings.

    Attributes:
        name: ``"table1-imagenet"`` etc.
        version: bumped whenever a setting changes.
        table: the paper's table or figure it reproduces.
        dataset: ``"imagenet"``, ``"places365"`` or ``"cub"``.
        backbone: spec ``{"source", "name", "weights"}``; sources ``torchvision`` and
            ``pytorchcv`` (LF-CBM's ResNet-18 trained on CUB).
        layer: the tapped module.
        cls_concat: concatenate the CLS token to every patch (appendix B.1).
        grid: prompt grid side (7 in the paper).
        radius: prompt circle radius at the scorer's 224 px (32).
        line_width: circle line width in pixels (2).
        scorer: open_clip model name and pretrained tag.
        concepts: ``"lf-cbm:NAME"`` or ``"template:TEXT"`` with ``{class}``.
        activation_cutoff: drop concepts whose top-5 mean CLIP similarity to the *unprompted*
            training images (CLIP's own crop) is at or below it (LF-CBM's ``clip_cutoff``).
        concept_filters: which of LF-CBM's concept filters run, through the same
            `salfcbm.supervision.concepts.filter_concepts` as `salfcbm.fit`: ``"activation"``
            (what LF-CBM's ``train_cbm.py`` runs on its published, already filtered lists: the
            top-5 ``activation_cutoff`` only), ``"lf-cbm"`` (also length, class and concept
            near-duplicates, for an unfiltered list) or ``"none"``.
        pooling: how concept maps are pooled to c*(x): ``"softmax"`` (the authors' released
            ``SoftmaxPooling2D``), ``"mean"`` or ``"max"``.
        softmax_temperature: temperature of softmax pooling (the authors': 1).
        interpretability_cutoff: drop concepts the bottleneck cannot follow (validation similarity);
            ``None``: no interpretability cutoff at all (Table 2: every class keeps its concept and map).
        cutoff_statistic: the statistic the interpretability cutoff is compared with; ``"lfcbm"``: LF-CBM's
            (pooled concept activations against the unprompted CLIP similarities, kept when ``>``).
        cutoff_guard: ``"warn"``: concepts the cutoff removes are removed, as LF-CBM does, even when the
            head would use them (``fit`` reports and warns); ``"keep"`` is the library's default.
        lam: fixed elastic-net strength of the sparse SALF-CBM head (LF-CBM's, mean form).
        standard_lam: the same for the "standard, sparse" baseline.
        alpha: elastic-net mixing.
        solver_iters: LF-CBM's GLM-SAGA epochs (recorded; salfcbm's solver runs to its KKT tolerance).
        bottleneck: the bottleneck stage's regime (`RecipeBottleneck`: Adam lr, batch, steps, patience,
            validation interval, init).
        batch_size: images per forward when computing stores.
        image_size: side of the square images both the scorer and the backbone see.
        resize: short side the images are resized to before the centre crop (LF-CBM: 256).
        val_fraction: share of the training set held out for validation.
        splits: the reader's split names ``(train, test)``.
        num_classes: classes of the dataset.
        expected_concepts: size of the concept set before filtering.
        sweep: ``(grid, radius)`` pairs for Table 3; empty for a single run.
        segmentation: evaluate on ImageNet-segmentation (Table 2).
        baselines: Table 2's heatmap baselines.
        dense: also fit the non-sparse heads (Table 1's lower rows).
        standard_dense: where the "standard, non-sparse" row comes from: ``"backbone"``, the
            backbone's own classifier with its published weights (the paper's 76.13% on ImageNet
            is torchvision's ResNet-50 V1; its classes must be the dataset's, in its label order),
            or ``"refit"``, a dense head fitted on the pooled backbone features (Places365: the
            ImageNet ResNet-50 has no Places365 classifier, LF-CBM trains one on its features).
    """

    name: str
    version: int
    table: str
    dataset: str
    backbone: dict[str, Any]
    layer: str
    cls_concat: bool = False
    grid: int = 7
    radius: int = 32
    line_width: int = 2
    scorer: tuple[str, str] = ("ViT-B-16", "openai")
    concepts: str = "lf-cbm:imagenet"
    activation_cutoff: float = 0.28
    concept_filters: str = "activation"
    pooling: str = "softmax"
    softmax_temperature: float = 1.0
    interpretability_cutoff: float | None = 0.45
    cutoff_statistic: str = "lfcbm"
    cutoff_guard: str = "warn"
    lam: float = 1e-4
    standard_lam: float = 1e-4
    alpha: float = 0.99
    solver_iters: int = 80
    bottleneck: RecipeBottleneck = field(default_factory=RecipeBottleneck)
    batch_size: int = 256
    image_size: int = 224
    resize: int = 256
    val_fraction: float = 0.05
    splits: tuple[str, str] = ("train", "val")
    num_classes: int = 1000
    expected_concepts: int = 4751
    sweep: tuple[tuple[int, int], ...] = ()
    segmentation: bool = False
    baselines: tuple[str, ...] = ()
    dense: bool = True
    standard_dense: str = "backbone"
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        from salfcbm.core.config import POOLINGS

        if not isinstance(self.bottleneck, RecipeBottleneck):
            raise InputError(f"Recipe {self.name!r}: bottleneck must be a RecipeBottleneck, got "
                             f"{type(self.bottleneck).__name__}.")
        for name, value, valid in (("pooling", self.pooling, POOLINGS), ("concept_filters", self.concept_filters,
                                                                         CONCEPT_FILTERS)):
            if value not in valid:
                raise InputError(f"Recipe {self.name!r}: {name} must be one of {valid}, got {value!r}.")
        t = self.softmax_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise InputError(f"Recipe {self.name!r}: softmax_temperature must be a finite number > 0, got {t!r}.")

    @property
    def key(self) -> str:
        """``name@vN``: what a run directory records."""
        return f"{self.name}@v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-able data."""
        d = asdict(self)
        d["key"] = self.key
        return d

    def settings(self) -> dict[str, Any]:
        """`to_dict` with the nested settings flattened: ``{"bottleneck.lr": 0.001, ...}`` (the method page's rows)."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if k == "bottleneck" else {k: v})
        return out

    def runs(self) -> list[Recipe]:
        """The single runs of this recipe: itself, or one per ``(grid, radius)`` of the sweep."""
        if not self.sweep:
            return [self]
        return [replace(self, grid=g, radius=r, sweep=(), name=f"{self.name}-g{g}-r{r}") for g, r in self.sweep]


#: `Recipe.concept_filters` values.
CONCEPT_FILTERS = ("activation", "lf-cbm", "none")

_RESNET50 = {"source": "torchvision", "name": "resnet50", "weights": "IMAGENET1K_V1"}
_RESNET18_CUB = {"source": "pytorchcv", "name": "resnet18_cub", "weights": "pretrained"}
_VIT_B16 = {"source": "torchvision", "name": "vit_b_16", "weights": "IMAGENET1K_V1"}
_SWEEP = tuple((g, r) for g in (5, 7, 9) for r in (27, 32, 37))
_TABLE2_BASELINES = ("lrp", "integrated_gradients", "gradcam", "gradcam++", "scorecam", "fullgrad")

_IMAGENET = dict(dataset="imagenet", backbone=_RESNET50, layer="layer4", concepts="lf-cbm:imagenet",
                 activation_cutoff=0.28, lam=1e-4, standard_lam=1e-4, solver_iters=80, splits=("train", "val"),
                 num_classes=1000, expected_concepts=4751, val_fraction=0.02)
_PLACES = dict(dataset="places365", backbone=_RESNET50, layer="layer4", concepts="lf-cbm:places365",
               activation_cutoff=0.28, lam=3e-4, standard_lam=7e-4, solver_iters=80,
               splits=("train-standard", "val"), num_classes=365, expected_concepts=2544, val_fraction=0.02,
               standard_dense="refit")
_CUB = dict(dataset="cub", backbone=_RESNET18_CUB, layer="features.stage4", concepts="lf-cbm:cub",
            activation_cutoff=0.26, lam=2e-4, standard_lam=2e-5, solver_iters=5000, splits=("train", "test"),
            num_classes=200, expected_concepts=370, val_fraction=0.1, bottleneck=RecipeBottleneck(batch_size=50000),
            batch_size=128)

#: Every recipe by name.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(name="table1-imagenet", version=2, table="table1", **_IMAGENET),
        Recipe(name="table1-places365", version=2, table="table1", **_PLACES),
        Recipe(name="table1-cub", version=2, table="table1", **_CUB),
        Recipe(name="table2-imagenet-seg", version=2, table="table2",  # v2: 1,000 class concepts, no cutoff
               **{**_IMAGENET, "concepts": "template:an image of a {class}", "expected_concepts": 1000,
                  "activation_cutoff": 0.0, "interpretability_cutoff": None, "concept_filters": "none"},
               segmentation=True, baselines=_TABLE2_BASELINES, dense=False),
        Recipe(name="table3-imagenet", version=2, table="table3", **_IMAGENET, sweep=_SWEEP, dense=False),
        Recipe(name="table3-cub", version=2, table="table3", **_CUB, sweep=_SWEEP, dense=False),
        Recipe(name="appendix-b1-vit", version=2, table="figure7", **{**_IMAGENET, "backbone": _VIT_B16,
               "layer": "encoder"}, notes="patch tokens only"),
        Recipe(name="appendix-b1-vit-cls", version=2, table="figure7", **{**_IMAGENET, "backbone": _VIT_B16,
               "layer": "encoder"}, cls_concat=True, notes="patch tokens + CLS"),
    )
}

#: The datasets of the recipes, in the order of the paper's tables (``salfcbm reproduce --dataset``).
DATASETS = tuple(dict.fromkeys(r.dataset for r in RECIPES.values()))
#: The scorers of a dry run (`salfcbm.reproduce.run.dry_run_scorer`): the recipe's CLIP architecture or a tiny one.
DRY_RUN_SCORERS = ("full", "tiny")

#: ``salfcbm reproduce TABLE --dataset D`` -> recipe name.
_ALIASES = {("table1", "imagenet"): "table1-imagenet", ("table1", "places365"): "table1-places365",
            ("table1", "cub"): "table1-cub", ("table2", "imagenet"): "table2-imagenet-seg",
            ("table3", "imagenet"): "table3-imagenet", ("table3", "cub"): "table3-cub",
            ("appendix-b1", "imagenet"): "appendix-b1-vit", ("figure7", "imagenet"): "appendix-b1-vit"}


def list_recipes() -> list[str]:
    """Names of every recipe."""
    return list(RECIPES)


def get_recipe(name: str, dataset: str | None = None) -> Recipe:
    """A recipe by its name (``"table1-cub"``) or by table and dataset (``"table1", "cub"``).

    Examples:
        >>> get_recipe("table1", "cub").backbone["name"], get_recipe("table1-imagenet").expected_concepts
        ('resnet18_cub', 4751)
    """
    if not isinstance(name, str):
        raise InputError(f"A recipe name must be a string, got {type(name).__name__}.")
    if dataset is not None and name not in RECIPES:
        key = _ALIASES.get((name, dataset))
        if key is None:
            valid = sorted({t for t, _ in _ALIASES})
            raise InputError(f"No recipe for {name!r} on {dataset!r}. Tables: {valid}; datasets per table: "
                             + ", ".join(f"{t}: {sorted(d for tt, d in _ALIASES if tt == t)}" for t in valid) + ".")
        name = key
    if name not in RECIPES:
        raise UnknownRecipeError(name, list(RECIPES))
    return RECIPES[name]
