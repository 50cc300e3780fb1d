"""Checked inputs shared by the evaluation metrics: heatmaps, masks, targets and a model's logits.

Every metric of `salfcbm.evaluation` (segmentation, deletion / insertion, the field's localisation
and confidence metrics, the baselines) reads its arguments through these functions, so a bad input
raises the same `InputError` whichever metric received it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from salfcbm._utils.tensors import check_logits
from salfcbm.errors import InputError

__all__ = ["as_heatmaps", "as_masks", "check_images", "model_logits", "normalise_heatmaps", "resolve_target"]


def as_heatmaps(heatmaps: Any, name: str = "heatmaps") -> torch.Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` -> ``(B, H, W)`` float64, finite."""
    if not isinstance(heatmaps, torch.Tensor):
        raise InputError(
            f"`{name}` must be a torch.Tensor of shape (B, 1, H, W) or (B, H, W), got {type(heatmaps).__name__}."
        )
    if heatmaps.dim() == 4:
        if heatmaps.shape[1] != 1:
            raise InputError(
                f"`{name}` must have one channel, got shape {tuple(heatmaps.shape)}. "
                "Reduce the channels first (e.g. `.sum(1, keepdim=True)`)."
            )
        heatmaps = heatmaps[:, 0]
    elif heatmaps.dim() != 3:
        raise InputError(f"`{name}` must have shape (B, 1, H, W) or (B, H, W), got {tuple(heatmaps.shape)}.")
    if heatmaps.is_complex() or heatmaps.dtype == torch.bool:
        raise InputError(f"`{name}` must be a real-valued tensor, got dtype {heatmaps.dtype}.")
    heatmaps = heatmaps.detach().to(torch.float64)
    if not torch.isfinite(heatmaps).all():
        bad = int((~torch.isfinite(heatmaps)).sum())
        raise InputError(
            f"`{name}` holds {bad} NaN/inf values. Heatmaps must be finite; "
            "replace them first, e.g. `torch.nan_to_num(heatmaps)`."
        )
    return heatmaps


def as_masks(masks: Any) -> torch.Tensor:
    """``(B, H, W)`` (or ``(B, 1, H, W)``) bool / {0, 1} -> bool ``(B, H, W)``."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"`masks` must be a torch.Tensor of shape (B, H, W), got {type(masks).__name__}.")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise InputError(f"`masks` must have shape (B, H, W), got {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not ((masks == 0) | (masks == 1)).all():
            vals = torch.unique(masks.detach().cpu())[:8].tolist()
            raise InputError(
                f"`masks` must be boolean or hold only 0 and 1 (background / foreground), got values {vals}. "
                "Binarise it first, e.g. `masks > 0`."
            )
        masks = masks != 0
    return masks.detach()


def normalise_heatmaps(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image min-max normalisation of ``(B, H, W)``; also returns which images are constant."""
    flat = h.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    rng = hi - lo
    constant = (rng == 0).view(-1)
    r = (h - lo) / torch.where(rng == 0, torch.ones_like(rng), rng)
    return r, constant


def resolve_target(target: Any, batch: int, device: torch.device) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputError(f"`target` must be an int, a sequence of ints or a tensor, got {target!r}.")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"`target` must hold integer class indices, got dtype {t.dtype}.")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise InputError(
            f"`target` must be an int or hold one class index per image ({batch}), got shape {tuple(t.shape)}."
        )
    return t.long()


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return check_logits(
        model(x), "The model",
        "Wrap it, e.g. `lambda x: model(x).logits`, in an nn.Module that returns the logits "
        "(for a SALF-CBM: `model.as_classifier()`).",
    )


def check_images(images: Any) -> torch.Tensor:
    """A non-empty float ``(B, C, H, W)`` images tensor, or `InputError`."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise InputError(
            "`images` must be a float (B, C, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    if images.shape[0] == 0:
        raise InputError("`images` is empty (batch size 0).")
    return images
