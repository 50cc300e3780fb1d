"""Images as a browser hands them over, turned into what a SALF-CBM takes.

Uploads arrive as files, PIL images or arrays of any mode: grayscale, grayscale + alpha, RGB,
RGBA, palette, 16-bit, float. :func:`to_rgb01` turns each into one ``(3, H, W)`` ``[0, 1]``
tensor (transparency composited on white) and says what it did; :func:`load_image` also refuses
images too large to decode and shrinks large ones cheaply before the exact resize.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salfcbm.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "list_images", "load_image", "to_rgb01"]

MAX_PIXELS = 64_000_000  # larger uploads are refused with a message, not decoded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _scale_values(a: np.ndarray) -> np.ndarray:
    """Integer or float pixel values to ``[0, 1]`` floats."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        top = 255.0 if a.dtype == np.uint8 or (a.size and a.max() <= 255) else float(np.iinfo(a.dtype).max)
        return a.astype(np.float32) / top
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InputError("The image holds NaN or infinite values; expected finite pixel values.")
    if a.size and a.max() > 1.0:
        a = a / 255.0 if a.max() <= 255.0 else (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    return np.clip(a, 0.0, 1.0)


def _channels_last(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a[..., None]
    if a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 2, 3, 4):
        return np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] in (1, 2, 3, 4):
        return a
    raise InputError(
        f"Expected an image of shape (H, W), (H, W, C) or (C, H, W) with 1-4 channels, got shape {a.shape}."
    )


def to_rgb01(image: Any) -> tuple[torch.Tensor, list[str]]:
    """Any image to a ``(3, H, W)`` float tensor in ``[0, 1]``, plus notes on what was converted.

    Grayscale is repeated to three channels; an alpha channel is composited on white.

    Examples:
        >>> x, notes = to_rgb01(np.zeros((4, 5, 4), dtype=np.uint8))
        >>> tuple(x.shape), notes
        ((3, 4, 5), ['RGBA image: transparent pixels composited on white'])
    """
    from PIL import Image

    notes: list[str] = []
    if isinstance(image, Image.Image):
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
            image = image.convert("RGB")
        image = np.asarray(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise InputError(f"Expected an image (file, PIL image or array), got {type(image).__name__}.")
    a = _channels_last(image)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"The image is empty (shape {image.shape}).")
    a = _scale_values(a)
    c = a.shape[-1]
    if c in (2, 4):
        notes.append(("grayscale + alpha" if c == 2 else "RGBA") + " image: transparent pixels composited on white")
        alpha = a[..., -1:]
        a = a[..., :-1] * alpha + (1.0 - alpha)
    if a.shape[-1] == 1:
        notes.append("grayscale image: repeated to 3 channels")
        a = np.repeat(a, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float(), notes


def load_image(image: Any, size: Sequence[int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Open a path (or take an image) and return ``(3, H, W)`` ``[0, 1]`` pixels and notes.

    A file larger than :data:`MAX_PIXELS` is refused; with ``size`` a large file is shrunk by
    PIL's fast reducers to about twice ``size`` first (the exact resize is the model's).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes: list[str] = []
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"No image file at {str(path)!r}.")
        try:
            im = Image.open(path)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as e:
            raise InputError(f"Could not read {path.name!r} as an image ({e}); upload a PNG, JPEG or WebP file.") from e
        image = im
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise InputError(
                f"The image is {w}x{h} ({w * h / 1e6:.0f} MP), larger than the explorer's limit of "
                f"{MAX_PIXELS / 1e6:.0f} MP. Downscale it first."
            )
        if size is not None and (w > 4 * size[1] and h > 4 * size[0]):
            image.draft("RGB", (2 * size[1], 2 * size[0]))  # JPEG: decode at a reduced scale
            factor = max(1, min(image.size[0] // (2 * size[1]), image.size[1] // (2 * size[0])))
            image = ImageOps.exif_transpose(image).reduce(factor) if factor > 1 else ImageOps.exif_transpose(image)
            notes.append(f"large image ({w}x{h}) shrunk for the model")
        else:
            image = ImageOps.exif_transpose(image)
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        shape = tuple(image.shape)
        if len(shape) >= 2 and int(np.prod(sorted(shape)[-2:])) > MAX_PIXELS:
            raise InputError(f"The image of shape {shape} is larger than the explorer's limit of {MAX_PIXELS / 1e6:.0f} MP.")
    x, more = to_rgb01(image)
    return x, notes + more


def list_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), at most ``limit`` of them."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--images {str(folder)!r} is not a folder; pass a directory of images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}.")
    return files[:limit] if limit else files
