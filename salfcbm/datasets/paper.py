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
import hashlib
import os
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salfcbm.core.images import ImageTransform
from salfcbm.errors import DatasetNotFoundError, InputError

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

#: The expected layout of each dataset, shown in errors and in the docs.
LAYOUTS: dict[str, str] = {
    "imagenet": (
        "ROOT/train/n01440764/n01440764_10026.JPEG ... (1,000 WordNet-id folders)\n"
        "ROOT/val/n01440764/ILSVRC2012_val_00000293.JPEG ... (the 50,000 validation images sorted "
        "into the same class folders, e.g. with the widely used valprep.sh)"
    ),
    "places365": (
        "ROOT/categories_places365.txt\nROOT/places365_train_standard.txt\nROOT/places365_val.txt\n"
        "ROOT/data_256/a/airfield/00000001.jpg ...\nROOT/val_256/Places365_val_00000001.jpg ...\n"
        "(torchvision.datasets.Places365(ROOT, small=True, download=True) writes exactly this; "
        "data_large/ and val_large/ with small=False)"
    ),
    "cub": (
        "ROOT/images.txt\nROOT/image_class_labels.txt\nROOT/train_test_split.txt\nROOT/classes.txt\n"
        "ROOT/images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...\n"
        "(ROOT is the CUB_200_2011 folder of CUB_200_2011.tgz, or the folder holding it)\n"
        "for concept_labels also ROOT/attributes/image_attribute_labels.txt and attributes.txt "
        "(next to ROOT as the archive ships it, or in ROOT or ROOT/attributes)"
    ),
    "imagenet-seg": "a single MATLAB v7.3 file gtsegs_ijcv.mat (value/img, value/gt)",
}


