"""Datasets for the pipeline: images as ``[0, 1]`` tensors ``(3, H, W)`` and integer labels."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from salfcbm.errors import CorruptImageError, InputError

__all__ = ["ImageFolderDataset", "find_corrupt_images"]

_READ_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises for broken, truncated or odd files


def _load_rgb(path: str):
    """Decode one image as RGB; an unreadable file raises :class:`CorruptImageError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except _READ_ERRORS as e:
        raise CorruptImageError(
            f"Cannot read image {path!r} ({type(e).__name__}: {e}). Remove or replace the file, or skip unreadable "
            "images (`ImageFolderDataset(..., skip_corrupt=True)`, `salfcbm ... --skip-corrupt`)."
        ) from e


def find_corrupt_images(paths: list[str], size: int = 64) -> list[str]:
    """The files among ``paths`` that PIL cannot decode (JPEGs are decoded at reduced scale: fast)."""
    from PIL import Image

    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.draft("RGB", (size, size))
                im.convert("RGB")
        except _READ_ERRORS:
            bad.append(p)
    return bad


class ImageFolderDataset(torch.utils.data.Dataset):
    """An image folder (one sub-folder per class), resized and centre-cropped to ``size``.

    Images come out as ``[0, 1]`` float tensors: the scorer and the backbone each apply
    their own normalisation. ``classes`` and ``targets`` are torchvision's. An unreadable
    image raises `CorruptImageError` naming the file when it is read; with
    ``skip_corrupt=True`` every image is decoded once up front and the unreadable ones are
    left out (listed in ``skipped`` and in a warning).

    Examples:
        >>> ds = ImageFolderDataset("data/cub/train", size=224)  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, size: int = 224, *, skip_corrupt: bool = False):
        from torchvision import datasets, transforms

        if not os.path.isdir(root):
            raise InputError(f"Image folder {str(root)!r} does not exist; pass a directory with one sub-folder per class.")
        if not isinstance(size, int) or size < 8:
            raise InputError(f"`size` must be an int >= 8, got {size!r}.")
        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
        try:
            self.folder = datasets.ImageFolder(str(root), transform=tf, loader=_load_rgb)
        except FileNotFoundError as e:
            raise InputError(f"{str(root)!r} holds no class sub-folders with images: {e}") from e
        self.root, self.size = str(root), size
        self.skipped: list[str] = []
        if skip_corrupt:
            self.skipped = find_corrupt_images([p for p, _ in self.folder.samples], size)
            if self.skipped:
                drop = set(self.skipped)
                self.folder.samples = [s for s in self.folder.samples if s[0] not in drop]
                self.folder.imgs = self.folder.samples
                self.folder.targets = [t for _, t in self.folder.samples]
                names = ", ".join(os.path.relpath(p, self.root) for p in self.skipped[:10])
                more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
                warnings.warn(f"Skipped {len(self.skipped)} unreadable image(s) in {self.root!r}: {names}{more}.",
                              stacklevel=2)
            if not self.folder.samples:
                raise InputError(f"{str(root)!r} holds no readable images.")
        self.classes: list[str] = list(self.folder.classes)
        self.targets: list[int] = list(self.folder.targets)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, in order (torchvision's ``ImageFolder.samples``); stores key
        their shards by these files' size and modification time."""
        return self.folder.samples

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.folder[i]

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (for store manifests): root, size, files and labels."""
        import hashlib

        h = hashlib.sha256()
        for path, label in self.folder.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\t{os.path.getsize(path)}\n".encode())
        return {"type": "ImageFolderDataset", "root": os.path.abspath(self.root), "size": self.size,
                "length": len(self), "files_sha": h.hexdigest()[:24]}
