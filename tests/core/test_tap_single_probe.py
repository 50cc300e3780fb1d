"""Choosing the default layer and describing it take one probe forward of the backbone, not two."""

from __future__ import annotations

import timm
import torch

from salfcbm.core.tap import FeatureTap, default_layer


def _counted(backbone: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    backbone.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return calls


def test_default_layer_is_probed_once():
    net = timm.create_model("resnet10t", pretrained=False)
    calls = _counted(net)
    tap = FeatureTap(net, input_size=(64, 64))
    assert len(calls) == 1
    assert tap.layer == default_layer(timm.create_model("resnet10t", pretrained=False), (64, 64))
    assert tap(torch.zeros(2, 3, 64, 64)).shape == (2, tap.channels, 2, 2)


def test_a_named_layer_is_probed_once():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 6, 3, padding=1))
    calls = _counted(net)
    tap = FeatureTap(net, "2", input_size=(32, 32))
    assert len(calls) == 1 and tap.channels == 6 and tap.layout == "NCHW"
