"""Filling a `ShardedStore`: `compute_store`, resumable and split across ``torchrun`` ranks.

Only the missing shards are computed (a run killed at any point resumes from the last complete
shard); the missing shards are dealt round the ranks (rank ``r`` of ``world`` takes every
``world``-th one from the ``r``-th); each shard records a digest of its input images
(`salfcbm._utils.provenance`), so a shard whose images changed is recomputed. Public as ``salfcbm.compute_store`` and ``salfcbm.supervision.compute_store``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from salfcbm._utils.distributed import barrier, rank_and_world
from salfcbm._utils.provenance import batch_digest, resolve_inputs, shard_digest
from salfcbm._utils.shards import ShardedStore
from salfcbm.errors import InputError

__all__ = ["ShardBatches", "collate_images", "compute_store", "missing_shards_of_this_rank"]


def collate_images(items: list[Any]) -> torch.Tensor:
    """Stack the images of a batch of ``image`` or ``(image, label, ...)`` items; a non-tensor image or
    mixed shapes raise `InputError` naming the fix."""
    imgs = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    if not all(isinstance(im, torch.Tensor) for im in imgs):
        raise InputError(
            f"The dataset must return a (3, H, W) float tensor image (or a tuple starting with one); got {type(imgs[0]).__name__}. "
            "Add a torchvision transform such as transforms.ToTensor()."
        )
    shapes = {tuple(im.shape) for im in imgs}
    if len(shapes) > 1:
        raise InputError(
            f"Images in one batch have different shapes {sorted(shapes)[:4]}; resize them to one size in the dataset's "
            "transform (e.g. Resize(256) + CenterCrop(224)), or use batch_size=1."
        )
    return torch.stack(imgs)


class ShardBatches:
    """Batch sampler: batches of indices that never cross a shard boundary."""

    def __init__(self, store: ShardedStore, shards: list[int], batch_size: int):
        self.batches = []
        for i in shards:
            a, b = store.shard_range(i)
            self.batches.extend(list(range(s, min(s + batch_size, b))) for s in range(a, b, batch_size))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def compute_store(
    store: ShardedStore,
    dataset: Any,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "Computing store",
    pin_memory: bool | None = None,
    inputs: str = "auto",
) -> ShardedStore:
    """Fill the missing shards of ``store`` with ``fn(images, indices)`` over ``dataset``.

    Only missing shards are computed, so a run killed at any point (even
    ``kill -9``) resumes from the last complete shard; a half-written shard is a
    temporary file that is never read and is cleaned up here. Under
    ``torch.distributed`` (``torchrun``), the ranks list the missing shards, meet,
    and rank ``r`` of ``world`` computes every ``world``-th of them from the ``r``-th
    (so a rerun after one rank died is balanced too); all ranks meet at a barrier
    at the end, so every rank returns a complete store. Shard files are written
    by a background thread while the next batches are computed.

    Args:
        store: the store to fill; ``len(store)`` must equal ``len(dataset)``.
        dataset: map-style dataset returning ``image`` or ``(image, label, ...)``,
            images ``(3, H, W)`` float in ``[0, 1]``.
        fn: batch function ``(images (B, 3, H, W), indices (B,)) -> (B, *item_shape)``.
        batch_size: images per ``fn`` call (batches never cross shards).
        num_workers: DataLoader workers.
        progress: show a tqdm bar (images/s and ETA) on rank 0.
        desc: the bar's label.
        pin_memory: DataLoader ``pin_memory``; default: when CUDA is available.
        inputs: how each shard records what it was computed from, so that a finished shard
            whose images changed is recomputed: ``"files"`` (path, size, mtime of each file),
            ``"content"`` (a SHA-256 of the pixels), ``"fingerprint"`` (the dataset's own
            fingerprint, in the manifest) or ``"auto"``; see `salfcbm._utils.provenance`.

    Returns:
        ``store``, now complete.

    Examples:
        >>> import tempfile, torch
        >>> data = [(torch.full((3, 4, 4), float(n)), n) for n in range(5)]
        >>> s = ShardedStore(tempfile.mkdtemp(), manifest={"fn": "mean"}, item_shape=(1,), length=5, shard_size=2)
        >>> s = compute_store(s, data, lambda x, i: x.mean(dim=(1, 2, 3))[:, None], progress=False)
        >>> s.read(range(5))[:, 0].tolist()
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if not isinstance(store, ShardedStore):
        raise InputError(f"store must be a ShardedStore; got {type(store).__name__}.")
    if not callable(fn):
        raise InputError("fn must be callable as fn(images, indices) -> tensor.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int; got {batch_size!r}.")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise InputError(f"num_workers must be an int >= 0; got {num_workers!r}.")
    try:
        n = len(dataset)
    except TypeError:
        raise InputError("dataset must be a map-style dataset with __len__ and __getitem__.") from None
    if n != len(store):
        raise InputError(f"The dataset has {n} items but the store was created for {len(store)}; use a store of length {n}.")

    mode = resolve_inputs(dataset, inputs)
    rank, world = rank_and_world()
    if rank == 0:
        store.clean_tmp()
    barrier()
    mine = missing_shards_of_this_rank(store, lambda i: shard_digest(dataset, *store.shard_range(i), mode))
    todo = sum(store.shard_range(i)[1] - store.shard_range(i)[0] for i in mine)
    if mine:
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        loader = DataLoader(
            dataset,
            batch_sampler=ShardBatches(store, mine, batch_size),
            num_workers=num_workers,
            collate_fn=collate_images,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
        desc = f"{desc} [rank {rank}/{world}]" if world > 1 else desc
        bar = tqdm(total=todo, desc=desc, unit="img", disable=not progress or rank != 0, dynamic_ncols=True)
        pending: list[concurrent.futures.Future] = []
        batches = iter(loader)
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="salfcbm-store-writer") as pool:
                for i in mine:
                    values, digest = _compute_shard(store, i, batches, fn, bar, dataset, mode)
                    for f in [f for f in pending if f.done()]:  # surface a failed write before queueing more
                        f.result()
                        pending.remove(f)
                    pending.append(pool.submit(store.write_shard, i, values, inputs=digest))
                for f in pending:
                    f.result()
        finally:
            bar.close()
    barrier()
    return store


