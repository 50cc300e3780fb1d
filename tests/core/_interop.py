"""The small wrapped model (random head and bottleneck bias) and input batch that the interop tests share."""

from __future__ import annotations

import pytest
import timm
import torch

import salfcbm

CONCEPTS = ["a wing", "a beak", "water"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = salfcbm.wrap(timm.create_model("resnet10t", num_classes=5), concepts=CONCEPTS, num_classes=4, grid=3,
                     input_size=(64, 64), backbone_weights=None)
    with torch.no_grad():
        m.head.weight.normal_()
        if m.bottleneck.bias is not None:
            m.bottleneck.bias.normal_()
    return m


@pytest.fixture()
def x():
    return torch.randn(2, 3, 64, 64)
