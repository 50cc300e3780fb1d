"""Tiny generated copies of the paper datasets' shipped layouts (tests, dry runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from salfcbm.errors import InputError

__all__ = ["write_fake_layout", "write_imagenet_seg_mat"]


def _fake_image(rng: Any, size: tuple[int, int]) -> Any:
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
    from salfcbm.datasets.imagenet_seg import h5py_module

    h5py = h5py_module()
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