def missing_shards_of_this_rank(store: ShardedStore, inputs: Callable[[int], str] | None = None) -> list[int]:
    """The missing shards of ``store`` (`ShardedStore.missing_shards`) that this ``torchrun`` rank computes:
    every rank lists them, the ranks meet (so no rank lists a shard another has just written), and rank
    ``r`` of ``world`` takes every ``world``-th one from the ``r``-th, so a rerun after one rank died is
    balanced too. Outside a process group: all of them."""
    rank, world = rank_and_world()
    missing = store.missing_shards(inputs)
    barrier()
    return missing[rank::world]


def _compute_shard(store: ShardedStore, i: int, batches: Iterator, fn: Callable, bar: Any, dataset: Any,
                   mode: str) -> tuple[torch.Tensor, str]:
    """Run ``fn`` over the batches of shard ``i``: its values and the digest of its input images."""
    a, b = store.shard_range(i)
    parts, got, seen = [], a, hashlib.sha256()
    while got < b:
        images = next(batches)
        out = fn(images, torch.arange(got, got + images.shape[0]))
        expected = (images.shape[0], *store.item_shape)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"fn returned {shape} for a batch of {images.shape[0]} images; expected {expected}.")
        parts.append(out.detach().to("cpu", store.dtype))
        if mode == "content":
            batch_digest(seen, images)
        got += images.shape[0]
        bar.update(images.shape[0])
    digest = seen.hexdigest()[:24] if mode == "content" else shard_digest(dataset, a, b, mode)
    return torch.cat(parts), digest

