"""Run a recipe end to end and write its table next to the paper's numbers.

`run_recipe` reads the dataset in its shipped layout, loads the concept set, computes
the prompted CLIP similarities, and runs `salfcbm.fit`: its filter stage drops concepts that
never fire (LF-CBM's top-5 cutoff on the unprompted images), then it trains the bottleneck and
the fixed-lambda sparse head; then the run fits the
"standard, sparse" baseline (and the non-sparse rows) on the cached backbone features,
checks that the saved model reloads to the same logits, explains a few test images, draws
the top test images of five random concept neurons (appendix C, ``neurons.png``), runs
the ImageNet-segmentation benchmark for Table 2, and writes ``results.json`` and
``table.md``. Every stage resumes from its artefact in the run directory. The training part is
`train_recipe` (under torchrun: every rank), the reports `finish_recipe` (one process; the measurements
themselves in `salfcbm.reproduce.reports`).

`dry_run` does all of it with random weights at the real shapes on a few generated
images in the real layout, twice (the second run must resume to the same numbers).
"""

from __future__ import annotations

import json
import os
import resource
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.io import atomic_write_bytes
from salfcbm.errors import ConfigMismatchError, DryRunError, InputError, MissingExtraError, RecipeRunError
from salfcbm.reproduce.recipes import DRY_RUN_SCORERS, Recipe
from salfcbm.reproduce.reports import TrainedRun, backbone_head_accuracy, report_run
from salfcbm.reproduce.reports import segmentation_rows as _segmentation  # its earlier name here
from salfcbm.reproduce.tables import format_concepts, format_table

__all__ = ["DryRunError", "RecipeRunError", "TrainedRecipe", "TrainedRun", "backbone_head_accuracy",
           "bottleneck_config", "build_backbone", "concept_filter_options", "dry_run", "finish_recipe", "load_datasets",
           "recipe_concepts", "run_recipe", "train_recipe"]


def build_backbone(recipe: Recipe, pretrained: bool = True) -> torch.nn.Module:
    """The recipe's backbone, with its exact weights (``pretrained=False``: random init, same shapes)."""
    if not pretrained:  # a fixed random init: a resumed dry run must meet the same backbone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return _build(recipe, False)
    return _build(recipe, True)


def _build(recipe: Recipe, pretrained: bool) -> torch.nn.Module:
    spec = recipe.backbone
    if spec["source"] == "pytorchcv":
        try:
            from pytorchcv.model_provider import get_model
        except ImportError:
            raise MissingExtraError("pytorchcv", "reproduce", f"The {recipe.name} backbone ({spec['name']})") from None
        return get_model(spec["name"], pretrained=pretrained)
    import torchvision

    return torchvision.models.get_model(spec["name"], weights=spec["weights"] if pretrained else None)


def load_datasets(recipe: Recipe, data_root: str | os.PathLike, *, seed: int = 0):
    """``(train, val, test, class_names)`` of the recipe's dataset under ``data_root``."""
    from salfcbm.datasets.paper import CUB200Dataset, ImageNetDataset, Places365Dataset, holdout_split

    reader = {"imagenet": ImageNetDataset, "places365": Places365Dataset, "cub": CUB200Dataset}[recipe.dataset]
    full = reader(data_root, recipe.splits[0], size=recipe.image_size, resize=recipe.resize)
    test = reader(data_root, recipe.splits[1], size=recipe.image_size, resize=recipe.resize)
    names = list(getattr(full, "class_names", full.classes))
    if recipe.dataset == "imagenet" and full.classes and full.classes[0] == "n01440764" and len(full.classes) == 1000:
        from salfcbm.supervision.concept_sets import lf_cbm_class_names

        names = lf_cbm_class_names("imagenet")
    from salfcbm.supervision.concepts import unique_class_names

    names = unique_class_names(names)  # LF-CBM's list names two pairs of classes alike: one concept and map each
    if len(full.classes) != recipe.num_classes:
        warnings.warn(f"{data_root} has {len(full.classes)} classes; the {recipe.name} recipe expects "
                      f"{recipe.num_classes}. The numbers will not be comparable to the paper's.", stacklevel=2)
    train, val = holdout_split(full, recipe.val_fraction, seed=seed)
    return train, val, test, names


