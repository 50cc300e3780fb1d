"""Tensor helpers shared by every layer: the one map upsampler and the one accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dimensions to ``size`` (``align_corners=False``).

    Accepts (h, w), (C, h, w) or (B, C, h, w) and returns the same rank. This is the paper's
    upsampling of concept maps to the input (section 3.5) and the one used for every heatmap.

    Example:
        >>> upsample_bilinear(torch.ones(2, 3, 7, 7), (14, 14)).shape
        torch.Size([2, 3, 14, 14])
        >>> upsample_bilinear(torch.ones(7, 7), (28, 21)).shape
        torch.Size([28, 21])
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    if not flat.is_floating_point():
        flat = flat.float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits`` (N, L) against integer ``labels`` (N,); 0.0 for N = 0."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())
