"""Localisation metrics of heatmaps against ground-truth masks, as the field defines them.

Each function scores a batch of heatmaps ``(B, 1, H, W)`` or ``(B, H, W)`` against boolean masks
``(B, H, W)`` and returns one value per image (``NaN`` where the mask is empty: nothing to
localise, so the image is left out of the means). The heatmaps are scored *as given*: pass
``heat.clamp(min=0)`` to score the rectified map. Scaling a map by a positive number changes
none of the scores.

* `pointing_game` (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016);
* `relevance_mass_accuracy` (Kohlbrenner et al., "Towards best practice in explaining neural
  network decisions with LRP", IJCNN 2020; Arras et al., "CLEVR-XAI", Information Fusion 2022);
* `relevance_rank_accuracy` (Arras et al., "CLEVR-XAI", Information Fusion 2022);
* `top_k_intersection` (Theiner et al., "Interpretable semantic photo geolocation", WACV 2022).

Quantus 0.6 implements all four (``quantus.PointingGame``, ``RelevanceMassAccuracy``,
``RelevanceRankAccuracy``, ``TopKIntersection``); ``tests/evaluation/test_quantus_crosscheck.py``
checks these against it and ``docs/evaluation.md`` lists where Quantus differs.
`LocalisationMetrics` accumulates all four over a dataset (for `run_attribution_benchmark`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError
from salfcbm.evaluation.inputs import as_heatmaps, as_masks

__all__ = [
    "LOCALISATION_KEYS",
    "LocalisationMetrics",
    "pointing_game",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "top_k_intersection",
]

#: The per-image scores of `LocalisationMetrics`, in report order.
LOCALISATION_KEYS: tuple[str, ...] = ("pointing_game", "relevance_mass", "relevance_rank", "top_k_intersection")


def _flat(heatmaps: Any, masks: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked ``(B, H*W)`` float64 heatmaps, bool masks, and which masks are empty."""
    h = as_heatmaps(heatmaps)
    g = as_masks(masks)
    if h.shape[0] != g.shape[0]:
        raise InputError(
            f"`heatmaps` has {h.shape[0]} images but `masks` has {g.shape[0]}; pass one mask per heatmap."
        )
    g = g.to(h.device)
    if h.shape[-2:] != g.shape[-2:]:
        h = upsample_bilinear(h, tuple(g.shape[-2:]))
    g = g.flatten(1)
    return h.flatten(1), g, g.sum(1) == 0


