"""Datasets for the pipeline: images as ``[0, 1]`` tensors ``(3, H, W)`` and integer labels."""

from __future__ import annotations

import os
from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["ImageFolderDataset"]


class ImageFolderDataset(torch.utils.data.Dataset):
    """An image folder (one sub-folder per class), resized and centre-cropped to ``size``.

    Images come out as ``[0, 1]`` float tensors: the scorer and the backbone each apply
    their own normalisation. ``classes`` and ``targets`` are torchvision's.

    Examples:
        >>> ds = ImageFolderDataset("data/cub/train", size=224)  # doctest: +SKIP
        >>> image, label = ds[0]  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, size: int = 224):
        from torchvision import datasets, transforms

        if not os.path.isdir(root):
            raise InputError(f"Image folder {str(root)!r} does not exist; pass a directory with one sub-folder per class.")
        if not isinstance(size, int) or size < 8:
            raise InputError(f"`size` must be an int >= 8, got {size!r}.")
        tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
        try:
            self.folder = datasets.ImageFolder(str(root), transform=tf)
        except FileNotFoundError as e:
            raise InputError(f"{str(root)!r} holds no class sub-folders with images: {e}") from e
        self.root, self.size = str(root), size
        self.classes: list[str] = list(self.folder.classes)
        self.targets: list[int] = list(self.folder.targets)

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
