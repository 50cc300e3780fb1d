"""A procedural dataset with ground-truth concept masks, and a scorer that reads them.

salfcbm cannot download CLIP, ImageNet or a pretrained backbone in its tests and examples,
so it ships three stand-ins that exercise the whole pipeline offline:

* `SyntheticScenes` -- deterministic scenes of 2-3 coloured, textured shapes on a
  background. Item ``i`` is rendered from ``(seed, split, i)`` on demand (no stored
  pixels, well under a millisecond per 64x64 image). Every image comes with a
  ground-truth mask per concept, and every class is a *composition* of concepts (for
  example "an orange triangle *and* a blue square"), so a concept bottleneck has
  something real to learn and its concept maps have something to localise.
* `GroundTruthScorer` -- a `ConceptScorer` that plays
  CLIP's role in paper section 3.2: for every red-circle prompt location it returns the
  fraction of the circle's disc covered by each concept's ground-truth mask. It is a
  stand-in for CLIP, *not* a model of it: it is exact where CLIP is noisy, and it only
  knows the dataset's own concepts.
* `SmallConvNet` and `pretrain_backbone` -- a small CNN trained on the
  scenes' labels, standing in for a pretrained backbone (paper 3.3).

Examples:
    >>> from salfcbm.demo.scenes import SyntheticScenes, GroundTruthScorer
    >>> from salfcbm.supervision.prompts import PromptGrid
    >>> ds = SyntheticScenes(n=16, seed=0)
    >>> image, label = ds[0]
    >>> image.shape, ds.classes[label] in ds.classes
    (torch.Size([3, 64, 64]), True)
    >>> emb = GroundTruthScorer(ds).embed(image[None], torch.tensor([0]), PromptGrid(radius=8))
    >>> emb.shape == (1, 7, 7, len(ds.concepts))
    True
"""

from __future__ import annotations

import copy

import functools
import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from salfcbm.errors import AlignmentError, ConceptNotFoundError, InputError, SalfCBMError
from salfcbm.supervision.prompts import PromptGrid

__all__ = [
    "SyntheticScenes",
    "SceneSample",
    "GroundTruthScorer",
    "SmallConvNet",
    "pretrain_backbone",
    "GENERATOR_VERSION",
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "BACKGROUNDS",
]

#: Bumped whenever the pixels or masks for a given ``(seed, split, i)`` change.
GENERATOR_VERSION = "1"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross")
#: RGB in [0, 1]. No pure red: the visual prompts are red circles.
COLOURS: dict[str, tuple[float, float, float]] = {
    "orange": (1.00, 0.55, 0.05),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.60, 0.20, 0.80),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "sand")

_SHAPE_PHRASE = {s: f"a {s}" for s in SHAPES}
_COLOUR_PHRASE = {c: f"something {c}" for c in COLOURS}
_TEXTURE_PHRASE = {"plain": "a plain texture", "striped": "a striped texture", "dotted": "a dotted texture"}


def _compound_phrases(shape: str, colour: str, texture: str) -> tuple[str, str]:
    """The two compound concepts of an object: ``"a blue circle"`` and ``"a striped circle"``."""
    return f"{_article(colour)} {colour} {shape}", f"a {texture} {shape}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
_BACKGROUND_PHRASE = {"sky": "a sky background", "grass": "a grassy background", "sand": "a sandy background"}
_COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_COLOUR_RGB = np.asarray([COLOURS[c] for c in _COLOUR_NAMES], dtype=np.float32)
_SPLITS = {"train": 0, "val": 1, "test": 2}
_STRIPE_DIV = 12  # stripe period = image_size / 12 (5 px at 64 px)
_DOT_DIV = 10  # dot spacing = image_size / 10 (6 px at 64 px)
_DARK = 0.45  # brightness of the dark half of a texture; hue is kept, so colour masks stay honest


@dataclass(frozen=True)
class _Req:
    """One object a class rule requires; ``None`` means any value."""

    shape: str | None = None
    colour: str | None = None
    texture: str | None = None

    def matches(self, obj: _Obj) -> bool:
        return (
            (self.shape is None or self.shape == obj.shape)
            and (self.colour is None or self.colour == obj.colour)
            and (self.texture is None or self.texture == obj.texture)
        )

    def phrases(self) -> list[str]:
        out = []
        if self.shape is not None:
            out.append(_SHAPE_PHRASE[self.shape])
        if self.colour is not None:
            out.append(_COLOUR_PHRASE[self.colour])
        if self.texture is not None:
            out.append(_TEXTURE_PHRASE[self.texture])
        return out


