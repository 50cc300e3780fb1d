"""The concept bottleneck's training loop (paper 3.3): Adam on the Eq. 1 loss over shuffled
channels-last batches, early stopping on the validation similarity, then the cutoff.

Memory is bounded by the batch and the shard size, not by the number of images. Under
``torch.distributed`` (``torchrun``) every rank trains: the bottleneck is wrapped in
``DistributedDataParallel``, each rank steps on its share of the training shards (gradients
averaged across the ranks, so every rank holds the same weights), and the validation
similarity is computed from every rank's share of the validation shards, summed across ranks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from salfcbm._utils.distributed import rank_and_world
from salfcbm._utils.progress import close_bar
from salfcbm._utils.tensors import to_device
from salfcbm.core.model import SALFCBM
from salfcbm.errors import InputError
from salfcbm.supervision.store import ShardedStore, PromptedEmbeddingStore
from salfcbm.training.batches import Prefetched, project_channels_last, shard_batches, shard_tensors
from salfcbm.training.config import BottleneckConfig, BottleneckReport
from salfcbm.training.cutoff import LFCBM_STATISTIC, apply_cutoff
from salfcbm.training.loss import bottleneck_loss, init_bottleneck

__all__ = ["train_bottleneck", "validation_similarity"]

logger = logging.getLogger("salfcbm")


def _shard_batches(
    features: ShardedStore, targets: PromptedEmbeddingStore, concepts: Sequence[str], batch_size: int, rng: random.Random
) -> Prefetched:
    """Shuffled channels-last ``(features, targets)`` batches, epoch after epoch, prepared one shard
    ahead in a background thread (`salfcbm.training.batches.shard_batches`); this rank's share."""
    rank, world = rank_and_world()
    return shard_batches(features, targets, concepts, batch_size, rng, repeat=True, rank=rank, world=world)


