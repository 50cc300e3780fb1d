"""What the explanation operations take: images, the model's output, classes and counts, checked.

Shared by `explain_image`, `explain_anything`, `intervention`, `rules` and the Captum adapter
(`attribution`), so that every operation accepts and refuses the same inputs with the same
messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import torch

from salfcbm.errors import ClassNotFoundError, InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM, SALFCBMOutput

__all__ = [
    "Target",
    "as_batch",
    "single_image",
    "model_output",
    "class_index",
    "resolve_targets",
    "check_top_k",
    "check_heatmap_size",
]

#: The classes to explain: None (the prediction), an index or name, a tensor, or lists per image.
Target = Union[None, int, str, Sequence, torch.Tensor]


def as_batch(images: Any, name: str = "images", model: SALFCBM | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` images: with ``model``, its input rule (backbone-ready float tensors, checked, or raw
    images, preprocessed); without it, a backbone-ready tensor of 3 or 4 dimensions."""
    if model is not None:  # backbone-ready float tensors (checked) or raw images (preprocessed)
        return model.as_input(images, name)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"`{name}` must be a torch.Tensor of backbone-ready images, got {type(images).__name__}.")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise InputError(
            f"`{name}` must be (B, C, H, W) or (C, H, W) backbone-ready images, got shape {tuple(images.shape)}."
        )
    return images


def single_image(image: Any, model: SALFCBM | None = None) -> torch.Tensor:
    """`as_batch` for operations on one image: ``(1, C, H, W)``, or an `InputError` for a batch."""
    x = as_batch(image, "image", model)
    if x.shape[0] != 1:
        raise InputError(
            f"`image` must be one image, (C, H, W) or (1, C, H, W), got a batch of {x.shape[0]}. "
            "Call once per image (pass `output=` to reuse a forward pass)."
        )
    return x


def model_output(model: SALFCBM, images: torch.Tensor, output: SALFCBMOutput | None) -> SALFCBMOutput:
    """``model(images)`` without gradients, or the caller's ``output`` once checked to match the images."""
    if output is None:
        with torch.no_grad():
            return model(images)
    act = getattr(output, "concept_activations", None)
    if not hasattr(output, "concept_maps_at") or act is None or tuple(act.shape) != (images.shape[0], model.num_concepts):
        raise InputError(
            f"`output` must be the SALFCBMOutput of `model(images)` for these {images.shape[0]} image(s) "
            f"and {model.num_concepts} concepts; got concept activations of shape "
            f"{None if act is None else tuple(act.shape)}. Leave `output=None` to run the model."
        )
    return output


def class_index(model: SALFCBM, target: Any) -> int:
    """Index of a class given by index or name (unknown names list the closest ones)."""
    L = model.num_classes
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target)
    if isinstance(target, bool):
        raise InputError(f"A class is an int index or a name, got {target!r}.")
    if isinstance(target, int):
        if not -L <= target < L:
            raise InputError(f"Class index {target} is out of range for {L} classes (valid: 0..{L - 1}).")
        return target % L
    if isinstance(target, str):
        names = model.class_names
        if target in names:
            return names.index(target)
        raise ClassNotFoundError(target, names)
    raise InputError(f"A class is an int index or a name, got {type(target).__name__} {target!r}.")


def resolve_targets(model: SALFCBM, target: Target, preds: torch.Tensor) -> list[list[int]]:
    """Per image, the class indices to explain (see `salfcbm.explain.explain`'s ``target``)."""
    B = preds.shape[0]
    if target is None:
        return [[int(p)] for p in preds]
    if isinstance(target, torch.Tensor):
        if target.is_floating_point():
            raise InputError(f"`target` must hold integer class indices, got dtype {target.dtype}.")
        if target.dim() == 0:
            return [[class_index(model, int(target))] for _ in range(B)]
        if target.dim() == 1 and target.shape[0] == B:
            return [[class_index(model, int(t))] for t in target]
        if target.dim() == 2 and target.shape[0] == B:
            return [[class_index(model, int(t)) for t in row] for row in target]
        raise InputError(
            f"A `target` tensor must be a scalar, (B,) or (B, T) with B={B}, got shape {tuple(target.shape)}."
        )
    if isinstance(target, (int, str)):
        return [[class_index(model, target)] for _ in range(B)]
    if isinstance(target, Sequence):
        if len(target) != B:
            raise InputError(
                f"`target` lists {len(target)} entries for {B} image(s); give one entry per image. For several "
                f"classes of one image, nest them: target=[[3, 5]] (a list of lists, one inner list per image)."
            )
        out = []
        for t in target:
            if isinstance(t, (int, str)) or (isinstance(t, torch.Tensor) and t.dim() == 0):
                out.append([class_index(model, t)])
            elif isinstance(t, (Sequence, torch.Tensor)) and len(t) > 0:
                out.append([class_index(model, c) for c in t])
            else:
                raise InputError(f"Each per-image target must be a class index/name or a non-empty list, got {t!r}.")
        return out
    raise InputError(
        f"`target` must be None, an int, a class name, a (B,) tensor, a list per image or a list of lists, "
        f"got {type(target).__name__}."
    )


def check_top_k(top_k: Any, limit: int) -> int:
    """``top_k`` checked to be a positive int, capped at ``limit``."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"`top_k` must be a positive int, got {top_k!r}.")
    return min(top_k, limit)


_MAX_HEATMAP_BYTES = 2**31  # 2 GiB of float32 heatmaps per call


def check_heatmap_size(size: Any, maps: int) -> tuple[int, int]:
    """``heatmap_size`` checked: two positive ints, and ``maps`` float32 heatmaps of it within 2 GiB."""
    ok = isinstance(size, Sequence) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    if not ok:
        raise InputError(f"heatmap_size must be (H, W), two positive ints, got {size!r}.")
    if maps * size[0] * size[1] * 4 > _MAX_HEATMAP_BYTES:
        raise InputError(
            f"heatmap_size {tuple(size)} for {maps} heatmaps needs {maps * size[0] * size[1] * 4 / 2**30:.1f} GiB "
            "(limit 2 GiB per call). Pass the image's own size (the default), a smaller size, or fewer images/top_k."
        )
    return int(size[0]), int(size[1])