def recipe_concepts(recipe: Recipe, class_names: list[str]) -> list[str]:
    """The recipe's concept list before filtering (``lf-cbm:NAME`` or ``template:TEXT``).

    A template gives one concept per class: repeated class names get their class index first
    (`salfcbm.supervision.concepts.unique_class_names`), so LF-CBM's ImageNet list gives 1,000.
    """
    from salfcbm.supervision.concepts import concepts_from_templates, load_concepts, unique_class_names

    if recipe.concepts.startswith("template:"):
        return concepts_from_templates(unique_class_names(class_names), recipe.concepts.split(":", 1)[1])
    return load_concepts(recipe.concepts)


def concept_filter_options(recipe: Recipe) -> dict[str, Any] | bool:
    """The recipe's ``filter_concepts`` argument of `salfcbm.fit`: one filter implementation for both paths.

    ``"activation"`` runs LF-CBM's ``train_cbm.py`` filter (top-5 mean similarity to the
    unprompted training images, CLIP's own crop, ``> activation_cutoff`` kept) and skips the
    text filters that LF-CBM ran once to make its published lists; ``"lf-cbm"`` runs them all.
    """
    if recipe.concept_filters == "none":
        return False
    return {"activation_cutoff": recipe.activation_cutoff, "top_k": 5,
            "text_filters": recipe.concept_filters == "lf-cbm"}


def bottleneck_config(recipe: Recipe, n_train: int):
    """The recipe's `BottleneckConfig` (`RecipeBottleneck.config`) with its interpretability cutoff."""
    return recipe.bottleneck.config(n_train, **_cutoff_settings(recipe))


def _cutoff_settings(recipe: Recipe) -> dict[str, Any]:
    """The recipe's interpretability cutoff; ``None`` (Table 2) keeps every concept: a cutoff below every
    similarity (they lie in [-1, 1]) on the per-cell statistic, whose rule keeps a concept unless it is below."""
    if recipe.interpretability_cutoff is None:
        return {"cutoff": -2.0, "cutoff_statistic": "cell", "cutoff_guard": "keep"}
    return {"cutoff": float(recipe.interpretability_cutoff), "cutoff_statistic": recipe.cutoff_statistic,
            "cutoff_guard": recipe.cutoff_guard}


def _interpretability_cutoff(recipe: Recipe) -> float:
    """The bottleneck cutoff of ``recipe``; ``None`` (no cutoff) is below every similarity (they lie in [-1, 1])."""
    return -2.0 if recipe.interpretability_cutoff is None else float(recipe.interpretability_cutoff)


def _train_single(recipe: Recipe, data: tuple, concepts: list[str], run: Path, *, scorer, pretrained: bool,
                  device, progress: bool, stores_only: bool = False, shard_size: int | None = None) -> TrainedRun:
    """The stores and `salfcbm.fit` of one training run (under torchrun: on every rank, together)."""
    from salfcbm.core.images import align_dataset
    from salfcbm import wrap  # the model class with its explanation methods
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store
    from salfcbm.training import HeadConfig, feature_store, fit

    train, val, test, class_names = data
    prompts = PromptGrid(grid=(recipe.grid, recipe.grid), radius=recipe.radius, line_width=recipe.line_width)
    backbone = build_backbone(recipe, pretrained=pretrained)
    model = wrap(backbone, concepts=concepts, num_classes=len(class_names), class_names=class_names, layer=recipe.layer,
                 grid=recipe.grid, pooling=recipe.pooling, softmax_temperature=recipe.softmax_temperature,
                 cls_concat=recipe.cls_concat, input_size=(recipe.image_size, recipe.image_size),
                 backbone_weights=recipe.backbone["weights"] if pretrained else None).to(device)
    # one geometry: the scorer and the backbone see the model's own view of every image
    train, val, test = (align_dataset(d, model.image_transform) for d in (train, val, test))
    kw = dict(batch_size=recipe.batch_size, progress=progress, **({"shard_size": shard_size} if shard_size else {}))
    s_train = compute_similarity_store(run / "similarities" / "train", train, scorer, prompts, **kw)
    s_val = compute_similarity_store(run / "similarities" / "val", val, scorer, prompts, **kw)
    out = TrainedRun(recipe, run, backbone, (train, val, test), len(concepts))
    if stores_only:  # every rank computes its shards of the stores; a later call trains from them
        for split, d in (("train", train), ("val", val), ("test", test)):
            feature_store(model, d, run / "features" / split, batch_size=recipe.batch_size, progress=progress)
        return out
    # under torchrun every rank runs fit: the ranks split the stores' shards and train the bottleneck with DDP
    out.result = fit(model, train, val, train_similarities=s_train, val_similarities=s_val, run_dir=run,
                     test_data=test, bottleneck=bottleneck_config(recipe, len(train)),
                     head=HeadConfig(lam=recipe.lam, alpha=recipe.alpha), baseline=False, batch_size=recipe.batch_size,
                     device=device, progress=progress, filter_concepts=concept_filter_options(recipe))
    return out


