"""Seeded, stratified validation sets carved out of a training set (`holdout_split`)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import torch

from salfcbm.core.images import ImageTransform
from salfcbm.errors import InputError

__all__ = ["SubsetWithTargets", "holdout_split"]


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
