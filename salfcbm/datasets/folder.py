"""Datasets for the pipeline: images as ``[0, 1]`` tensors ``(3, H, W)`` and integer labels."""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any

import torch

from salfcbm.core.images import ImageTransform
from salfcbm.errors import InputError, SalfCBMWarning

__all__ = ["ImageFolderDataset", "find_corrupt_images"]

_READ_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises for broken, truncated or odd files


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


def _path_loader(path: str) -> str:  # module level: picklable for DataLoader workers
    return path


class ImageFolderDataset(torch.utils.data.Dataset):
    """An image folder (one sub-folder per class), each image as the model sees it.

    Images are read with salfcbm's one image entry point (`salfcbm.core.images.load_images`:
    grayscale and RGBA are converted with a warning) and cropped with ``transform``
    (`view`). Pass the model's own,
    ``transform=model.image_transform``, so that training, the scorer and ``explain`` see
    the same pixels; ``fit`` re-crops a folder built with another transform from the
    original files (`with_transform`). With only ``size``, images are resized
    (shorter side) and centre-cropped to ``size`` (``crop_pct=1``, bilinear).

    Images come out as ``[0, 1]`` float tensors: the scorer and the backbone each apply
    their own normalisation. ``classes`` and ``targets`` are torchvision's. An unreadable
    image raises `CorruptImageError` naming the file when it is read; with
    ``skip_corrupt=True`` every image is decoded once up front and the unreadable ones are
    left out (listed in ``skipped`` and in a warning).

    Examples:
        >>> ds = ImageFolderDataset("data/cub/train", transform=model.image_transform)  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 224,
        *,
        transform: ImageTransform | None = None,
        skip_corrupt: bool = False,
    ):
        from torchvision import datasets

        if not os.path.isdir(root):
            raise InputError(f"Image folder {str(root)!r} does not exist; pass a directory with one sub-folder per class.")
        if transform is None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 8:
                raise InputError(f"`size` must be an int >= 8, got {size!r}.")
            transform = ImageTransform(size=(size, size), crop_pct=1.0, interpolation="bilinear")
        elif not isinstance(transform, ImageTransform):
            raise InputError(
                f"`transform` must be a salfcbm ImageTransform (e.g. model.image_transform), got {type(transform).__name__}."
            )
        try:
            self.folder = datasets.ImageFolder(str(root), loader=_path_loader)
        except FileNotFoundError as e:
            raise InputError(f"{str(root)!r} holds no class sub-folders with images: {e}") from e
        self.root = str(root)
        self._set_transform(transform)
        self.skipped: list[str] = []
        if skip_corrupt:
            self._skip_corrupt()
        self.classes: list[str] = list(self.folder.classes)
        self.targets: list[int] = list(self.folder.targets)

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, in order (torchvision's ``ImageFolder.samples``); stores key
        their shards by these files' size and modification time."""
        return self.folder.samples

    def _set_transform(self, transform: ImageTransform) -> None:
        self.image_transform = transform
        self.size = transform.size[0] if transform.size[0] == transform.size[1] else list(transform.size)

    def _skip_corrupt(self) -> None:
        self.skipped = find_corrupt_images([p for p, _ in self.folder.samples], min(self.image_transform.size))
        if self.skipped:
            drop = set(self.skipped)
            self.folder.samples = [s for s in self.folder.samples if s[0] not in drop]
            self.folder.imgs = self.folder.samples
            self.folder.targets = [t for _, t in self.folder.samples]
            names = ", ".join(os.path.relpath(p, self.root) for p in self.skipped[:10])
            more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            warnings.warn(f"Skipped {len(self.skipped)} unreadable image(s) in {self.root!r}: {names}{more}.",
                          SalfCBMWarning, stacklevel=3)
        if not self.folder.samples:
            raise InputError(f"{self.root!r} holds no readable images.")

    def with_transform(self, transform: ImageTransform) -> ImageFolderDataset:
        """The same files and labels, cropped with ``transform`` (no rescan of the folder)."""
        if not isinstance(transform, ImageTransform):
            raise InputError(f"`transform` must be an ImageTransform, got {type(transform).__name__}.")
        out = copy.copy(self)
        out._set_transform(transform)
        return out

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.folder.samples[i]
        return self.image_transform.view(path)[0], label

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (for store manifests): root, geometry, files and labels."""
        import hashlib

        h = hashlib.sha256()
        for path, label in self.folder.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\t{os.path.getsize(path)}\n".encode())
        t = self.image_transform
        view = {"crop_pct": t.crop_pct, "crop_mode": t.crop_mode, "interpolation": t.interpolation}
        return {"type": "ImageFolderDataset", "root": os.path.abspath(self.root), "size": self.size,
                "view": view, "length": len(self), "files_sha": h.hexdigest()[:24]}
