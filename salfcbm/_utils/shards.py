"""Sharded, resumable, checksummed tensor stores on disk: `ShardedStore`.

A generic store of ``length`` items of one shape, split into fixed-size safetensors shards
(the prompted-embedding store of `salfcbm.supervision` and the feature caches of `salfcbm.training` both
use it). Each shard is written atomically (temporary file + ``os.replace``) with a SHA-256 of its
data, so a killed run leaves only complete shards and a resumed run computes exactly the missing
ones. A ``manifest.json`` records everything that determines the content; opening a store with
other settings raises `StoreMismatchError`. `salfcbm._utils.shard_compute.compute_store` fills the
missing shards (split across the ranks of a ``torchrun`` job).

Public as ``salfcbm.ShardedStore`` and ``salfcbm.supervision.ShardedStore``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.io import (
    TMP_MARK,
    atomic_write_bytes,
    checked_safetensors,
    read_checked_metadata,
    writer_alive,
)
from salfcbm.errors import InputError, StoreCorruptError, StoreMismatchError

__all__ = ["DTYPES", "FORMAT", "MANIFEST", "ShardedStore", "diff_keys", "jsonable", "read_manifest"]

_MAX_OPEN_SHARDS = 4  # memory-mapped shards kept open (bounded, so RSS does not grow with N)
MANIFEST = "manifest.json"
FORMAT = "salfcbm.ShardedStore"
_VERSION = 2  # 2: checked shards (SHA-256 and input digest in each shard), resizable stores
_SHARD_RE = re.compile(r"^shard_(\d{6,})\.safetensors$")
DTYPES = {
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
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise InputError(f"dtype must be one of {sorted(DTYPES)} (as torch dtypes); got {dtype!r}.")


def jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and comparisons are exact."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise InputError(f"The store manifest must be JSON-serialisable; {e}.") from None


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out.extend(diff_keys(a[k], b[k], path))
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
        self.meta = jsonable(dict(manifest))
        self.manifest = {
            "format": FORMAT,
            "version": _VERSION,
            "item_shape": list(item_shape),
            "length": length,
            "shard_size": shard_size,
            "dtype": _dtype_name(dtype),
            "meta": self.meta,
        }
        self._handles: collections.OrderedDict[int, Any] = collections.OrderedDict()
        mpath = self.root / MANIFEST
        if mpath.exists():
            existing = read_manifest(self.root)
            diff = diff_keys(existing, self.manifest)
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
                    f"{str(self.root)!r} holds shard files but no {MANIFEST}; it cannot be trusted. "
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
        atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True).encode())

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | os.PathLike) -> ShardedStore:
        """Open an existing store from its manifest.

        Raises:
            StoreCorruptError: if ``manifest.json`` is missing or unreadable.
        """
        m = read_manifest(Path(root))
        try:
            dtype = DTYPES[m["dtype"]]
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
                f"The manifest of {str(root)!r} is not a valid {FORMAT} manifest ({e!r}). Delete the directory and recompute."
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
            if TMP_MARK in p.name and not writer_alive(p.name):
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


def read_manifest(root: Path) -> dict:
    """The parsed ``manifest.json`` of the store at ``root``; a missing or foreign one raises `StoreCorruptError`."""
    path = root / MANIFEST
    if not path.is_file():
        raise StoreCorruptError(
            f"No {MANIFEST} in {str(root)!r}: it is not a salfcbm store (or its creation was interrupted). "
            "Create it with ShardedStore(root, manifest=..., ...) or compute_similarity_store()."
        )
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise StoreCorruptError(f"Cannot parse {str(path)!r} ({e}). Delete the directory and recompute.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise StoreCorruptError(f"{str(path)!r} is not a {FORMAT} manifest. Delete the directory and recompute.")
    return m