def _missing(kind: str, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{what}. Expected the {kind} layout:\n{LAYOUTS[kind]}")


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
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        t = self.image_transform
        view = {"crop_pct": t.crop_pct, "crop_mode": t.crop_mode, "interpolation": t.interpolation}
        return {"type": type(self).__name__, "root": os.path.abspath(self.root), "size": self.size, "view": view,
                "length": len(self), "files_sha": h.hexdigest()[:24]}

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
            raise _missing("imagenet", f"No folder {root / 'train'}")
        classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        if not classes:
            raise _missing("imagenet", f"{root / 'train'} holds no class folders")
        split_dir = root / split
        if not split_dir.is_dir():
            raise _missing("imagenet", f"No folder {split_dir}")
        found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if found != classes:
            extra = sorted(set(found) - set(classes))[:5]
            missing = sorted(set(classes) - set(found))[:5]
            raise _missing("imagenet", f"{split_dir} has other class folders than train/ (extra {extra}, "
                           f"missing {missing}); unsorted validation images must be sorted into class folders")
        samples = [(str(p), i) for i, c in enumerate(classes) for p in sorted((split_dir / c).iterdir())
                   if p.suffix.lower() in _IMAGE_EXT]
        if not samples:
            raise _missing("imagenet", f"{split_dir} holds no images")
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
                raise _missing("places365", f"No {p}")
        cats = [ln.split() for ln in cat_file.read_text().splitlines() if ln.strip()]
        classes = [name for name, _ in sorted(cats, key=lambda c: int(c[1]))]
        samples = []
        for ln in list_file.read_text().splitlines():
            if ln.strip():
                rel, label = ln.rsplit(maxsplit=1)
                samples.append((str(folder / rel.lstrip("/")), int(label)))
        if not samples:
            raise _missing("places365", f"{list_file} lists no images")
        if not os.path.isfile(samples[0][0]):
            raise _missing("places365", f"{list_file} lists {samples[0][0]}, which does not exist")
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
                raise _missing("cub", f"No {p}")

        def table(name: str) -> dict[int, str]:
            return {int(k): v for k, v in (ln.split(maxsplit=1) for ln in files[name].read_text().splitlines() if ln.strip())}

        images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
        classes = [v for _, v in sorted(table("classes.txt").items())]
        want = "1" if split == "train" else "0"
        samples = [(str(root / "images" / images[i]), int(labels[i]) - 1) for i in sorted(images)
                   if is_train.get(i, "").strip() == want]
        if not samples:
            raise _missing("cub", f"train_test_split.txt marks no image as {split!r}")
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


# --------------------------------------------------------------------------- CUB attribute annotations

#: Words that name the kind of a CUB attribute part (``has_bill_shape`` -> part "bill", kind "shape").
_CUB_KIND_WORDS = ("shape", "color", "pattern", "length", "colour", "size")
_CUB_FILLER = {"a", "an", "the", "has", "with", "its", "having"}


def _cub_words(text: str) -> list[str]:
    """Lowercase words of ``text``: parentheses dropped, other punctuation a space, articles removed."""
    text = re.sub(r"\([^)]*\)", " ", text.lower())
    return [w for w in re.sub(r"[^a-z0-9]+", " ", text).split() if w not in _CUB_FILLER]


def _cub_phrasings(attribute: str) -> set[str]:
    """The concept phrasings that name CUB attribute ``attribute`` (see `match_cub_attributes`)."""
    part_raw, _, value_raw = attribute.partition("::")
    part = [w for w in _cub_words(part_raw.replace("_", " ")) if w != "has"]
    value = _cub_words(value_raw.replace("_", " "))
    bare = [w for w in part if w not in _CUB_KIND_WORDS]
    out = {" ".join(_cub_words(attribute.replace("_", " ").replace("::", " "))), " ".join(value + part)}
    if bare:
        out.add(" ".join(value + bare))
        out.add(" ".join(value + bare[:-1] + [bare[-1] + "s"]))  # plural: "blue wings"
    else:  # has_size::small, has_shape::duck-like: the bird itself
        out.add(" ".join(value + ["bird"]))
    return {p for p in out if p}


def match_cub_attributes(attributes: Sequence[str], concepts: Sequence[str]) -> dict[str, str]:
    """``{concept: attribute}`` for the concepts that name a CUB attribute.

    The matching rule: a concept and an attribute ``has_<part>::<value>`` match when the
    concept's words (lowercased, punctuation and parentheses dropped, the fillers "a", "an",
    "the", "has", "with" removed) equal one of the attribute's phrasings:

    * its own name (``"has bill shape dagger"``), or ``"<value> <part>"`` (``"dagger bill shape"``,
      ``"blue wing color"``);
    * ``"<value> <part without shape/color/pattern/length/size>"`` (``"dagger bill"``, ``"blue wing"``)
      and its plural (``"blue wings"``);
    * for the part-less attributes (``has_size``, ``has_shape``), ``"<value> bird"`` (``"small bird"``,
      ``"duck like bird"``; a size's inches in parentheses are dropped).

    Nothing looser (no synonyms, no embedding similarity): an unmatched concept is left out
    rather than scored against the wrong annotation. When two attributes share a phrasing,
    the first in ``attributes.txt`` order wins.

    Examples:
        >>> m = match_cub_attributes(["has_bill_shape::dagger", "has_wing_color::blue", "has_size::small_(5_-_9_in)"],
        ...                          ["a dagger-shaped bill", "Blue wings", "a small bird", "a dagger bill"])
        >>> m["Blue wings"], m["a small bird"], m["a dagger bill"], "a dagger-shaped bill" in m
        ('has_wing_color::blue', 'has_size::small_(5_-_9_in)', 'has_bill_shape::dagger', False)
    """
    table: dict[str, str] = {}
    for a in attributes:
        for p in _cub_phrasings(a):
            table.setdefault(p, a)
    out = {}
    for c in concepts:
        hit = table.get(" ".join(_cub_words(str(c).replace("_", " ").replace("::", " "))))
        if hit is not None:
            out[str(c)] = hit
    return out


@dataclass
class ConceptLabels:
    """Per-image concept labels: ``labels[i, k]`` is 1 (present), 0 (absent) or NaN (unknown).

    What `concept_metrics` takes as ``annotations``. ``matched`` maps each concept to the
    annotation it was read from (for CUB, the attribute name).
    """

    concepts: list[str]
    labels: torch.Tensor
    matched: dict[str, str] = field(default_factory=dict)


@dataclass
class CUBAttributes:
    """CUB-200-2011's per-image attribute annotations (``attributes/image_attribute_labels.txt``).

    Attributes:
        names: the 312 attribute names in id order (``"has_bill_shape::dagger"``).
        image_ids: the annotated ``images.txt`` ids, sorted (rows of the tensors).
        present: ``(N, A)`` bool, the annotator's ``is_present``.
        certainty: ``(N, A)`` int8, ``certainty_id``: 1 not visible, 2 guessing, 3 probably, 4 definitely
            (0: no line for this pair).
    """

    names: list[str]
    image_ids: list[int]
    present: torch.Tensor
    certainty: torch.Tensor

    def labels(self, min_certainty: int = 1) -> torch.Tensor:
        """``(N, A)`` float: 1 / 0 where the certainty is at least ``min_certainty``, NaN elsewhere.

        ``min_certainty=1`` keeps every annotation (CUB's own convention: "not visible" counts as
        absent); 2 drops the "not visible" ones; 3 keeps only "probably" and "definitely".
        """
        if isinstance(min_certainty, bool) or min_certainty not in (1, 2, 3, 4):
            raise InputError(f"`min_certainty` must be 1, 2, 3 or 4 (CUB's certainty ids), got {min_certainty!r}.")
        out = self.present.double()
        out[self.certainty < min_certainty] = float("nan")
        return out

    def for_concepts(self, concepts: Sequence[str], image_ids: Sequence[int] | None = None, *,
                     min_certainty: int = 1) -> ConceptLabels:
        """Labels of the ``concepts`` that match an attribute (`match_cub_attributes`), rows in ``image_ids`` order."""
        matched = match_cub_attributes(self.names, concepts)
        if not matched:
            raise InputError(
                f"None of the concepts {list(concepts)[:5]} ... names a CUB attribute (e.g. 'blue wings' for "
                "has_wing_color::blue, 'a dagger bill' for has_bill_shape::dagger). See match_cub_attributes "
                "for the rule, or build a ConceptLabels yourself."
            )
        rows = {i: r for r, i in enumerate(self.image_ids)}
        ids = self.image_ids if image_ids is None else list(image_ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise InputError(f"Images {missing[:5]} have no attribute annotation in image_attribute_labels.txt.")
        cols = [self.names.index(a) for a in matched.values()]
        lab = self.labels(min_certainty)[[rows[i] for i in ids]][:, cols]
        return ConceptLabels(list(matched), lab, matched)


def _cub_attribute_names(root: Path) -> list[str]:
    for p in (root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"):
        if p.is_file():
            pairs = [ln.split(maxsplit=1) for ln in p.read_text().splitlines() if ln.strip()]
            try:
                return [n.strip() for _, n in sorted(((int(k), n) for k, n in pairs), key=lambda t: t[0])]
            except ValueError:
                raise _missing("cub", f"{p} is not '<attribute_id> <name>' lines") from None
    raise _missing("cub", f"No attributes.txt in {root / 'attributes'}, {root} or {root.parent}")


def read_cub_attributes(root: str | os.PathLike) -> CUBAttributes:
    """Read CUB-200-2011's attribute annotations in the published layout.

    ``ROOT/attributes/image_attribute_labels.txt``: one line ``<image_id> <attribute_id> <is_present>
    <certainty_id> <time>`` per (image, attribute); only the first four fields are read, so the few
    lines of the published file that carry an extra field are read correctly. Names come from
    ``ROOT/attributes/attributes.txt``, ``ROOT/attributes.txt`` or the ``attributes.txt`` next to
    ``ROOT`` (where ``CUB_200_2011.tgz`` puts it): ``<attribute_id> <name>``.

    Args:
        root: the ``CUB_200_2011`` folder (or the folder holding it).
    """
    root = Path(root)
    if not (root / "attributes").is_dir() and (root / "CUB_200_2011" / "attributes").is_dir():
        root = root / "CUB_200_2011"
    path = root / "attributes" / "image_attribute_labels.txt"
    if not path.is_file():
        raise _missing("cub", f"No {path}")
    names = _cub_attribute_names(root)
    data = path.read_bytes()
    rows = _cub_rows_fast(data, len(names))
    if rows is None:  # something is off: the line-by-line reader names the line
        rows = _cub_rows_checked(path, data, len(names))
    ids_np, row_of = np.unique(rows[:, 0], return_inverse=True)
    present = np.zeros((len(ids_np), len(names)), dtype=bool)
    certainty = np.zeros((len(ids_np), len(names)), dtype=np.int8)
    present[row_of, rows[:, 1] - 1] = rows[:, 2] == 1
    certainty[row_of, rows[:, 1] - 1] = rows[:, 3]
    return CUBAttributes(names, [int(i) for i in ids_np], torch.from_numpy(present), torch.from_numpy(certainty))


def _cub_rows_fast(data: bytes, n_attributes: int) -> np.ndarray | None:
    """``(L, 4)`` int64 of the first four fields of every line (numpy's C reader), or None if any is off."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns
            rows = np.loadtxt(io.BytesIO(data), dtype=np.int64, usecols=(0, 1, 2, 3), ndmin=2)
    except ValueError:  # a short or non-numeric line (a longer one is read: only four columns are used)
        return None
    if rows.shape[1:] != (4,) or len(rows) == 0:
        return None
    ok = ((rows[:, 1] >= 1) & (rows[:, 1] <= n_attributes) & ((rows[:, 2] == 0) | (rows[:, 2] == 1))
          & (rows[:, 3] >= 1) & (rows[:, 3] <= 4))
    return rows if bool(ok.all()) else None


def _cub_rows_checked(path: Path, data: bytes, n_attributes: int) -> np.ndarray:
    """The slow reader: every line checked, the first bad one named."""
    out = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        f = line.split()
        if not f:
            continue
        try:
            img, att, pres, cert = (int(v) for v in f[:4])
        except ValueError:
            raise InputError(f"{path}, line {n}: expected '<image_id> <attribute_id> <is_present> <certainty_id> "
                             f"<time>', got {line.strip()!r}.") from None
        if not 1 <= att <= n_attributes or pres not in (0, 1) or not 1 <= cert <= 4:
            raise InputError(f"{path}, line {n}: attribute id in 1..{n_attributes}, is_present 0/1 and certainty "
                             f"1..4 expected, got {line.strip()!r}.")
        out.append((img, att, pres, cert))
    if not out:
        raise InputError(f"{path} holds no annotation line.")
    return np.asarray(out, dtype=np.int64)


class SubsetWithTargets(torch.utils.data.Dataset):
    """A subset that keeps ``classes``, ``targets`` and a fingerprint (unlike ``torch.utils.data.Subset``)."""

    def __init__(self, dataset: Any, indices: Sequence[int], name: str):
        self.dataset, self.indices, self.name = dataset, list(indices), name
        self.classes = list(getattr(dataset, "classes", []))
        targets = getattr(dataset, "targets", None)
        self.targets = [int(targets[i]) for i in self.indices] if targets is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of the subset's images (stores key their shards by these files)."""
        return [self.dataset.samples[i] for i in self.indices]

    @property
    def image_transform(self) -> ImageTransform | None:
        """The view of the underlying dataset."""
        return getattr(self.dataset, "image_transform", None)

    def with_transform(self, transform: ImageTransform) -> SubsetWithTargets:
        """The same subset of the underlying dataset re-cropped with ``transform``."""
        return SubsetWithTargets(self.dataset.with_transform(transform), self.indices, self.name)

    def fingerprint(self) -> dict[str, Any]:
        base = self.dataset.fingerprint() if callable(getattr(self.dataset, "fingerprint", None)) else {}
        h = hashlib.sha256(",".join(map(str, self.indices)).encode()).hexdigest()[:16]
        return {**base, "subset": self.name, "length": len(self), "indices_sha": h}


def holdout_split(dataset: Any, fraction: float, seed: int = 0) -> tuple[SubsetWithTargets, SubsetWithTargets]:
    """Split a training set into (train, validation): ``fraction`` of each class, seeded.

    Every class with at least two images keeps at least one in each part.
    """
    if not 0 < fraction < 1:
        raise InputError(f"`fraction` must be in (0, 1), got {fraction!r}.")
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise InputError("holdout_split needs a dataset with `targets` (the label of every image).")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    rng = random.Random(seed)
    train, val = [], []
    for _, idx in sorted(by_class.items()):
        idx = idx[:]
        rng.shuffle(idx)
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        val += idx[:k]
        train += idx[k:]
    if not val:
        raise InputError(f"A {fraction:.0%} holdout of {len(targets)} images leaves no validation image.")
    return SubsetWithTargets(dataset, sorted(train), "train"), SubsetWithTargets(dataset, sorted(val), "val")


# ----------------------------------------------------------------------------- generated copies
def _fake_image(rng: Any, size: tuple[int, int]) -> Any:
    import numpy as np
    from PIL import Image

    h, w = size
    a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
    a[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(a)


def _splits(kind: str, per_split: dict[str, int] | None) -> dict[str, int]:
    default = {"imagenet": {"train": 8, "val": 4}, "places365": {"train-standard": 8, "val": 4},
               "cub": {"train": 8, "test": 4}}[kind]
    out = dict(default if per_split is None else per_split)
    if set(out) != set(default):
        raise InputError(f"per_split for {kind} must have the keys {sorted(default)}, got {sorted(out)}.")
    return out


def write_fake_layout(
    kind: str,
    root: str | os.PathLike,
    *,
    num_classes: int = 4,
    per_split: dict[str, int] | None = None,
    labelled_classes: int = 4,
    image_size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """Write a tiny generated copy of a dataset in its real layout (for tests and dry runs).

    ``num_classes`` class entries are written (ImageNet: that many WordNet-id folders);
    the images of each split (``per_split``) go round-robin to the first
    ``labelled_classes`` classes. Images are random noise with a coloured block, JPEG.

    Args:
        kind: ``"imagenet"``, ``"places365"`` or ``"cub"``.
        root: where to write (the dataset's ROOT).
        num_classes: classes in the class list.
        per_split: images per split (default: 8 for training, 4 for the other split).
        labelled_classes: classes that receive images.
        image_size: ``(height, width)`` of every image.
        seed: seed of the pixels.

    Returns:
        The ROOT to pass to the reader.
    """
    import numpy as np

    if kind not in ("imagenet", "places365", "cub"):
        raise InputError(f"kind must be 'imagenet', 'places365' or 'cub', got {kind!r}.")
    splits, root, rng = _splits(kind, per_split), Path(root), np.random.default_rng(seed)
    k = max(1, min(labelled_classes, num_classes))
    if kind == "imagenet":
        wnids = [f"n{10000000 + i:08d}" for i in range(num_classes)]
        for split, n in splits.items():
            for c in wnids:
                (root / split / c).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                c = wnids[j % k]
                _fake_image(rng, image_size).save(root / split / c / f"{c}_{split}_{j:05d}.JPEG")
    elif kind == "places365":
        names = [f"/{chr(97 + i % 26)}/scene_{i:03d}" for i in range(num_classes)]
        root.mkdir(parents=True, exist_ok=True)
        (root / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(names)))
        lines = {"train-standard": [], "val": []}
        for split, n in splits.items():
            for j in range(n):
                c = j % k
                rel = f"{names[c]}/{j + 1:08d}.jpg" if split == "train-standard" else f"Places365_val_{j + 1:08d}.jpg"
                path = root / ("data_256" if split == "train-standard" else "val_256") / rel.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                _fake_image(rng, image_size).save(path)
                lines[split].append(f"{rel} {c}\n")
        (root / "places365_train_standard.txt").write_text("".join(lines["train-standard"]))
        (root / "places365_val.txt").write_text("".join(lines["val"]))
    else:
        d = root / "CUB_200_2011"
        names = [f"{i + 1:03d}.Bird_{i:03d}" for i in range(num_classes)]
        rows: list[tuple[str, int, int]] = []
        for split, n in splits.items():
            for j in range(n):
                c = j % k
                rel = f"{names[c]}/{names[c][4:]}_{split}_{j:04d}.jpg"
                (d / "images" / names[c]).mkdir(parents=True, exist_ok=True)
                _fake_image(rng, image_size).save(d / "images" / rel)
                rows.append((rel, c + 1, int(split == "train")))
        (d / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(names)))
        (d / "images.txt").write_text("".join(f"{i + 1} {r[0]}\n" for i, r in enumerate(rows)))
        (d / "image_class_labels.txt").write_text("".join(f"{i + 1} {r[1]}\n" for i, r in enumerate(rows)))
        (d / "train_test_split.txt").write_text("".join(f"{i + 1} {r[2]}\n" for i, r in enumerate(rows)))
    return root


def write_imagenet_seg_mat(path: str | os.PathLike, images: Sequence[Any], masks: Sequence[Any]) -> Path:
    """Write ``(H, W, 3)`` uint8 images and ``(H, W)`` masks as a gtsegs_ijcv.mat-style HDF5 file.

    The layout of MATLAB v7.3 that `ImagenetSegmentation`
    reads: object references under ``value/img`` and, through a ``(1, 1)`` cell, ``value/gt``.
    """
    from salfcbm.datasets.imagenet_seg import _h5py

    h5py = _h5py()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        refs, value = f.create_group("#refs#"), f.create_group("value")
        img_ds = value.create_dataset("img", (len(images), 1), dtype=h5py.ref_dtype)
        gt_ds = value.create_dataset("gt", (len(images), 1), dtype=h5py.ref_dtype)
        for i, (img, mask) in enumerate(zip(images, masks)):
            img_ds[i, 0] = refs.create_dataset(f"img{i}", data=img.transpose(2, 1, 0)).ref
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = refs.create_dataset(f"gt{i}", data=mask.T).ref
            gt_ds[i, 0] = cell.ref
    return path
