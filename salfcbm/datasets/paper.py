"""Readers for the datasets of the paper, in the layouts they ship in (paper section 4).

* `ImageNetDataset`: ILSVRC-2012 ``train/`` and ``val/`` folders, one sub-folder
  per WordNet id (the validation images sorted into class folders, as torchvision and
  LF-CBM expect);
* `Places365Dataset`: Places365-Standard as torchvision lays it out (file lists,
  ``data_256/`` and ``val_256/``);
* `CUB200Dataset`: CUB-200-2011 with its own split file ``train_test_split.txt``;
* ImageNet-segmentation: `salfcbm.datasets.ImagenetSegmentation`.

Every reader returns ``([0, 1]`` image ``(3, size, size)``, label) like
`ImageFolderDataset`: the image as the model sees it (resize the short
side to ``resize``, default ``size``, then centre crop ``size``; ``resize=256, size=224`` is
the usual ImageNet evaluation transform; pass ``transform=model.image_transform`` to use the
model's own, which ``fit`` does by itself through ``with_transform``), has
``classes``, ``targets`` and ``fingerprint()``, and raises
`DatasetNotFoundError` showing the expected layout when a path is
wrong. `holdout_split` carves a seeded, stratified validation set out of a training
set. `write_fake_layout` writes a tiny generated copy of each layout (tests, dry runs).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.provenance import files_digest
from salfcbm.core.images import ImageTransform
from salfcbm.datasets.cub_attributes import (
    ConceptLabels,
    CUBAttributes,
    match_cub_attributes,
    read_cub_attributes,
)
from salfcbm.datasets.fake_layouts import write_fake_layout, write_imagenet_seg_mat
from salfcbm.datasets.layouts import LAYOUTS, layout_error
from salfcbm.datasets.splits import SubsetWithTargets, holdout_split
from salfcbm.errors import InputError

__all__ = [
    "CUBAttributes",
    "CUB200Dataset",
    "ConceptLabels",
    "ImageNetDataset",
    "LAYOUTS",
    "Places365Dataset",
    "SubsetWithTargets",
    "holdout_split",
    "match_cub_attributes",
    "read_cub_attributes",
    "write_fake_layout",
    "write_imagenet_seg_mat",
]

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _transform(size: int, resize: int | None, transform: Any) -> ImageTransform:
    if transform is not None:
        if not isinstance(transform, ImageTransform):
            raise InputError(f"`transform` must be a salfcbm ImageTransform (e.g. model.image_transform), got "
                             f"{type(transform).__name__}.")
        return transform
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise InputError(f"`size` must be an int >= 8, got {size!r}.")
    resize = size if resize is None else resize
    if isinstance(resize, bool) or not isinstance(resize, int) or resize < size:
        raise InputError(f"`resize` must be an int >= size ({size}) or None, got {resize!r}.")
    return ImageTransform(size=(size, size), crop_pct=size / resize, interpolation="bilinear")


class _ImageList(torch.utils.data.Dataset):
    """(path, label) samples, each image as the model sees it; the common base of the readers.

    Like `ImageFolderDataset`, images go through ``image_transform``
    (`view`) and `with_transform` re-crops
    from the original files, so ``fit`` gives the scorer and the backbone the model's view.
    """

    def __init__(self, root: str | os.PathLike, samples: list[tuple[str, int]], classes: list[str], size: int,
                 resize: int | None = None, transform: ImageTransform | None = None):
        self.root = str(root)
        self.samples, self.classes = samples, classes
        self.targets: list[int] = [label for _, label in samples]
        self._set_transform(_transform(size, resize, transform))

    def _set_transform(self, transform: ImageTransform) -> None:
        self.image_transform = transform
        self.size = transform.size[0] if transform.size[0] == transform.size[1] else list(transform.size)

    def with_transform(self, transform: ImageTransform) -> _ImageList:
        """The same files and labels, cropped with ``transform``."""
        out = copy.copy(self)
        out._set_transform(_transform(0, None, transform))
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.image_transform.view(path)[0], label

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (for store manifests): type, root, geometry, files and labels."""
        t = self.image_transform
        view = {"crop_pct": t.crop_pct, "crop_mode": t.crop_mode, "interpolation": t.interpolation}
        return {"type": type(self).__name__, "root": os.path.abspath(self.root), "size": self.size, "view": view,
                "length": len(self), "files_sha": files_digest(self.samples, self.root)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root!r}, n={len(self)}, classes={len(self.classes)})"


