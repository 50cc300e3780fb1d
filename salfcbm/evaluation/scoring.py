"""The benchmark's scoring pass: every method's heatmaps on every batch, scored by segmentation,
deletion / insertion, the field's localisation metrics and the confidence metrics, each on the
method's own model (`ScoringState` holds the accumulators; `score_all_batches` runs the pass;
`result_rows` turns it into one row per method).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from salfcbm.errors import InputError, SalfCBMError
from salfcbm.evaluation.methods import BenchmarkMethod, MethodPipeline


__all__ = ["ScoringState", "collect_examples", "make_scoring_state", "result_rows", "score_all_batches"]


def _iter_batches(
    images: torch.Tensor | Iterable[Any], masks: torch.Tensor | None, labels: torch.Tensor | None, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    if isinstance(images, torch.Tensor):
        for a in range(0, images.shape[0], batch_size):
            sl = slice(a, a + batch_size)
            yield images[sl], masks[sl], (labels[sl] if labels is not None else None)  # type: ignore[index]
        return
    for batch in images:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise InputError(
                "With `masks=None`, `images` must yield (images, masks) or (images, masks, labels) batches, "
                f"got {type(batch).__name__}."
            )
        yield batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


@dataclass
class ScoringState:
    """Accumulators of one benchmark run's scoring pass (metrics, errors, examples, timing batch)."""

    seg: dict[str, Any]
    faith: dict[str, Any]
    loc: dict[str, Any] = field(default_factory=dict)  # LocalisationMetrics per method
    conf: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)  # ADrop / IIC / faithfulness corr.
    faithfulness_runs: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    agree: dict[str, list[int]] = field(default_factory=dict)  # [explained == label, images] when labels known
    ex_images: list[torch.Tensor] = field(default_factory=list)
    ex_masks: list[torch.Tensor] = field(default_factory=list)
    ex_heat: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    timing_set: tuple[torch.Tensor, torch.Tensor | None] | None = None
    n_seen: int = 0


def make_scoring_state(
    methods: Mapping[str, BenchmarkMethod],
    ap_backend: str,
    n_steps: int,
    perturbation_batch_size: int,
    deletion_substrate: Callable[[torch.Tensor], torch.Tensor] | None,
    insertion_substrate: Callable[[torch.Tensor], torch.Tensor] | None,
) -> ScoringState:
    """Build the per-method segmentation and deletion / insertion scorers and empty accumulators."""
    from salfcbm.evaluation.metrics import (
        DeletionInsertion,
        SegmentationMetrics,
        blur_substrate,
        zeros_substrate,
    )

    seg = {n: SegmentationMetrics(ap_backend=ap_backend) for n in methods}
    faith = {
        n: DeletionInsertion(
            MethodPipeline(m),
            n_steps=n_steps,
            batch_size=perturbation_batch_size,
            deletion_substrate_fn=deletion_substrate or zeros_substrate,
            insertion_substrate_fn=insertion_substrate or blur_substrate,
            progress=False,
        )
        for n, m in methods.items()
    }
    from salfcbm.evaluation.localisation import LocalisationMetrics

    return ScoringState(
        seg=seg, faith=faith, agree={n: [0, 0] for n in methods}, ex_heat={n: [] for n in methods},
        loc={n: LocalisationMetrics() for n in methods}, conf={n: {} for n in methods},
    )


