"""The interpretability-cutoff stage of `fit`: the cutoff (`salfcbm.training.cutoff`) applied to the
trained bottleneck, after checking whether the head needs a concept it removes (``cutoff_guard``),
and LF-CBM's unprompted validation similarities, cached in the run directory."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from salfcbm._utils.io import atomic_write_bytes, checked_safetensors, read_checked_metadata
from salfcbm._utils.tensors import accuracy
from salfcbm.core.model import SALFCBM
from salfcbm.errors import AllConceptsCutError, DegenerateResultWarning, InputError
from salfcbm.supervision.store import PromptedEmbeddingStore
from salfcbm.training.config import BottleneckConfig, BottleneckReport, Splits
from salfcbm.training.cutoff import apply_cutoff, passes_cutoff, unprompted_similarities
from salfcbm.training.features import fit_standardization
from salfcbm.training.head_stage import HeadConfig, StreamedActivations, fit_columns, fit_head
from salfcbm.training.rundir import RunDir, content_key, record_all_cut, stage_key

__all__ = ["cutoff_stage", "unprompted_val", "warn_needed"]

logger = logging.getLogger("salfcbm")


def unprompted_val(run: RunDir, val_similarities: PromptedEmbeddingStore, val_data, concepts: list[str], *,
                   batch_size: int = 64, num_workers: int = 0, progress: bool = True) -> torch.Tensor:
    """LF-CBM's ``val_clip_features`` ``(N, M)`` of the validation images (cached in the run directory)."""
    from safetensors.torch import load_file

    if val_data is None:
        raise InputError("cutoff_statistic='lfcbm' needs the validation images (fit's val_data).")
    key = stage_key({"concepts": concepts, "s": val_similarities.store.meta,
                      "data": content_key(val_similarities.store), "n": len(val_data)})
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



def cutoff_stage(model: SALFCBM, run: RunDir, report: BottleneckReport, bcfg: BottleneckConfig,
                 candidates: list[str], activations: Splits[torch.Tensor], labels: Splits[torch.Tensor],
                 hcfg: HeadConfig, *, progress: bool) -> tuple[BottleneckReport, dict[str, Any]]:
    """Apply the interpretability cutoff; first check whether the head needs a concept it removes.

    When the cutoff removes concepts, the head is fitted on every candidate and on the survivors.
    A removed concept that the head on every candidate gives a non-zero weight is "needed by the
    head" when that head is also better on validation than the head on the survivors. With
    ``cutoff_guard="keep"`` such concepts are kept; with ``"warn"`` they are removed (and `fit`
    warns). Either way the returned check lists them with both validation accuracies. When no
    concept passes the cutoff nothing is rescued: `AllConceptsCutError`. ``activations`` are the
    pooled activations of every candidate (columns in ``candidates`` order); out of core the training
    split's are a `StreamedActivations` and both heads stream (`fit_columns`).
    """
    trial = apply_cutoff(model, report, bcfg, prune=False)
    dropped = [c for c in trial.kept if not passes_cutoff(trial.concept_similarity[c], bcfg)]
    check: dict[str, Any] = {"cutoff": bcfg.cutoff, "statistic": bcfg.cutoff_statistic, "guard": bcfg.cutoff_guard,
                             "candidates": len(candidates), "dropped": [], "needed_by_head": [], "kept_for_head": []}
    needed: list[str] = []
    if dropped and len(dropped) < len(candidates):  # every concept cut: AllConceptsCutError, no rescue
        cols = [i for i, c in enumerate(candidates) if c not in set(dropped)]
        if isinstance(activations.train, StreamedActivations):  # out of core: both heads over the store's chunks
            full, acc_all = fit_columns(activations, labels, None, model.num_classes, hcfg, progress=progress,
                                        desc="Sparse head path (all concepts, cutoff check, out of core)")
            cut, acc_cut = fit_columns(activations, labels, cols, model.num_classes, hcfg, progress=progress,
                                       desc="Sparse head path (cutoff check, out of core)")
        else:
            y_train, y_val = labels.train, labels.val
            _, _, (z_train, z_val) = fit_standardization(activations.train, activations.val)
            full = fit_head(z_train, y_train, z_val, y_val, model.num_classes, hcfg, progress=progress,
                            desc="Sparse head path (all concepts, cutoff check)")
            acc_all = accuracy(full.logits(z_val), y_val)
            cut = fit_head(z_train[:, cols], y_train, z_val[:, cols], y_val, model.num_classes, hcfg,
                           progress=progress, desc="Sparse head path (cutoff check)")
            acc_cut = accuracy(cut.logits(z_val[:, cols]), y_val)
        check["val_accuracy_without_cutoff"], check["val_accuracy_with_cutoff"] = acc_all, acc_cut
        used = (full.weight != 0).any(0)
        if acc_all > acc_cut:
            needed = [c for c in dropped if used[candidates.index(c)]]
    try:
        report = apply_cutoff(model, report, bcfg, keep_also=needed if bcfg.cutoff_guard == "keep" else ())
    except AllConceptsCutError as e:
        record_all_cut(run.path, e, bcfg.cutoff)
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


def warn_needed(check: dict[str, Any], val_accuracy: float) -> None:
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

