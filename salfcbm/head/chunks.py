"""Where the out-of-core head reads its data: chunk sources, and the ranks of ``torch.distributed``.

A *chunk source* is anything `fit_sparse_head_streaming` can read twice or more, one ``(x, y)``
chunk at a time (``x``: ``(B, M)`` pooled concept activations, ``y``: ``(B,)`` labels):

* a sequence of chunks (``len`` and ``[i]``), e.g. `ArrayChunks` or `StoreChunks`: under
  ``torch.distributed`` each rank reads only its own chunks (``i % world_size == rank``);
* a re-iterable such as a list or a ``DataLoader`` of ``(x, y[, index])`` batches, or a function
  returning a fresh iterator: each rank skips the chunks that are not its own.

A one-shot generator is refused: the solver reads the data once per iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from salfcbm.errors import InputError
from salfcbm.head.inputs import to_tensor

__all__ = ["ArrayChunks", "StoreChunks", "Ranks", "iter_chunks"]


class ArrayChunks:
    """In-memory ``(N, M)`` features and ``(N,)`` labels served as chunks of ``chunk_rows`` rows (views, no copy).

    Examples:
        >>> import torch
        >>> c = ArrayChunks(torch.zeros(10, 3), torch.zeros(10, dtype=torch.long), chunk_rows=4)
        >>> len(c), c[2][0].shape
        (3, torch.Size([2, 3]))
    """

    def __init__(self, x: Any, y: Any, chunk_rows: int = 65536):
        self.x, self.y = to_tensor(x, "x"), to_tensor(y, "y")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise InputError(f"chunk_rows must be a positive int; received {chunk_rows!r}.")
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]} labels; they must match.")
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return max(1, -(-self.x.shape[0] // self.chunk_rows))

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = slice(i * self.chunk_rows, (i + 1) * self.chunk_rows)
        return self.x[s], self.y[s]


class StoreChunks:
    """A sharded store of ``(N, M)`` rows on disk (e.g. `salfcbm.supervision.store.ShardedStore`) with its labels.

    Chunk ``i`` is shard ``i``, read from disk when asked for; only one is held at a time.

    Args:
        store: Anything with ``num_shards``, ``shard_range(i)`` and ``read_shard(i)``.
        labels: ``(N,)`` labels, in the store's row order.
    """

    def __init__(self, store: Any, labels: Any):
        for attr in ("num_shards", "shard_range", "read_shard"):
            if not hasattr(store, attr):
                raise InputError(
                    f"StoreChunks needs a sharded store with num_shards, shard_range and read_shard; "
                    f"received {type(store).__name__} without {attr!r}. Use ArrayChunks for tensors."
                )
        self.store, self.labels = store, to_tensor(labels, "labels")

    def __len__(self) -> int:
        return int(self.store.num_shards)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s, e = self.store.shard_range(i)
        return self.store.read_shard(i), self.labels[s:e]


class Ranks:
    """This process's share of the chunks under ``torch.distributed``, and the sums over all ranks.

    Without an initialised process group there is one rank and `sum` returns its input.
    """

    def __init__(self, group: Any = None):
        dist = torch.distributed
        self.active = dist.is_available() and dist.is_initialized()
        self.group = group
        self.rank = dist.get_rank(group) if self.active else 0
        self.world = dist.get_world_size(group) if self.active else 1

    def mine(self, i: int) -> bool:
        """Whether chunk ``i`` is read by this rank."""
        return i % self.world == self.rank

    def sum(self, parts: list[Tensor]) -> list[Tensor]:
        """Every tensor summed over the ranks (one all-reduce of one flat float64 buffer)."""
        if not self.active or self.world == 1:
            return parts
        flat = torch.cat([p.reshape(-1).to(torch.float64) for p in parts])
        backend = torch.distributed.get_backend(self.group)
        dev = flat.device if backend != "gloo" else torch.device("cpu")
        buf = flat.to(dev)
        torch.distributed.all_reduce(buf, group=self.group)
        out, k = [], 0
        for p in parts:
            out.append(buf[k : k + p.numel()].reshape(p.shape).to(device=p.device, dtype=p.dtype))
            k += p.numel()
        return out

    def max_int(self, v: int) -> int:
        """The largest ``v`` over the ranks."""
        if not self.active or self.world == 1:
            return int(v)
        t = torch.tensor([int(v)], dtype=torch.int64)
        if torch.distributed.get_backend(self.group) != "gloo":
            t = t.cuda()
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(t.item())


def _raw_chunks(source: Any, ranks: Ranks) -> Iterator[tuple[int, Any]]:
    if hasattr(source, "__len__") and hasattr(source, "__getitem__") and not isinstance(source, (Tensor, dict)):
        for i in range(len(source)):
            if ranks.mine(i):
                yield i, source[i]
        return
    if callable(source):
        it = source()
    elif isinstance(source, Iterable):
        if iter(source) is source:
            raise InputError(
                "The chunk source is a one-shot iterator (a generator); the out-of-core solver reads the data "
                "many times. Pass a list, a DataLoader, ArrayChunks/StoreChunks, or a function returning a new iterator."
            )
        it = iter(source)
    else:
        raise InputError(
            f"Expected a chunk source (ArrayChunks, StoreChunks, a sequence or re-iterable of (x, y) chunks, or a "
            f"function returning an iterator of them); received {type(source).__name__}."
        )
    for i, item in enumerate(it):
        if ranks.mine(i):
            yield i, item


def iter_chunks(source: Any, ranks: Ranks, *, device: torch.device, mean: Tensor | None = None,
                std: Tensor | None = None, what: str = "train", check_finite: bool = True
                ) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's chunks of ``source`` as float32 ``(x, y)`` on ``device``, standardised with ``mean``/``std``
    (``check_finite``: refuse NaN or infinite features; the solver checks on its first pass only)."""
    for i, item in _raw_chunks(source, ranks):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise InputError(f"Chunk {i} of the {what} data is {type(item).__name__}; expected a tuple (x, y) or (x, y, index).")
        x = to_tensor(item[0], f"x_{what} chunk {i}").to(device=device, dtype=torch.float32)
        y = to_tensor(item[1], f"y_{what} chunk {i}").to(device=device)
        if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise InputError(
                f"Chunk {i} of the {what} data has x of shape {tuple(x.shape)} and y of shape {tuple(y.shape)}; "
                "expected (B, M) pooled activations and (B,) integer labels."
            )
        if y.is_floating_point() and not bool(torch.all(y == y.round())):
            raise InputError(f"Chunk {i} of y_{what} holds non-integer labels; expected integer class indices.")
        if mean is not None:
            x = (x - mean) / std
        if check_finite and not bool(torch.isfinite(x).all()):
            raise InputError(
                f"Chunk {i} of x_{what} contains NaN or infinite values. Drop those rows or check the "
                "standardisation (a concept with zero training std divides by zero)."
            )
        yield x, y.long()
