"""The rules of the demo world: its vocabulary, the class rules over concepts, and scene layouts.

A scene is a background and 2-3 objects (shape, colour, texture, position, size). A class is a
`Rule`: a set of object `Requirement` s (one distinct object each) and optionally a background.
`layout` draws the layout of item ``i`` of a split from ``(seed, split, i)`` alone, so that the
scene satisfies its own class's rule and no other rule of the full table (`RULES`).
Pixels and masks are drawn from a layout by `salfcbm.demo.render`.

Examples:
    >>> RULES[0].name, RULES[0].concepts()
    ('yellow circle in the sky', ['a circle', 'something yellow', 'a sky background'])
    >>> [req.phrases() for req in RULES[3].objects]
    [['a triangle', 'something orange'], ['a square', 'something blue']]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from salfcbm.errors import SalfCBMError

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES",
    "COLOURS",
    "COLOUR_NAMES",
    "TEXTURES",
    "BACKGROUNDS",
    "SHAPE_PHRASES",
    "COLOUR_PHRASES",
    "TEXTURE_PHRASES",
    "BACKGROUND_PHRASES",
    "SPLITS",
    "MAX_CLASSES",
    "Requirement",
    "Rule",
    "RULES",
    "SceneObject",
    "Layout",
    "article",
    "compound_phrases",
    "base_concepts",
    "compound_concepts",
    "scene_rng",
    "layout",
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
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")
BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "sand")

#: The concept phrase of each attribute value.
SHAPE_PHRASES: dict[str, str] = {s: f"a {s}" for s in SHAPES}
COLOUR_PHRASES: dict[str, str] = {c: f"something {c}" for c in COLOURS}
TEXTURE_PHRASES: dict[str, str] = {"plain": "a plain texture", "striped": "a striped texture",
                                   "dotted": "a dotted texture"}
BACKGROUND_PHRASES: dict[str, str] = {"sky": "a sky background", "grass": "a grassy background",
                                      "sand": "a sandy background"}
#: The split names and their stream numbers (disjoint random streams from one seed).
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


def article(word: str) -> str:
    """``"an"`` before a vowel, else ``"a"``."""
    return "an" if word[0] in "aeiou" else "a"


def compound_phrases(shape: str, colour: str, texture: str) -> tuple[str, str]:
    """The two compound concepts of an object: ``"a blue circle"`` and ``"a striped circle"``."""
    return f"{article(colour)} {colour} {shape}", f"a {texture} {shape}"


def base_concepts() -> list[str]:
    """The 16 attribute concepts, in the datasets' order: shapes, colours, textures, backgrounds."""
    return ([SHAPE_PHRASES[s] for s in SHAPES] + [COLOUR_PHRASES[c] for c in COLOURS]
            + [TEXTURE_PHRASES[t] for t in TEXTURES] + [BACKGROUND_PHRASES[b] for b in BACKGROUNDS])


def compound_concepts() -> list[str]:
    """The 40 compound concepts: every colour-shape, then every texture-shape pair."""
    return ([f"{article(c)} {c} {s}" for c in COLOURS for s in SHAPES]
            + [f"a {t} {s}" for t in TEXTURES for s in SHAPES])


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene: attributes, centre ``(cy, cx)`` and size ``r`` in pixels."""

    shape: str
    colour: str
    texture: str
    cy: float
    cx: float
    r: float
    angle: int = 0  # stripe orientation in degrees
    phase: float = 0.0  # texture offset in pixels


@dataclass(frozen=True)
class Requirement:
    """One object a class rule requires; ``None`` means any value."""

    shape: str | None = None
    colour: str | None = None
    texture: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether ``obj`` has every attribute this requirement names."""
        return (
            (self.shape is None or self.shape == obj.shape)
            and (self.colour is None or self.colour == obj.colour)
            and (self.texture is None or self.texture == obj.texture)
        )

    def phrases(self) -> list[str]:
        """The concept phrases this requirement names (all hold on the same object)."""
        out = []
        if self.shape is not None:
            out.append(SHAPE_PHRASES[self.shape])
        if self.colour is not None:
            out.append(COLOUR_PHRASES[self.colour])
        if self.texture is not None:
            out.append(TEXTURE_PHRASES[self.texture])
        return out


