"""Pooled concept activations c*(x) from a tapped backbone map, without holding every concept map.

The reference computation builds all maps, ``c = W resize(f) + b`` (``(B, M, Hg, Wg)``), then pools
them. Two exact rewrites make a non-linear pooling (softmax, max, a registered one) cheaper:

* **Chunks of concepts.** A pooling reduces each map on its own (`salfcbm.core.pooling`), so the maps
  are computed and pooled ``k`` concepts at a time; the full ``(B, M, Hg, Wg)`` tensor is never
  held (peak memory is the chunk's, `CHUNK_ELEMENTS`). The FLOPs are the same.
* **Project, then resize.** Bilinear resizing is linear with weights that sum to 1 per output cell,
  so ``resize(W f + b) = W resize(f) + b``. When the grid has more cells than the tapped map (e.g. a
  ResNet-50's 7x7 map on a 14x14 grid) the 1x1 projection runs on the small map and the (cheap,
  at most 4 taps per cell) resize on the concept maps: ``M C h w`` multiply-adds instead of
  ``M C Hg Wg``.

What cannot be avoided, exactly: a pooling that looks at every cell's value (softmax, max) needs
every map's values, i.e. ``M x C`` multiply-adds per cell of ``min(h w, Hg Wg)`` cells.
Linear poolings (mean) skip all of this: they pool the features and project once
(`SALFCBMBase.output_from_features`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.config import ModelConfig
    from salfcbm.core.pooling import PoolingFn

__all__ = ["CHUNK_ELEMENTS", "pooled_activations", "project_first"]

#: elements of one chunk of concept maps (B x k x Hg x Wg); 1 Mi elements = 4 MiB in fp32
CHUNK_ELEMENTS = 1 << 20


def project_first(map_size: tuple[int, int], grid: tuple[int, int]) -> bool:
    """Whether projecting before resizing is cheaper: the tapped map has fewer cells than the grid."""
    return map_size[0] * map_size[1] < grid[0] * grid[1]


def _resize(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(grid):
        return t
    return F.interpolate(t, size=grid, mode="bilinear", align_corners=False)


def pooled_activations(fmap: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       grid: tuple[int, int], pool: PoolingFn, config: ModelConfig,
                       *, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """``pool(W resize(f) + b)`` for every concept, ``(B, M)``, in chunks of concepts.

    Args:
        fmap: the tapped map ``(B, C, h, w)``, in the bottleneck's dtype.
        weight: the bottleneck's weight ``(M, C, 1, 1)`` (or ``(M, C)``).
        bias: its bias ``(M,)`` or ``None``.
        grid: the prompting grid ``(Hg, Wg)``.
        pool: the pooling function (maps ``(B, k, Hg, Wg)``, config) -> ``(B, k)``.
        config: the model's config, handed to ``pool``.
        chunk_elements: the most elements of concept maps held at once.
    """
    grid = (int(grid[0]), int(grid[1]))
    w = weight.flatten(1)
    first = project_first(tuple(fmap.shape[-2:]), grid)
    f = fmap if first else _resize(fmap, grid)
    B, M = f.shape[0], w.shape[0]
    k = max(1, min(M, chunk_elements // max(1, B * grid[0] * grid[1])))
    out = []
    for s in range(0, M, k):
        maps = F.conv2d(f, w[s:s + k, :, None, None], None if bias is None else bias[s:s + k])
        if first:
            maps = _resize(maps, grid)
        out.append(pool(maps, config))
    return out[0] if len(out) == 1 else torch.cat(out, 1)