def _claim_run_dir(run: Path, recipe: Recipe, force: bool) -> None:
    """Write ``recipe.json`` (rank 0; the other torchrun ranks only check it); refuse a directory made by
    another recipe or version (every rank alike, so no rank waits for one that stopped)."""
    from salfcbm._utils.distributed import rank_and_world

    run.mkdir(parents=True, exist_ok=True)
    f = run / "recipe.json"
    if f.exists():
        old = json.loads(f.read_text()).get("key")
        if old != recipe.key and not force:
            raise ConfigMismatchError(f"{run} holds a run of {old}, not {recipe.key}; use another --run-dir "
                                      "(or force=True / --force to reuse its stores at your own risk).")
    if rank_and_world()[0] == 0:
        atomic_write_bytes(f, json.dumps(recipe.to_dict(), indent=2, default=str).encode(), fsync=False)


def _measured_table(recipe: Recipe, results: dict[str, Any]) -> dict:
    if recipe.table == "table3":
        return {(r.grid, r.radius): results[r.name]["salfcbm_sparse"] for r in recipe.runs()}
    one = results[recipe.runs()[0].name]
    return one.get("table2", {}) if recipe.table == "table2" else one


@dataclass
class TrainedRecipe:
    """`train_recipe`'s result: every training run of a recipe after `salfcbm.fit`, and the settings of
    its reports (`finish_recipe`)."""

    recipe: Recipe
    run: Path
    class_names: list[str]
    runs: dict[str, TrainedRun] = field(default_factory=dict)
    report_options: dict[str, Any] = field(default_factory=dict)
    """``device``, ``seg_file``, ``seg_steps`` and ``seg_max_images``."""