def _check_split(split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise InputError(f"split must be one of {list(valid)}, got {split!r}.")


class ImageNetDataset(_ImageList):
    """ILSVRC-2012 classification images from class folders (paper Table 1, ImageNet column).

    Classes are the sorted WordNet-id folder names of ``train/`` (the standard label order,
    the one LF-CBM's class names follow); ``val/`` must use the same ids. Folders may be
    empty (a partial copy keeps all 1,000 labels).

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        size: side of the square ``[0, 1]`` images (resize the short side, centre crop).
        resize: short side before the crop (default ``size``).
        transform: the view instead of ``size`` / ``resize`` (e.g. ``model.image_transform``).

    Examples:
        >>> ds = ImageNetDataset("/data/imagenet", "val")  # doctest: +SKIP
        >>> len(ds), len(ds.classes)  # doctest: +SKIP
        (50000, 1000)
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 224, resize: int | None = None,
                 transform: ImageTransform | None = None):
        _check_split(split, ("train", "val"))
        root = Path(root)
        if not (root / "train").is_dir():
            raise layout_error("imagenet", f"No folder {root / 'train'}")
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        if not classes:
            raise layout_error("imagenet", f"{root / 'train'} holds no class folders")
        split_dir = root / split
        if not split_dir.is_dir():
            raise layout_error("imagenet", f"No folder {split_dir}")
        found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if found != classes:
            extra = sorted(set(found) - set(classes))[:5]
            missing = sorted(set(classes) - set(found))[:5]
            raise layout_error("imagenet", f"{split_dir} has other class folders than train/ (extra {extra}, "
                           f"missing {missing}); unsorted validation images must be sorted into class folders")
        samples = [(str(p), i) for i, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())
                   if p.suffix.lower() in _IMAGE_EXT]
        if not samples:
            raise layout_error("imagenet", f"{split_dir} holds no images")
        super().__init__(root, samples, classes, size, resize, transform)


class Places365Dataset(_ImageList):
    """Places365-Standard in torchvision's layout (paper Table 1, Places365 column).

    Args:
        root: the folder holding the file lists and the image folders.
        split: ``"train-standard"`` or ``"val"`` (the paper's test set).
        small: 256 x 256 images (``data_256/``, ``val_256/``, LF-CBM's choice) or the large ones.
        size: side of the square ``[0, 1]`` images.
        resize: short side before the crop (default ``size``).
        transform: the view instead of ``size`` / ``resize`` (e.g. ``model.image_transform``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train-standard", small: bool = True, size: int = 224,
                 resize: int | None = None, transform: ImageTransform | None = None):
        _check_split(split, ("train-standard", "val"))
        root = Path(root)
        cat_file = root / "categories_places365.txt"
        list_file = root / ("places365_train_standard.txt" if split == "train-standard" else "places365_val.txt")
        folder = root / (("data_256" if small else "data_large") if split == "train-standard"
                         else ("val_256" if small else "val_large"))
        for p in (cat_file, list_file, folder):
            if not p.exists():
                raise layout_error("places365", f"No {p}")
        cats = [ln.split() for ln in cat_file.read_text().splitlines() if ln.strip()]
        classes = [name for name, _ in sorted(cats, key=lambda c: int(c[1]))]
        samples = []
        for ln in list_file.read_text().splitlines():
            if ln.strip():
                rel, label = ln.rsplit(maxsplit=1)
                samples.append((str(folder / rel.lstrip("/")), int(label)))
        if not samples:
            raise layout_error("places365", f"{list_file} lists no images")
        if not os.path.isfile(samples[0][0]):
            raise layout_error("places365", f"{list_file} lists {samples[0][0]}, which does not exist")
        super().__init__(root, samples, classes, size, resize, transform)
        self.class_names = [re.sub(r"^/[a-z]/", "", c).replace("/", " ").replace("_", " ") for c in classes]


class CUB200Dataset(_ImageList):
    """CUB-200-2011 with its official train/test split (paper Table 1, CUB-200 column).

    Class names are the folder names without their number (``"Black footed Albatross"``,
    LF-CBM's spelling) in `class_names`; `classes` keeps ``classes.txt``.

    Args:
        root: the ``CUB_200_2011`` folder (or the folder holding it).
        split: ``"train"`` (5,994 images) or ``"test"`` (5,794).
        size: side of the square ``[0, 1]`` images.
        resize: short side before the crop (default ``size``).
        transform: the view instead of ``size`` / ``resize`` (e.g. ``model.image_transform``).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 224, resize: int | None = None,
                 transform: ImageTransform | None = None):
        _check_split(split, ("train", "test"))
        root = Path(root)
        if not (root / "images.txt").is_file() and (root / "CUB_200_2011" / "images.txt").is_file():
            root = root / "CUB_200_2011"
        files = {n: root / n for n in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")}
        for p in [*files.values(), root / "images"]:
            if not p.exists():
                raise layout_error("cub", f"No {p}")

        def table(name: str) -> dict[int, str]:
            return {int(k): v for k, v in (ln.split(maxsplit=1) for ln in files[name].read_text().splitlines() if ln.strip())}

        images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
        classes = [v for _, v in sorted(table("classes.txt").items())]
        want = "1" if split == "train" else "0"
        samples = [(str(root / "images" / images[i]), int(labels[i]) - 1) for i in sorted(images)
                   if is_train.get(i, "").strip() == want]
        if not samples:
            raise layout_error("cub", f"train_test_split.txt marks no image as {split!r}")
        super().__init__(root, samples, classes, size, resize, transform)
        self.class_names = [re.sub(r"^\d+\.", "", c).replace("_", " ") for c in classes]
        #: ``images.txt`` id of each sample, in sample order (rows of `concept_labels`).
        self.image_ids = [i for i in sorted(images) if is_train.get(i, "").strip() == want]

    def concept_labels(self, concepts: Sequence[str], *, min_certainty: int = 1) -> ConceptLabels:
        """CUB's attribute annotations of this split's images, for the ``concepts`` that match an attribute.

        Reads ``attributes/image_attribute_labels.txt`` (`read_cub_attributes`) and matches the
        312 attributes to ``concepts`` by name (`match_cub_attributes`). The result feeds
        ``salfcbm.evaluation.concept_metrics(model, dataset, labels)`` directly.
        """
        return read_cub_attributes(self.root).for_concepts(concepts, self.image_ids, min_certainty=min_certainty)
