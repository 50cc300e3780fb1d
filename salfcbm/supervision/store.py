"""Sharded, resumable, distributable tensor stores (paper 3.2 at ImageNet scale).

Algorithm 1 costs ``Hg * Wg`` scorer forward passes per training image, so its
result is computed once and kept on disk:

* `ShardedStore` is a generic store of ``length`` items of one shape,
  split into fixed-size safetensors shards. Each shard is written atomically
  (temporary file + ``os.replace``), so a killed run leaves only complete shards
  and a resumed run computes exactly the missing ones. A ``manifest.json``
  records everything that determines the content; opening a store with other
  settings raises `StoreMismatchError`.
* `compute_store` fills the missing shards of a store from a dataset and a
  batch function, with a progress bar, and splits shards across the ranks of a
  ``torch.distributed`` job (``torchrun``): rank ``r`` of ``world`` computes the
  shards ``i`` with ``i % world == r``.
* `SimilarityStore` / `compute_similarity_store`: the store of
  prompted *image embeddings* ``(N, Hg, Wg, D)`` (fp16). The paper's
  ``P[n, m, h, w]`` is one matmul away (`SimilarityStore.targets`), and the
  store is ``M / D`` times smaller than ``P`` (ImageNet: 4741 concepts vs 512).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.io import TMP_MARK as _TMP_MARK
from salfcbm._utils.io import (
    atomic_write_bytes,
    checked_safetensors,
    read_checked_metadata,
)
from salfcbm._utils.io import writer_alive as _writer_alive
from salfcbm.errors import InputError, ScorerDatasetError, StoreCorruptError, StoreMismatchError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.provenance import (
    batch_digest,
    dataset_identity,
    resolve_inputs,
    shard_digest,
)
from salfcbm.supervision.scorers import ConceptScorer

__all__ = [
    "atomic_write_bytes",
    "ShardedStore",
    "compute_store",
    "SimilarityStore",
    "compute_similarity_store",
    "bind_scorer",
]

_MAX_OPEN_SHARDS = 4  # memory-mapped shards kept open (bounded, so RSS does not grow with N)
_MANIFEST = "manifest.json"
_FORMAT = "salfcbm.ShardedStore"
_VERSION = 2  # 2: checked shards (SHA-256 and input digest in each shard), resizable stores
_SHARD_RE = re.compile(r"^shard_(\d{6,})\.safetensors$")
_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def _dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise InputError(f"dtype must be one of {sorted(_DTYPES)} (as torch dtypes); got {dtype!r}.")


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and comparisons are exact."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise InputError(f"The store manifest must be JSON-serialisable; {e}.") from None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out.extend(_diff_keys(a[k], b[k], path))
        return out
    return [] if a == b else [prefix or "<root>"]


def _lookup(d: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<missing>"
        d = d[part]
    return d


class ShardedStore:
    """A fixed-length array of same-shape tensors on disk, in atomic safetensors shards.

    Item ``n`` lives in shard ``n // shard_size`` (file ``shard_000123.safetensors``,
    one tensor ``"values"`` of shape ``(rows, *item_shape)``). ``manifest.json``
    holds the user's ``manifest`` (whatever determines the content) plus the
    store's own layout; reopening with any difference raises
    `StoreMismatchError`.

    Args:
        root: directory of the store (created if missing).
        manifest: JSON-able dict of everything that determines the values.
        item_shape: shape of one item.
        length: number of items.
        shard_size: items per shard (the last shard may be shorter).
        dtype: storage dtype; values are cast on write.

    Examples:
        >>> import tempfile, torch
        >>> s = ShardedStore(tempfile.mkdtemp(), manifest={"what": "demo"}, item_shape=(2,), length=5, shard_size=2)
        >>> s.num_shards, s.shard_range(2), s.missing_shards()
        (3, (4, 5), [0, 1, 2])
        >>> for i in s.missing_shards():
        ...     a, b = s.shard_range(i)
        ...     s.write_shard(i, torch.arange(a, b).float()[:, None].repeat(1, 2))
        >>> s.is_complete, s.read([4, 0])[:, 0].tolist()
        (True, [4.0, 0.0])
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        manifest: Mapping[str, Any],
        item_shape: Sequence[int],
        length: int,
        shard_size: int = 1024,
        dtype: torch.dtype = torch.float16,
        resizable: bool = False,
    ) -> None:
        if not isinstance(manifest, Mapping):
            raise InputError(f"manifest must be a dict; got {type(manifest).__name__}.")
        try:
            item_shape = tuple(int(s) for s in item_shape)
        except (TypeError, ValueError):
            raise InputError(f"item_shape must be a sequence of ints; got {item_shape!r}.") from None
        if any(s < 0 for s in item_shape):
            raise InputError(f"item_shape must be non-negative; got {item_shape}.")
        for name, v, lo in (("length", length, 0), ("shard_size", shard_size, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InputError(f"{name} must be an int >= {lo}; got {v!r}.")
        self.root = Path(root)
        self.item_shape = item_shape
        self.length = length
        self.shard_size = shard_size
        self.dtype = dtype
        self.meta = _jsonable(dict(manifest))
        self.manifest = {
            "format": _FORMAT,
            "version": _VERSION,
            "item_shape": list(item_shape),
            "length": length,
            "shard_size": shard_size,
            "dtype": _dtype_name(dtype),
            "meta": self.meta,
        }
        self._handles: collections.OrderedDict[int, Any] = collections.OrderedDict()
        mpath = self.root / _MANIFEST
        if mpath.exists():
            existing = _read_manifest(self.root)
            diff = _diff_keys(existing, self.manifest)
            if resizable and diff == ["length"]:
                self._resize(int(existing["length"]))
                diff = []
            if diff:
                details = "; ".join(f"{k}: stored {_lookup(existing, k)!r}, requested {_lookup(self.manifest, k)!r}" for k in diff[:8])
                raise StoreMismatchError(
                    f"The store at {str(self.root)!r} was computed with different settings "
                    f"(differing keys: {', '.join(diff)}). {details}. "
                    "Use another directory for the new settings, or delete this one to recompute it."
                )
        else:
            if self.root.exists() and not self.root.is_dir():
                raise InputError(f"Store root {str(self.root)!r} exists and is not a directory.")
            self.root.mkdir(parents=True, exist_ok=True)
            if any(_SHARD_RE.match(p.name) for p in self.root.iterdir()):
                raise StoreCorruptError(
                    f"{str(self.root)!r} holds shard files but no {_MANIFEST}; it cannot be trusted. "
                    "Delete the directory (or use another one) and recompute."
                )
            atomic_write_bytes(mpath, json.dumps(self.manifest, indent=2, sort_keys=True).encode())

    def _resize(self, old_length: int) -> None:
        """Keep the shards whose item range is unchanged; drop the others; record the new length."""
        for p in self.root.iterdir():
            m = _SHARD_RE.match(p.name)
            if not m:
                continue
            i = int(m.group(1))
            old = (i * self.shard_size, min((i + 1) * self.shard_size, old_length))
            if i >= self.num_shards or self.shard_range(i) != old:
                p.unlink(missing_ok=True)
        atomic_write_bytes(self.root / _MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True).encode())

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike) -> ShardedStore:
        """Open an existing store from its manifest.

        Raises:
            StoreCorruptError: if ``manifest.json`` is missing or unreadable.
        """
        m = _read_manifest(Path(root))
        try:
            dtype = _DTYPES[m["dtype"]]
            return cls(
                root,
                manifest=m["meta"],
                item_shape=tuple(m["item_shape"]),
                length=int(m["length"]),
                shard_size=int(m["shard_size"]),
                dtype=dtype,
            )
        except (KeyError, TypeError, ValueError, InputError) as e:
            raise StoreCorruptError(
                f"The manifest of {str(root)!r} is not a valid {_FORMAT} manifest ({e!r}). Delete the directory and recompute."
            ) from None

    # -- layout --------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        """Number of shards, ``ceil(length / shard_size)``."""
        return -(-self.length // self.shard_size)

    def shard_range(self, i: int) -> tuple[int, int]:
        """Item range ``(start, stop)`` of shard ``i``."""
        if not isinstance(i, int) or not 0 <= i < self.num_shards:
            raise InputError(f"Shard index must be an int in [0, {self.num_shards}); got {i!r}.")
        return i * self.shard_size, min((i + 1) * self.shard_size, self.length)

    def shard_path(self, i: int) -> Path:
        """File path of shard ``i``."""
        return self.root / f"shard_{i:06d}.safetensors"

    def shard_metadata(self, i: int) -> dict[str, str] | None:
        """The metadata of shard ``i`` if it is on disk and passes its checksum, else ``None``.

        The checksum (SHA-256 of the shard's data, written with it) is verified once per
        process per file version, so a truncated or corrupt shard counts as not written.
        """
        path = self.shard_path(i)
        return read_checked_metadata(path) if path.is_file() else None

    def missing_shards(self, inputs: Callable[[int], str] | None = None) -> list[int]:
        """Indices of the shards not yet finished: absent, failing their checksum, or (with
        ``inputs``, a function of the shard index) computed from other inputs."""
        missing = []
        for i in range(self.num_shards):
            meta = self.shard_metadata(i)
            if meta is None or (inputs is not None and meta.get("salfcbm.inputs", "") != inputs(i)):
                missing.append(i)
        return missing

    @property
    def is_complete(self) -> bool:
        """Whether every shard is on disk and passes its checksum."""
        return not self.missing_shards()

    def content_digest(self) -> str:
        """A digest of every shard's checksum: changes whenever any stored value changes."""
        h = hashlib.sha256()
        for i in range(self.num_shards):
            meta = self.shard_metadata(i) or {}
            h.update(f"{i}:{meta.get('salfcbm.sha256', 'missing')}\n".encode())
        return h.hexdigest()[:24]

    def clean_tmp(self) -> list[Path]:
        """Delete leftover temporary files of interrupted writes; returns what was removed.

        A temporary file whose writer is still running (another rank, another process) is
        left alone: its name carries the writer's process id.
        """
        removed = []
        for p in self.root.iterdir():
            if _TMP_MARK in p.name and not _writer_alive(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        done = self.num_shards - len(self.missing_shards())
        return (
            f"ShardedStore({str(self.root)!r}, length={self.length}, item_shape={self.item_shape}, "
            f"dtype={self.manifest['dtype']}, shards={done}/{self.num_shards})"
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = collections.OrderedDict()  # open files do not cross processes
        return state

    # -- writing -------------------------------------------------------------------
    def write_shard(self, i: int, values: torch.Tensor, *, inputs: str = "") -> None:
        """Write shard ``i`` atomically (safetensors, temporary file + ``os.replace``), with a
        SHA-256 of its data and ``inputs`` (a digest of what it was computed from) in its metadata.

        Raises:
            InputError: if ``values`` does not have shape ``(rows of shard i, *item_shape)``.
        """
        start, stop = self.shard_range(i)
        expected = (stop - start, *self.item_shape)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != expected:
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise InputError(f"Shard {i} must have shape {expected} (items {start}..{stop - 1}); got {got}.")
        data = checked_safetensors({"values": values.detach().to("cpu", self.dtype).contiguous()},
                                   {"salfcbm.inputs": str(inputs)})
        self._handles.pop(i, None)
        atomic_write_bytes(self.shard_path(i), data)

    # -- reading -------------------------------------------------------------------
    def _handle(self, i: int):
        from safetensors import safe_open

        h = self._handles.get(i)
        if h is not None:
            self._handles.move_to_end(i)
            return h
        path = self.shard_path(i)
        if not path.is_file():
            raise StoreCorruptError(
                f"Shard {i} of the store at {str(self.root)!r} is missing ({len(self.missing_shards())} of "
                f"{self.num_shards} shards missing). Run compute_store / compute_similarity_store again to finish it."
            )
        if self.shard_metadata(i) is None:
            raise StoreCorruptError(
                f"Shard {i} of the store at {str(self.root)!r} fails its checksum (corrupt, truncated or written by an "
                "older salfcbm). Run compute_store / compute_similarity_store again: it recomputes exactly such shards."
            )
        try:
            h = safe_open(str(path), framework="pt")
            shape = tuple(h.get_slice("values").get_shape())
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise StoreCorruptError(f"Cannot read {str(path)!r} ({e}). Delete this shard file and resume the computation.") from None
        start, stop = self.shard_range(i)
        if shape != (stop - start, *self.item_shape):
            raise StoreCorruptError(
                f"{str(path)!r} has shape {shape}, expected {(stop - start, *self.item_shape)}. "
                "Delete this shard file and resume the computation."
            )
        self._handles[i] = h
        while len(self._handles) > _MAX_OPEN_SHARDS:
            self._handles.popitem(last=False)
        return h

    def read_shard(self, i: int) -> torch.Tensor:
        """The whole shard ``i`` as a tensor."""
        return self._handle(i).get_tensor("values")

    def _as_index_tensor(self, indices: Any) -> torch.Tensor:
        if isinstance(indices, slice):
            return torch.arange(self.length)[indices]
        if isinstance(indices, int) and not isinstance(indices, bool):
            return torch.tensor([indices])
        if isinstance(indices, range):
            indices = list(indices)
        idx = torch.as_tensor(indices) if not (isinstance(indices, (list, tuple)) and len(indices) == 0) else torch.zeros(0, dtype=torch.long)
        if idx.dtype == torch.bool or idx.is_floating_point() or idx.ndim > 1:
            raise InputError(f"indices must be ints, a 1-D integer tensor/sequence or a slice; got dtype {idx.dtype}, shape {tuple(idx.shape)}.")
        return idx.reshape(-1).long()

    def read(self, indices: Any) -> torch.Tensor:
        """Items at ``indices`` (ints, a sequence, a 1-D tensor or a slice) as ``(B, *item_shape)``.

        Only the requested rows are read (safetensors slices of memory-mapped
        shards), so random access costs memory proportional to the batch.
        """
        idx = self._as_index_tensor(indices)
        if idx.numel() and (int(idx.min()) < -self.length or int(idx.max()) >= self.length):
            raise InputError(f"indices must lie in [0, {self.length}); got min {int(idx.min())}, max {int(idx.max())}.")
        idx = torch.where(idx < 0, idx + self.length, idx)
        out = torch.empty((idx.numel(), *self.item_shape), dtype=self.dtype)
        if idx.numel() == 0:
            return out
        order = torch.argsort(idx)
        sorted_idx = idx[order].tolist()
        pos = order.tolist()
        k = 0
        while k < len(sorted_idx):
            shard = sorted_idx[k] // self.shard_size
            base = shard * self.shard_size
            sl = self._handle(shard).get_slice("values")
            # contiguous runs of rows within this shard -> one slice read each
            while k < len(sorted_idx) and sorted_idx[k] // self.shard_size == shard:
                j = k
                while j + 1 < len(sorted_idx) and sorted_idx[j + 1] // self.shard_size == shard and sorted_idx[j + 1] - sorted_idx[j] <= 1:
                    j += 1
                lo, hi = sorted_idx[k] - base, sorted_idx[j] - base + 1
                block = sl[lo:hi]
                rows = torch.tensor([sorted_idx[t] - base - lo for t in range(k, j + 1)])
                out[torch.tensor(pos[k : j + 1])] = block[rows]
                k = j + 1
        return out

    def __getitem__(self, indices: Any) -> torch.Tensor:
        if isinstance(indices, int) and not isinstance(indices, bool):
            return self.read([indices])[0]
        return self.read(indices)

    def iter_shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, values)`` for every shard in order.

        Raises:
            StoreCorruptError: if a shard is missing (the store is incomplete).
        """
        for i in range(self.num_shards):
            yield self.shard_range(i)[0], self.read_shard(i)


def _read_manifest(root: Path) -> dict:
    path = root / _MANIFEST
    if not path.is_file():
        raise StoreCorruptError(
            f"No {_MANIFEST} in {str(root)!r}: it is not a salfcbm store (or its creation was interrupted). "
            "Create it with ShardedStore(root, manifest=..., ...) or compute_similarity_store()."
        )
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StoreCorruptError(f"Cannot parse {str(path)!r} ({e}). Delete the directory and recompute.") from None
    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        raise StoreCorruptError(f"{str(path)!r} is not a {_FORMAT} manifest. Delete the directory and recompute.")
    return m


# -- computing ------------------------------------------------------------------------
def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _collate_images(items: list[Any]) -> torch.Tensor:
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


class _ShardBatches:
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
    ``torch.distributed`` (``torchrun``), rank ``r`` of ``world`` computes the
    missing shards ``i`` with ``i % world == r`` and all ranks meet at a barrier
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
            fingerprint, in the manifest) or ``"auto"``; see `salfcbm.supervision.provenance`.

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
    rank, world = _dist_info()
    if rank == 0:
        store.clean_tmp()
    _barrier()
    mine = [i for i in store.missing_shards(lambda i: shard_digest(dataset, *store.shard_range(i), mode))
            if i % world == rank]
    todo = sum(store.shard_range(i)[1] - store.shard_range(i)[0] for i in mine)
    if mine:
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        loader = DataLoader(
            dataset,
            batch_sampler=_ShardBatches(store, mine, batch_size),
            num_workers=num_workers,
            collate_fn=_collate_images,
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
    _barrier()
    return store


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


# -- the similarity store -----------------------------------------------------------------
class SimilarityStore:
    """Prompted image embeddings ``(N, Hg, Wg, D)`` plus the scorer that made them (paper 3.2).

    `targets` turns them into the paper's ``P[n, m, h, w]`` for any concept
    list with one matmul; the store itself does not depend on the concepts, so
    filtering or editing the concept list never recomputes it.

    Args:
        store: a complete `ShardedStore` written by `compute_similarity_store`.
        scorer: the scorer that produced it (its fingerprint must match the manifest).

    Examples:
        >>> sims = compute_similarity_store("runs/sims", train_set, CLIPScorer())  # doctest: +SKIP
        >>> sims.targets([0, 1], ["a red roof", "grass"]).shape  # doctest: +SKIP
        torch.Size([2, 2, 7, 7])
    """

    def __init__(self, store: ShardedStore, scorer: ConceptScorer) -> None:
        if not isinstance(store, ShardedStore):
            raise InputError(f"store must be a ShardedStore; got {type(store).__name__}.")
        meta = store.meta
        if meta.get("kind") != "similarity":
            raise StoreMismatchError(
                f"The store at {str(store.root)!r} is not a similarity store (kind={meta.get('kind')!r}). "
                "Open a directory written by compute_similarity_store."
            )
        fp = _jsonable(scorer.fingerprint())
        diff = _diff_keys(meta.get("scorer"), fp)
        if diff:
            raise StoreMismatchError(
                f"The store at {str(store.root)!r} was computed by another scorer (differing fingerprint keys: "
                f"{', '.join(diff)}). Pass the scorer that computed it, or recompute into another directory."
            )
        self.store = store
        self.scorer = scorer
        self.prompts = PromptGrid.from_dict(meta["prompts"])

    @classmethod
    def open(cls, root: str | os.PathLike, scorer: ConceptScorer) -> SimilarityStore:
        """Open an existing similarity store with the scorer that computed it."""
        return cls(ShardedStore.open(root), scorer)

    @property
    def grid(self) -> tuple[int, int]:
        """``(Hg, Wg)``."""
        return self.prompts.grid

    @property
    def length(self) -> int:
        """Number of images ``N``."""
        return self.store.length

    @property
    def embedding_dim(self) -> int:
        """``D``, the scorer's embedding size."""
        return self.store.item_shape[-1]

    def __len__(self) -> int:
        return self.store.length

    def __repr__(self) -> str:
        return f"SimilarityStore({str(self.store.root)!r}, length={self.length}, grid={self.grid}, D={self.embedding_dim})"

    def embeddings(self, indices: Any) -> torch.Tensor:
        """Stored embeddings ``(B, Hg, Wg, D)`` (fp16)."""
        return self.store.read(indices)

    def targets(self, indices: Any, concepts: Sequence[str], *, layout: str = "NCHW") -> torch.Tensor:
        """``P[n, m, h, w]`` for the images at ``indices``, float32 and contiguous.

        Computed with ``scorer.similarity`` (cosine for CLIP) in one matmul, on the
        scorer's device.

        Args:
            indices: image indices.
            concepts: the concept list (one target channel each).
            layout: ``"NCHW"`` gives ``(B, M, Hg, Wg)``; ``"NHWC"`` gives ``(B, Hg, Wg, M)``, the
                matmul's own layout (no permutation copy), which bottleneck training uses.
        """
        if layout not in ("NCHW", "NHWC"):
            raise InputError(f"`layout` must be 'NCHW' or 'NHWC', got {layout!r}.")
        emb = self.store.read(indices)
        sims = self.scorer.similarity(emb, concepts)  # (B, Hg, Wg, M)
        if layout == "NHWC":
            return sims.float().contiguous()
        return sims.float().permute(0, 3, 1, 2).contiguous()

    def concept_activity(self, concepts: Sequence[str], *, top_k: int = 5, batch_size: int = 256) -> torch.Tensor:
        """Per concept, the mean of its ``top_k`` highest image-level similarities ``(M,)``.

        An image's similarity to a concept is its maximum over the prompt grid.
        Used by `salfcbm.supervision.concepts.filter_concepts` to drop concepts that never
        fire on the training images (LF-CBM's top-5 cutoff). Streams over the store.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise InputError(f"top_k must be a positive int; got {top_k!r}.")
        best: torch.Tensor | None = None
        for start in range(0, self.length, batch_size):
            idx = torch.arange(start, min(start + batch_size, self.length))
            per_image = self.targets(idx, concepts, layout="NHWC").amax(dim=(1, 2))  # (B, M)
            pool = per_image if best is None else torch.cat([best, per_image.to(best.device)])
            best = pool.topk(min(top_k, pool.shape[0]), dim=0).values
        if best is None:
            return torch.zeros(len(concepts))
        return best.mean(dim=0).cpu()


def bind_scorer(scorer: ConceptScorer, dataset: Any) -> ConceptScorer:
    """The scorer to use on ``dataset``: rebound to it when it reads data by index.

    A scorer with ``for_dataset`` is asked for a copy bound to ``dataset``. A scorer whose
    fingerprint names a dataset (under ``"dataset"``) must then name this one: its
    ``embed`` reads items by index, so another dataset's items would be scored silently.
    """
    rebind = getattr(scorer, "for_dataset", None)
    if callable(rebind):
        scorer = rebind(dataset)
    bound = _jsonable(scorer.fingerprint()).get("dataset")
    if bound is None or getattr(scorer, "dataset", None) is dataset:
        return scorer
    fp = getattr(dataset, "fingerprint", None)
    mine = _jsonable(fp()) if callable(fp) else None
    if mine is None or _diff_keys(bound, mine):
        raise ScorerDatasetError(
            f"{type(scorer).__name__} reads its data by index and is bound to another dataset than the one being "
            f"scored ({type(dataset).__name__} of {len(dataset)} images; differing: "
            f"{', '.join(_diff_keys(bound, mine)) if mine is not None else 'the dataset has no fingerprint()'}). "
            "It would score these images with the other dataset's items. Build one scorer per split, e.g. "
            "GroundTruthScorer(val_set) for the validation store, or give the scorer a for_dataset() method."
        )
    return scorer


def compute_similarity_store(
    root: str | os.PathLike,
    dataset: Any,
    scorer: ConceptScorer,
    prompts: PromptGrid = PromptGrid(),
    *,
    shard_size: int = 1024,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    dtype: torch.dtype = torch.float16,
    desc: str = "Prompted embeddings",
    inputs: str = "auto",
) -> SimilarityStore:
    """Algorithm 1 for a whole dataset, stored as prompted image embeddings (paper 3.2).

    Computes ``scorer.embed(images, indices, prompts)`` for every image into a
    `ShardedStore` of ``(N, Hg, Wg, D)`` embeddings, resumably and (under
    ``torchrun``) split across ranks; see `compute_store`. The manifest
    records the scorer fingerprint, the prompt grid (grid, radius, line width,
    colour), the dataset's identity, dtype, shard size and item shape; re-running with
    anything different into the same directory raises
    `StoreMismatchError`. The images are keyed per shard
    (``inputs``): replacing, adding or removing images recomputes exactly the shards
    whose images changed, and a shard that fails its checksum is recomputed.

    Args:
        root: store directory.
        dataset: map-style dataset of ``image`` or ``(image, label, ...)``, images
            ``(3, H, W)`` float in ``[0, 1]`` (not normalised; the scorer
            preprocesses). Must be deterministic (no random augmentation).
        scorer: a `ConceptScorer` (e.g. ``CLIPScorer()``).
        prompts: the visual prompt grid (paper default 7x7, r = 32).
        shard_size: images per shard file.
        batch_size: images per ``scorer.embed`` call (each gives ``Hg * Wg``
            prompted images; the CLIP scorer chunks them by its own ``batch_size``).
        num_workers: DataLoader workers.
        progress: tqdm bar.
        dtype: storage dtype (fp16 by default).
        desc: the bar's label.
        inputs: how shards are keyed by their images (see `compute_store`).

    Returns:
        The complete `SimilarityStore`.

    Examples:
        >>> sims = compute_similarity_store("runs/sims", train_set, CLIPScorer(), PromptGrid((7, 7), radius=32))  # doctest: +SKIP
    """
    if not isinstance(prompts, PromptGrid):
        raise InputError(f"prompts must be a PromptGrid; got {type(prompts).__name__}.")
    for name in ("fingerprint", "embed", "similarity"):
        if not callable(getattr(scorer, name, None)):
            raise InputError(f"scorer must implement the ConceptScorer protocol; {type(scorer).__name__} has no {name}().")
    n = len(dataset)
    if n < 1:
        raise InputError("The dataset is empty.")
    first = dataset[0]
    image = first[0] if isinstance(first, (tuple, list)) else first
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise InputError(
            f"dataset[0] must give a (3, H, W) float image (or a tuple starting with one); got "
            f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}."
        )
    scorer = bind_scorer(scorer, dataset)
    meta = {
        "kind": "similarity",
        "scorer": _jsonable(scorer.fingerprint()),
        "prompts": prompts.to_dict(),
        "dataset": dataset_identity(dataset, resolve_inputs(dataset, inputs)),
    }
    root = Path(root)
    dim = None
    if (root / _MANIFEST).is_file():
        existing = _read_manifest(root)
        if not _diff_keys(existing.get("meta"), _jsonable(meta)):
            dim = int(existing["item_shape"][-1])
    if dim is None:
        dim = getattr(scorer, "embedding_dim", None)
    if dim is None:
        probe = scorer.embed(image[None].float(), torch.zeros(1, dtype=torch.long), prompts)
        dim = int(probe.shape[-1])
    store = ShardedStore(
        root,
        manifest=meta,
        item_shape=(*prompts.grid, int(dim)),
        length=n,
        shard_size=shard_size,
        dtype=dtype,
        resizable=True,
    )

    def fn(images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return scorer.embed(images, indices, prompts)

    compute_store(store, dataset, fn, batch_size=batch_size, num_workers=num_workers, progress=progress,
                  desc=desc, inputs=inputs)
    return SimilarityStore(store, scorer)

