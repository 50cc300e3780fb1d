"""Every baseline works on a backbone frozen with requires_grad_(False) and leaves its flags as they were
(issue 15, item 10)."""

from __future__ import annotations

import pytest
import torch

from salfcbm.evaluation.baselines import list_baselines, make_baseline
from tests.evaluation._tiny_cnn import TinyCNN, baseline_kwargs


@pytest.mark.parametrize("mixed", [False, True], ids=["all-frozen", "head-trainable"])
@pytest.mark.parametrize("name", list_baselines())
def test_baseline_on_user_frozen_backbone_keeps_flags(name, mixed):
    torch.manual_seed(0)
    cnn = TinyCNN()
    cnn.requires_grad_(False)
    if mixed:
        cnn.fc.weight.requires_grad_(True)  # a mixed state must come back exactly
    flags = [p.requires_grad for p in cnn.parameters()]
    x = torch.randn(2, 3, 16, 16)
    h = make_baseline(name, cnn, layer="conv2", **baseline_kwargs(name)).attribute(x, target=[0, 2])
    assert h.shape == (2, 1, 16, 16) and torch.isfinite(h).all()
    if name not in ("random", "center"):
        assert h.abs().sum() > 0, "a frozen backbone must not give an all-zero map"
    assert [p.requires_grad for p in cnn.parameters()] == flags
    assert all(p.grad is None for p in cnn.parameters())


@pytest.mark.parametrize("name", ["gradcam", "gradcam++"])
def test_token_layer_baselines_on_frozen_vit(name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5).requires_grad_(False)
    h = make_baseline(name, model, layer="blocks.1").attribute(torch.randn(2, 3, 32, 32), target=1)
    assert h.shape == (2, 1, 32, 32) and torch.isfinite(h).all()
    assert not any(p.requires_grad for p in model.parameters())
