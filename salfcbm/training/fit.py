"""`fit`: train a wrapped model end to end, each stage resumable from its artefact in a run directory.

1. prompted similarities of the training and validation images (`salfcbm.supervision.store`),
   then LF-CBM's concept filters (`salfcbm.training.filters`);
2. backbone features, resized to the grid, cached in a sharded store or computed on the fly
   (`salfcbm.training.features`);
3. the 1x1-conv bottleneck, trained with the cubic cosine loss and early stopping on validation
   (`salfcbm.training.bottleneck`), then the interpretability cutoff (`salfcbm.training.cutoff_stage`);
4. the sparse elastic-net head on the pooled, standardised concept activations, and the
   "standard, sparse" baseline: the same head on the backbone's pooled features
   (`salfcbm.training.head_stage`).

The stages share one `RunState` and pass per-split values as `Splits`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch.utils.data import Dataset

from salfcbm._utils.tensors import accuracy, check_precision
from salfcbm._utils.workers import resolve_num_workers
from salfcbm.core.images import align_dataset
from salfcbm.core.model import SALFCBM
from salfcbm.errors import AlignmentError, InputError
from salfcbm.head.solver import HeadFit
from salfcbm.supervision.concepts import ConceptFilterReport
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.provenance import dataset_identity, resolve_inputs
from salfcbm.supervision.scorers import ConceptScorer
from salfcbm.supervision.store import PromptedEmbeddingStore, compute_similarity_store
from salfcbm.training import diagnostics, presence
from salfcbm._utils.distributed import barrier, rank_and_world
from salfcbm.training.bottleneck import train_bottleneck
from salfcbm.training.config import BottleneckConfig, BottleneckReport, FitResult, Splits
from salfcbm.training.cutoff import LFCBM_STATISTIC, lfcbm_similarity
from salfcbm.training.cutoff_stage import cutoff_stage, unprompted_val, warn_needed
from salfcbm.training.features import (
    PRECISION_DTYPES,
    OnTheFlyFeatures,
    activation_store,
    choose_feature_cache,
    store_concept_activations,
    feature_store,
    labels_of,
)
from salfcbm.training.filters import filter_stage
from salfcbm.training.head_stage import HeadConfig, StreamedActivations, baseline_stage, head_stage
from salfcbm.training.rundir import RunDir, content_key, stage_key, timed

__all__ = ["fit", "RunState"]

logger = logging.getLogger("salfcbm")


@dataclass
class RunState:
    """What the stages of one `fit` call share: the model, the run directory, the data and what
    the stages computed so far (similarity stores, feature sources, labels), per split."""

    model: SALFCBM
    run: RunDir
    data: Splits[Dataset]
    loader: dict[str, Any]
    """``batch_size``, ``num_workers`` and ``progress`` of every data pass."""
    inputs: str = "auto"
    feature_options: dict[str, Any] = field(default_factory=dict)
    """``batch_size``, ``shard_size``, ``num_workers`` and ``precision`` of the feature sources."""
    timings: dict[str, float] = field(default_factory=dict)
    similarities: Splits[PromptedEmbeddingStore] | None = None
    features: Splits[Any] | None = None
    labels: Splits[torch.Tensor] | None = None
    cache: bool = True
    cache_reason: str = ""
    backbone_images: dict[str, int] = field(default_factory=dict)
    """Images the backbone ran on, per split (``metrics["backbone_images"]``)."""
    activation_stores: dict[str, str] = field(default_factory=dict)
    """Where the out-of-core head's pooled activations are, per split (empty in memory)."""

    @property
    def progress(self) -> bool:
        return bool(self.loader.get("progress", True))

    def count(self, split: str, n: int) -> None:
        """Record that the backbone ran on ``n`` images of ``split``."""
        self.backbone_images[split] = self.backbone_images.get(split, 0) + n

    def features_of(self, split: str) -> Any:
        """The feature source of ``split``.

        With the cache: a fp16 `feature_store` under ``run/features/<split>``. Without: the
        training split is computed on the fly every epoch (`OnTheFlyFeatures`), and a held-out
        split (val, test), read at every validation check and by several stages, is computed once
        into a store in the run's precision (`PRECISION_DTYPES`) under ``run/features/<split>-<precision>``.
        """
        data, opts = getattr(self.data, split), self.feature_options
        self.backbone_images.setdefault(split, 0)
        count = partial(self.count, split)
        if not self.cache and split == "train":
            return OnTheFlyFeatures(self.model, data, count=count, **opts)
        root, dtype, desc = self.run / "features" / split, torch.float16, f"Backbone features ({split})"
        if not self.cache:
            precision = check_precision(opts.get("precision", "fp32"))
            root, dtype = self.run / "features" / f"{split}-{precision}", PRECISION_DTYPES[precision]
            desc = f"Backbone features ({split}, computed once, {precision})"
        return feature_store(self.model, data, root, progress=self.progress, desc=desc, inputs=self.inputs,
                             dtype=dtype, count=count, **opts)


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