@dataclass(frozen=True)
class _Rule:
    """A class: distinct objects matching ``objects`` (one each) and, optionally, a background."""

    name: str
    objects: tuple[_Req, ...]
    background: str | None = None

    def holds(self, objs: Sequence[_Obj], background: str) -> bool:
        if self.background is not None and self.background != background:
            return False
        k = len(self.objects)
        if k > len(objs):
            return False
        return any(
            all(req.matches(o) for req, o in zip(self.objects, perm))
            for perm in itertools.permutations(objs, k)
        )

    def concepts(self) -> list[str]:
        out: list[str] = []
        for req in self.objects:
            for p in req.phrases():
                if p not in out:
                    out.append(p)
        if self.background is not None:
            out.append(_BACKGROUND_PHRASE[self.background])
        return out


_RULES: tuple[_Rule, ...] = (
    _Rule("yellow circle in the sky", (_Req("circle", "yellow"),), "sky"),
    _Rule("purple cross on grass", (_Req("cross", "purple"),), "grass"),
    _Rule("striped circle on sand", (_Req("circle", texture="striped"),), "sand"),
    _Rule("orange triangle and blue square", (_Req("triangle", "orange"), _Req("square", "blue"))),
    _Rule("ring and cross", (_Req("ring"), _Req("cross"))),
    _Rule("dotted square and green triangle", (_Req("square", texture="dotted"), _Req("triangle", "green"))),
    _Rule("two blue objects", (_Req(colour="blue"), _Req(colour="blue"))),
    _Rule("striped square and dotted circle", (_Req("square", texture="striped"), _Req("circle", texture="dotted"))),
    _Rule("green ring on sand", (_Req("ring", "green"),), "sand"),
    _Rule("three plain objects", (_Req(texture="plain"),) * 3),
)
MAX_CLASSES = len(_RULES)


@dataclass(frozen=True)
class _Obj:
    shape: str
    colour: str
    texture: str
    cy: float
    cx: float
    r: float
    angle: int = 0  # stripe orientation in degrees
    phase: float = 0.0  # texture offset in pixels


@dataclass(frozen=True)
class _Layout:
    label: int
    background: str
    objects: tuple[_Obj, ...]


