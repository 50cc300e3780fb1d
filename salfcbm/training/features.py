"""Feature sources of `fit`: labels, the cached backbone-feature store (`feature_store`), features
computed on the fly (`OnTheFlyFeatures`), the choice between them, and what the head reads from
them (pooled concept activations, pooled backbone features, standardisation)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from salfcbm._utils.distributed import barrier, rank_and_world
from salfcbm._utils.shard_compute import missing_shards_of_this_rank
from salfcbm._utils.tensors import PRECISIONS, autocast, check_precision, to_device
from salfcbm.core.backbones import backbone_fingerprint
from salfcbm.core.images import align_dataset
from salfcbm.core.model import SALFCBM
from salfcbm.errors import InputError
from salfcbm.supervision.provenance import dataset_identity, resolve_inputs
from salfcbm.supervision.store import ShardedStore, compute_store
from salfcbm.training.batches import map_features

__all__ = [
    "PRECISION_DTYPES",
    "labels_of",
    "feature_store",
    "OnTheFlyFeatures",
    "choose_feature_cache",
    "store_concept_activations",
    "pool_concepts",
    "activation_store",
    "pooled_feature_store",
    "store_pooled_features",
    "fit_standardization",
]


def labels_of(dataset) -> torch.Tensor:
    """The integer class labels of ``dataset`` (its ``labels``/``targets``, else read item by item)."""
    lab = getattr(dataset, "labels", None)
    if callable(lab):
        lab = lab()
    if lab is None:
        lab = getattr(dataset, "targets", None)
    if lab is not None:
        return _int_labels(lab)
    return _int_labels([dataset[i][1] for i in range(len(dataset))])


def _int_labels(values) -> torch.Tensor:
    """Class indices as a long tensor; a string or fractional label is an `InputError`, never silently cast."""
    import numbers

    if torch.is_tensor(values) and not values.is_floating_point() and not values.is_complex():
        return values.long().reshape(-1)
    items = values.tolist() if hasattr(values, "tolist") else list(values)
    for i, v in enumerate(items):
        v = v.item() if torch.is_tensor(v) and v.numel() == 1 else v
        if isinstance(v, numbers.Integral) or (isinstance(v, numbers.Real) and float(v).is_integer()):
            items[i] = int(v)
            continue
        raise InputError(
            f"Labels must be integer class indices (0 to num_classes - 1); item {i} has the label {v!r} "
            f"({type(v).__name__}). Map class names to indices first (e.g. with the dataset's class_to_idx), or "
            "use salfcbm.datasets.ImageFolderDataset, whose labels are indices of its sorted class folders."
        )
    return torch.tensor(items, dtype=torch.long)


#: The storage dtype of features stored "in the precision of the run" (`fit`'s held-out splits when
#: features are not cached): what the backbone computes under that precision, stored without loss.
PRECISION_DTYPES = {k: v or torch.float32 for k, v in PRECISIONS.items()}  # the storage dtype of each precision


def feature_store(
    model: SALFCBM,
    dataset,
    root: str | os.PathLike,
    *,
    batch_size: int = 64,
    shard_size: int = 512,
    num_workers: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    desc: str = "Backbone features",
    inputs: str = "auto",
    precision: str = "fp32",
    dtype: torch.dtype = torch.float16,
    count: Callable[[int], None] | None = None,
) -> ShardedStore:
    """Cache the backbone features of ``dataset`` resized to the grid: ``(N, C, Hg, Wg)`` fp16.

    ``dtype`` is the storage dtype (fp16 by default; `PRECISION_DTYPES` gives the run's own).
    ``count(n)``, when given, is called with the number of images of every batch the backbone
    runs on (shards already on disk are not recomputed, and not counted).

    The manifest records the backbone (spec and a hash of its weights), layer, grid and
    preprocessing, so a different backbone never reads a stale cache; computation is
    resumable shard by shard, each shard checked by its checksum and keyed by its images
    (``inputs``, see `compute_store`). Images are raw ``[0, 1]``
    tensors; each is cropped once with the model's geometry
    (`salfcbm.core.images.align_dataset`) and normalised.
    """
    device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
    dataset = align_dataset(dataset, model.image_transform)
    cfg = model.config
    manifest = {
        "kind": "features",
        "backbone": model.backbone_spec,
        "backbone_sha": backbone_fingerprint(model.backbone),
        "layer": cfg["layer"],
        "cls_concat": cfg["cls_concat"],
        "grid": list(model.grid),
        "input_size": cfg["input_size"],
        "input_mean": cfg["input_mean"],
        "input_std": cfg["input_std"],
        "dataset": dataset_identity(dataset, resolve_inputs(dataset, inputs)),
    }
    store = ShardedStore(
        root,
        manifest=manifest,
        item_shape=(cfg["feature_channels"], *model.grid),
        length=len(dataset),
        shard_size=shard_size,
        dtype=dtype,
        resizable=True,
    )

    check_precision(precision)

    @torch.no_grad()
    def fn(images: torch.Tensor, _indices: torch.Tensor) -> torch.Tensor:
        if count is not None:
            count(int(images.shape[0]))
        return _grid_features(model, images, device, precision)

    return compute_store(store, dataset, fn, batch_size=batch_size, num_workers=num_workers, progress=progress,
                         desc=desc, inputs=inputs)


def _grid_features(model: SALFCBM, images: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """Backbone features of ``[0, 1]`` views (already cropped to the model's geometry) resized to the
    grid, float32 on the CPU."""
    x = model.image_transform.normalize(to_device(images, device))
    with autocast(device, precision):
        f = model.resize_to_grid(model.forward_features(x))
    return f.float().cpu()


class OnTheFlyFeatures:
    """Backbone features computed when read, with the read interface of a feature store.

    Use it instead of `feature_store` when caching ``(N, C, Hg, Wg)`` features does not
    fit on disk: every epoch runs the backbone again, shard by shard, so memory stays bounded
    by ``shard_size`` (``fit(..., cache_features=False)``, or ``"auto"`` above
    ``max_feature_cache_gb``). Bottleneck training computes the next shard in a background
    thread while the current one trains. ``images_computed`` counts the images the backbone ran on
    (``count(n)`` is also called with each shard's count when given).
    """

    def __init__(self, model: SALFCBM, dataset: Dataset, *, shard_size: int = 512, batch_size: int = 64,
                 num_workers: int = 0, device: str | torch.device | None = None, precision: str = "fp32",
                 count: Callable[[int], None] | None = None):
        dataset = align_dataset(dataset, model.image_transform)
        self.model, self.dataset = model, dataset
        self.precision = check_precision(precision)
        self.length, self.shard_size = len(dataset), int(shard_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.item_shape = (model.config["feature_channels"], *model.grid)
        self.device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
        self.meta = {"kind": "features", "on_the_fly": True, "backbone_sha": backbone_fingerprint(model.backbone),
                     "layer": model.layer, "grid": list(model.grid),
                     "dataset": dataset_identity(dataset, resolve_inputs(dataset, "auto"))}
        self.images_computed, self._count = 0, count

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.length / self.shard_size)) if self.length else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.length)

    @torch.no_grad()
    def read_shard(self, i: int) -> torch.Tensor:
        a, b = self.shard_range(i)
        subset = torch.utils.data.Subset(self.dataset, range(a, b))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        out = torch.cat([_grid_features(self.model, batch[0], self.device, self.precision) for batch in loader])
        self.images_computed += b - a
        if self._count is not None:
            self._count(b - a)
        return out

    def iter_shards(self) -> Iterator[tuple[int, torch.Tensor]]:
        for i in range(self.num_shards):
            yield self.shard_range(i)[0], self.read_shard(i)



def choose_feature_cache(model: SALFCBM, splits: Sequence[Any], cache_features: bool | str,
                         limit_gb: float) -> tuple[bool, str]:
    """Whether ``fit`` caches backbone features, and why (the size estimate against the limit)."""
    if cache_features not in (True, False, "auto"):
        raise InputError(f"`cache_features` must be True, False or 'auto', got {cache_features!r}.")
    if not isinstance(limit_gb, (int, float)) or isinstance(limit_gb, bool) or limit_gb < 0:
        raise InputError(f"`max_feature_cache_gb` must be a number >= 0, got {limit_gb!r}.")
    n = sum(len(d) for d in splits)
    per_image = 2 * model.config["feature_channels"] * model.grid[0] * model.grid[1]  # fp16
    gb = n * per_image / 1e9
    size = f"{n} images x {per_image / 1e3:.1f} kB = {gb:.3g} GB"
    if cache_features is True:
        return True, f"cached on disk (cache_features=True; {size})"
    once = "; validation and test features computed once, stored in the run's precision"
    if cache_features is False:
        return False, f"computed on the fly every epoch (cache_features=False; a cache would hold {size}){once}"
    if gb <= limit_gb:
        return True, f"cached on disk: {size} is within max_feature_cache_gb={limit_gb:g}"
    return False, (
        f"computed on the fly with prefetch, not cached: {size} exceeds max_feature_cache_gb={limit_gb:g} "
        f"(raise it or pass cache_features=True to cache){once}"
    )


@torch.no_grad()
def store_concept_activations(model: SALFCBM, features: ShardedStore, batch: int = 1024) -> torch.Tensor:
    """Pooled concept activations c*(x) ``(N, M)`` from cached features (before standardisation).

    With mean pooling, pooling commutes with the linear 1x1 bottleneck:
    ``mean_{h,w}(W f[:, :, h, w] + b) = W mean_{h,w}(f) + b``, so the features are pooled first and
    projected once per image (``Hg * Wg`` times fewer multiply-adds than projecting every cell),
    and no concept map is built. Other poolings weigh each cell by the concept's own map and take
    the exact path through every map (`salfcbm.training.batches.map_features`).
    """
    if model.config["pooling"] != "mean":
        return map_features(model, features, model.pool, batch)
    w, b = model.bottleneck.weight, model.bottleneck.bias
    weight = w.flatten(1)
    out = []
    for _, values in features.iter_shards():
        for s in range(0, values.shape[0], batch):
            pooled = values[s : s + batch].to(w.device, torch.float32).mean((2, 3))
            out.append(torch.nn.functional.linear(pooled, weight, b).cpu())
    return torch.cat(out) if out else torch.zeros(0, weight.shape[0])


@torch.no_grad()
def pool_concepts(model: SALFCBM, values: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Pooled concept activations ``(n, M)`` of one shard's features ``(n, C, Hg, Wg)``, float32 on the CPU:
    the rows `store_concept_activations` gives for them (pool-then-project with mean pooling, else every map)."""
    w, b = model.bottleneck.weight, model.bottleneck.bias
    out = []
    for s in range(0, values.shape[0], batch):
        v = values[s : s + batch].to(w.device, torch.float32)
        if model.config["pooling"] == "mean":
            out.append(torch.nn.functional.linear(v.mean((2, 3)), w.flatten(1), b).cpu())
        else:
            out.append(model.pool(model.bottleneck(v)).cpu())
    return torch.cat(out) if out else torch.zeros(0, w.shape[0])


def _weights_digest(module: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def activation_store(model: SALFCBM, features: Any, root: str | os.PathLike, *, rows: int,
                     features_key: str) -> ShardedStore:
    """The pooled, unstandardised concept activations of every row of ``features``, in a float32 store on disk.

    Out-of-core `fit` (``HeadConfig.streams``) writes them instead of holding the ``(N, M)`` matrix:
    ``rows`` rows per shard (the head's chunks, ``HeadConfig.chunk_rows``), computed from the feature
    source one feature shard at a time (memory: one feature shard and its pooled rows). The store
    lives in ``root/<key>``, the key a digest of ``features_key`` (what the features hold), the
    bottleneck's weights, the pooling and ``rows``: a run started again with the same bottleneck
    reads it back (only missing or corrupt shards are computed); a retrained bottleneck writes a
    new one and the stale one is deleted. Under ``torch.distributed`` the ranks split the missing shards.
    """
    spec = {"kind": "concept_activations", "features": features_key, "bottleneck": _weights_digest(model.bottleneck),
            "pooling": model.config["pooling"], "rows": int(rows)}
    return _pooled_store(features, root, spec, model.bottleneck.weight.shape[0], lambda v: pool_concepts(model, v))


@torch.no_grad()
def pooled_feature_store(features: Any, root: str | os.PathLike, *, rows: int, features_key: str) -> ShardedStore:
    """`store_pooled_features` of every row of ``features`` in a float32 store of ``rows`` rows per shard (the
    out-of-core input of the standard baseline; keyed and resumable as `activation_store`)."""
    spec = {"kind": "pooled_features", "features": features_key, "rows": int(rows)}
    return _pooled_store(features, root, spec, int(features.item_shape[0]), lambda v: v.float().mean((2, 3)))


def _pooled_store(features: Any, root: str | os.PathLike, spec: dict[str, Any], width: int,
                  pool: Callable[[torch.Tensor], torch.Tensor]) -> ShardedStore:
    """``pool`` of every feature shard, re-cut into shards of ``spec["rows"]`` rows, in ``root/<key of spec>``."""
    from salfcbm.training.rundir import stage_key

    n, fs, rows = int(features.length), int(features.shard_size), int(spec["rows"])
    key, rank, world = stage_key(spec), *rank_and_world()
    if rank == 0 and os.path.isdir(root):  # a stale bottleneck's store (24 GB at ImageNet size) is not kept
        import shutil

        for d in os.scandir(root):
            if d.is_dir() and d.name != key and os.path.isfile(os.path.join(d.path, "manifest.json")):
                shutil.rmtree(d.path, ignore_errors=True)
    store = ShardedStore(os.path.join(root, key), manifest=spec, item_shape=(width,), length=n, shard_size=rows,
                         dtype=torch.float32)
    cached: tuple[int, torch.Tensor | None] = (-1, None)
    for i in missing_shards_of_this_rank(store):
        a, b = store.shard_range(i)
        parts = []
        for j in range(a // fs, (b - 1) // fs + 1):
            if cached[0] != j:  # consecutive shards of the store share a feature shard: pool it once
                cached = (j, pool(features.read_shard(j)))
            fa = features.shard_range(j)[0]
            parts.append(cached[1][max(a, fa) - fa : b - fa])
        store.write_shard(i, torch.cat(parts))
    if world > 1:
        barrier()
    return store


@torch.no_grad()
def store_pooled_features(features: ShardedStore) -> torch.Tensor:
    """Spatially averaged backbone features ``(N, C)``: the "standard" model's input."""
    return torch.cat([v.float().mean((2, 3)) for _, v in features.iter_shards()])


def fit_standardization(train: torch.Tensor, *others: torch.Tensor):
    """Standardise ``train`` and ``others`` with ``train``'s per-column mean and std: ``(mean, std, [z, ...])``."""
    mean = train.mean(0)
    std = train.std(0).clamp_min(1e-6)
    return mean, std, [(x - mean) / std for x in (train, *others)]