def _nan_where(values: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    return torch.where(empty, torch.full_like(values, float("nan")), values).cpu()


def _dilate(g: torch.Tensor, radius: int) -> torch.Tensor:
    """``(B, H, W)`` bool masks grown by a disc of ``radius`` pixels (Euclidean)."""
    r = torch.arange(-radius, radius + 1, device=g.device, dtype=torch.float32)
    disc = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()[None, None]
    return F.conv2d(g[:, None].float(), disc, padding=radius)[:, 0] > 0


def pointing_game(heatmaps: Any, masks: Any, tolerance: int = 0) -> torch.Tensor:
    """Whether the heatmap's maximum lies on the object: 1.0 (hit) or 0.0 (miss) per image.

    Zhang et al., "Top-down neural attention by excitation backprop" (ECCV 2016): a hit when the
    most salient pixel falls inside the ground-truth mask, or within ``tolerance`` pixels of it
    (the paper uses 15 px at 224 px; Quantus 0.6's ``PointingGame`` has none, the default here).
    Tied maxima count as a hit when any of them is on the object (as Quantus), so a map with
    large flat maxima (a constant map, nearest upsampling, a rectified map that is 0
    everywhere) is favoured. An empty mask gives ``NaN`` (Quantus counts it as a hit).
    Heatmaps of another size than the masks are resized bilinearly first.

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, 1, 1] = True
        >>> h = torch.zeros(1, 4, 4); h[0, 1, 1] = 1.0
        >>> pointing_game(h, m).tolist()
        [1.0]
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise InputError(f"`tolerance` must be a non-negative int (pixels), got {tolerance!r}.")
    h, g, empty = _flat(heatmaps, masks)
    if tolerance:
        side = as_masks(masks).shape[-2:]
        g = _dilate(g.view(-1, *side), tolerance).flatten(1)
    at_max = h == h.max(1, keepdim=True).values
    return _nan_where((at_max & g).any(1).double(), empty)


def relevance_mass_accuracy(heatmaps: Any, masks: Any) -> torch.Tensor:
    """The share of the map's total relevance that lies on the object, per image.

    ``sum(R inside mask) / sum(R)`` (Kohlbrenner et al., IJCNN 2020; Arras et al., CLEVR-XAI,
    Information Fusion 2022; Quantus ``RelevanceMassAccuracy``). In ``[0, 1]`` for a non-negative
    map; for a signed map (SALF-CBM's default) the sum can be near 0 or negative and the ratio
    leaves ``[0, 1]``, so score the rectified map (``heat.clamp(min=0)``) to compare methods.
    A map summing to 0 gives ``NaN``, as does an empty mask.

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 2, 2, dtype=torch.bool); m[0, 0] = True
        >>> relevance_mass_accuracy(torch.tensor([[[3.0, 1.0], [0.0, 0.0]]]), m).tolist()
        [1.0]
    """
    h, g, empty = _flat(heatmaps, masks)
    total = h.sum(1)
    inside = (h * g).sum(1)
    mass = inside / torch.where(total == 0, torch.ones_like(total), total)
    return _nan_where(mass, empty | (total == 0))


def _ranked_on_mask(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` reordered by decreasing ``h`` (ties in raster order)."""
    order = torch.argsort(h, dim=1, descending=True, stable=True)
    return g.gather(1, order)


def relevance_rank_accuracy(heatmaps: Any, masks: Any) -> torch.Tensor:
    """The share of the ``K`` highest-scoring pixels that lie on the object, ``K`` = the mask's size.

    Arras et al., "CLEVR-XAI: a benchmark dataset for the ground truth evaluation of neural
    network explanations" (Information Fusion 2022); Quantus ``RelevanceRankAccuracy``. 1.0 when
    the map ranks every object pixel above every background pixel. Ties are broken in raster
    order (Quantus uses numpy's unstable ``argsort``; the two agree on maps without ties).

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 2, 2, dtype=torch.bool); m[0, 0] = True
        >>> relevance_rank_accuracy(torch.tensor([[[3.0, 0.0], [1.0, 0.5]]]), m).tolist()
        [0.5]
    """
    h, g, empty = _flat(heatmaps, masks)
    ranked = _ranked_on_mask(h, g).double()
    k = g.sum(1, keepdim=True)
    top = torch.arange(h.shape[1], device=h.device).expand_as(h) < k
    acc = (ranked * top).sum(1) / k[:, 0].clamp(min=1)
    return _nan_where(acc, empty)


def top_k_intersection(heatmaps: Any, masks: Any, k: int = 1000) -> torch.Tensor:
    """The share of the map's ``k`` highest-scoring pixels that lie on the object.

    Theiner et al., "Interpretable semantic photo geolocation" (WACV 2022); Quantus
    ``TopKIntersection`` (default ``k = 1000``, of a 224 x 224 image). ``k`` larger than the
    image is an error. Ties are broken in raster order.

    Examples:
        >>> import torch
        >>> m = torch.zeros(1, 2, 2, dtype=torch.bool); m[0, 0] = True
        >>> top_k_intersection(torch.tensor([[[3.0, 0.0], [1.0, 0.5]]]), m, k=2).tolist()
        [0.5]
    """
    h, g, empty = _flat(heatmaps, masks)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h.shape[1]:
        raise InputError(f"`k` must be an int in [1, {h.shape[1]}] (the pixels of one map), got {k!r}.")
    ranked = _ranked_on_mask(h, g)[:, :k]
    return _nan_where(ranked.double().mean(1), empty)


class LocalisationMetrics:
    """Accumulates `pointing_game`, relevance mass / rank accuracy and top-k intersection.

    `update` scores a batch (and the rectified map, ``max(h, 0)``, under the same names with the
    suffix ``_relu``), plus ``pointing_game_tolerant``: the pointing game with Zhang et al.'s
    tolerance of 15 px at 224 px, scaled to the masks' size, and ``relevance_mass_out_of_range``:
    the share of images whose (signed) relevance mass leaves ``[0, 1]``; `compute` returns the means over images with a non-empty mask (and a
    non-zero total for the mass) plus ``n_empty_masks``. ``top_k`` is a fraction of the pixels
    (default ``1000 / (224 * 224)``, Quantus's 1000 at 224 px) or an int.

    Examples:
        >>> import torch
        >>> lm = LocalisationMetrics()
        >>> m = torch.zeros(2, 8, 8, dtype=torch.bool); m[:, 2:5, 2:5] = True
        >>> _ = lm.update(m.float(), m)
        >>> lm.compute()["pointing_game"], lm.compute()["relevance_mass_relu"]
        (1.0, 1.0)
    """

    def __init__(self, *, top_k: float | int = 1000 / (224 * 224)) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not top_k > 0:
            raise InputError(f"`top_k` must be a positive int (pixels) or a fraction in (0, 1], got {top_k!r}.")
        if isinstance(top_k, float) and top_k > 1:
            raise InputError(f"A float `top_k` is a fraction of the pixels in (0, 1], got {top_k!r}.")
        self.top_k = top_k
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._values: dict[str, list[torch.Tensor]] = {}
        self._n_empty = 0

    def _k(self, n_pixels: int) -> int:
        if isinstance(self.top_k, int):
            return min(self.top_k, n_pixels)
        return max(1, min(n_pixels, round(self.top_k * n_pixels)))

    def update(self, heatmaps: Any, masks: Any) -> dict[str, torch.Tensor]:
        """Score one batch; returns the per-image values (``NaN`` where undefined)."""
        g = as_masks(masks)
        k = self._k(g.shape[-2] * g.shape[-1])
        h = as_heatmaps(heatmaps)
        out: dict[str, torch.Tensor] = {}
        tol = max(1, round(15 * min(g.shape[-2:]) / 224))  # Zhang et al.'s 15 px at 224 px
        for suffix, hm in (("", h), ("_relu", h.clamp(min=0))):
            out["pointing_game" + suffix] = pointing_game(hm, g)
            out["pointing_game_tolerant" + suffix] = pointing_game(hm, g, tolerance=tol)
            out["relevance_mass" + suffix] = relevance_mass_accuracy(hm, g)
            out["relevance_rank" + suffix] = relevance_rank_accuracy(hm, g)
            out["top_k_intersection" + suffix] = top_k_intersection(hm, g, k=k)
        mass = out["relevance_mass"]
        out["relevance_mass_out_of_range"] = torch.where(
            torch.isnan(mass), mass, ((mass < 0) | (mass > 1)).double()
        )  # the signed map's mass is no share on these images
        for key, v in out.items():
            self._values.setdefault(key, []).append(v)
        self._n_empty += int((g.flatten(1).sum(1) == 0).sum())
        return out

    def compute(self) -> dict[str, float | int | None]:
        """Means over the images where each score is defined (``None`` if none), and ``n_empty_masks``."""
        if not self._values:
            raise InputError("LocalisationMetrics.compute() was called before any update(); pass heatmaps first.")
        res: dict[str, float | int | None] = {}
        for key, vs in self._values.items():
            v = torch.cat(vs)
            v = v[~torch.isnan(v)]
            res[key] = float(v.mean()) if v.numel() else None
        res["n_empty_masks"] = self._n_empty
        return res
