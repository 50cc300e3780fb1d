"""Images as a browser hands them over, turned into what a SALF-CBM takes.

Uploads arrive as files, PIL images or arrays of any mode. `load_image` reads them with the
library's one image entry point (`salfcbm.core.images.load_images`: its dtype and layout rule,
grayscale and alpha conversions), turns its conversion warnings into notes for the page, refuses
images too large to decode and shrinks large files cheaply before the model's exact resize.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import warnings

import numpy as np
import torch

from salfcbm.core.images import load_images, open_image
from salfcbm.errors import CorruptImageError, ImageConversionWarning, ImageTooLargeError, InputError

__all__ = ["IMAGE_SUFFIXES", "MAX_PIXELS", "list_images", "load_image"]

MAX_PIXELS = 64_000_000  # larger uploads are refused with a message, not decoded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_image(image: Any, size: Sequence[int] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Open a path (or take an image) and return ``(3, H, W)`` ``[0, 1]`` pixels and notes.

    A file larger than `MAX_PIXELS` is refused; with ``size`` a large file is shrunk by
    PIL's fast reducers to about twice ``size`` first (the exact resize is the model's).
    """
    from PIL import Image, ImageOps

    notes: list[str] = []
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"No image file at {str(path)!r}.")
        try:  # the library's rule: a regular file (never a FIFO), within PIL's pixel budget, header only
            im = open_image(path)
        except CorruptImageError as e:
            raise InputError(f"Could not read {path.name!r} as an image ({e}); upload a PNG, JPEG or WebP file.") from e
        image = im
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > MAX_PIXELS:
            raise ImageTooLargeError(
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
        if 0 in shape:  # the library's reader does not check this (it fails inside torch)
            raise InputError(f"The image is empty (shape {shape}).")
        if len(shape) >= 2 and int(np.prod(sorted(shape)[-2:])) > MAX_PIXELS:
            raise InputError(f"The image of shape {shape} is larger than the explorer's limit of {MAX_PIXELS / 1e6:.0f} MP.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageConversionWarning)
        x = load_images(image)[0]
    notes += [str(w.message) for w in caught if issubclass(w.category, ImageConversionWarning)]
    if x.shape[0] != 1:
        raise InputError(f"Expected one image, got a batch of {x.shape[0]}.")
    return x[0], notes


def list_images(folder: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), at most ``limit`` of them; hidden files and
    folders (``.ipynb_checkpoints``) are ignored and only regular files are listed, as in
    `salfcbm.datasets.ImageFolderDataset`."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--images {str(folder)!r} is not a folder; pass a directory of images.")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))  # hidden: ignored
    if not files:
        raise InputError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {str(folder)!r}.")
    return files[:limit] if limit else files