def train_recipe(
    recipe: Recipe,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    scorer: Any = None,
    concepts: list[str] | None = None,
    pretrained: bool = True,
    seg_file: str | os.PathLike | None = None,
    seg_steps: int = 20,
    seg_max_images: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    force: bool = False,
    progress: bool = True,
    stores_only: bool = False,
    shard_size: int | None = None,
) -> TrainedRecipe:
    """The training part of `run_recipe` (same arguments): the stores and `salfcbm.fit` of every run.

    Under torchrun call it on every rank: the ranks split the stores' shards and train each
    bottleneck together (``DistributedDataParallel``); rank 0 writes the run's files. Nothing here
    waits at a collective for work that only one rank does. `finish_recipe` writes the reports.
    """
    from salfcbm.supervision.scorers import scorer_from_name

    if recipe.standard_dense not in ("backbone", "refit"):
        raise InputError(f"Recipe.standard_dense must be 'backbone' or 'refit', got {recipe.standard_dense!r}.")
    if recipe.segmentation and seg_file is None:
        raise InputError(f"{recipe.name} needs the ImageNet-segmentation file: pass seg_file= / --seg-file "
                         "path/to/gtsegs_ijcv.mat.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = Path(run_dir)
    _claim_run_dir(run, recipe, force)
    data = load_datasets(recipe, data_root)
    concepts = list(concepts) if concepts is not None else recipe_concepts(recipe, data[3])
    if len(concepts) != recipe.expected_concepts:
        warnings.warn(f"{len(concepts)} concepts, the {recipe.name} recipe expects {recipe.expected_concepts}.",
                      stacklevel=2)
    scorer = scorer or scorer_from_name(recipe.scorer[0], pretrained=recipe.scorer[1], device=device, precision=precision)
    out = TrainedRecipe(recipe, run, list(data[3]), report_options=dict(
        device=device, seg_file=seg_file, seg_steps=seg_steps, seg_max_images=seg_max_images))
    for sub in recipe.runs():
        out.runs[sub.name] = _train_single(sub, data, concepts, run if sub is recipe else run / sub.name,
                                           scorer=scorer, pretrained=pretrained, device=device, progress=progress,
                                           stores_only=stores_only, shard_size=shard_size)
    return out


def finish_recipe(trained: TrainedRecipe) -> dict[str, Any]:
    """The reports of a trained recipe (one process: rank 0 under torchrun, after the process group is closed):
    the baselines and non-sparse rows, the reload-and-explain checks, Table 2, ``results.json`` and ``table.md``.

    Returns:
        ``{"recipe", "runs": {run name: numbers}, "table": markdown}``.
    """
    recipe, run = trained.recipe, trained.run
    results = {name: report_run(t, trained.class_names, **trained.report_options)
               for name, t in trained.runs.items()}
    table = format_table(recipe.table, recipe.dataset, _measured_table(recipe, results),
                         title=f"{recipe.key}: {recipe.table}, {recipe.dataset}")
    concepts_md = format_concepts(recipe.dataset, results, paper=None if recipe.table != "table2" else
                                  recipe.expected_concepts, statistic=recipe.cutoff_statistic)
    table += f"\n### Concepts kept\n\n{concepts_md}" if concepts_md else ""
    out = {"recipe": recipe.to_dict(), "runs": results, "table": table}
    atomic_write_bytes(run / "results.json", json.dumps(out, indent=2, default=str).encode(), fsync=False)
    atomic_write_bytes(run / "table.md", table.encode(), fsync=False)
    return out


def run_recipe(
    recipe: Recipe,
    data_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    scorer: Any = None,
    concepts: list[str] | None = None,
    pretrained: bool = True,
    seg_file: str | os.PathLike | None = None,
    seg_steps: int = 20,
    seg_max_images: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    force: bool = False,
    progress: bool = True,
    stores_only: bool = False,
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Run ``recipe`` on the dataset under ``data_root``; write ``results.json`` and ``table.md`` in ``run_dir``.

    In one process: `train_recipe`, then `finish_recipe`. Under torchrun call
    `salfcbm.reproduce.ranks.run_on_ranks` on every rank instead (every rank trains, rank 0 reports).

    Args:
        recipe: a `Recipe`.
        data_root: the dataset's ROOT in its shipped layout (see `salfcbm.datasets.paper`).
        run_dir: where everything goes; a rerun resumes.
        scorer: a concept scorer (default: the recipe's CLIP with its pretrained weights).
        concepts: override the recipe's concept list (dry runs).
        pretrained: load the backbone's published weights (``False``: random init).
        seg_file: ``gtsegs_ijcv.mat`` for Table 2.
        seg_steps: deletion / insertion steps of the segmentation benchmark.
        seg_max_images: stop the segmentation benchmark after this many images.
        device: where to run (default CUDA if available).
        precision: the scorer's autocast precision (``fp32``, ``bf16``, ``fp16``).
        force: reuse a run directory made by another recipe version.
        progress: progress bars.
        stores_only: only compute the similarity and feature stores (each ``torchrun`` rank
            its share of the shards), then return; a later call trains from them.
        shard_size: images per shard of the similarity stores, the unit of resuming and of splitting them
            across torchrun ranks (default: the store's own, 1,024).

    Returns:
        ``{"recipe", "runs": {run name: numbers}, "table": markdown}``.
    """
    trained = train_recipe(recipe, data_root, run_dir, scorer=scorer, concepts=concepts, pretrained=pretrained,
                           seg_file=seg_file, seg_steps=seg_steps, seg_max_images=seg_max_images, device=device,
                           precision=precision, force=force, progress=progress, stores_only=stores_only,
                           shard_size=shard_size)
    if stores_only:
        return {"recipe": recipe.to_dict(), "runs": {name: {} for name in trained.runs}, "table": ""}
    return finish_recipe(trained)


#: A tiny open_clip model at the real 224 px input, for dry runs on a CPU (``scorer="tiny"``).
TINY_SCORER_CFG = dict(embed_dim=64, vision_cfg=dict(image_size=224, layers=1, width=64, patch_size=16),
                       text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def dry_run_scorer(recipe: Recipe, kind: str = "full", device=None):
    """The recipe's scorer architecture with random weights (``"full"``), or a tiny CLIP at 224 px (``"tiny"``)."""
    from salfcbm.supervision.scorers import CLIPScorer

    if kind not in DRY_RUN_SCORERS:
        raise InputError(f"The dry-run scorer must be 'full' or 'tiny', got {kind!r}.")
    name = recipe.scorer[0]
    if kind == "tiny":
        import open_clip

        open_clip.factory._MODEL_CONFIGS.setdefault("salfcbm-dry-run-tiny", TINY_SCORER_CFG)
        name = "salfcbm-dry-run-tiny"
    with torch.random.fork_rng(devices=[]):  # the same random weights in every process: stores resume
        torch.manual_seed(0)
        return CLIPScorer(name, pretrained=None, device=device)


def _spread(sweep: tuple, k: int | None) -> tuple:
    """``k`` points of ``sweep`` spread evenly from its first to its last (all with ``None``)."""
    if not k or k >= len(sweep):
        return sweep
    if k == 1:
        return sweep[:1]
    return tuple(sweep[round(i * (len(sweep) - 1) / (k - 1))] for i in range(k))


def _peak_memory(device) -> dict[str, float]:
    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _numbers(results: dict[str, Any]) -> dict[str, Any]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "checks"} for k, v in results["runs"].items()}


def dry_run_inputs(recipe: Recipe, run_dir: str | os.PathLike, *, scorer: str, images: tuple[int, int],
                   bottleneck_steps: int, sweep_points: int | None, seg_images: int, device, progress: bool,
                   write: bool = True) -> tuple[Recipe, Path, dict[str, Any]]:
    """`dry_run`'s scaled recipe, generated dataset root and `run_recipe` keywords; ``write``: generate the data
    (the images once; under torchrun rank 0 alone writes, the other ranks read)."""
    from salfcbm.datasets.paper import write_fake_layout

    run = Path(run_dir)
    split_names = {"imagenet": ("train", "val"), "places365": ("train-standard", "val"), "cub": ("train", "test")}
    root = run / "data" / recipe.dataset
    if write and not root.exists():
        write_fake_layout(recipe.dataset, root, num_classes=recipe.num_classes, image_size=(256, 320),
                          per_split=dict(zip(split_names[recipe.dataset], images)))
    small = replace(recipe, bottleneck=replace(recipe.bottleneck, max_steps=bottleneck_steps), activation_cutoff=0.0,
                    interpretability_cutoff=-1.0, concept_filters="none",
                    sweep=_spread(recipe.sweep, sweep_points),
                    baselines=tuple(b for b in recipe.baselines if b != "scorecam" or str(device).startswith("cuda")))
    concepts = None
    if not recipe.concepts.startswith("template:"):
        concepts = [f"dry-run concept {i:05d}" for i in range(recipe.expected_concepts)]
    seg_file = None
    if recipe.segmentation:
        import numpy as np

        from salfcbm.datasets.paper import write_imagenet_seg_mat

        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 256, size=(240, 300, 3), dtype=np.uint8) for _ in range(seg_images)]
        masks = [np.zeros((240, 300), np.uint8) for _ in range(seg_images)]
        for m in masks:
            m[60:180, 80:220] = 1
        seg_file = run / "data" / "gtsegs_ijcv.mat"
        if write:
            write_imagenet_seg_mat(seg_file, imgs, masks)
    kw = dict(scorer=dry_run_scorer(recipe, scorer, device), concepts=concepts, pretrained=False, seg_file=seg_file,
              seg_steps=2, device=device, progress=progress, force=True)
    return small, root, kw