def _summed(t: torch.Tensor | float | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``t`` summed across the ranks (zeros where this rank had no shard)."""
    t = torch.zeros(shape, device=device) if t is None or not torch.is_tensor(t) else t
    torch.distributed.all_reduce(t)
    return t


def validation_similarity(
    model: SALFCBM, features: ShardedStore, targets: PromptedEmbeddingStore, concepts: Sequence[str],
    cache: list | None = None, pooled: bool = False,
) -> torch.Tensor:
    """Cubic cosine similarity over the whole validation set, streamed in two passes: ``(M, Hg, Wg)``.

    ``cache`` (a list) keeps the per-shard targets between calls when they fit in memory.
    ``pooled=True`` compares the pooled maps ``c*(x)`` with the pooled targets instead: ``(M,)``.
    Under ``torch.distributed`` each rank reads every ``world``-th shard and the sums of both
    passes are added across the ranks, so every rank returns the same similarity.
    """
    device = model.bottleneck.weight.device
    n = features.length
    rank, world = rank_and_world()
    shape = (len(concepts),) if pooled else (*features.item_shape[-2:], len(concepts))

    def shards():  # channels-last float32 shards, converted once and kept when `cache` is given
        for k, s in enumerate(range(rank, features.num_shards, world)):
            if cache is not None and len(cache) > k:
                x, p = cache[k]
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
        if world > 1:
            sum_q, sum_p = _summed(sum_q, shape, device), _summed(sum_p, shape, device)
        mq, mp = sum_q / n, sum_p / n
        qp = qq = pp = 0.0
        for x, p in shards():
            q = (project(x) - mq) ** 3
            p = (p - mp) ** 3
            qp = qp + (q * p).sum(0)
            qq = qq + (q * q).sum(0)
            pp = pp + (p * p).sum(0)
        if world > 1:
            qp, qq, pp = (_summed(t, shape, device) for t in (qp, qq, pp))
    out = qp / (qq.sqrt() * pp.sqrt()).clamp_min(1e-12)
    return out if pooled else out.permute(2, 0, 1)  # (M,) or (M, Hg, Wg)


class _Projection(nn.Module):
    """The bottleneck on channels-last features as a module: what ``DistributedDataParallel`` wraps."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project_channels_last(self.conv, x)


def _projection(model: SALFCBM, world: int) -> nn.Module:
    """The trained projection: wrapped in ``DistributedDataParallel`` when there are several ranks."""
    proj = _Projection(model.bottleneck)
    if world == 1:
        return proj
    from torch.nn.parallel import DistributedDataParallel

    device = model.bottleneck.weight.device
    return DistributedDataParallel(proj, device_ids=[device] if device.type == "cuda" else None)


def _bottleneck_step(proj: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """One Adam step of the Eq. 1 loss on a channels-last batch (one addmm); returns the loss."""
    loss = bottleneck_loss(proj(x), p)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _check_prunable(cfg: BottleneckConfig, prune: bool) -> BottleneckConfig:
    if prune and cfg.cutoff_statistic == LFCBM_STATISTIC:
        raise InputError("train_bottleneck(prune=True) cannot apply cutoff_statistic='lfcbm': it needs the unprompted "
                         "validation similarities. Use salfcbm.fit, or prune=False and then apply_cutoff.")
    return cfg


def _check_stores(model: SALFCBM, train_features, train_targets, val_features, val_targets) -> None:
    if train_targets.grid != model.grid:
        raise InputError(
            f"The similarity store's grid {train_targets.grid} differs from the model's grid {model.grid}; "
            "wrap the backbone with the same grid the similarities were computed on."
        )
    if train_features.length != train_targets.length or val_features.length != val_targets.length:
        raise InputError("Feature and similarity stores must cover the same images (lengths differ).")


class _Validation:
    """Early stopping on the validation similarity: the best weights so far, checks without a gain."""

    def __init__(self, model: SALFCBM, features, targets, concepts: list[str]):
        self.model, self.features, self.targets, self.concepts = model, features, targets, concepts
        cells = features.item_shape[-1] * features.item_shape[-2]
        self.cache: list | None = [] if features.length * (model.num_concepts + features.item_shape[0]) * cells \
            <= 64_000_000 else None  # keep the converted validation shards in memory when they are small
        self.history: list[dict[str, float]] = []
        self.bad = 0
        # the initial weights are the first candidate: training must beat them to be kept
        self.initial = self.similarity().mean().item()
        self.best = (self.initial, 0, self._state())

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.bottleneck.state_dict().items()}

    def similarity(self, pooled: bool = False) -> torch.Tensor:
        return validation_similarity(self.model, self.features, self.targets, self.concepts, self.cache, pooled)

    def check(self, step: int, loss: torch.Tensor) -> float:
        """Validate at ``step``; keep the weights when they improve. Returns the similarity."""
        sim = self.similarity().mean().item()
        self.history.append({"step": step, "train_loss": loss.item(), "val_similarity": sim})
        if sim > self.best[0] + 1e-6:
            self.best = (sim, step, self._state())
            self.bad = 0
        else:
            self.bad += 1
        return sim


def _optimise(model: SALFCBM, cfg: BottleneckConfig, batches, val: _Validation, bar) -> int:
    """The optimisation loop: Adam steps until ``max_steps`` or ``patience`` checks without a gain."""
    device = model.bottleneck.weight.device
    proj = _projection(model, rank_and_world()[1])
    opt = torch.optim.Adam(model.bottleneck.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, done = 0, False
    while not done:
        for x, p in batches:
            loss = _bottleneck_step(proj, opt, to_device(x, device), to_device(p, device))
            step += 1
            bar.update(1)
            if step % cfg.val_every == 0 or step == cfg.max_steps:
                sim = val.check(step, loss)
                bar.set_postfix(loss=f"{loss.item():.3g}", val_sim=f"{sim:.4f}")
                if val.bad >= cfg.patience:
                    done = True
            if done or step >= cfg.max_steps:
                done = True
                break
        else:  # no batch at all: nothing to train on
            done = True
    return step


def train_bottleneck(
    model: SALFCBM,
    train_features: ShardedStore,
    train_targets: PromptedEmbeddingStore,
    val_features: ShardedStore,
    val_targets: PromptedEmbeddingStore,
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

    Under an initialised ``torch.distributed`` job with several ranks, call it on every rank
    with the same stores and config: the ranks train one bottleneck with
    ``DistributedDataParallel``, each on its share of the training shards, and return the same
    weights and report (see ``docs/training.md`` for how it compares with one rank).
    """
    cfg = _check_prunable(config or BottleneckConfig(), prune).for_data(train_features.length)
    concepts = list(model.concepts)
    _check_stores(model, train_features, train_targets, val_features, val_targets)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    init_bottleneck(model.bottleneck, cfg.init)
    val = _Validation(model, val_features, val_targets, concepts)
    rank, world = rank_and_world()
    bar = tqdm(total=cfg.max_steps, desc="Concept bottleneck" + (f" [{world} ranks]" if world > 1 else ""),
               disable=not progress or rank != 0, unit="step")
    batches = _shard_batches(train_features, train_targets, concepts, cfg.batch_size, rng)  # epochs back to back
    try:  # closed also when a step raises: the prefetch thread must not outlive the loop
        step = _optimise(model, cfg, batches, val, bar)
    finally:
        batches.close()
    best = val.best
    if val.bad >= cfg.patience:
        reason = (f"early stop at step {step}/{cfg.max_steps}: no validation gain in {cfg.patience} checks; "
                  f"best step {best[1]}")
    else:
        reason = f"max_steps {cfg.max_steps} reached; best step {best[1]}"
    close_bar(bar, step, reason)
    logger.info("Concept bottleneck: %s (validation similarity %.4f, initially %.4f)", reason, best[0], val.initial)
    model.bottleneck.load_state_dict(best[2])
    per_cell, pooled = val.similarity().flatten(1).mean(1).cpu(), val.similarity(pooled=True).cpu()
    report = BottleneckReport(
        steps=step, best_step=best[1], best_val_similarity=float(best[0]), concept_similarity={},
        kept=list(concepts), dropped=[], history=val.history, seconds=time.perf_counter() - t0,
        pooled_similarity={c: float(v) for c, v in zip(concepts, pooled)},
        cell_similarity={c: float(v) for c, v in zip(concepts, per_cell)},
        initial_val_similarity=float(val.initial), stop_reason=reason, data_seconds=batches.wait_seconds,
        ranks=world,
    )
    return apply_cutoff(model, report, cfg, prune=prune)
