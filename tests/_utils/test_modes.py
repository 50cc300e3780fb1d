"""The user's train/eval flags come back exactly as they were, whoever borrows the model."""

import pytest
import torch
from torch import nn

import salfcbm
from salfcbm._utils.modes import module_device_dtype, preserved_modes
from salfcbm.core.tap import default_layer, probe_layers


def _mixed_net() -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Dropout(0.5)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    net.train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    net[2][2].eval()  # a nested module in eval mode
    return net


def _flags(net: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in net.named_modules()}


@pytest.mark.parametrize("mode", [False, True, None])
def test_preserved_modes_restores_each_module(mode):
    net = _mixed_net()
    before = _flags(net)
    with preserved_modes(net, mode=mode):
        if mode is not None:
            assert all(m.training is mode for m in net.modules())
    assert _flags(net) == before


def test_preserved_modes_restores_after_an_exception():
    net = _mixed_net()
    before = _flags(net)

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    net.append(Boom())
    before = _flags(net)
    with pytest.raises(RuntimeError, match="boom"), preserved_modes(net, mode=False):
        net(torch.zeros(1, 3, 8, 8))
    assert _flags(net) == before


def test_probe_and_wrap_keep_mixed_modes():
    """`probe_layers` restored with `backbone.train(was_training)`, flipping `net[1]` back to train."""
    net = _mixed_net()
    before = _flags(net)
    probe_layers(net, (16, 16))
    assert _flags(net) == before
    default_layer(net, (16, 16))
    assert _flags(net) == before
    model = salfcbm.wrap(net, concepts=["a", "b"], num_classes=3, input_size=(16, 16))
    model(torch.rand(2, 3, 16, 16))
    assert _flags(net) == before


def test_module_device_dtype_falls_back_to_buffers_and_cpu():
    assert module_device_dtype(nn.Linear(2, 2).double()) == (torch.device("cpu"), torch.float64)
    bn = nn.BatchNorm1d(2, affine=False).half()
    assert module_device_dtype(bn) == (torch.device("cpu"), torch.float16)
    assert module_device_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