def _check_store_alignment(store: PromptedEmbeddingStore | None, data, split: str, inputs: str) -> None:
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



def _prepare_inputs(model: SALFCBM, prompts: PromptGrid | None, data: Splits[Dataset],
                    given: Splits[PromptedEmbeddingStore | None], *, inputs: str, device) -> tuple[PromptGrid, Splits]:
    """Move the model, check the prompt grid and align every split to the model's view of an image."""
    if device is not None:
        model.to(device)
    prompts = prompts or PromptGrid(grid=model.grid)
    if tuple(prompts.grid) != model.grid:
        raise InputError(f"prompts.grid {prompts.grid} must equal the model's grid {model.grid}.")
    # one geometry: the scorer and the backbone both see the model's view of each image
    view = model.image_transform
    data = data.map(lambda d: align_dataset(d, view))
    _check_store_alignment(given.train, data.train, "train", inputs)
    _check_store_alignment(given.val, data.val, "val", inputs)
    return prompts, data


def _similarity_stage(state: RunState, scorer: ConceptScorer | None, prompts: PromptGrid,
                      given: Splits[PromptedEmbeddingStore | None]) -> Splits[PromptedEmbeddingStore]:
    """Compute the missing train/val similarity stores (stage 1)."""
    train_similarities, val_similarities = given.train, given.val
    if train_similarities is None or val_similarities is None:
        if scorer is None:
            raise InputError("fit() needs a `scorer` (e.g. CLIPScorer()) or both train/val similarity stores.")
        run, kw = state.run, {**state.loader, "inputs": state.inputs}
        train_similarities = train_similarities or compute_similarity_store(
            run / "similarities" / "train", state.data.train, scorer, prompts, desc="Prompted embeddings (train)", **kw,
        )
        val_similarities = val_similarities or compute_similarity_store(
            run / "similarities" / "val", state.data.val, scorer, prompts, desc="Prompted embeddings (val)", **kw,
        )
    return Splits(train_similarities, val_similarities)


def _feature_stage(state: RunState, cache_features: bool | str, max_gb: float) -> Splits[Any]:
    """Choose (and log) whether backbone features are cached; the train and val feature sources (stage 2)."""
    present = [d for _, d in state.data.items()]
    state.cache, state.cache_reason = choose_feature_cache(state.model, present, cache_features, max_gb)
    log = logger.info if state.cache or cache_features is False else logger.warning
    log("Backbone features: %s", state.cache_reason)
    return Splits(state.features_of("train"), state.features_of("val"))


def _activation_stage(state: RunState, hcfg: HeadConfig) -> Splits[Any]:
    """The pooled, unstandardised activations of every candidate concept, train and val.

    In memory by default. When the head is fitted out of core (a sparse head and
    ``HeadConfig.streams(n_train, M)``), the ``(N, M)`` training matrix is never built: both splits are
    written to stores under ``run/activations/<split>`` (`activation_store`; resumable, keyed by the
    features and the bottleneck), the training split is measured in one streaming pass
    (`StreamedActivations`: the standardisation and the moments ``lambda_max`` needs) and stays on
    disk; the validation split, read at every path point, is read back into memory (``(N_val, M)``).
    """
    model, f = state.model, state.features
    if not (hcfg.sparse and hcfg.streams(int(f.train.length), model.num_concepts)):
        return Splits(store_concept_activations(model, f.train), store_concept_activations(model, f.val))
    stores = {s: activation_store(model, getattr(f, s), state.run / "activations" / s, rows=hcfg.chunk_rows,
                                  features_key=content_key(getattr(f, s))) for s in ("train", "val")}
    state.activation_stores = {s: str(v.root) for s, v in stores.items()}
    train = StreamedActivations.measure(stores["train"], state.labels.train, model.num_classes)
    val = torch.cat([v for _, v in stores["val"].iter_shards()]) if len(stores["val"]) else \
        torch.zeros(0, model.num_concepts)
    return Splits(train, val)


