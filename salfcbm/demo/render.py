"""Drawing a scene: the pixels of a `salfcbm.demo.world.Layout` and its ground-truth masks.

`render` paints the background (a ``sky`` gradient, ``grass`` blades or ``sand`` speckle), then
each object's shape in its colour and texture, and returns an object id map beside the image;
`concept_masks` turns that id map into one boolean mask per concept.

Examples:
    >>> from salfcbm.demo.world import layout, base_concepts
    >>> lay, rng = layout(seed=0, split="train", i=0, label=0, size=32)
    >>> image, ids = render(lay, rng, size=32, pixel_noise=0.0)
    >>> image.shape, ids.shape, concept_masks(ids, lay, base_concepts()).shape
    ((3, 32, 32), (32, 32), (16, 32, 32))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from salfcbm.demo.world import (
    BACKGROUND_PHRASES,
    COLOUR_NAMES,
    COLOURS,
    COLOUR_PHRASES,
    SHAPE_PHRASES,
    TEXTURE_PHRASES,
    Layout,
    SceneObject,
    compound_phrases,
)

__all__ = ["render", "concept_masks", "shape_mask", "texture"]

_COLOUR_RGB = np.asarray([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)
_STRIPE_DIV = 12  # stripe period = image_size / 12 (5 px at 64 px)
_DOT_DIV = 10  # dot spacing = image_size / 10 (6 px at 64 px)
_DARK = 0.45  # brightness of the dark half of a texture; hue is kept, so colour masks stay honest


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def shape_mask(obj: SceneObject, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The pixels of ``obj``'s shape, given each pixel's offset ``(dy, dx)`` from its centre."""
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


def texture(obj: SceneObject, dy: np.ndarray, dx: np.ndarray, size: int) -> np.ndarray | float:
    """Brightness factor per pixel: 1 or the dark half's brightness (the hue is kept)."""
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


def _background(img: np.ndarray, background: str, rng: np.random.Generator, size: int) -> None:
    """Paint the background into ``img`` (3, H, W) in place."""
    yy, _ = _coords(size)
    if background == "sky":
        t = (yy[:, :1] / (size - 1))[None]  # (1, H, 1)
        top = np.asarray([0.45, 0.70, 0.95], np.float32)[:, None, None]
        bottom = np.asarray([0.85, 0.93, 1.00], np.float32)[:, None, None]
        img[:] = top + (bottom - top) * t
    elif background == "grass":
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


def render(lay: Layout, rng: np.random.Generator, size: int, pixel_noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``(image (3, H, W) float32 in [0, 1], object id map (H, W) int8 (-1 = background))``.

    ``rng`` is the scene's stream after its layout (`salfcbm.demo.world.layout`); the
    background's texture and the pixel noise are drawn from it.
    """
    yy, xx = _coords(size)
    img = np.empty((3, size, size), dtype=np.float32)
    _background(img, lay.background, rng, size)
    ids = np.full((size, size), -1, dtype=np.int8)
    for k, obj in enumerate(lay.objects):
        dy, dx = yy - obj.cy, xx - obj.cx
        m = shape_mask(obj, dy, dx)
        f = texture(obj, dy, dx, size)
        rgb = _COLOUR_RGB[COLOUR_NAMES.index(obj.colour)][:, None, None]
        img = np.where(m[None], rgb * f, img)
        ids[m] = k
    if pixel_noise > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(pixel_noise)
    np.clip(img, 0.0, 1.0, out=img)
    return img, ids


def concept_masks(ids: np.ndarray, lay: Layout, concepts: Sequence[str], *, compound: bool = False) -> np.ndarray:
    """``(K, H, W)`` bool, one mask per entry of ``concepts``, from an object id map.

    An attribute concept covers the pixels of every object with that attribute; a background
    concept every pixel no object covers. ``compound`` also marks each object's colour-shape and
    texture-shape compounds (``concepts`` must then list them).
    """
    index = {c: k for k, c in enumerate(concepts)}
    # concept membership per id: row 0 = background, row j + 1 = object j
    table = np.zeros((len(lay.objects) + 1, len(concepts)), dtype=bool)
    table[0, index[BACKGROUND_PHRASES[lay.background]]] = True
    for j, obj in enumerate(lay.objects):
        phrases = [SHAPE_PHRASES[obj.shape], COLOUR_PHRASES[obj.colour], TEXTURE_PHRASES[obj.texture]]
        if compound:
            phrases += compound_phrases(obj.shape, obj.colour, obj.texture)
        for phrase in phrases:
            table[j + 1, index[phrase]] = True
    return np.ascontiguousarray(table[ids.astype(np.int64) + 1].transpose(2, 0, 1))