class SceneSample(NamedTuple):
    """One item with its ground truth: ``image (3, H, W)``, ``label``, ``masks (K, H, W)`` bool."""

    image: torch.Tensor
    label: int
    masks: torch.Tensor


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _shape_mask(obj: _Obj, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    r = obj.r
    if obj.shape == "circle":
        return dy * dy + dx * dx <= r * r
    if obj.shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= 0.82 * r
    if obj.shape == "triangle":
        return (dy <= 0.7 * r) & (np.abs(dx) <= (dy + r) * 0.62)
    if obj.shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
    # cross
    ady, adx = np.abs(dy), np.abs(dx)
    arm = 0.3 * r
    return ((adx <= arm) & (ady <= r)) | ((ady <= arm) & (adx <= r))


def _texture(obj: _Obj, dy: np.ndarray, dx: np.ndarray, size: int) -> np.ndarray | float:
    """Brightness factor per pixel: 1 or ``_DARK``."""
    if obj.texture == "plain":
        return 1.0
    if obj.texture == "striped":
        period = max(3.0, round(size / _STRIPE_DIV))
        t = math.radians(obj.angle)
        u = dx * math.cos(t) + dy * math.sin(t) + obj.phase
        dark = np.floor(u / (period / 2.0)) % 2 == 1
    else:  # dotted
        s = max(4.0, round(size / _DOT_DIV))
        my = np.mod(dy + obj.phase, s) - s / 2.0
        mx = np.mod(dx + obj.phase, s) - s / 2.0
        dark = my * my + mx * mx <= (0.32 * s) ** 2
    return np.where(dark, np.float32(_DARK), np.float32(1.0))


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
        if split not in _SPLITS:
            raise InputError(f"split must be one of {sorted(_SPLITS)}; got {split!r}.")
        if not isinstance(pixel_noise, (int, float)) or isinstance(pixel_noise, bool) or not 0 <= pixel_noise <= 0.5:
            raise InputError(f"pixel_noise must be a float in [0, 0.5]; got {pixel_noise!r}.")
        self.n = n
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.num_classes = num_classes
        self.pixel_noise = float(pixel_noise)
        self.compound_concepts = bool(compound_concepts)
        self._rules = _RULES[:num_classes]
        self.concepts: list[str] = (
            [_SHAPE_PHRASE[s] for s in SHAPES]
            + [_COLOUR_PHRASE[c] for c in COLOURS]
            + [_TEXTURE_PHRASE[t] for t in TEXTURES]
            + [_BACKGROUND_PHRASE[b] for b in BACKGROUNDS]
        )
        if self.compound_concepts:  # "a blue circle", "a striped circle": what real concept lists look like
            self.concepts += [f"{_article(c)} {c} {s}" for c in COLOURS for s in SHAPES]
            self.concepts += [f"a {t} {s}" for t in TEXTURES for s in SHAPES]
        self._concept_index = {c: k for k, c in enumerate(self.concepts)}
        self.classes: list[str] = [r.name for r in self._rules]
        self.class_concepts: dict[str, list[str]] = {r.name: r.concepts() for r in self._rules}
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
            "shape": [_SHAPE_PHRASE[s] for s in SHAPES],
            "colour": [_COLOUR_PHRASE[c] for c in COLOURS],
            "texture": [_TEXTURE_PHRASE[t] for t in TEXTURES],
            "background": [_BACKGROUND_PHRASE[b] for b in BACKGROUNDS],
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

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _SPLITS[self.split], i, 0x5A1F])))

    def _layout(self, i: int) -> tuple[_Layout, np.random.Generator]:
        rng = self._rng(i)
        label = i % self.num_classes
        rule = self._rules[label]
        size = self.image_size
        for _ in range(1000):
            n_obj = int(rng.integers(max(2, len(rule.objects)), 4))
            attrs: list[tuple[str, str, str]] = []
            for k in range(n_obj):
                req = rule.objects[k] if k < len(rule.objects) else _Req()
                attrs.append(
                    (
                        req.shape or SHAPES[int(rng.integers(len(SHAPES)))],
                        req.colour or _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))],
                        req.texture or TEXTURES[int(rng.integers(len(TEXTURES)))],
                    )
                )
            background = rule.background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
            objs = [_Obj(s, c, t, 0.0, 0.0, 0.0) for s, c, t in attrs]
            if sum(r.holds(objs, background) for r in _RULES) == 1:
                break
        else:  # pragma: no cover - the rules are built so this cannot happen
            raise SalfCBMError(f"Could not generate a scene of class {rule.name!r}; this is a bug in salfcbm.")
        order = rng.permutation(n_obj)
        placed: list[_Obj] = []
        for k in order:
            s, c, t = attrs[int(k)]
            r = float(rng.uniform(0.12, 0.18) * size)
            lo, hi = r + 1.0, size - 1.0 - r
            for _ in range(60):
                cy, cx = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
                if all(math.hypot(cy - o.cy, cx - o.cx) >= r + o.r + 2.0 for o in placed):
                    break
            angle = int(rng.choice((0, 45, 90, 135)))
            phase = float(rng.uniform(0, 8))
            placed.append(_Obj(s, c, t, cy, cx, r, angle, phase))
        return _Layout(label, background, tuple(placed)), rng

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray, _Layout]:
        """``(image (3, H, W) float32, object id map (H, W) int8 (-1 = background), layout)``."""
        layout, rng = self._layout(i)
        size = self.image_size
        yy, xx = _coords(size)
        img = np.empty((3, size, size), dtype=np.float32)
        bg = layout.background
        if bg == "sky":
            t = (yy[:, :1] / (size - 1))[None]  # (1, H, 1)
            top = np.asarray([0.45, 0.70, 0.95], np.float32)[:, None, None]
            bottom = np.asarray([0.85, 0.93, 1.00], np.float32)[:, None, None]
            img[:] = top + (bottom - top) * t
        elif bg == "grass":
            seg = 3
            blades = rng.random((size // seg + 2, size), dtype=np.float32)
            off = int(rng.integers(seg))
            noise = np.repeat(blades, seg, axis=0)[off : off + size]
            base = np.asarray([0.30, 0.52, 0.12], np.float32)[:, None, None]
            img[:] = base * (0.65 + 0.7 * noise)[None]
        else:  # sand
            speckle = rng.random((size, size), dtype=np.float32)
            base = np.asarray([0.87, 0.78, 0.58], np.float32)[:, None, None]
            img[:] = base * (0.88 + 0.2 * speckle)[None]
        ids = np.full((size, size), -1, dtype=np.int8)
        for k, obj in enumerate(layout.objects):
            dy, dx = yy - obj.cy, xx - obj.cx
            m = _shape_mask(obj, dy, dx)
            f = _texture(obj, dy, dx, size)
            rgb = _COLOUR_RGB[_COLOUR_NAMES.index(obj.colour)][:, None, None]
            img = np.where(m[None], rgb * f, img)
            ids[m] = k
        if self.pixel_noise > 0:
            img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.pixel_noise)
        np.clip(img, 0.0, 1.0, out=img)
        return img, ids, layout

    def _masks_from(self, ids: np.ndarray, layout: _Layout) -> np.ndarray:
        k = len(self.concepts)
        # concept membership per id: row 0 = background, row j + 1 = object j
        table = np.zeros((len(layout.objects) + 1, k), dtype=bool)
        table[0, self.concepts.index(_BACKGROUND_PHRASE[layout.background])] = True
        for j, obj in enumerate(layout.objects):
            phrases = [_SHAPE_PHRASE[obj.shape], _COLOUR_PHRASE[obj.colour], _TEXTURE_PHRASE[obj.texture]]
            if self.compound_concepts:
                phrases += _compound_phrases(obj.shape, obj.colour, obj.texture)
            for phrase in phrases:
                table[j + 1, self._concept_index[phrase]] = True
        return np.ascontiguousarray(table[ids.astype(np.int64) + 1].transpose(2, 0, 1))

    # ------------------------------------------------------------------ public access
    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """``(image (3, H, W) float32 in [0, 1], label int)``."""
        j = self._index(i)
        img, _, layout = self._render(j)
        return torch.from_numpy(img), layout.label

    def masks(self, i: int) -> torch.Tensor:
        """Ground-truth masks ``(K, H, W)`` bool, one per entry of `concepts`.

        A shape, colour or texture concept covers the visible pixels of every object with
        that attribute (a texture mask covers the whole object, light and dark parts); a
        background concept covers every pixel no object covers (ring holes included).
        """
        j = self._index(i)
        _, ids, layout = self._render(j)
        return torch.from_numpy(self._masks_from(ids, layout))

    def _class_object_masks(self, masks: np.ndarray) -> np.ndarray:
        """``(L, H, W)``: per class, the objects meeting one of its rule's object requirements.

        The region "an image of a {class}" refers to: for each requirement the intersection of
        its concept masks, united over the requirements (backgrounds left out, as the
        ImageNet-segmentation masks hold foreground objects only).
        """
        out = np.zeros((len(self._rules), *masks.shape[-2:]), dtype=bool)
        for c, rule in enumerate(self._rules):
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
        j = self._index(i)
        img, ids, layout = self._render(j)
        return SceneSample(torch.from_numpy(img), layout.label, torch.from_numpy(self._masks_from(ids, layout)))

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
        layout, _ = self._layout(self._index(i))
        return {
            "label": layout.label,
            "class": self.classes[layout.label],
            "background": layout.background,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "texture": o.texture, "centre": (o.cy, o.cx), "radius": o.r}
                for o in layout.objects
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
            images[i] = torch.from_numpy(self._render(i)[0])
        return images, self.labels.clone()


# ====================================================================== scorer
def _disc_matrix(
    centres: torch.Tensor, radius: float, size: int
) -> torch.Tensor:
    """``(P, H * W)`` float: row p is the in-image part of disc p, normalised to sum 1."""
    c = centres.reshape(-1, 2).double()
    ys = torch.arange(size, dtype=torch.float64)
    dy2 = (ys[None, :] - c[:, :1]) ** 2  # (P, H)
    dx2 = (ys[None, :] - c[:, 1:]) ** 2  # (P, W)
    disc = (dy2[:, :, None] + dx2[:, None, :]) <= radius * radius  # (P, H, W)
    disc = disc.reshape(disc.shape[0], -1).float()
    area = disc.sum(1, keepdim=True).clamp_min(1.0)
    return disc / area


class GroundTruthScorer:
    """A stand-in for CLIP that reads `SyntheticScenes`' ground-truth masks.

    Implements the `ConceptScorer` protocol (paper 3.2). Where
    CLIP embeds each red-circle-prompted copy of an image and compares it to text
    embeddings, this scorer returns, for every prompt location, the fraction of the
    prompt circle's disc covered by each concept's ground-truth mask. The "embedding
    space" has one dimension per dataset concept (``D = len(dataset.concepts)``),
    `text_embeddings` are one-hot rows and `similarity` selects columns, so
    ``P[n, m, h, w]`` is exactly "how much of the circle at ``(h, w)`` shows concept m".

    **It is not CLIP.** It reads the masks of the dataset items named by ``indices``
    instead of looking at the images, it only knows the dataset's own concept phrases,
    and it is exact where CLIP is noisy and biased. Use it to test and benchmark the
    pipeline offline and to measure how well concept maps localise against a known
    truth; use a CLIP scorer for real data.

    The masks are in the dataset's pixels, so the images it is given must be the
    dataset's own (not resized or cropped): it checks them and raises
    `AlignmentError` otherwise (for ``fit``, wrap the backbone with
    ``input_size`` = the scene size and ``input_crop_pct=1.0``). The prompt radius is in
    `PromptGrid`'s one unit: the default ``PromptGrid()`` (7x7,
    r = 32 at 224 px) draws 9 px discs on a 64 px scene, the paper's proportion.

    Args:
        dataset: The dataset whose items the ``indices`` of `embed` refer to.
        resolution: Where the prompt centres are placed. ``None`` (the default): the grid
            of the dataset's image. An int (say ``224``, CLIP ViT-B/16's input) places
            them as a scorer with that input size would after resizing the image. The
            radius does not depend on it (see above).
        noise: Standard deviation of Gaussian noise added to the scores, seeded per item
            (the same item always gets the same noise). Default 0: clean.
        context: Weight of a global term, mimicking CLIP's use of context outside the
            circle: scores become ``(1 - context) * local + context * present`` where
            ``present`` is 1 if the concept appears anywhere in the image. Default 0.
        seed: Seed of the noise.
        class_template: Also score one class concept per class, ``template`` with ``{class}``
            replaced by the class name (the paper's Table 2 model is trained on "An image of a
            {class}"); its mask is the objects that meet the class rule's requirements.

    Examples:
        >>> ds = SyntheticScenes(n=8, image_size=64)
        >>> scorer = GroundTruthScorer(ds)
        >>> images = torch.stack([ds[i][0] for i in range(2)])
        >>> emb = scorer.embed(images, torch.tensor([0, 1]), PromptGrid(grid=(4, 4), radius=6))
        >>> emb.shape
        torch.Size([2, 4, 4, 16])
        >>> scorer.similarity(emb, ["a circle", "something blue"]).shape
        torch.Size([2, 4, 4, 2])
    """

    def __init__(
        self,
        dataset: SyntheticScenes,
        *,
        resolution: int | None = None,
        noise: float = 0.0,
        context: float = 0.0,
        seed: int = 0,
        class_template: str | None = None,
    ) -> None:
        if class_template is not None and (not isinstance(class_template, str) or "{class}" not in class_template):
            raise InputError(f"class_template must be a string containing '{{class}}'; got {class_template!r}.")
        if not isinstance(dataset, SyntheticScenes):
            raise InputError(
                f"GroundTruthScorer needs a SyntheticScenes dataset (it reads its masks); got {type(dataset).__name__}."
            )
        if resolution is not None and (not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1):
            raise InputError(f"resolution must be None or a positive int (pixels); got {resolution!r}.")
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or noise < 0:
            raise InputError(f"noise must be a float >= 0; got {noise!r}.")
        if not isinstance(context, (int, float)) or isinstance(context, bool) or not 0 <= context <= 1:
            raise InputError(f"context must be a float in [0, 1]; got {context!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"seed must be an int; got {seed!r}.")
        self.dataset = dataset
        self.resolution = resolution
        self.noise = float(noise)
        self.context = float(context)
        self.seed = seed
        self.class_template = class_template
        self.concepts: list[str] = list(dataset.concepts)
        if class_template is not None:  # Table 2's class concepts, "an image of a {class}"
            self.concepts += [class_template.replace("{class}", c) for c in dataset.classes]
        self._index = {c: k for k, c in enumerate(self.concepts)}

    @property
    def dim(self) -> int:
        """Embedding size ``D`` (the number of dataset concepts)."""
        return len(self.concepts)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of every score this scorer can produce (for store manifests)."""
        return {
            "scorer": "GroundTruthScorer",
            "version": GENERATOR_VERSION,
            "dataset": self.dataset.fingerprint(),
            "resolution": self.resolution,
            "radius_unit": "reference_size",  # PromptGrid's unit (before: dataset pixels)
            "noise": self.noise,
            "context": self.context,
            "seed": self.seed,
            "dim": self.dim,
            "class_template": self.class_template,
        }

    def embed_images(self, images: torch.Tensor, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Unprompted "embeddings" ``(B, D)``: 1 where a concept appears anywhere in the image, else 0.

        The stand-in for CLIP on the whole image, used by the "never fires" concept filter.
        """
        idx = torch.as_tensor(indices).reshape(-1)
        masks = torch.stack([torch.from_numpy(self._masks_np(int(i))) for i in idx])  # (B, K, H, W)
        return masks.flatten(2).any(-1).to(images.device, torch.float32)

    def for_dataset(self, dataset: SyntheticScenes) -> GroundTruthScorer:
        """The same scorer bound to ``dataset`` (its ``embed`` indices then refer to ``dataset``).

        `compute_similarity_store` calls it, so ``fit(scorer=GroundTruthScorer(train))``
        scores the validation images with the validation masks.
        """
        if dataset is self.dataset:
            return self
        if not isinstance(dataset, SyntheticScenes):
            raise InputError(
                f"GroundTruthScorer reads SyntheticScenes masks by index; it cannot score a {type(dataset).__name__}."
            )
        if list(dataset.concepts) != list(self.dataset.concepts) or dataset.classes != self.dataset.classes:
            raise InputError("GroundTruthScorer.for_dataset needs a dataset with the same concepts.")
        other = copy.copy(self)
        other.dataset = dataset
        return other

    def geometry(self, prompts: PromptGrid) -> tuple[torch.Tensor, float]:
        """Prompt centres ``(Hg, Wg, 2)`` (float, dataset pixels) and radius used by `embed`."""
        if not isinstance(prompts, PromptGrid):
            raise InputError(f"prompts must be a salfcbm.supervision.prompts.PromptGrid; got {type(prompts).__name__}.")
        size = self.dataset.image_size
        radius = float(prompts.radius_px(size, size))
        if self.resolution is None:
            return prompts.centres(size, size).double(), radius
        scale = size / self.resolution
        return prompts.centres(self.resolution, self.resolution).double() * scale, radius

    def embed(self, images: torch.Tensor, indices: torch.Tensor | Sequence[int], prompts: PromptGrid) -> torch.Tensor:
        """Disc coverage of every concept at every prompt location: ``(B, Hg, Wg, D)``.

        Args:
            images: ``(B, 3, H, W)`` the dataset's images at ``indices`` (checked, not read).
            indices: ``(B,)`` dataset indices of the images.
            prompts: The prompt grid.

        Returns:
            Float tensor in ``[0, 1]`` (before optional noise) on ``images``' device.

        Raises:
            AlignmentError: the images are not the dataset's own pixels (resized, cropped or
                other images), so the masks would not line up with them.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"images must be a (B, 3, H, W) tensor; got {shape}.")
        idx = torch.as_tensor(indices).reshape(-1)
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise InputError(f"indices must be integers; got dtype {idx.dtype}.")
        if idx.numel() != images.shape[0]:
            raise InputError(
                f"indices must hold one dataset index per image; got {idx.numel()} indices for {images.shape[0]} images."
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self.dataset)):
            raise InputError(
                f"indices must lie in [0, {len(self.dataset)}) (the dataset's length); "
                f"got values from {int(idx.min())} to {int(idx.max())}."
            )
        centres, radius = self.geometry(prompts)
        hg, wg = prompts.grid
        size = self.dataset.image_size
        out_dtype = images.dtype if images.is_floating_point() else torch.float32
        if idx.numel() == 0:
            return torch.zeros(0, hg, wg, self.dim, device=images.device, dtype=out_dtype)
        discs = _cached_discs(tuple(centres.reshape(-1).tolist()), radius, size)  # (P, HW)
        masks = torch.stack([torch.from_numpy(self._masks_np(int(i), images[b])) for b, i in enumerate(idx)])
        m = masks.reshape(masks.shape[0], masks.shape[1], -1).float()
        local = m @ discs.T  # (B, K, P)
        if self.context > 0:
            present = (m.amax(dim=2, keepdim=True) > 0).float()
            local = (1 - self.context) * local + self.context * present
        if self.noise > 0:
            noise = torch.stack(
                [
                    torch.randn(local.shape[1:], generator=torch.Generator().manual_seed(self._noise_seed(int(i))))
                    for i in idx
                ]
            )
            local = local + self.noise * noise
        out = local.permute(0, 2, 1).reshape(-1, hg, wg, self.dim)
        return out.to(device=images.device, dtype=out_dtype)

    def _masks_np(self, i: int, image: torch.Tensor | None = None) -> np.ndarray:
        img, ids, layout = self.dataset._render(i)
        if image is not None:
            self._check_aligned(i, image, img)
        masks = self.dataset._masks_from(ids, layout)
        if self.class_template is None:
            return masks
        return np.concatenate([masks, self.dataset._class_object_masks(masks)])

    def _check_aligned(self, i: int, image: torch.Tensor, own: np.ndarray) -> None:
        if tuple(image.shape) != own.shape or float((image.detach().float().cpu() - torch.from_numpy(own)).abs().max()) > 0.05:
            raise AlignmentError(
                f"GroundTruthScorer got an image {tuple(image.shape)} for dataset item {i} that is not the dataset's "
                f"own {own.shape} image (resized, cropped or another item), so its masks cannot be aligned with it. "
                "Pass the dataset's images; for fit(), wrap the backbone with input_size=(S, S) for S = "
                f"{self.dataset.image_size} and input_crop_pct=1.0 so the model's view is the image itself."
            )

    def _noise_seed(self, i: int) -> int:
        ss = np.random.SeedSequence([self.seed, self.dataset.seed, _SPLITS[self.dataset.split], i, 0x7E5])
        return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

    def _column(self, concept: str | int) -> int:
        if isinstance(concept, (int, np.integer)) and not isinstance(concept, bool):
            if not -self.dim <= int(concept) < self.dim:
                raise InputError(f"Concept index {int(concept)} is out of range for {self.dim} concepts.")
            return int(concept) % self.dim
        if not isinstance(concept, str):
            raise InputError(f"Concepts must be strings (or int indices); got {type(concept).__name__}.")
        if concept not in self._index:
            raise ConceptNotFoundError(concept, self.concepts)
        return self._index[concept]

    def similarity(self, embeddings: torch.Tensor, concepts: Sequence[str]) -> torch.Tensor:
        """Select the named concepts' columns: ``(..., D)`` -> ``(..., M)``.

        Raises:
            ConceptNotFoundError: for a phrase that is not one of ``dataset.concepts``
                (this scorer cannot score free text; use a CLIP scorer for that).
        """
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim < 1 or embeddings.shape[-1] != self.dim:
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise InputError(f"embeddings must end with D = {self.dim} (one column per dataset concept); got {shape}.")
        if isinstance(concepts, str):
            raise InputError("concepts must be a sequence of phrases, not a single string; wrap it in a list.")
        cols = torch.tensor([self._column(c) for c in concepts], dtype=torch.long, device=embeddings.device)
        return embeddings.index_select(-1, cols)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """One-hot rows ``(M, D)``: the embedding of a concept phrase is its column's unit vector."""
        if isinstance(texts, str):
            raise InputError("texts must be a sequence of phrases, not a single string; wrap it in a list.")
        cols = [self._column(t) for t in texts]
        out = torch.zeros(len(cols), self.dim)
        if cols:
            out[torch.arange(len(cols)), torch.tensor(cols)] = 1.0
        return out


@functools.lru_cache(maxsize=16)
def _cached_discs(centres: tuple[float, ...], radius: float, size: int) -> torch.Tensor:
    return _disc_matrix(torch.tensor(centres, dtype=torch.float64).view(-1, 2), radius, size)


# ====================================================================== backbone
class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallConvNet(nn.Module):
    """A small CNN for `SyntheticScenes`, standing in for a pretrained backbone (paper 3.3).

    Takes images in ``[0, 1]`` directly (normalisation is the first module). A stride-2
    stem, then four stages named ``stages.0`` to ``stages.3`` (3x3 conv, BatchNorm, ReLU);
    ``stages.1`` and ``stages.2`` halve the resolution, so a 64 px input gives a 32x32 map
    after the stem and an ``8 x 8`` map at ``stages.3`` (the last spatial stage and
    salfcbm's default layer), with ``4 * width`` channels. Then global average pooling
    and a linear head ``fc``. About 0.11 M parameters and 24 MFLOPs per 64 px image at
    ``width=16``.

    Args:
        num_classes: Output classes.
        width: Channels of the stem; stages have ``width, 2 * width, 4 * width, 4 * width``.

    Examples:
        >>> net = SmallConvNet(num_classes=8, width=8)
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 8])
        >>> stem = net.stem(torch.rand(1, 3, 64, 64))
        >>> net.stages(stem).shape
        torch.Size([1, 32, 8, 8])
    """

    def __init__(self, num_classes: int = 8, width: int = 16) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name} must be a positive int; got {v!r}.")
        self.num_classes = num_classes
        self.width = width
        # the contract salfcbm (and timm) read: inputs are [0, 1] images, normalised inside the model
        self.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
        w = width
        self.stem = nn.Sequential(_Normalize(), *_conv_bn(3, w, 2))
        self.stages = nn.Sequential(
            nn.Sequential(*_conv_bn(w, w)),
            nn.Sequential(*_conv_bn(w, 2 * w, 2), *_conv_bn(2 * w, 2 * w)),
            nn.Sequential(*_conv_bn(2 * w, 4 * w, 2), *_conv_bn(4 * w, 4 * w)),
            nn.Sequential(*_conv_bn(4 * w, 4 * w)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map ``(B, 4 * width, H / 8, W / 8)``."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = images[s : s + batch_size].to(device)
            correct += int((model(x).argmax(1).cpu() == labels[s : s + batch_size]).sum())
    return correct / max(1, len(images))


def _materialise(dataset: Dataset, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, SyntheticScenes):
        return dataset.tensors(progress=progress)
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"The training dataset must have a length; got {type(dataset).__name__}.") from None
    xs, ys = [], []
    for i in range(n):
        x, y = dataset[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _one_cycle(opt: torch.optim.Optimizer, lr: float, total: int):
    """OneCycleLR with a warm-up of at least two steps; a constant rate for runs under 8 steps
    (OneCycleLR divides by ``pct_start * total - 1``, zero at 4 steps)."""
    if total < 8:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.25)


def pretrain_backbone(
    train_dataset: Dataset,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    width: int = 16,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    num_classes: int | None = None,
    val_dataset: Dataset | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> SmallConvNet:
    """Train a `SmallConvNet` on a labelled dataset; a stand-in for a pretrained backbone.

    Cross-entropy, AdamW with a one-cycle schedule, random horizontal flips (which keep
    every `SyntheticScenes` label). The dataset is rendered into memory once. The
    run is deterministic for a given ``seed`` on a given device and thread count, and the
    global RNG state is left as it was. On two CPU cores, 3000 scenes at 64 px and the
    defaults take about a minute (see ``docs/synthetic.md`` for measurements).

    Args:
        train_dataset: Items ``(image (3, H, W) in [0, 1], label)``.
        epochs: Passes over the data.
        batch_size: Mini-batch size.
        width: `SmallConvNet` width.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        num_classes: Output classes; default ``len(train_dataset.classes)``.
        val_dataset: If given, its accuracy is shown in the progress bar after each epoch
            and stored, with the training history, in ``model.history``.
        seed: Seed of the initialisation, the shuffling and the flips.
        device: Where to train; the model is returned on this device.
        progress: Show a tqdm progress bar.

    Returns:
        The trained model in eval mode, with ``model.history`` (a list of dicts per epoch).

    Examples:
        >>> train = SyntheticScenes(n=64, image_size=32, seed=0)
        >>> net = pretrain_backbone(train, epochs=1, batch_size=32, width=4, progress=False)
        >>> net.training, net(torch.rand(1, 3, 32, 32)).shape
        (False, torch.Size([1, 8]))
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("width", width)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{name} must be a positive int; got {v!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"lr must be a finite positive float; got {lr!r}.")
    if num_classes is None:
        classes = getattr(train_dataset, "classes", None)
        if classes is None:
            raise InputError(
                f"Cannot infer the number of classes from {type(train_dataset).__name__} (it has no `classes`); "
                "pass num_classes=."
            )
        num_classes = len(classes)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise InputError(f"num_classes must be an int >= 2; got {num_classes!r}.")
    dev = torch.device(device)

    images, labels = _materialise(train_dataset, progress)
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"Training images must be (3, H, W); got items of shape {tuple(images.shape[1:])}.")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise InputError(f"Labels must lie in [0, {num_classes}); got {int(labels.min())} to {int(labels.max())}.")
    val = _materialise(val_dataset, progress) if val_dataset is not None else None

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallConvNet(num_classes=num_classes, width=width)
    model.to(dev)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = _one_cycle(opt, lr, epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc="pretraining backbone", leave=False)
    t0 = time.perf_counter()
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(images), generator=gen)
            flips = torch.rand(len(images), generator=gen) < 0.5
            total, correct, loss_sum = 0, 0, 0.0
            for s in range(0, len(images), batch_size):
                b = order[s : s + batch_size]
                x = images[b]
                f = flips[b]
                x = torch.where(f[:, None, None, None], x.flip(-1), x).to(dev)
                y = labels[b].to(dev)
                logits = model(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += len(b)
                loss_sum += float(loss.detach()) * len(b)
                correct += int((logits.argmax(1) == y).sum())
                if bar is not None:
                    bar.update(1)
            rec = {"epoch": epoch + 1, "loss": loss_sum / total, "train_acc": correct / total, "time_s": time.perf_counter() - t0}
            if val is not None:
                rec["val_acc"] = _evaluate(model, val[0], val[1], 256, dev)
            history.append(rec)
            if bar is not None:
                bar.set_postfix({k: round(v, 3) for k, v in rec.items() if k != "epoch"})
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    model.history = history  # type: ignore[assignment]
    return model