def dry_run(
    recipe: Recipe,
    run_dir: str | os.PathLike,
    *,
    scorer: str = "full",
    images: tuple[int, int] = (8, 4),
    bottleneck_steps: int = 20,
    sweep_points: int | None = None,
    seg_images: int = 2,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any] | None:
    """Run ``recipe`` end to end with random weights at the real shapes on generated data, twice.

    The dataset is generated in its real layout (all of the recipe's classes, ``images``
    training / test images), the concept list has the recipe's size (generated names for an
    LF-CBM set, the real template for Table 2), the backbone is the recipe's architecture
    with random weights at 224 px, and the scorer the recipe's CLIP architecture with random
    weights (``scorer="full"``) or a tiny CLIP at 224 px (``"tiny"``, for CPUs). Everything
    of `run_recipe` runs: similarities, features, bottleneck at the full concept count,
    head, non-sparse rows, save and reload, explanations, Table 2's benchmark and the table.
    Then the run is repeated in the same directory: it must resume to the same numbers.

    Args:
        recipe: the recipe.
        run_dir: where the generated data and the run go.
        scorer: ``"full"`` or ``"tiny"``.
        images: ``(training, test)`` images to generate.
        bottleneck_steps: bottleneck steps (scaled down, like the data; the two concept cutoffs
            are switched off, since with random weights no concept would pass them).
        sweep_points: run only this many points of a Table 3 sweep, spread from its first to
            its last (2: the smallest and the largest grid).
        seg_images: ImageNet-segmentation images for Table 2.
        device: where to run.
        progress: progress bars.

    Under torchrun the first run is `run_on_ranks`' (every rank computes its shards of the stores and
    trains the bottleneck with the others, rank 0 writes the reports) and the resumed run is rank 0's,
    after the process group is closed.

    Returns:
        ``run_recipe``'s result plus ``"dry_run": {seconds, resume_seconds, peak memory, settings}``
        (``None`` on a torchrun rank other than 0).

    Raises:
        DryRunError: the resumed run or the reloaded model disagrees.
    """
    from salfcbm._utils.distributed import barrier, rank_and_world
    from salfcbm.reproduce.ranks import run_on_ranks

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run = Path(run_dir)
    rank, _ = rank_and_world()
    if rank != 0:  # torchrun: rank 0 generates the data, the other ranks read it
        barrier()
    small, root, kw = dry_run_inputs(recipe, run, scorer=scorer, images=images, bottleneck_steps=bottleneck_steps,
                                     sweep_points=sweep_points, seg_images=seg_images, device=device, progress=progress,
                                     write=rank == 0)
    if rank == 0:
        barrier()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: degenerate-result warnings are expected
        first = run_on_ranks(small, root, run / "run", **kw)  # torchrun: every rank trains, rank 0 reports
        if first is None:  # another rank than 0: its shards and its share of the training are done
            return None
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        second = run_recipe(small, root, run / "run", **kw)
    resume = time.perf_counter() - t
    if json.dumps(_numbers(first), sort_keys=True, default=str) != json.dumps(_numbers(second), sort_keys=True, default=str):
        raise DryRunError(f"Resuming {recipe.name} in the same run directory gave other numbers: "
                          f"{_numbers(first)} vs {_numbers(second)}.")
    first["dry_run"] = {"seconds": seconds, "resume_seconds": resume, **_peak_memory(device), "scorer": scorer,
                        "images": list(images), "concepts": recipe.expected_concepts, "device": str(device),
                        "bottleneck_steps": bottleneck_steps, "runs": len(small.runs())}
    return first
