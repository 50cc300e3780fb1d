"""Datasets for the pipeline: images as ``[0, 1]`` tensors ``(3, H, W)`` and integer labels."""

from __future__ import annotations

import copy
import heapq
import os
import stat
import warnings
from typing import Any

import torch
from torchvision import datasets

from salfcbm._utils.provenance import files_digest
from salfcbm.core.images import ImageTransform
from salfcbm.errors import ImageTooLargeError, InputError, SalfCBMError, SalfCBMWarning

__all__ = ["ImageFolderDataset", "find_corrupt_images"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def _probe(path: str, size: int, transform: ImageTransform | None) -> str | None:
    """Why ``path`` cannot be read as an image (None when it can): decoded once, JPEGs at reduced scale."""
    from salfcbm.core.images import open_image

    try:
        with open_image(path) as im:  # a regular file within the pixel budget, else a salfcbm error
            if transform is not None:
                transform.check_size(im.size[1], im.size[0])
            im.draft("RGB", (size, size))
            im.convert("RGB")
    except ImageTooLargeError as e:
        return f"too large: {str(e).split(' px', 1)[0].split(', more than', 1)[0]}"
    except SalfCBMError as e:
        return type(e).__name__
    except Exception as e:  # noqa: BLE001 - whatever a broken file makes the decoder raise
        return type(e).__name__
    return None


def find_corrupt_images(paths: list[str], size: int = 64, *, transform: ImageTransform | None = None) -> list[str]:
    """The files among ``paths`` that salfcbm will not read: PIL cannot decode them, they are not
    regular files, or they are over the pixel budget (`salfcbm.core.images.max_image_pixels`, and
    ``transform.check_size`` when given). JPEGs are decoded at reduced scale: fast."""
    return [p for p in paths if _probe(p, size, transform) is not None]


def _path_loader(path: str) -> str:  # module level: picklable for DataLoader workers
    return path


def _hidden(name: str) -> bool:
    return name.startswith(".")


class _Folder(datasets.ImageFolder):
    """torchvision's ``ImageFolder`` with salfcbm's scan rule (see `ImageFolderDataset`): hidden entries
    are ignored, symlinks are followed once (each real folder and file is read once, so a loop ends),
    and entries that are not regular files are set aside in ``irregular``."""

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        with os.scandir(directory) as it:
            classes = sorted(e.name for e in it if not _hidden(e.name) and _is_dir(e))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        self.irregular: list[str] = []
        samples: list[tuple[str, int]] = []
        ids = {c: _dir_id(os.path.join(directory, c)) for c in class_to_idx}
        for c in sorted(class_to_idx):
            # the root and the other classes' folders are never walked into (a link to them is a loop or a relabelling)
            fence = {_dir_id(directory), *(v for k, v in ids.items() if k != c)}
            found = sorted(_walk(os.path.join(directory, c), self.irregular, fence), key=os.path.split)  # torchvision's order
            if not found and not allow_empty:
                raise FileNotFoundError(
                    f"Found no image ({', '.join(IMG_EXTENSIONS)}) for the class {c!r} in {directory}."
                )
            samples += [(p, class_to_idx[c]) for p in found]
        return samples


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _dir_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(top: str, irregular: list[str], fence: set) -> list[str]:
    """Image files under ``top``: hidden names skipped, each real folder and file visited once, the
    folders in ``fence`` (their ``(st_dev, st_ino)``) never entered."""
    seen_dirs = set(fence)
    seen_files: set[tuple[int, int]] = set()
    out: list[str] = []
    heap = [top]  # folders in name order: of two paths to one real folder, the first by name is kept
    while heap:
        d = heapq.heappop(heap)
        try:
            st = os.stat(d)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue  # a symlink back to a folder already read (a loop, or a second link to it)
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if _hidden(e.name):
                continue
            if _is_dir(e):
                heapq.heappush(heap, e.path)
            elif e.name.lower().endswith(IMG_EXTENSIONS):
                try:
                    fst = os.stat(e.path)
                except OSError:  # a dangling symlink
                    irregular.append(e.path)
                    continue
                if not stat.S_ISREG(fst.st_mode):
                    irregular.append(e.path)  # a FIFO, socket or device: never opened
                elif (fst.st_dev, fst.st_ino) not in seen_files:
                    seen_files.add((fst.st_dev, fst.st_ino))
                    out.append(e.path)
    return out


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
    left out (listed in ``skipped`` and in a warning): files PIL cannot decode, and images
    over the pixel budget (`salfcbm.core.images.max_image_pixels`, PIL's ``MAX_IMAGE_PIXELS``)
    or whose resize would blow up (`ImageTransform.check_size`), which otherwise raise
    `ImageTooLargeError` when read.

    The scan (torchvision's ``ImageFolder`` layout and extensions, with salfcbm's rule):

    * hidden files and folders (names starting with ``.``: ``.ipynb_checkpoints``,
      ``.DS_Store``, ``._photo.jpg``) are ignored at every level, so they never become a class
      or an image (torchvision's ``ImageFolder`` keeps them);
    * symlinks are followed, but each real folder and each real file is read once per class
      and the root and the other classes' folders are never entered through a link, so a
      symlink loop ends and repeats nothing;
    * entries that are not regular files (FIFOs, sockets, devices, dangling links) are never
      opened: they are left out with a `SalfCBMWarning` and listed in ``skipped``.

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
            self.folder = _Folder(str(root), loader=_path_loader)
        except FileNotFoundError as e:
            raise InputError(f"{str(root)!r} holds no class sub-folders with images: {e}") from e
        self.root = str(root)
        self._set_transform(transform)
        self.skipped: list[str] = []
        if self.folder.irregular:
            self._skip_irregular()
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

    def _skip_irregular(self) -> None:
        found = self.folder.irregular
        self.skipped += found
        names = ", ".join(os.path.relpath(p, self.root) for p in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        warnings.warn(f"Skipped {len(found)} entr{'y' if len(found) == 1 else 'ies'} of {self.root!r} that are not "
                      f"regular files (FIFOs, sockets, devices, dangling links; never opened): {names}{more}.",
                      SalfCBMWarning, stacklevel=3)

    def _skip_corrupt(self) -> None:
        size = min(self.image_transform.size)
        reasons = {p: r for p, _ in self.folder.samples if (r := _probe(p, size, self.image_transform)) is not None}
        self.skipped += list(reasons)
        if reasons:
            self.folder.samples = [s for s in self.folder.samples if s[0] not in reasons]
            self.folder.imgs = self.folder.samples
            self.folder.targets = [t for _, t in self.folder.samples]
            names = ", ".join(f"{os.path.relpath(p, self.root)} ({r})" for p, r in list(reasons.items())[:10])
            more = f" and {len(reasons) - 10} more" if len(reasons) > 10 else ""
            warnings.warn(f"Skipped {len(reasons)} unreadable image(s) in {self.root!r}: {names}{more}.",
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
        t = self.image_transform
        view = {"crop_pct": t.crop_pct, "crop_mode": t.crop_mode, "interpolation": t.interpolation}
        return {"type": "ImageFolderDataset", "root": os.path.abspath(self.root), "size": self.size,
                "view": view, "length": len(self),
                "files_sha": files_digest(self.folder.samples, self.root, sizes=True)}
