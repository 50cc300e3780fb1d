"""Visual prompts: a grid of red circles drawn on a batch of images at once.

Paper section 3.2 and Algorithm 1 (appendix A.1): an image of size ``H x W`` gets a
uniform grid of ``Hg x Wg`` locations with integer strides
``d_H = floor(H / (Hg + 1))`` and ``d_W = floor(W / (Wg + 1))``; location ``(i, j)``
sits at ``(d_H * (i + 1), d_W * (j + 1))``. One prompted copy of the image is
made per location by drawing a red circle of radius ``r`` and line width 2
around it. The scorer (CLIP) then embeds every prompted copy.

**Units.** ``radius`` and ``line_width`` have one unit, stated in the type: pixels of
an image whose shorter side is ``reference_size`` (default 224, the input of CLIP
ViT-B/16, where the paper uses ``r = 32``). On an image whose shorter side is ``s``
they are drawn as ``round(radius * s / reference_size)`` pixels (at least 1), so a
circle covers the same fraction of the image for every scorer and image size: 32 px
at 224, 48 px at 336, 9 px on a 64 px scene.

Everything here is tensor ops on the images' device: the ring masks of all
locations are computed once per ``(grid, radius, line width, H, W, device)`` and
cached, and drawing is one ``torch.where`` for a whole batch of images and
prompts. No PIL, no Python loop over pixels or prompts.

A ring pixel is one whose centre lies at Euclidean distance ``dist`` from the
circle centre with ``r - w / 2 <= dist < r + w / 2`` (``w`` the line width), so
the ring is exactly ``w`` pixels thick along the axes and every ring pixel is
within ``r +- w / 2`` of its centre. Circles that cross the image border are
clipped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["PromptGrid"]


def _as_pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        raise InputError(f"{name} must be an int or a pair of ints (rows, cols); got {value!r}.") from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise InputError(f"{name} must be an int or a pair of ints (rows, cols); got {value!r}.")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class PromptGrid:
    """A grid of red-circle visual prompts (paper 3.2, Algorithm 1).

    Args:
        grid: ``(Hg, Wg)`` number of prompt locations along height and width
            (an int means a square grid). Paper default 7x7.
        radius: Circle radius in pixels of an image whose shorter side is
            ``reference_size``. Paper default 32 (at 224).
        line_width: Ring thickness, in the same unit. Paper: 2.
        color: RGB colour in 0-255. Paper: red ``(255, 0, 0)``.
        reference_size: The shorter image side that ``radius`` and ``line_width`` refer
            to (default 224). Every scorer draws at its own resolution with
            `radius_px`.

    Examples:
        >>> import torch
        >>> grid = PromptGrid(grid=(2, 3), radius=4, reference_size=30)
        >>> grid.centres(30, 40)[0, 0].tolist()   # (y, x) of the first location
        [10, 10]
        >>> grid.draw(torch.zeros(5, 3, 30, 40)).shape
        torch.Size([5, 6, 3, 30, 40])
        >>> PromptGrid().radius_px(224, 224), PromptGrid().radius_px(64, 64)
        (32, 9)
    """

    grid: tuple[int, int] = (7, 7)
    radius: int = 32
    line_width: int = 2
    color: tuple[int, int, int] = (255, 0, 0)
    reference_size: int = 224

    def __post_init__(self) -> None:
        grid = _as_pair(self.grid, "grid")
        if grid[0] < 1 or grid[1] < 1:
            raise InputError(f"grid must have at least one location per axis; got {grid}.")
        object.__setattr__(self, "grid", grid)
        for name in ("radius", "line_width", "reference_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise InputError(f"{name} must be an int (pixels); got {v!r}.")
        if self.radius < 1:
            raise InputError(f"radius must be >= 1 pixel; got {self.radius}.")
        if self.line_width < 1:
            raise InputError(f"line_width must be >= 1 pixel; got {self.line_width}.")
        if self.reference_size < 1:
            raise InputError(f"reference_size must be >= 1 pixel; got {self.reference_size}.")
        try:
            color = tuple(self.color)
        except TypeError:
            raise InputError(f"color must be an (R, G, B) triple of ints in 0-255; got {self.color!r}.") from None
        if len(color) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color):
            raise InputError(f"color must be an (R, G, B) triple of ints in 0-255; got {self.color!r}.")
        object.__setattr__(self, "color", color)

    @property
    def num_prompts(self) -> int:
        """``Hg * Wg``, the number of prompted copies per image."""
        return self.grid[0] * self.grid[1]

    def _scaled(self, length: int, height: int, width: int) -> int:
        s = min(_check_hw(height, width))
        return max(1, math.floor(length * s / self.reference_size + 0.5))

    def radius_px(self, height: int, width: int) -> int:
        """The radius drawn on an ``H x W`` image: ``round(radius * min(H, W) / reference_size)``, >= 1."""
        return self._scaled(self.radius, height, width)

    def line_width_px(self, height: int, width: int) -> int:
        """The line width drawn on an ``H x W`` image, scaled like `radius_px`."""
        return self._scaled(self.line_width, height, width)

    def strides(self, height: int, width: int) -> tuple[int, int]:
        """Integer strides ``(floor(H / (Hg + 1)), floor(W / (Wg + 1)))``.

        Raises:
            InputError: if the image is too small for the grid (a stride of 0).
        """
        height, width = _check_hw(height, width)
        dh, dw = height // (self.grid[0] + 1), width // (self.grid[1] + 1)
        if dh < 1 or dw < 1:
            raise InputError(
                f"A {self.grid[0]}x{self.grid[1]} prompt grid needs an image of at least "
                f"{self.grid[0] + 1}x{self.grid[1] + 1} pixels; got {height}x{width}. "
                "Use a coarser grid or larger images."
            )
        return dh, dw

    def centres(self, height: int, width: int) -> torch.Tensor:
        """Prompt centres ``(Hg, Wg, 2)`` long, as ``(y, x)`` pixel coordinates.

        Examples:
            >>> PromptGrid(grid=(7, 7)).centres(224, 224)[:, 0, 0].tolist()
            [28, 56, 84, 112, 140, 168, 196]
        """
        dh, dw = self.strides(height, width)
        ys = dh * torch.arange(1, self.grid[0] + 1)
        xs = dw * torch.arange(1, self.grid[1] + 1)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([yy, xx], dim=-1).long()

    def ring_masks(self, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean ring masks ``(Hg * Wg, H, W)``, one per location, row-major.

        Cached per ``(self, H, W, device)``; treat the result as read-only.

        Examples:
            >>> m = PromptGrid(grid=(1, 1), radius=3, reference_size=9).ring_masks(9, 9)
            >>> m.shape, bool(m[0, 4, 4]), bool(m[0, 4, 1])
            (torch.Size([1, 9, 9]), False, True)
        """
        height, width = _check_hw(height, width)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return _ring_masks(self, height, width, str(dev))

    def color_tensor(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The colour as a ``(3,)`` tensor in ``[0, 1]``."""
        return torch.tensor([c / 255.0 for c in self.color], device=device, dtype=dtype)

    def draw(self, images: torch.Tensor, prompts: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Draw every prompt on every image: ``(B, 3, H, W)`` -> ``(B, P, 3, H, W)``.

        Args:
            images: float images in ``[0, 1]`` (any float dtype, any device).
            prompts: optional subset of prompt indices (row-major over the grid)
                to draw; default all ``Hg * Wg``.

        Returns:
            The prompted images, same dtype and device as ``images``.

        Examples:
            >>> out = PromptGrid(grid=(2, 2), radius=3, reference_size=20).draw(torch.zeros(1, 3, 20, 20))
            >>> out.shape, out[0, 0, 0].max().item(), out[0, 0, 1].max().item()
            (torch.Size([1, 4, 3, 20, 20]), 1.0, 0.0)
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor; got {shape}.")
        if not images.is_floating_point():
            raise InputError(f"images must be float in [0, 1]; got dtype {images.dtype}. Divide uint8 images by 255.")
        masks = self.ring_masks(images.shape[-2], images.shape[-1], images.device)
        if prompts is not None:
            masks = masks[prompts]
        color = self.color_tensor(images.device, images.dtype).view(1, 1, 3, 1, 1)
        return torch.where(masks[None, :, None], color, images[:, None])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict` inverts it.

        ``reference_size`` is left out when it is the default 224, so manifests of stores
        computed before it existed (CLIP at 224 px, where the unit is unchanged) still match.
        """
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["color"] = list(self.color)
        if self.reference_size == 224:
            del d["reference_size"]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptGrid:
        """Rebuild from `to_dict` output. Unknown keys are an error."""
        known = {"grid", "radius", "line_width", "color", "reference_size"}
        extra = set(data) - known
        if extra:
            raise InputError(f"Unknown PromptGrid keys {sorted(extra)}; expected a subset of {sorted(known)}.")
        kw = dict(data)
        if "grid" in kw and not isinstance(kw["grid"], int):
            kw["grid"] = tuple(kw["grid"])
        if "color" in kw:
            kw["color"] = tuple(kw["color"])
        return cls(**kw)


def _check_hw(height: Any, width: Any) -> tuple[int, int]:
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise InputError(f"height and width must be ints; got {height!r}, {width!r}.") from None
    if h < 1 or w < 1 or h != height or w != width:
        raise InputError(f"height and width must be positive ints; got {height!r}, {width!r}.")
    return h, w


@functools.lru_cache(maxsize=32)
def _ring_masks(prompt: PromptGrid, height: int, width: int, device: str) -> torch.Tensor:
    if device != "cpu":
        return _ring_masks(prompt, height, width, "cpu").to(device)
    # exact integer arithmetic: r - w/2 <= dist < r + w/2  <=>  (2r - w)^2 <= 4 d^2 < (2r + w)^2
    centres = prompt.centres(height, width).view(-1, 2)
    dy2 = (torch.arange(height)[None, :] - centres[:, :1]) ** 2  # (P, H)
    dx2 = (torch.arange(width)[None, :] - centres[:, 1:]) ** 2  # (P, W)
    d2x4 = 4 * (dy2[:, :, None] + dx2[:, None, :])  # (P, H, W)
    r, lw = prompt.radius_px(height, width), prompt.line_width_px(height, width)
    inner = 2 * r - lw
    outer = 2 * r + lw
    ring = d2x4 < outer * outer
    if inner > 0:
        ring &= d2x4 >= inner * inner
    return ring
