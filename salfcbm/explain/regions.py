"""Regions of an image and the move between the image and the prompting grid (paper 3.5, 3.6).

A region is given as a mask, a box or points (`box_mask`, `points_mask`, `region_masks`: float
``(R, H, W)`` stacks at input resolution); `mask_to_grid` brings a region down to the prompting
grid (area averaging) and `upsample_maps` brings concept maps up to the image (bilinear).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError

__all__ = ["upsample_maps", "box_mask", "points_mask", "region_masks", "mask_to_grid"]


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of ``(..., Hg, Wg)`` maps to ``size`` (paper 3.5), ``align_corners=False``."""
    return upsample_bilinear(maps.float(), (int(size[0]), int(size[1])))


def _hw(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        raise InputError(f"A size is (H, W), got {size!r}.")
    return int(size[0]), int(size[1])


def box_mask(box: Sequence[float], size: Sequence[int], *, device=None) -> torch.Tensor:
    """Binary ``(H, W)`` mask of a box ``(x0, y0, x1, y1)`` in pixels.

    The box is half-open: it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``;
    fractional corners are widened to whole pixels (floor of ``x0, y0``, ceil of ``x1, y1``).

    Examples:
        >>> box_mask((1, 0, 3, 2), (3, 4)).int().tolist()
        [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    H, W = _hw(size)
    if isinstance(box, torch.Tensor):
        box = box.tolist()
    if not isinstance(box, Sequence) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise InputError(f"A box is four numbers (x0, y0, x1, y1) in pixels, got {box!r}.")
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"Box {tuple(box)} has NaN or infinite corners; pass finite pixel coordinates (x0, y0, x1, y1).")
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = math.ceil(box[2]), math.ceil(box[3])
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise InputError(
            f"Box {tuple(box)} is empty or outside the {W}x{H} (W x H) image; expected 0 <= x0 < x1 <= {W} "
            f"and 0 <= y0 < y1 <= {H} (pixels, x1/y1 exclusive)."
        )
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    m[y0:y1, x0:x1] = True
    return m


def points_mask(
    points: Sequence[Sequence[float]], size: Sequence[int], radius: float, *, device=None
) -> torch.Tensor:
    """Binary ``(H, W)`` mask: the union of disks of ``radius`` pixels around ``(x, y)`` points.

    A pixel ``(row i, column j)`` belongs to the disk of ``(x, y)`` when
    ``(j - x)**2 + (i - y)**2 <= radius**2``.

    Examples:
        >>> points_mask([(1, 1)], (3, 3), radius=1).int().tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    H, W = _hw(size)
    if isinstance(points, torch.Tensor):
        points = points.tolist()
    if not isinstance(points, Sequence) or not points:
        raise InputError(f"`points` must be a non-empty list of (x, y) pairs, got {points!r}.")
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius < 0:
        raise InputError(f"`radius` must be a non-negative number of pixels, got {radius!r}.")
    ys = torch.arange(H, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(W, device=device, dtype=torch.float32)[None, :]
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    for p in points:
        if not isinstance(p, Sequence) or len(p) != 2 or not all(isinstance(v, (int, float)) for v in p):
            raise InputError(f"A point is an (x, y) pair in pixels, got {p!r}.")
        x, y = float(p[0]), float(p[1])
        if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
            raise InputError(f"Point (x={x}, y={y}) is outside the {W}x{H} (W x H) image; expected 0 <= x <= {W - 1}, 0 <= y <= {H - 1}.")
        m |= (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
    return m


def _is_point(p: Any) -> bool:
    return isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)


def region_masks(
    size: Sequence[int],
    *,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    grid: Sequence[int] | None = None,
    device=None,
) -> torch.Tensor:
    """Turn exactly one of ``mask``, ``box`` or ``points`` into a float ``(R, H, W)`` stack of regions.

    Args:
        size: image size ``(H, W)``.
        mask: ``(H, W)`` or ``(R, H, W)`` tensor/array (bool, or weights >= 0), e.g. masks from SAM.
        box: ``(x0, y0, x1, y1)``, a list of boxes or an ``(R, 4)`` tensor (see `box_mask`).
        points: ``[(x, y), ...]`` (one region, union of disks) or a list of such lists (one region each).
        radius: disk radius for points, in pixels; default half a grid cell (at least 1 px).
        grid: the prompting grid, used for the default radius.

    Raises:
        InputError: none or several of mask/box/points, a wrong shape, or an empty region.

    Examples:
        >>> region_masks((8, 8), box=[(0, 0, 4, 4), (4, 4, 8, 8)]).shape
        torch.Size([2, 8, 8])
    """
    H, W = _hw(size)
    given = [n for n, v in (("mask", mask), ("box", box), ("points", points)) if v is not None]
    if len(given) != 1:
        raise InputError(
            f"Give exactly one region: mask=, box= or points=; got {given or 'none'}."
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            try:
                mask = torch.as_tensor(mask)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"`mask` must be a tensor or array of shape (H, W) or (R, H, W), got {type(mask).__name__}.") from e
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or tuple(mask.shape[-2:]) != (H, W):
            raise InputError(
                f"`mask` must be (H, W) or (R, H, W) with (H, W) = ({H}, {W}), the image size; got shape "
                f"{tuple(mask.shape)}. Resize the mask to the image (nearest) first."
            )
        masks = mask.to(device=device, dtype=torch.float32)
        if not torch.isfinite(masks).all() or (masks < 0).any():
            raise InputError("`mask` values must be finite and >= 0 (a binary mask, or non-negative weights).")
    elif box is not None:
        if isinstance(box, torch.Tensor):
            box = box.tolist()
        boxes = [box] if (isinstance(box, Sequence) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)) else box
        if not isinstance(boxes, Sequence) or not boxes:
            raise InputError(f"`box` must be (x0, y0, x1, y1) or a non-empty list of boxes, got {box!r}.")
        masks = torch.stack([box_mask(b, (H, W), device=device) for b in boxes]).float()
    else:
        if isinstance(points, torch.Tensor):
            points = points.tolist()
        if not isinstance(points, Sequence) or not points:
            raise InputError(f"`points` must be a list of (x, y) pairs or a list of such lists, got {points!r}.")
        groups = [points] if _is_point(points[0]) else list(points)
        if radius is None:
            gh, gw = _hw(grid) if grid is not None else (H, W)
            radius = max(1.0, 0.5 * min(H / gh, W / gw))
        masks = torch.stack([points_mask(g, (H, W), radius, device=device) for g in groups]).float()
    empty = [i for i in range(masks.shape[0]) if float(masks[i].sum()) <= 0]
    if empty:
        raise InputError(f"Region(s) {empty} are empty (no pixel selected); every region needs at least one pixel.")
    return masks


def mask_to_grid(mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Downsample ``(..., H, W)`` region(s) to the prompting grid by area averaging.

    Each grid cell gets the fraction of its pixels inside the region
    (``F.adaptive_avg_pool2d``; with H, W multiples of the grid this is the exact block mean, so
    the grid mask's mean equals the region's area fraction). A mask already at grid size is
    returned as float unchanged.

    Examples:
        >>> mask_to_grid(torch.ones(4, 4).tril(), (2, 2)).tolist()
        [[0.75, 0.0], [1.0, 0.75]]
    """
    gh, gw = _hw(grid)
    m = mask.float()
    if tuple(m.shape[-2:]) == (gh, gw):
        return m
    lead = m.shape[:-2]
    out = F.adaptive_avg_pool2d(m.reshape(-1, 1, *m.shape[-2:]), (gh, gw))
    return out.reshape(*lead, gh, gw)
