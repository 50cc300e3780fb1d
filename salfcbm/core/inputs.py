"""What the model accepts: its constructor's arguments and the images of its calls, checked.

The rules each method of `SALFCBMBase` applies to what it is given, in one place: the concept list
(non-empty, unique strings), the grid, ``model(x)``'s tensor rule (`check_input`: a backbone-ready
float tensor on the model's device) and the looser rule of the explanation methods (`as_input`:
tensors, or raw images handed to `SALFCBMBase.preprocess`). Every refusal is an `InputError` /
`ImageInputError` that names what was received and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from salfcbm._utils.modes import module_device_dtype
from salfcbm.core.config import repeated
from salfcbm.errors import ImageInputError, InputError, NotATensorError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBMBase

__all__ = ["as_grid", "as_input", "check_concepts", "check_input", "input_device_dtype", "is_count", "probe_input",
           "refuse_jit_trace"]


def is_count(v: Any) -> bool:
    """A positive int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def as_grid(grid: Any) -> tuple[int, int]:
    """``7`` or ``(7, 7)`` -> ``(7, 7)``; anything else is refused."""
    if is_count(grid):
        grid = (grid, grid)
    if not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(is_count(g) for g in grid):
        raise InputError(f"`grid` must be an int or a pair of positive ints (H~, W~), got {grid!r}.")
    return int(grid[0]), int(grid[1])


def check_concepts(concepts: Any) -> None:
    """A non-empty sequence of unique, non-empty strings (linear time: wrap takes 100k concepts)."""
    if isinstance(concepts, str):
        raise InputError(f"`concepts` must be a list of concept names, got the single string {concepts!r} "
                         f"(which would become {len(concepts)} one-letter concepts). Pass [{concepts!r}].")
    if not isinstance(concepts, Sequence) or not concepts:
        raise InputError(f"`concepts` must be a non-empty list of strings, got {concepts!r}.")
    bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"Every concept must be a non-empty string; got {bad[:5]!r} in `concepts`. "
                         "Convert or remove those entries.")
    dupes = repeated(concepts)
    if dupes:
        raise InputError(f"Concept names must be unique; repeated: {dupes[:10]}{' ...' if len(dupes) > 10 else ''}. "
                         "Deduplicate the list.")


def probe_input(backbone: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """Two zero images at ``input_size`` on the backbone's device and dtype (2: a layer must keep the batch)."""
    device, dtype = module_device_dtype(backbone)
    return torch.zeros(2, 3, *input_size, device=device, dtype=dtype)


def input_device_dtype(model: SALFCBMBase) -> tuple[torch.device, torch.dtype]:
    """Where inputs go: the backbone's device and dtype (the adapter's for a parameter-free backbone)."""
    has_params = model.backbone is not None and next(model.backbone.parameters(), None) is not None
    return module_device_dtype(model.backbone if has_params else model.bottleneck)


def check_input(model: SALFCBMBase, x: Any) -> torch.Tensor:
    """``model(x)``'s input rule: a backbone-ready float tensor on the model's device; it is
    cast to the model's dtype (an fp16/bf16 model takes fp32 input)."""
    if not isinstance(x, torch.Tensor):
        raise ImageInputError(
            f"model(x) takes a backbone-ready (B, 3, H, W) tensor, got {type(x).__name__}. "
            "Use model(model.preprocess(images)) for PIL images, paths, arrays or lists."
        )
    if not x.is_floating_point():
        raise ImageInputError(
            f"model(x) takes backbone-ready float images, got dtype {x.dtype} {tuple(x.shape)}: raw pixels. "
            "Use model(model.preprocess(images)), which scales, resizes and normalises them."
        )
    if x.dim() == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise ImageInputError(
            f"model(x) got a channels-last (NHWC) tensor {tuple(x.shape)}; pass x.permute(0, 3, 1, 2)."
        )
    device, dtype = input_device_dtype(model)
    if x.device != device:
        raise ImageInputError(
            f"The images are on {x.device} but the model is on {device}. Move them with "
            f"images.to({str(device)!r}) (model.preprocess does this), or the model with model.to(...)."
        )
    return x.to(dtype) if x.dtype != dtype else x


def as_input(model: SALFCBMBase, images: Any, name: str = "images") -> torch.Tensor:
    """What ``explain`` and friends accept: backbone-ready float tensors (checked: not empty,
    finite, moved to the model's device and dtype) or raw images (`SALFCBMBase.preprocess`)."""
    if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
        return model.preprocess(images)
    x = images.unsqueeze(0) if images.dim() == 3 else images
    if x.dim() != 4:
        raise ImageInputError(
            f"`{name}` must be (B, C, H, W) or (C, H, W) backbone-ready images, got shape {tuple(images.shape)}."
        )
    if x.shape[0] == 0:
        raise ImageInputError(f"`{name}` is an empty batch {tuple(x.shape)}; pass at least one image.")
    if not bool(torch.isfinite(x).all()):
        raise ImageInputError(
            f"`{name}` holds NaN or infinite values; the model would return NaN probabilities. Check the images "
            "(or their normalisation) and pass finite values."
        )
    device, dtype = input_device_dtype(model)
    return x.to(device=device, dtype=dtype)


def refuse_jit_trace(model: nn.Module) -> None:
    """Name the fix when ``torch.jit.trace(model, x)`` traces the model itself (it cannot return a
    `SALFCBMOutput`); a module that calls ``model(x).logits`` inside a trace is left alone."""
    if not torch.jit.is_tracing():
        return
    traced = getattr(torch.jit._trace, "_trace_module_map", None) or {}
    if traced.get("__module") is model:
        raise NotATensorError("torch.jit.trace(model, x) cannot return a SALFCBMOutput; trace "
                              "model.as_classifier() for the logits, or use torch.export.export(model, (x,))")
