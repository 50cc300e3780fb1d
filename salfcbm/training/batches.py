"""Bottleneck training batches at the speed of the arithmetic (the data side of paper 3.3, Eq. 1).

The loss compares predictions and targets cell by cell, so it does not care about the layout, only
that both tensors share it. Channels-last is the layout that costs nothing:

* the scorer's similarities are ``(B, Hg, Wg, M)`` already (`PromptedEmbeddingStore.targets` with
  ``layout="NHWC"`` is one matmul, no permutation);
* the 1x1 bottleneck on channels-last features ``(B, Hg, Wg, C)`` is one ``addmm``
  (`project_channels_last`), faster than ``nn.Conv2d`` on NCHW;
* the fp16-to-fp32 conversion, the permutation and the shuffle happen once per shard, in a
  background thread (`prefetch`), so a batch is a contiguous slice and batch production
  overlaps with the optimisation step.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Prefetched", "map_features", "prefetch", "project_channels_last", "shard_batches", "shard_tensors"]


def project_channels_last(bottleneck: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The 1x1 bottleneck on channels-last features: ``(B, Hg, Wg, C) -> (B, Hg, Wg, M)``, one ``addmm``.

    Examples:
        >>> conv = nn.Conv2d(4, 3, 1)
        >>> x = torch.randn(2, 4, 5, 5)
        >>> torch.allclose(project_channels_last(conv, x.permute(0, 2, 3, 1)), conv(x).permute(0, 2, 3, 1), atol=1e-6)
        True
    """
    B, H, W, C = x.shape
    w = bottleneck.weight.flatten(1)
    flat = x.reshape(-1, C)
    out = flat @ w.t() if bottleneck.bias is None else torch.addmm(bottleneck.bias, flat, w.t())
    return out.view(B, H, W, -1)


@torch.no_grad()
def map_features(model: Any, features: Any, reduce: Callable[[torch.Tensor], torch.Tensor],
                 batch: int = 1024) -> torch.Tensor:
    """``reduce(concept maps)`` of every cached feature map, concatenated on the CPU: ``(N, ...)``.

    The one loop over a feature store's shards that runs the bottleneck in batches (pooled
    activations, map peaks); the maps of one batch at a time are in memory.
    """
    device = model.bottleneck.weight.device
    out = []
    for _, values in features.iter_shards():
        for s in range(0, values.shape[0], batch):
            out.append(reduce(model.bottleneck(values[s : s + batch].to(device, torch.float32))).cpu())
    return torch.cat(out)


def _channels_last_float(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` of any dtype -> contiguous float32 ``(N, H, W, C)`` in one copy."""
    out = torch.empty((x.shape[0], x.shape[2], x.shape[3], x.shape[1]), dtype=torch.float32, device=x.device)
    return out.copy_(x.permute(0, 2, 3, 1))


def shard_tensors(features: Any, targets: Any, concepts: Sequence[str], shard: int,
                  order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One shard as contiguous float32 channels-last ``(x, p)``: ``(n, Hg, Wg, C)`` and ``(n, Hg, Wg, M)``.

    ``order`` (a permutation of the shard's rows) shuffles both in the same copy.
    """
    a, b = features.shard_range(shard)
    x = features.read_shard(shard)
    idx = torch.arange(a, b)
    if order is not None:
        x, idx = x[order], idx[order]
    p = targets.targets(idx, concepts, layout="NHWC")
    return _channels_last_float(x), p.float().contiguous()


def _shards(features, targets, concepts, batch_size: int, rng: random.Random,
            repeat: bool = False, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled shards, trimmed to whole batches; the remainder of a shard goes into the next one.

    With ``repeat`` the epochs follow each other without end (a new shuffle each time), so the
    first shard of an epoch is prepared while the last one of the previous epoch trains. With
    ``world > 1`` (ranks of a distributed job, each with the same ``rng`` seed), rank ``r`` reads
    the shards at positions ``k`` of the common shuffled sequence with ``k % world == r``.
    """
    carry: tuple[torch.Tensor, torch.Tensor] | None = None
    for k, s in enumerate(_shard_order(features.num_shards, rng, repeat)):
        seed = rng.randrange(2**31)  # drawn on every rank, so the ranks' sequences stay the same
        if k % world != rank:
            continue
        a, b = features.shard_range(s)
        perm = torch.randperm(b - a, generator=torch.Generator().manual_seed(seed))
        x, p = shard_tensors(features, targets, concepts, s, perm)
        if carry is not None:
            x, p = torch.cat([carry[0], x]), torch.cat([carry[1], p])
        n_full = (x.shape[0] // batch_size) * batch_size
        carry = (x[n_full:].clone(), p[n_full:].clone())
        if n_full:
            yield x[:n_full], p[:n_full]
        del x, p
    if carry is not None and carry[0].shape[0] >= 2:
        yield carry


def _shard_order(n: int, rng: random.Random, repeat: bool) -> Iterator[int]:
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order
        if not repeat or not order:
            return


def shard_batches(features, targets, concepts: Sequence[str], batch_size: int, rng: random.Random,
                  *, background: bool = True, repeat: bool = False, rank: int = 0, world: int = 1) -> Prefetched:
    """Shuffled channels-last ``(x, p)`` batches, one shard ahead in a background thread.

    Shards are visited in random order and read whole; rows are shuffled within a shard, and the
    remainder of a shard is carried into the next one, so every image is used once per epoch
    (``repeat=True``: epoch after epoch, until the consumer stops). A batch is a contiguous slice of
    a prepared shard (no copy). The returned iterator's ``wait_seconds`` is the time the consumer
    spent waiting for data; close it when done. With ``world > 1`` this rank reads only its share of
    the shards (every ``world``-th of the common shuffled sequence, from position ``rank``).
    """
    shards = _shards(features, targets, concepts, batch_size, rng, repeat, rank, world)
    source = prefetch(shards, depth=1) if background else Prefetched(shards)

    def batches():
        for x, p in source:
            for i in range(0, x.shape[0], batch_size):
                yield x[i : i + batch_size], p[i : i + batch_size]

    return Prefetched(batches(), timer=source)


class Prefetched:
    """An iterator that measures how long its consumer waited for each item (``wait_seconds``)."""

    def __init__(self, it: Iterable, timer: Prefetched | None = None):
        self._it = iter(it)
        self._timer = timer
        self.wait_seconds = 0.0

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.wait_seconds += time.perf_counter() - t

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        if self._timer is not None:
            self._timer.close()


def prefetch(items: Iterable, depth: int = 1) -> Prefetched:
    """Produce ``items`` in a background thread, up to ``depth`` ahead of the consumer.

    Torch releases the GIL in its kernels, so reading, converting and permuting the next shard runs
    while the current one trains. An exception in the producer is raised in the consumer; closing
    the iterator (or dropping it) stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as e:
            put((done, e))
            return
        put((done, None))

    thread = threading.Thread(target=produce, name="salfcbm-prefetch", daemon=True)

    def consume():
        thread.start()
        try:
            while True:
                item, err = q.get()
                if item is done:
                    if err is not None:
                        raise err
                    return
                yield item
        finally:
            stop.set()

    return Prefetched(consume())
