"""Concept-map poolings: an open registry, name -> function (how c(x) becomes c*(x), paper 3.4).

A pooling reduces every concept map to one number, independently per map: it takes ``(B, K, H, W)``
maps and the model's `ModelConfig` (for its options, e.g. ``softmax_temperature``) and returns
``(B, K)``. Because it works map by map, the model can compute the maps in chunks of concepts and
pool each chunk at once (`salfcbm.core.activations`), and a registered pooling works everywhere a
built-in one does: `salfcbm.wrap`, `salfcbm.fit`, ``save_pretrained`` / ``from_pretrained`` (the
name is stored in ``config.json``; register it before loading) and the explanations.

Add one from your own code::

    from salfcbm.core.pooling import register_pooling

    @register_pooling("logsumexp")
    def logsumexp_pooling(maps, config):
        return maps.flatten(2).logsumexp(-1)

    model = salfcbm.wrap(backbone, concepts=..., num_classes=..., pooling="logsumexp")

``linear=True`` promises that the pooling is a fixed average of the cells (weights that sum to 1,
the same for every map and image), so it commutes with the 1x1 bottleneck and the model pools the
backbone's features before projecting them (mean pooling's fast path).

This module imports no torch at import time (the CLI's ``--help`` lists `POOLINGS`); the functions
use tensor methods only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from salfcbm.core.config import ModelConfig

__all__ = ["POOLINGS", "PoolingFn", "get_pooling", "is_linear", "register_pooling"]

PoolingFn = Callable[["torch.Tensor", "ModelConfig"], "torch.Tensor"]

#: name -> pooling function ``(maps (B, K, H, W), config) -> (B, K)``; the built-ins first.
POOLINGS: dict[str, PoolingFn] = {}
_LINEAR: set[str] = set()


def register_pooling(name: str, *, linear: bool = False, replace: bool = False) -> Callable[[PoolingFn], PoolingFn]:
    """Register a pooling under ``name`` (a decorator; the function is returned unchanged).

    Args:
        name: the name models use (``pooling=name``) and ``config.json`` records.
        linear: the pooling is a fixed convex average of the cells (as the mean), so the model may
            pool the backbone's features before the 1x1 projection.
        replace: allow replacing a pooling already registered under ``name``.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise InputError(f"A pooling name is a non-empty string without surrounding spaces, got {name!r}.")
    if name in POOLINGS and not replace:
        raise InputError(f"A pooling named {name!r} is already registered; pick another name, or pass "
                         "replace=True to replace it.")

    def decorator(fn: PoolingFn) -> PoolingFn:
        if not callable(fn):
            raise InputError(f"register_pooling({name!r}) decorates a function (maps, config) -> (B, K), "
                             f"got {type(fn).__name__}.")
        POOLINGS[name] = fn
        _LINEAR.discard(name)
        if linear:
            _LINEAR.add(name)
        return fn

    return decorator


def get_pooling(name: str) -> PoolingFn:
    """The pooling registered under ``name``; an unknown name lists the registered ones."""
    try:
        return POOLINGS[name]
    except (KeyError, TypeError):
        raise InputError(f"Unknown pooling {name!r}; registered: {sorted(POOLINGS)}. Pick one, or register "
                         "yours with salfcbm.core.pooling.register_pooling (before loading a model that "
                         "uses it).") from None


def is_linear(name: str) -> bool:
    """Whether the pooling commutes with the 1x1 projection (registered with ``linear=True``)."""
    return name in _LINEAR


@register_pooling("mean", linear=True)
def mean_pooling(maps: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The average over the grid (salfcbm's default: global average pooling, linear)."""
    return maps.flatten(2).mean(-1)


@register_pooling("softmax")
def softmax_pooling(maps: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """``sum_p softmax(c / t)_p c_p``: the authors' ``SoftmaxPooling2D`` (temperature ``t``)."""
    flat = maps.flatten(2)
    return ((flat / config.softmax_temperature).softmax(-1) * flat).sum(-1)


@register_pooling("max")
def max_pooling(maps: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """The largest cell of each map."""
    return maps.flatten(2).amax(-1)
