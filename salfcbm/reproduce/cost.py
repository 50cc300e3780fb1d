"""What a recipe will cost, printed before it starts (FLOPs counted on the real architectures).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of the
real architectures built on the ``meta`` device (no memory, no weights): the scorer's image
tower at its input resolution, its text tower for one prompt, and the backbone at the
recipe's image size. Bytes on disk follow the store formats (fp16 prompted embeddings
``(N, G, G, D)`` and fp16 features ``(N, C, G, G)``). Hours use a throughput in prompted
CLIP forwards per second, measured on the user's device with `measure_throughput`
(``salfcbm reproduce ... --measure-throughput``), or else derived from an assumed sustained
FLOP rate (`ASSUMED_FLOPS`), which the report says.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.tensors import PRECISIONS, check_precision
from salfcbm.errors import DiskSpaceError, InputError
from salfcbm.reproduce.recipes import Recipe

__all__ = ["ASSUMED_FLOPS", "DATASET_SIZES", "CostEstimate", "check_disk", "count_flops", "estimate_cost",
           "measure_throughput"]

#: (training images, test images) of each dataset; ImageNet-segmentation has 4,276 images.
DATASET_SIZES: dict[str, tuple[int, int]] = {"imagenet": (1_281_167, 50_000), "places365": (1_803_460, 36_500),
                                             "cub": (5_994, 5_794)}
_SEG_IMAGES = 4_276
#: Sustained FLOP/s assumed for one GPU when no throughput was measured (an A100-class GPU in bf16 at ~1/3 of peak).
ASSUMED_FLOPS = 100e12


def _count(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@functools.lru_cache(maxsize=None)
def _scorer_flops(name: str) -> tuple[int, int, int, int]:
    """(image-forward FLOPs, text-forward FLOPs, embedding dim, image size) of an open_clip model, on meta."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    tokens = torch.zeros(1, model.context_length, dtype=torch.long, device="meta")
    img = _count(lambda: model.encode_image(torch.empty(1, 3, size, size, device="meta")))
    txt = _count(lambda: model.encode_text(tokens))
    return img, txt, int(model.text_projection.shape[1]), size


@functools.lru_cache(maxsize=None)
def _backbone_flops(source: str, name: str, layer: str, size: int, grid: int) -> tuple[int, int]:
    """(forward FLOPs, channels at ``layer``) of the backbone, on meta."""
    from salfcbm.core.tap import FeatureTap

    from types import SimpleNamespace

    from salfcbm.reproduce.run import build_backbone

    with torch.device("meta"):
        model = build_backbone(SimpleNamespace(backbone={"source": source, "name": name, "weights": None}, name=name),
                               pretrained=False)
    x = torch.empty(1, 3, size, size, device="meta")
    flops = _count(lambda: model(x))
    channels = int(FeatureTap(model, layer)(x).shape[1])
    return flops, channels


def count_flops(recipe: Recipe) -> dict[str, int]:
    """FLOPs of one prompted scorer forward, one text forward and one backbone forward, and shapes."""
    img, txt, dim, size = _scorer_flops(recipe.scorer[0])
    bb, channels = _backbone_flops(recipe.backbone["source"], recipe.backbone["name"], recipe.layer,
                                   recipe.image_size, recipe.grid)
    if recipe.cls_concat:
        channels *= 2
    return {"scorer_image": img, "scorer_text": txt, "embedding_dim": dim, "scorer_size": size,
            "backbone": bb, "channels": channels}


