"""Tiny deterministic models shared by the reliability tests and their subprocesses."""

from __future__ import annotations

import torch
from torch import nn

import salfcbm

CONCEPTS = ["a wing", "a beak", "water", "a tree"]


def backbone(seed: int = 0) -> nn.Module:
    """A two-layer conv net: a custom backbone, so nothing is downloaded or rebuilt."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))


def model(variant: int = 0, net: nn.Module | None = None) -> salfcbm.SALFCBM:
    """A wrapped model with non-trivial adapter weights; ``variant`` picks the weights."""
    net = net if net is not None else backbone()
    m = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, layer="2", input_size=(32, 32), grid=4)
    g = torch.Generator().manual_seed(100 + variant)
    with torch.no_grad():
        for p in (m.bottleneck.weight, m.bottleneck.bias, m.head.weight, m.head.bias, m.concept_mean):
            p.copy_(torch.randn(p.shape, generator=g))
        m.concept_std.copy_(torch.rand(m.num_concepts, generator=g) + 0.5)
    return m.eval()


def probe() -> torch.Tensor:
    return torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)


def logits(m: salfcbm.SALFCBM) -> torch.Tensor:
    with torch.no_grad():
        return m(probe()).logits
