"""`SyntheticScenes`: the demo's procedural dataset, with a ground-truth mask per concept.

Deterministic scenes of 2-3 coloured, textured shapes on a background. Item ``i`` is rendered
from ``(seed, split, i)`` on demand (no stored pixels, well under a millisecond per 64x64
image). Every image comes with a ground-truth mask per concept, and every class is a
*composition* of concepts (for example "an orange triangle *and* a blue square"), so a concept
bottleneck has something real to learn and its concept maps have something to localise. The
world's rules live in `salfcbm.demo.world`, the drawing in `salfcbm.demo.render`.

Examples:
    >>> ds = SyntheticScenes(n=16, seed=0)
    >>> image, label = ds[0]
    >>> image.shape, ds.classes[label] in ds.classes
    (torch.Size([3, 64, 64]), True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from salfcbm.demo import render as drawing
from salfcbm.demo.world import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLOUR_PHRASES,
    COLOURS,
    GENERATOR_VERSION,
    MAX_CLASSES,
    RULES,
    SHAPE_PHRASES,
    SHAPES,
    SPLITS,
    TEXTURE_PHRASES,
    TEXTURES,
    Layout,
    Rule,
    base_concepts,
    layout,
)
from salfcbm.demo.world import compound_concepts as all_compounds
from salfcbm.errors import InputError

__all__ = ["SyntheticScenes", "SceneSample"]


class SceneSample(NamedTuple):
    """One item with its ground truth: ``image (3, H, W)``, ``label``, ``masks (K, H, W)`` bool."""

    image: torch.Tensor
    label: int
    masks: torch.Tensor


class SyntheticScenes(Dataset):
    """Procedural scenes of coloured, textured shapes, with a ground-truth mask per concept.

    The default dataset of salfcbm's tests, examples and benchmarks, where no real dataset
    or pretrained model can be downloaded. Each scene is a background (``sky`` gradient,
    ``grass`` blades or ``sand`` speckle) with 2-3 non-overlapping objects; an object has a
    shape (circle, square, triangle, ring, cross), a colour (orange, green, blue, yellow,
    purple; never red, the colour of the visual prompts) and a texture (plain, striped,
    dotted). The concepts are short phrases naming these attributes (``"a circle"``,
    ``"something blue"``, ``"a striped texture"``, ``"a grassy background"``), 16 in all.

    A class is a rule over concepts (see `class_concepts`), such as "a yellow circle
    in the sky" or "a ring and a cross": a scene of class ``c`` satisfies rule ``c`` and no
    other rule of the full table, and its remaining objects are random distractors. Every
    concept therefore appears in many classes, and no single colour, shape or background
    gives the label away.

    Item ``i`` is generated from ``(seed, split, i)`` alone, so two datasets with the same
    arguments hold the same pixels, and ``split`` ("train", "val", "test") gives disjoint
    random streams from one seed. Labels cycle (``label = i % num_classes``), so every
    class is equally frequent.

    Args:
        n: Number of items.
        image_size: Height and width in pixels (at least 16).
        seed: Base seed.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: Use the first ``num_classes`` rules (2 to 10, default 8).
        pixel_noise: Standard deviation of Gaussian pixel noise added to the whole image.
        compound_concepts: Also name each object's colour-shape and texture-shape compounds
            (``"a blue circle"``, ``"a striped circle"``; 40 more concepts), as real concept
            lists do. The masks of a compound are the pixels of the objects that have both.

    Examples:
        >>> ds = SyntheticScenes(n=100, image_size=64, seed=0, split="train")
        >>> image, label = ds[3]
        >>> image.shape, image.min() >= 0, image.max() <= 1
        (torch.Size([3, 64, 64]), tensor(True), tensor(True))
        >>> ds.masks(3).shape == (len(ds.concepts), 64, 64)
        True
        >>> ds.class_concepts[ds.classes[label]]  # the rule this image satisfies
        ['a triangle', 'something orange', 'a square', 'something blue']
    """

    def __init__(
        self,
        n: int = 1000,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        num_classes: int = 8,
        pixel_noise: float = 0.02,
        compound_concepts: bool = False,
    ) -> None:
        for name, v, lo in (("n", n, 1), ("image_size", image_size, 16), ("num_classes", num_classes, 2)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise InputError(f"{name} must be an int >= {lo}; got {v!r}.")
        if num_classes > MAX_CLASSES:
            raise InputError(f"num_classes must be at most {MAX_CLASSES} (the number of built-in rules); got {num_classes}.")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError(f"seed must be a non-negative int; got {seed!r}.")
        if split not in SPLITS:
            raise InputError(f"split must be one of {sorted(SPLITS)}; got {split!r}.")
        if not isinstance(pixel_noise, (int, float)) or isinstance(pixel_noise, bool) or not 0 <= pixel_noise <= 0.5:
            raise InputError(f"pixel_noise must be a float in [0, 0.5]; got {pixel_noise!r}.")
        self.n = n
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.num_classes = num_classes
        self.pixel_noise = float(pixel_noise)
        self.compound_concepts = bool(compound_concepts)
        #: The class rules of this dataset, one per class (`salfcbm.demo.world.Rule`).
        self.rules: tuple[Rule, ...] = RULES[:num_classes]
        self.concepts: list[str] = base_concepts()
        if self.compound_concepts:  # "a blue circle", "a striped circle": what real concept lists look like
            self.concepts += all_compounds()
        self._concept_index = {c: k for k, c in enumerate(self.concepts)}
        self.classes: list[str] = [r.name for r in self.rules]
        self.class_concepts: dict[str, list[str]] = {r.name: r.concepts() for r in self.rules}
        self._labels: torch.Tensor | None = None

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(n={self.n}, image_size={self.image_size}, seed={self.seed}, "
            f"split={self.split!r}, num_classes={self.num_classes}, pixel_noise={self.pixel_noise}"
            + (", compound_concepts=True)" if self.compound_concepts else ")")
        )

    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able dict that identifies every pixel of the dataset."""
        return {
            "name": "SyntheticScenes",
            "generator_version": GENERATOR_VERSION,
            "n": self.n,
            "image_size": self.image_size,
            "seed": self.seed,
            "split": self.split,
            "num_classes": self.num_classes,
            "pixel_noise": self.pixel_noise,
            **({"compound_concepts": True} if self.compound_concepts else {}),
        }

    @property
    def labels(self) -> torch.Tensor:
        """All labels ``(n,)`` long, without rendering any image."""
        if self._labels is None:
            self._labels = torch.arange(self.n) % self.num_classes
        return self._labels

    @property
    def concept_groups(self) -> dict[str, list[str]]:
        """The concepts grouped by kind: ``shape``, ``colour``, ``texture``, ``background`` (and ``compound``)."""
        groups = {
            "shape": [SHAPE_PHRASES[s] for s in SHAPES],
            "colour": [COLOUR_PHRASES[c] for c in COLOURS],
            "texture": [TEXTURE_PHRASES[t] for t in TEXTURES],
            "background": [BACKGROUND_PHRASES[b] for b in BACKGROUNDS],
        }
        if self.compound_concepts:
            base = {c for g in groups.values() for c in g}
            groups["compound"] = [c for c in self.concepts if c not in base]
        return groups

    # ------------------------------------------------------------------ generation
    def _index(self, i: Any) -> int:
        try:
            j = int(i)
        except (TypeError, ValueError):
            raise InputError(f"Index must be an int; got {i!r}.") from None
        if j != i and not (isinstance(i, torch.Tensor) and i.numel() == 1):
            raise InputError(f"Index must be an int; got {i!r}.")
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError(f"Index {int(i)} is out of range for a dataset of {self.n} items.")
        return j

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray, Layout]:
        """``(image (3, H, W) float32, object id map (H, W) int8 (-1 = background), layout)`` of item ``i``."""
        j = self._index(i)
        lay, rng = layout(self.seed, self.split, j, j % self.num_classes, self.image_size)
        img, ids = drawing.render(lay, rng, self.image_size, self.pixel_noise)
        return img, ids, lay

    def masks_from(self, ids: np.ndarray, lay: Layout) -> np.ndarray:
        """``(K, H, W)`` bool masks of `concepts` from an object id map and its layout (see `render`)."""
        return drawing.concept_masks(ids, lay, self.concepts, compound=self.compound_concepts)

    # ------------------------------------------------------------------ public access
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """``(image (3, H, W) float32 in [0, 1], label int)``."""
        img, _, lay = self.render(i)
        return torch.from_numpy(img), lay.label

    def masks(self, i: int) -> torch.Tensor:
        """Ground-truth masks ``(K, H, W)`` bool, one per entry of `concepts`.

        A shape, colour or texture concept covers the visible pixels of every object with
        that attribute (a texture mask covers the whole object, light and dark parts); a
        background concept covers every pixel no object covers (ring holes included).
        """
        _, ids, lay = self.render(i)
        return torch.from_numpy(self.masks_from(ids, lay))

    def class_object_masks(self, masks: np.ndarray) -> np.ndarray:
        """``(L, H, W)``: per class, the objects meeting one of its rule's object requirements.

        The region "an image of a {class}" refers to: for each requirement the intersection of
        its concept masks, united over the requirements (backgrounds left out, as the
        ImageNet-segmentation masks hold foreground objects only).
        """
        out = np.zeros((len(self.rules), *masks.shape[-2:]), dtype=bool)
        for c, rule in enumerate(self.rules):
            for req in rule.objects:
                phrases = req.phrases()
                if phrases:
                    out[c] |= np.logical_and.reduce([masks[self._concept_index[p]] for p in phrases])
        return out

    def sample(self, i: int) -> SceneSample:
        """Image, label and masks of item ``i``, rendered once.

        Examples:
            >>> image, label, masks = SyntheticScenes(n=4).sample(0)
            >>> masks.dtype, masks.shape[0]
            (torch.bool, 16)
        """
        img, ids, lay = self.render(i)
        return SceneSample(torch.from_numpy(img), lay.label, torch.from_numpy(self.masks_from(ids, lay)))

    def masks_batch(self, indices: Iterable[int]) -> torch.Tensor:
        """Masks of several items stacked: ``(B, K, H, W)`` bool."""
        masks = [self.masks(i) for i in indices]
        if not masks:
            return torch.zeros(0, len(self.concepts), self.image_size, self.image_size, dtype=torch.bool)
        return torch.stack(masks)

    def describe(self, i: int) -> dict[str, Any]:
        """The scene's layout as plain data: label, background and objects (drawing order).

        Examples:
            >>> d = SyntheticScenes(n=4).describe(0)
            >>> sorted(d), sorted(d["objects"][0])
            (['background', 'class', 'label', 'objects'], ['centre', 'colour', 'radius', 'shape', 'texture'])
        """
        j = self._index(i)
        lay, _ = layout(self.seed, self.split, j, j % self.num_classes, self.image_size)
        return {
            "label": lay.label,
            "class": self.classes[lay.label],
            "background": lay.background,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "texture": o.texture, "centre": (o.cy, o.cx), "radius": o.r}
                for o in lay.objects
            ],
        }

    def tensors(self, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(n, 3, H, W)`` and labels ``(n,)`` in memory (``n * 48 KiB`` at 64 px)."""
        images = torch.empty(self.n, 3, self.image_size, self.image_size)
        it: Iterable[int] = range(self.n)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="rendering scenes", leave=False)
        for i in it:
            images[i] = torch.from_numpy(self.render(i)[0])
        return images, self.labels.clone()