def _prepare_batch(
    x01: torch.Tensor, g: Any, y: Any, n_seen: int, max_images: int | None, dev: torch.device | None, targets: str
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Trim a batch to ``max_images``, move it to ``dev`` as float, and check / convert its labels."""
    if max_images is not None and n_seen + x01.shape[0] > max_images:
        keep = max_images - n_seen
        x01, g, y = x01[:keep], g[:keep], (y[:keep] if y is not None else None)
    if dev is not None:
        x01 = x01.to(dev)
    x01 = x01.float()
    if targets == "labels" and y is None:
        raise InputError("targets='labels' needs labels: pass `labels=` or yield (images, masks, labels) batches.")
    if y is not None:
        y = torch.as_tensor(y).long().to(x01.device)
    return x01, g, y


def _method_heatmaps(
    name: str, m: BenchmarkMethod, x01: torch.Tensor, y: torch.Tensor | None, targets: str, agree: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose a method's explained classes on a batch, compute and check its heatmaps; return ``(heat, t)``."""
    inp = m.inputs(x01)
    if targets == "predicted":
        with torch.no_grad():
            t = m.logits(inp).argmax(1)
    else:
        t = y  # type: ignore[assignment]
    if y is not None:
        agree[0] += int((t == y).sum())
        agree[1] += int(y.numel())
    heat = m.attribute(inp, t)
    if not isinstance(heat, torch.Tensor) or heat.dim() not in (3, 4) or heat.shape[0] != x01.shape[0]:
        got = tuple(heat.shape) if isinstance(heat, torch.Tensor) else type(heat).__name__
        raise SalfCBMError(f"{name!r} returned {got}; expected (B, 1, h, w) heatmaps.")
    heat = heat.detach().float()
    if heat.dim() == 3:
        heat = heat[:, None]
    heat = torch.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    return heat, t


def _confidence_update(
    state: ScoringState, name: str, m: BenchmarkMethod, x01: torch.Tensor, heat: torch.Tensor, t: torch.Tensor
) -> None:
    """Average Drop / Increase in Confidence and faithfulness correlation of one batch, on the method's model."""
    from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation

    pipe = state.faith[name].model  # the method's images -> logits pipeline
    acc = state.conf[name]
    adi = average_drop_increase(pipe, x01, heat, t)
    acc.setdefault("average_drop", []).append(adi["drop"])
    acc.setdefault("increase_in_confidence", []).append(adi["increase"])
    if state.faithfulness_runs:
        seed = state.n_seen  # reproducible, different subsets per batch
        fc = faithfulness_correlation(pipe, x01, heat, t, n_runs=state.faithfulness_runs, seed=seed)
        acc.setdefault("faithfulness_correlation", []).append(fc)


def _score_batch(
    state: ScoringState,
    methods: Mapping[str, BenchmarkMethod],
    x01: torch.Tensor,
    g: Any,
    y: torch.Tensor | None,
    targets: str,
    n_examples: int,
    on_error: str,
) -> None:
    """Score every (not yet failed) method on one batch and keep the example images and heatmaps."""
    if state.timing_set is None:
        state.timing_set = (x01, y)
    keep_ex = max(0, n_examples - len(state.ex_images))
    if keep_ex:
        state.ex_images.extend(x01[:keep_ex].cpu())
        state.ex_masks.extend(torch.as_tensor(g)[:keep_ex].cpu())
    for name, m in methods.items():
        if name in state.errors:
            continue
        try:
            heat, t = _method_heatmaps(name, m, x01, y, targets, state.agree[name])
            state.seg[name].update(heat, torch.as_tensor(g))
            state.faith[name].update(x01, heat, t)
            state.loc[name].update(heat, torch.as_tensor(g))
            _confidence_update(state, name, m, x01, heat, t)
            if keep_ex:
                state.ex_heat[name].extend(heat[:keep_ex].cpu())
        except Exception as e:
            if on_error == "raise":
                raise
            state.errors[name] = f"{type(e).__name__}: {e}"


def score_all_batches(
    state: ScoringState,
    methods: Mapping[str, BenchmarkMethod],
    images: torch.Tensor | Iterable[Any],
    masks: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    batch_size: int,
    max_images: int | None,
    dev: torch.device | None,
    targets: str,
    n_examples: int,
    on_error: str,
    progress: bool,
) -> None:
    """Run the scoring pass over all batches (up to ``max_images``), with an optional progress bar."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None
        if isinstance(images, torch.Tensor):
            total = min(images.shape[0], max_images or images.shape[0])
        bar = tqdm(total=total, desc="attribution benchmark", unit="img")
    try:
        for x01, g, y in _iter_batches(images, masks, labels, batch_size):
            if max_images is not None and state.n_seen >= max_images:
                break
            x01, g, y = _prepare_batch(x01, g, y, state.n_seen, max_images, dev, targets)
            _score_batch(state, methods, x01, g, y, targets, n_examples, on_error)
            state.n_seen += x01.shape[0]
            if bar is not None:
                bar.update(x01.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if state.n_seen == 0:
        raise InputError("No images were given (the image iterable was empty).")


def result_rows(methods: Mapping[str, BenchmarkMethod], state: ScoringState) -> dict[str, dict[str, Any]]:
    """One row per method: its segmentation and faithfulness scores, or its error."""
    rows: dict[str, dict[str, Any]] = {}
    for name, m in methods.items():
        row: dict[str, Any] = {"explains": m.explains}
        if name in state.errors:
            row["error"] = state.errors[name]
            rows[name] = row
            continue
        s = state.seg[name].compute()
        d = state.faith[name].compute()
        row.update(state.loc[name].compute())
        for key, vs in state.conf[name].items():
            v = torch.cat(vs)
            v = v[~torch.isnan(v)]
            row[key] = float(v.mean()) if v.numel() else None
        row.update(
            pixel_accuracy=s["pixel_accuracy"],
            miou=s["miou"],
            map=s["map"],
            iou_foreground=s["iou_foreground"],
            iou_background=s["iou_background"],
            deletion_auc=d["deletion_auc"],
            insertion_auc=d["insertion_auc"],
            n_images=s["n_images"],
        )
        if state.agree[name][1]:
            row["explained_is_label"] = state.agree[name][0] / state.agree[name][1]
        rows[name] = row
    return rows



def collect_examples(state: ScoringState) -> dict[str, Any]:
    """Stack the kept example images, masks and (complete) per-method heatmaps."""
    examples: dict[str, Any] = {}
    if state.ex_images:
        examples = {
            "images": torch.stack(state.ex_images),
            "masks": torch.stack([torch.as_tensor(mk).bool() for mk in state.ex_masks]),
            "heatmaps": {n: torch.stack(h) for n, h in state.ex_heat.items() if len(h) == len(state.ex_images)},
        }
    return examples
