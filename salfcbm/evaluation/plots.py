"""Paper figure 4 from a benchmark run: `plot_attribution_examples` draws the same images explained by
each method (compute in `salfcbm.evaluation.runner`, draw here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError
from salfcbm.evaluation.result import BenchmarkResult


__all__ = ["plot_attribution_examples"]


def plot_attribution_examples(
    result: BenchmarkResult | Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] | None = None,
    alpha: float = 0.55,
    cmap: str = "jet",
    dpi: int = 80,
) -> Any:
    """Paper figure 4: the same images explained by each method.

    Rows are images; the columns are the image, the ground-truth mask, then each
    method's heatmap (min-max scaled per image) over the image.

    Args:
        result: a `BenchmarkResult` (its ``examples``) or the ``examples`` dict.
        path: where to save the figure (atomically; format from the suffix); ``None``
            only returns it.
        methods: columns to show, in order (default: every method with heatmaps).

    Returns:
        The matplotlib ``Figure``.

    Examples:
        >>> import torch
        >>> ex = {"images": torch.rand(2, 3, 8, 8), "masks": torch.rand(2, 8, 8) > 0.5,
        ...       "heatmaps": {"a": torch.rand(2, 1, 4, 4)}}
        >>> len(plot_attribution_examples(ex).axes)
        6
    """
    from salfcbm.viz import new_figure, overlay_heatmap, save_figure

    ex = result.examples if isinstance(result, BenchmarkResult) else result
    if not ex or "images" not in ex or "heatmaps" not in ex:
        raise InputError("No examples to plot: run the benchmark with n_examples > 0.")
    images, masks, heat = ex["images"], ex.get("masks"), ex["heatmaps"]
    names = list(heat) if methods is None else list(methods)
    missing = [n for n in names if n not in heat]
    if missing:
        raise InputError(f"No heatmaps for {missing}; available: {list(heat)}.")
    n = images.shape[0]
    cols = 1 + (masks is not None) + len(names)
    fig = new_figure((1.6 * cols, 1.7 * n + 0.3))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].detach().float().cpu().clamp(0, 1)
        c = 0
        axes[i, c].imshow(img.permute(1, 2, 0).numpy())
        c += 1
        if masks is not None:
            axes[i, c].imshow(masks[i].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            c += 1
        for name in names:
            h = heat[name][i].detach().float().cpu().squeeze(0)
            h = upsample_bilinear(h, img.shape[-2:])
            axes[i, c].imshow(overlay_heatmap(img, h, alpha=alpha, cmap=cmap))
            c += 1
    titles = ["image"] + (["target mask"] if masks is not None else []) + names
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path, dpi=dpi)
    return fig