@dataclass(frozen=True)
class Rule:
    """A class: distinct objects matching ``objects`` (one each) and, optionally, a background."""

    name: str
    objects: tuple[Requirement, ...]
    background: str | None = None

    def holds(self, objs: Sequence[SceneObject], background: str) -> bool:
        """Whether a scene of these objects on this background satisfies the rule."""
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
        """The rule's concept phrases, each once, in order (the background last)."""
        out: list[str] = []
        for req in self.objects:
            for p in req.phrases():
                if p not in out:
                    out.append(p)
        if self.background is not None:
            out.append(BACKGROUND_PHRASES[self.background])
        return out


_R = Requirement
#: The class rules; a dataset with ``num_classes = L`` uses the first ``L``.
RULES: tuple[Rule, ...] = (
    Rule("yellow circle in the sky", (_R("circle", "yellow"),), "sky"),
    Rule("purple cross on grass", (_R("cross", "purple"),), "grass"),
    Rule("striped circle on sand", (_R("circle", texture="striped"),), "sand"),
    Rule("orange triangle and blue square", (_R("triangle", "orange"), _R("square", "blue"))),
    Rule("ring and cross", (_R("ring"), _R("cross"))),
    Rule("dotted square and green triangle", (_R("square", texture="dotted"), _R("triangle", "green"))),
    Rule("two blue objects", (_R(colour="blue"), _R(colour="blue"))),
    Rule("striped square and dotted circle", (_R("square", texture="striped"), _R("circle", texture="dotted"))),
    Rule("green ring on sand", (_R("ring", "green"),), "sand"),
    Rule("three plain objects", (_R(texture="plain"),) * 3),
)
MAX_CLASSES = len(RULES)


@dataclass(frozen=True)
class Layout:
    """A scene's label, background and objects (in drawing order)."""

    label: int
    background: str
    objects: tuple[SceneObject, ...]


def scene_rng(seed: int, split: str, i: int) -> np.random.Generator:
    """The random stream of item ``i`` of ``split`` (layout first, then the pixels' noise)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS[split], i, 0x5A1F])))


def _attributes(rule: Rule, rng: np.random.Generator) -> tuple[list[tuple[str, str, str]], str]:
    """Object attributes and a background meeting ``rule`` and no other rule of `RULES`."""
    for _ in range(1000):
        n_obj = int(rng.integers(max(2, len(rule.objects)), 4))
        attrs: list[tuple[str, str, str]] = []
        for k in range(n_obj):
            req = rule.objects[k] if k < len(rule.objects) else Requirement()
            attrs.append(
                (
                    req.shape or SHAPES[int(rng.integers(len(SHAPES)))],
                    req.colour or COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))],
                    req.texture or TEXTURES[int(rng.integers(len(TEXTURES)))],
                )
            )
        background = rule.background or BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        objs = [SceneObject(s, c, t, 0.0, 0.0, 0.0) for s, c, t in attrs]
        if sum(r.holds(objs, background) for r in RULES) == 1:
            return attrs, background
    # pragma: no cover - the rules are built so this cannot happen
    raise SalfCBMError(f"Could not generate a scene of class {rule.name!r}; this is a bug in salfcbm.")


def layout(seed: int, split: str, i: int, label: int, size: int) -> tuple[Layout, np.random.Generator]:
    """The layout of item ``i`` (class ``label``, ``size`` px) and its random stream, positioned after it.

    Objects do not overlap (2 px apart at least, when 60 tries find room) and lie inside the image.
    """
    rng = scene_rng(seed, split, i)
    attrs, background = _attributes(RULES[label], rng)
    order = rng.permutation(len(attrs))
    placed: list[SceneObject] = []
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
        placed.append(SceneObject(s, c, t, cy, cx, r, angle, phase))
    return Layout(label, background, tuple(placed)), rng