@dataclass
class CostEstimate:
    """What one recipe costs (all of its runs together), on ``gpus`` GPUs."""

    recipe: str
    images: int
    clip_forwards: int
    text_forwards: int
    flops: float
    head_flops: float
    similarity_store_bytes: int
    feature_cache_bytes: int
    head_memory_bytes: int
    bottleneck_batch_bytes: int
    throughput: float
    throughput_source: str
    gpus: int
    hours: float

    def to_dict(self) -> dict[str, Any]:
        """As JSON-able data."""
        return asdict(self)

    @property
    def disk_bytes(self) -> int:
        """Bytes the run writes (stores and feature cache)."""
        return self.similarity_store_bytes + self.feature_cache_bytes

    def summary(self) -> str:
        """A few lines for the terminal."""
        return (f"{self.recipe}: {self.images:,} images, {self.clip_forwards:,} prompted CLIP forwards "
                f"+ {self.text_forwards:,} text forwards, {self.flops / 1e15:,.1f} PFLOP (of which the heads, "
                f"at most {self.head_flops / 1e15:,.1f})\n"
                f"  disk: similarity stores {_gib(self.similarity_store_bytes)}, feature cache "
                f"{_gib(self.feature_cache_bytes)}\n"
                f"  memory: head stage {_gib(self.head_memory_bytes)} host RAM, bottleneck batch "
                f"{_gib(self.bottleneck_batch_bytes)}\n"
                f"  time: ~{self.hours:,.2f} h on {self.gpus} GPU(s) at {self.throughput:,.0f} prompted forwards/s "
                f"({self.throughput_source})")


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def estimate_cost(recipe: Recipe, *, throughput: float | None = None, gpus: int = 1,
                  sizes: tuple[int, int] | None = None) -> CostEstimate:
    """The cost of running ``recipe`` on the full dataset (every run of a sweep).

    Args:
        recipe: the recipe.
        throughput: measured prompted CLIP ViT forwards per second on one GPU
            (`measure_throughput`); default: derived from `ASSUMED_FLOPS`.
        gpus: GPUs sharing the work (torchrun splits the similarity and feature stores; the heads
            train on one).
        sizes: ``(training, test)`` images, default the dataset's (`DATASET_SIZES`).

    Examples:
        >>> from salfcbm.reproduce.recipes import get_recipe
        >>> estimate_cost(get_recipe("table1-cub")).clip_forwards  # 5,994 training images x 49 prompts
        293706
    """
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"gpus must be a positive int, got {gpus!r}.")
    n_train, n_test = sizes or DATASET_SIZES[recipe.dataset]
    f = count_flops(recipe)
    images = forwards = feat = sims = 0
    grids = {r.grid for r in recipe.runs()}
    for run in recipe.runs():  # every (grid, radius) needs its own similarities; features depend on the grid only
        g2 = run.grid**2
        forwards += (n_train) * g2  # the scorer sees training (and held-out validation) images only
        sims += n_train * g2 * f["embedding_dim"] * 2
    for g in grids:
        feat += (n_train + n_test) * f["channels"] * g * g * 2
        images += n_train + n_test
    seg = _SEG_IMAGES if recipe.segmentation else 0
    text = recipe.expected_concepts
    m, g2 = recipe.expected_concepts, recipe.grid**2
    # full-batch proximal gradient heads (SALF-CBM on M concepts, standard on C features), at most
    # HeadConfig.max_iter = 2000 iterations of a forward and a gradient matmul each: an upper bound
    head_flops = len(recipe.runs()) * 2000 * 4 * n_train * (m + f["channels"]) * recipe.num_classes
    flops = (forwards * f["scorer_image"] + text * f["scorer_text"] + images * f["backbone"]
             + seg * f["backbone"] * 10 + head_flops)
    head = 2 * n_train * m * 4  # activations + standardised copy, fp32
    # one bottleneck step (fp32): the features, the targets and about five concept-sized intermediates of Eq. 1
    # and its gradient per image (measured: 6.0 MB per image at ImageNet's shapes, bench_bottleneck_regime.py)
    batch = min(recipe.bottleneck.batch_size, n_train) * (f["channels"] + 6 * m) * g2 * 4
    if throughput is None:
        throughput, source = ASSUMED_FLOPS / f["scorer_image"], f"assumed {ASSUMED_FLOPS / 1e12:.0f} TFLOP/s per GPU"
    else:
        source = "measured"
    rate = throughput * f["scorer_image"]  # FLOP/s of one GPU
    seconds = (flops - head_flops) / rate / gpus + head_flops / rate  # torchrun shares the stores; rank 0 trains
    return CostEstimate(recipe.name, images, forwards, text, float(flops), float(head_flops), sims, feat, head, batch,
                        float(throughput), source, gpus, seconds / 3600)


def check_disk(cost: CostEstimate, run_dir: str | Path, *, force: bool = False) -> None:
    """Raise `DiskSpaceError` if the run would not fit on ``run_dir``'s file system."""
    path = Path(run_dir)
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    if cost.disk_bytes > free and not force:
        raise DiskSpaceError(f"{cost.recipe} writes {_gib(cost.disk_bytes)} (similarity stores and feature cache) "
                             f"but {path} has {_gib(free)} free. Use a --run-dir on a larger disk, or --force.")


def measure_throughput(scorer: str = "ViT-B-16", *, device: str | None = None, batch_size: int = 64,
                       precision: str = "fp32", seconds: float = 10.0) -> float:
    """Prompted CLIP forwards per second of a random-init ``scorer`` on ``device`` (a short timed batch)."""
    import open_clip

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = open_clip.create_model(scorer, pretrained=None, device=device).eval()
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    x = torch.rand(batch_size, 3, size, size, device=device)
    dtype = PRECISIONS[check_precision(precision)]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        model.encode_image(x)  # warm-up
        sync()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds or n == 0:
            model.encode_image(x)
            n += batch_size
        sync()
    return n / (time.perf_counter() - t)