def _bottleneck_stage(state: RunState, bcfg: BottleneckConfig, hcfg: HeadConfig
                      ) -> tuple[BottleneckReport, list[str], Splits[Any]]:
    """Train (or resume) the bottleneck on every candidate (stage 3); the cutoff is `cutoff_stage`'s.

    Returns the report (with LF-CBM's statistic when ``bcfg`` asks for it), the candidate concepts and
    their train/val pooled activations (`_activation_stage`: out of core, the training split's stay on disk).
    """
    model, run, f, s = state.model, state.run, state.features, state.similarities
    candidates = list(model.concepts)
    trained = {k: v for k, v in asdict(bcfg).items() if k not in ("cutoff", "cutoff_statistic", "cutoff_guard")
               and not (k == "init" and v == "normal")}  # the default init keeps earlier runs' keys
    key = stage_key({"b": trained, "concepts": candidates, "f": f.train.meta, "s": s.train.store.meta,
                     "data": [content_key(x) for x in (f.train, f.val, s.train.store, s.val.store)], "v": 2})
    report = run.load_bottleneck(model, key)
    if report is None:
        report = train_bottleneck(model, f.train, s.train, f.val, s.val, replace(bcfg, cutoff_statistic="cell"),
                                  progress=state.progress, prune=False)  # every rank trains (DDP under torchrun)
        _on_rank_zero(run.save_bottleneck, model, key, report)
    activations = _activation_stage(state, hcfg)
    if bcfg.cutoff_statistic == LFCBM_STATISTIC:
        clip = unprompted_val(run, s.val, state.data.val, candidates, **state.loader)
        report = replace(report, lfcbm_similarity={c: float(v) for c, v in
                                                   zip(candidates, lfcbm_similarity(clip, activations.val))})
    return report, candidates, activations


def _presence_stage(model: SALFCBM, f_val: Any, val_similarities: PromptedEmbeddingStore) -> dict[str, Any]:
    """Calibrate presence on the validation split (label-free; `salfcbm.training.presence`) and store it."""
    peaks = presence.concept_peaks(model, f_val)
    thresholds, report = presence.calibrate_presence(peaks, presence.target_peaks(val_similarities, model.concepts))
    model.set_presence_threshold(thresholds)
    return report


