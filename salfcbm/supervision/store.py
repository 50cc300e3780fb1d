"""The store of prompted image embeddings, from which the paper's similarities ``P`` come (paper 3.2).

Algorithm 1 costs ``Hg * Wg`` scorer forward passes per training image, so its result is
computed once and kept on disk. `compute_similarity_store` writes the prompted *image
embeddings* ``(N, Hg, Wg, D)`` (fp16) of a dataset into a `ShardedStore` (resumable, checksummed,
split across ``torchrun`` ranks; see `salfcbm._utils.shards` and `salfcbm._utils.shard_compute`);
`PromptedEmbeddingStore` reads them back. The paper's ``P[n, m, h, w]`` is one matmul away
(`PromptedEmbeddingStore.targets`), and the store is ``M / D`` times smaller than ``P``
(ImageNet: 4741 concepts vs 512). ``SimilarityStore`` is the deprecated old name of
`PromptedEmbeddingStore`: it stores embeddings, not similarities.

`ShardedStore` and `compute_store` are re-exported here (their home is `salfcbm._utils`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.io import atomic_write_bytes
from salfcbm._utils.provenance import dataset_identity, resolve_inputs
from salfcbm._utils.shard_compute import collate_images, compute_store
from salfcbm._utils.shards import (
    MANIFEST,
    ShardedStore,
    diff_keys,
    jsonable,
    read_manifest,
)
from salfcbm.errors import InputError, ScorerDatasetError, StoreMismatchError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorers import ConceptScorer, DatasetBoundScorer

__all__ = [
    "atomic_write_bytes",
    "ShardedStore",
    "compute_store",
    "PromptedEmbeddingStore",
    "SimilarityStore",
    "compute_similarity_store",
    "bind_scorer",
]



class PromptedEmbeddingStore:
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
        fp = jsonable(scorer.fingerprint())
        diff = diff_keys(meta.get("scorer"), fp)
        if diff:
            raise StoreMismatchError(
                f"The store at {str(store.root)!r} was computed by another scorer (differing fingerprint keys: "
                f"{', '.join(diff)}). Pass the scorer that computed it, or recompute into another directory."
            )
        self.store = store
        self.scorer = scorer
        self.prompts = PromptGrid.from_dict(meta["prompts"])

    @classmethod
    def open(cls, root: str | os.PathLike, scorer: ConceptScorer) -> PromptedEmbeddingStore:
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
        return f"PromptedEmbeddingStore({str(self.store.root)!r}, length={self.length}, grid={self.grid}, D={self.embedding_dim})"

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


#: Deprecated old name of `PromptedEmbeddingStore` (the store holds prompted image embeddings; the
#: similarities are computed from them on read). Kept for compatibility; removed in 0.2.
SimilarityStore = PromptedEmbeddingStore


def bind_scorer(scorer: ConceptScorer, dataset: Any) -> ConceptScorer:
    """The scorer to use on ``dataset``: rebound to it when it reads data by index.

    A `DatasetBoundScorer` (one with ``for_dataset``) is asked for a copy bound to ``dataset``. A scorer whose
    fingerprint names a dataset (under ``"dataset"``) must then name this one: its
    ``embed`` reads items by index, so another dataset's items would be scored silently.
    """
    if isinstance(scorer, DatasetBoundScorer):
        scorer = scorer.for_dataset(dataset)
    bound = jsonable(scorer.fingerprint()).get("dataset")
    if bound is None or getattr(scorer, "dataset", None) is dataset:
        return scorer
    fp = getattr(dataset, "fingerprint", None)
    mine = jsonable(fp()) if callable(fp) else None
    if mine is None or diff_keys(bound, mine):
        raise ScorerDatasetError(
            f"{type(scorer).__name__} reads its data by index and is bound to another dataset than the one being "
            f"scored ({type(dataset).__name__} of {len(dataset)} images; differing: "
            f"{', '.join(diff_keys(bound, mine)) if mine is not None else 'the dataset has no fingerprint()'}). "
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
) -> PromptedEmbeddingStore:
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
        The complete `PromptedEmbeddingStore`.

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
        "scorer": jsonable(scorer.fingerprint()),
        "prompts": prompts.to_dict(),
        "dataset": dataset_identity(dataset, resolve_inputs(dataset, inputs)),
    }
    root = Path(root)
    dim = None
    if (root / MANIFEST).is_file():
        existing = read_manifest(root)
        if not diff_keys(existing.get("meta"), jsonable(meta)):
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
    return PromptedEmbeddingStore(store, scorer)

