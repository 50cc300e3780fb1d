"""The concept bottleneck's training loop (paper 3.3): Adam on the Eq. 1 loss over shuffled
channels-last batches, early stopping on the validation similarity, then the cutoff.

Memory is bounded by the batch and the shard size, not by the number of images.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from salfcbm._utils.progress import close_bar
from salfcbm._utils.tensors import to_device
from salfcbm.core.model import SALFCBM
from salfcbm.errors import InputError
from salfcbm.supervision.store import ShardedStore, SimilarityStore
from salfcbm.training.batches import Prefetched, project_channels_last, shard_batches, shard_tensors
from salfcbm.training.config import BottleneckConfig, BottleneckReport
from salfcbm.training.cutoff import LFCBM_STATISTIC, apply_cutoff
from salfcbm.training.loss import bottleneck_loss, init_bottleneck

__all__ = ["train_bottleneck", "validation_similarity"]

logger = logging.getLogger("salfcbm")


def _shard_batches(
    features: ShardedStore, targets: SimilarityStore, concepts: Sequence[str], batch_size: int, rng: random.Random
) -> Prefetched:
    """Shuffled channels-last ``(features, targets)`` batches, epoch after epoch, prepared one shard
    ahead in a background thread (`salfcbm.training.batches.shard_batches`)."""
    return shard_batches(features, targets, concepts, batch_size, rng, repeat=True)


def validation_similarity(
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
    initial = validation_similarity(model, val_features, val_targets, concepts, val_cache).mean().item()
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
                    sim = validation_similarity(model, val_features, val_targets, concepts, val_cache).mean().item()
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
    per_cell = validation_similarity(model, val_features, val_targets, concepts, val_cache).flatten(1).mean(1).cpu()
    pooled = validation_similarity(model, val_features, val_targets, concepts, val_cache, pooled=True).cpu()
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