def _fit_metrics(state: RunState, head_fit: HeadFit, report: BottleneckReport, z: Splits[torch.Tensor],
                 freport: ConceptFilterReport | None) -> dict[str, Any]:
    """The SALF-CBM, bottleneck, path, features and concept-filter entries of ``metrics.json``."""
    model, y = state.model, state.labels
    metrics: dict[str, Any] = {
        "salfcbm": {
            "train_accuracy": (z.train.accuracy(head_fit) if hasattr(z.train, "accuracy")  # out of core: streamed
                               else accuracy(head_fit.logits(z.train), y.train)),
            "val_accuracy": accuracy(head_fit.logits(z.val), y.val),
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
        "features": {"cached": state.cache, "reason": state.cache_reason},
        "head_inputs": {"out_of_core": bool(state.activation_stores), "stores": dict(state.activation_stores)},
    }
    if freport is not None:
        metrics["concept_filter"] = {"kept": len(freport.kept), "dropped": len(freport.dropped),
                                     "reasons": freport.reasons, "settings": freport.settings}
    return metrics


def _test_stage(state: RunState, head_fit: HeadFit, metrics: dict[str, Any]) -> None:
    """The test split's features and labels, and SALF-CBM's test accuracy."""
    state.features = replace(state.features, test=state.features_of("test"))
    state.labels = replace(state.labels, test=labels_of(state.data.test))
    z_test = state.model.standardize(store_concept_activations(state.model, state.features.test))
    metrics["salfcbm"]["test_accuracy"] = accuracy(head_fit.logits(z_test), state.labels.test)


def _findings(report: BottleneckReport, head_fit: HeadFit, z: Splits[torch.Tensor], labels: Splits[torch.Tensor],
              base_fit: HeadFit | None, base_inputs: Splits[torch.Tensor] | None,
              name: str | None) -> list[dict[str, Any]]:
    """Degenerate-result findings for the bottleneck, the head and the baseline head."""
    findings = diagnostics.bottleneck_findings(report.initial_val_similarity, report.best_val_similarity,
                                               report.steps)
    findings += diagnostics.head_findings(head_fit.weight, head_fit.logits(z.val), labels.val)
    if base_fit is not None:
        findings += diagnostics.head_findings(base_fit.weight, base_fit.logits(base_inputs.val), labels.val,
                                              head=name)
    return findings


def _on_rank_zero(fn, *args) -> None:
    """Run ``fn(*args)`` on rank 0 only (every process outside ``torch.distributed``); the ranks then meet."""
    rank, world = rank_and_world()
    if rank == 0:
        fn(*args)
    if world > 1:
        barrier()


def _save(model: SALFCBM, run: RunDir, metrics: dict[str, Any]) -> None:
    model.save_pretrained(run / "model")
    run.write_metrics(metrics)


def _save_stage(model: SALFCBM, run: RunDir, metrics: dict[str, Any]) -> None:
    """Record the head's summary stats, save the model to ``run/model`` and write ``metrics.json`` (rank 0)."""
    model.set_head_stats({
        "val_accuracy": round(metrics["salfcbm"]["val_accuracy"], 4),
        "nec": round(metrics["salfcbm"]["nec"], 2),
    })
    _on_rank_zero(_save, model, run, metrics)


def fit(
    model: SALFCBM,
    train_data: Dataset,
    val_data: Dataset,
    *,
    scorer: ConceptScorer | None = None,
    prompts: PromptGrid | None = None,
    train_similarities: PromptedEmbeddingStore | None = None,
    val_similarities: PromptedEmbeddingStore | None = None,
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
    ``bottleneck.safetensors``, the model in ``model/``) and is skipped when the run is
    started again with the same settings, so an interrupted run resumes where it stopped.

    Under ``torchrun`` (an initialised ``torch.distributed`` job) call it on every rank with the
    same arguments: the ranks split the stores' shards and train the bottleneck together
    (`train_bottleneck`, ``DistributedDataParallel``); rank 0 writes the run's files.

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
            ``False`` recomputes the training features on the fly every epoch (`OnTheFlyFeatures`,
            prefetched in the background) and computes the validation and test features once, into a
            store in the run's ``precision`` (never once per validation check); ``"auto"`` caches
            unless the cache would exceed ``max_feature_cache_gb``. The choice and its reason are
            logged and recorded in ``metrics["features"]``; the images the backbone ran on, per
            split, in ``metrics["backbone_images"]``.
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
            features (cached as fp16; without the cache, the validation and test features are computed once
            and stored in this precision); the bottleneck and head train in fp32.
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
    run = RunDir(run_dir)
    given = Splits(train_similarities, val_similarities)
    prompts, data = _prepare_inputs(model, prompts, Splits(train_data, val_data, test_data), given, inputs=inputs,
                                    device=device)
    state = RunState(model=model, run=run, data=data, inputs=inputs,
                     loader={"batch_size": batch_size, "num_workers": num_workers, "progress": progress},
                     feature_options={"batch_size": batch_size, "shard_size": shard_size, "num_workers": num_workers,
                                      "precision": precision})
    t_start = time.perf_counter()
    timings = state.timings

    # 1. similarities (and the concept filters)
    with timed(timings, "similarities"):
        state.similarities = _similarity_stage(state, scorer, prompts, given)
    freport = None
    if filter_concepts is not False:
        with timed(timings, "concept_filter"):
            freport = filter_stage(model, data.train, state.similarities.train, filter_concepts, run.path,
                                   **state.loader)

    # 2. features
    with timed(timings, "features"):
        state.features = _feature_stage(state, cache_features, max_feature_cache_gb)

    # 3. bottleneck (resumable; the cutoff is applied after, so changing it does not retrain)
    state.labels = Splits(labels_of(data.train), labels_of(data.val))
    with timed(timings, "bottleneck"):
        report, candidates, activations = _bottleneck_stage(state, bcfg, hcfg)
    with timed(timings, "cutoff"):
        report, cut = cutoff_stage(model, run, report, bcfg, candidates, activations, state.labels, hcfg,
                                   progress=progress)

    # 4. head on standardised pooled concept activations
    with timed(timings, "head"):
        head_fit, z = head_stage(model, candidates, activations, state.labels, hcfg, progress=progress)

    # 4b. presence thresholds, calibrated on the validation split against the targets (label-free)
    model.set_presence_threshold(None)
    if calibrate_presence:
        with timed(timings, "presence"):
            presence_report = _presence_stage(model, state.features.val, state.similarities.val)

    # 5. metrics, cutoff check, test accuracy and the standard baseline
    metrics = _fit_metrics(state, head_fit, report, z, freport)
    metrics["presence"] = presence_report if calibrate_presence else None
    metrics["cutoff"] = cut
    warn_needed(cut, metrics["salfcbm"]["val_accuracy"])
    if data.test is not None:
        _test_stage(state, head_fit, metrics)
    base_fit = name = base_inputs = None
    if baseline:
        with timed(timings, "baseline"):
            base_fit, name, base_inputs = baseline_stage(model, metrics, state.features, state.labels, hcfg,
                                                         progress=progress, store_root=run / "pooled_features",
                                                         features_key=content_key(state.features.train))
    timings["total"] = time.perf_counter() - t_start
    metrics["seconds"] = timings
    metrics["settings"] = {"bottleneck": asdict(bcfg), "head": asdict(hcfg), "num_workers": num_workers}
    metrics["backbone_images"] = dict(state.backbone_images)
    metrics["degenerate"] = findings = _findings(report, head_fit, z, state.labels, base_fit, base_inputs, name)
    diagnostics.report(findings, stacklevel=3)

    # 6. save
    _save_stage(model, run, metrics)
    return FitResult(model=model, bottleneck=report, head=head_fit, baseline=base_fit, metrics=metrics,
                     run_dir=run.path, cutoff=cut)
