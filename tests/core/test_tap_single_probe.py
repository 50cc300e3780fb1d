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


def test_wrap_and_from_pretrained_run_the_backbone_once_each(tmp_path):
    from salfcbm.core.model import SALFCBM, wrap

    net = timm.create_model("resnet10t", pretrained=False)
    calls = _counted(net)
    model = wrap(net, concepts=[f"c{i}" for i in range(40)], num_classes=3, input_size=(64, 64),
                 backbone_weights=None)
    assert len(calls) == 1  # the probe that picks the layer also gives its channels
    model.save_pretrained(tmp_path)
    other = timm.create_model("resnet10t", pretrained=False)
    other.load_state_dict(net.state_dict())
    calls = _counted(other)
    loaded = SALFCBM.from_pretrained(tmp_path, backbone=other)
    assert len(calls) == 1  # one probe batch: the channels check and the finite-outputs check
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x).logits, model.eval()(x).logits)
