"""Tests for salfcbm.evaluation.baselines: shapes, localisation, hook hygiene, modes, errors."""

from __future__ import annotations

import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from salfcbm.evaluation.baselines import (
    Attributor,
    UnsupportedBaselineError,
    list_baselines,
    make_baseline,
    time_attribution,
)
from salfcbm.errors import InputError, LayerNotFoundError, MissingExtraError, SalfCBMError
from tests.evaluation._tiny_cnn import TinyCNN, baseline_kwargs

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def n_hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, d)) for m in model.modules() for d in HOOK_DICTS)


@pytest.fixture()
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.mark.parametrize("name", list_baselines())
def test_every_baseline_shape_finite_no_hooks(name, cnn):
    x = torch.randn(2, 3, 16, 16)
    cnn.train()
    before = [p.grad for p in cnn.parameters()]
    a = make_baseline(name, cnn, layer="conv2", **baseline_kwargs(name))
    assert isinstance(a, Attributor) and a.name == name
    h = a.attribute(x, target=[0, 2])
    assert h.shape == (2, 1, 16, 16) and h.dtype == torch.float32
    assert torch.isfinite(h).all()
    assert n_hooks(cnn) == 0
    assert cnn.training and all(m.training for m in cnn.modules())
    assert [p.grad for p in cnn.parameters()] == before
    assert not any(hasattr(m, "rule") for m in cnn.modules())
    if name != "random":  # deterministic, and callable like a Captum method
        assert torch.allclose(a(x, target=[0, 2]), h, atol=1e-6)


@pytest.mark.parametrize("name", ["gradcam", "fullgrad"])
def test_timm_resnet(name):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    h = make_baseline(name, model, layer="layer4").attribute(torch.randn(2, 3, 64, 64))
    assert h.shape == (2, 1, 64, 64) and torch.isfinite(h).all()
    assert n_hooks(model) == 0


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "scorecam"])
def test_vit_token_layer_is_folded(name):
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5)
    h = make_baseline(name, model, layer="blocks.1").attribute(torch.randn(2, 3, 32, 32), target=1)
    assert h.shape == (2, 1, 32, 32) and torch.isfinite(h).all()
    assert n_hooks(model) == 0


def test_user_reshape_transform_is_used():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=5)
    calls = []

    def reshape(t):
        calls.append(tuple(t.shape))
        return t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 2, 2)

    for name in ("gradcam", "gradcam++"):
        h = make_baseline(name, model, layer="blocks.1", reshape_transform=reshape).attribute(torch.randn(1, 3, 32, 32))
        assert h.shape == (1, 1, 32, 32)
    assert calls


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "scorecam"])
def test_cam_peaks_where_the_model_looks(name):
    torch.manual_seed(0)
    model = TinyCNN(region=(slice(0, 6), slice(0, 6)))  # only the top-left 6x6 of 16x16 reaches the head
    with torch.no_grad():
        model.conv1.bias.zero_()
        model.conv2.bias.zero_()  # blank pixels give zero activations
        model.fc.weight.abs_()  # class 0 grows with every channel
    x = torch.zeros(2, 3, 16, 16)
    x[..., :6, :6] = torch.rand(2, 3, 6, 6)  # the object is in the top-left corner
    h = make_baseline(name, model, layer="conv2", **baseline_kwargs(name)).attribute(x, target=0)
    inside = h[..., :6, :6].mean(dim=(1, 2, 3))
    outside = h[..., 8:, :].mean(dim=(1, 2, 3)) + h[..., :8, 8:].mean(dim=(1, 2, 3))
    assert (inside > 3 * outside + 1e-6).all()
    flat_argmax = h.flatten(1).argmax(1)
    assert ((flat_argmax // 16 < 8) & (flat_argmax % 16 < 8)).all()


def test_target_none_is_top1(cnn):
    x = torch.randn(3, 3, 16, 16)
    a = make_baseline("gradcam", cnn, layer="conv2")
    top1 = cnn(x).argmax(1)
    assert torch.allclose(a.attribute(x), a.attribute(x, target=top1))


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "scorecam", "fullgrad", "integrated_gradients", "lrp"])
@pytest.mark.parametrize("exc", [RuntimeError, IndexError])
def test_no_hooks_or_mode_change_after_exception(name, exc, cnn):
    cnn.train()
    a = make_baseline(name, cnn, layer="conv2", **baseline_kwargs(name))
    cnn.boom = exc  # raised inside forward, after the libraries registered their hooks
    with pytest.raises(exc, match="boom"):  # pytorch-grad-cam's __exit__ would swallow IndexError
        a.attribute(torch.randn(1, 3, 16, 16), target=0)
    assert n_hooks(cnn) == 0
    assert all(m.training for m in cnn.modules())
    assert not any(hasattr(m, "rule") for m in cnn.modules())


def test_eval_mode_during_call_and_mixed_modes_restored(cnn):
    seen = []
    cnn.conv1.register_forward_pre_hook(lambda m, i: seen.append(m.training))
    cnn.train()
    cnn.conv2.eval()  # a mixed state must come back exactly
    make_baseline("gradcam++", cnn, layer="conv2").attribute(torch.randn(1, 3, 16, 16), target=0)
    assert seen and not any(seen)
    assert cnn.training and cnn.conv1.training and not cnn.conv2.training
    seen.clear()
    make_baseline("gradcam++", cnn, layer="conv2", eval_mode=False).attribute(torch.randn(2, 3, 16, 16), target=0)
    assert seen[-1] is True  # pytorch-grad-cam's silent model.eval() is undone for the explained forward


def test_existing_user_hooks_survive(cnn):
    h = cnn.conv2.register_forward_hook(lambda *a: None)
    make_baseline("scorecam", cnn, layer="conv2", batch_size=8).attribute(torch.randn(1, 3, 16, 16), target=0)
    assert len(cnn.conv2._forward_hooks) == 1
    h.remove()


def test_grads_restored_after_backward_based_cam(cnn):
    grads = [torch.full_like(p, 3.0) for p in cnn.parameters()]
    for p, g in zip(cnn.parameters(), grads):
        p.grad = g
    make_baseline("gradcam++", cnn, layer="conv2").attribute(torch.randn(1, 3, 16, 16), target=0)
    assert all(p.grad is g for p, g in zip(cnn.parameters(), grads))


def test_layer_as_module_and_default_layer(cnn):
    x = torch.randn(1, 3, 16, 16)
    a = make_baseline("gradcam", cnn, layer=cnn.conv2).attribute(x, target=0)
    b = make_baseline("gradcam", cnn, layer="conv2").attribute(x, target=0)
    assert torch.equal(a, b)
    default = make_baseline("gradcam", cnn)
    assert default.layer_name in {"conv2", "relu2"}


def test_layer_errors(cnn):
    with pytest.raises(LayerNotFoundError, match="conv2"):
        make_baseline("gradcam", cnn, layer="conv3")
    with pytest.raises(InputError, match="not a submodule"):
        make_baseline("gradcam++", cnn, layer=nn.Conv2d(1, 1, 1))


def test_make_baseline_errors(cnn):
    with pytest.raises(InputError, match="Did you mean 'gradcam'"):
        make_baseline("gradcm", cnn)
    with pytest.raises(InputError, match=r"takes no argument\(s\) \['n_stpes'\]"):
        make_baseline("integrated_gradients", cnn, n_stpes=3)
    with pytest.raises(InputError, match="batch_size"):
        make_baseline("scorecam", cnn, layer="conv2", batch_size=0)
    with pytest.raises(InputError, match="nn.Module"):
        make_baseline("gradcam", "resnet")
    with pytest.raises(InputError, match=r"\(B, C, H, W\)"):
        make_baseline("gradcam", cnn, layer="conv2").attribute(torch.randn(3, 16, 16))
    with pytest.raises(InputError, match="one class index per image"):
        make_baseline("gradcam", cnn, layer="conv2").attribute(torch.randn(2, 3, 16, 16), target=[0, 1, 2])


def test_lrp_unsupported_layer_types():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedBaselineError, match="no propagation rule for Flatten, GELU") as e:
        make_baseline("lrp", model)
    assert isinstance(e.value, NotImplementedError) and isinstance(e.value, SalfCBMError)
    assert not any(hasattr(m, "rule") for m in model.modules())


def test_lrp_rejects_reused_layers():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    with pytest.raises(UnsupportedBaselineError, match="more than once"):
        make_baseline("lrp", Shared()).attribute(torch.randn(1, 3, 8, 8), target=0)


def test_lrp_inplace_relu_restored():
    model = TinyCNN()
    model.relu1.inplace = True
    h = make_baseline("lrp", model).attribute(torch.randn(1, 3, 8, 8), target=1)
    assert torch.isfinite(h).all() and model.relu1.inplace is True


def test_fullgrad_needs_bias_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(UnsupportedBaselineError, match="bias"):
        make_baseline("fullgrad", model)


def test_floors():
    x = torch.zeros(2, 3, 9, 11)
    r1 = make_baseline("random", None, seed=3).attribute(x)
    r2 = make_baseline("random", None, seed=3).attribute(x)
    assert torch.equal(r1, r2) and not torch.equal(r1[0], r1[1])
    c = make_baseline("center", None, sigma=0.2).attribute(x)
    assert c.shape == (2, 1, 9, 11)
    assert c[0, 0].argmax().item() == 4 * 11 + 5  # the centre pixel
    with pytest.raises(InputError, match="sigma"):
        make_baseline("center", None, sigma=0)


def test_time_attribution(cnn):
    t = time_attribution(make_baseline("gradcam", cnn, layer="conv2"), torch.randn(2, 3, 16, 16), target=0, repeats=2)
    assert isinstance(t, float) and t > 0
    with pytest.raises(InputError, match="repeats"):
        time_attribution(make_baseline("center", None), torch.randn(1, 3, 4, 4), repeats=0)


@pytest.mark.parametrize(
    ("module", "package", "name"), [("captum", "captum", "gradcam"), ("pytorch_grad_cam", "grad-cam", "scorecam")]
)
def test_missing_extra(monkeypatch, cnn, module, package, name):
    for key in [k for k in sys.modules if k == module or k.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match=rf"{package}.*salfcbm\[baselines\]"):
        make_baseline(name, cnn, layer="conv2")


def test_list_baselines_matches_paper_table():
    assert set(list_baselines()) >= {"lrp", "integrated_gradients", "gradcam", "gradcam++", "scorecam", "fullgrad"}


def test_repr(cnn):
    assert "gradcam" in repr(make_baseline("gradcam", cnn, layer="conv2"))


def test_channel_sum_convention_for_ig(cnn):
    x = torch.randn(1, 3, 8, 8)
    s = make_baseline("integrated_gradients", cnn, n_steps=4).attribute(x, target=0)
    a = make_baseline("integrated_gradients", cnn, n_steps=4, channel_reduction="abs_sum").attribute(x, target=0)
    assert (a >= s - 1e-6).all() and (a >= 0).all()
    with pytest.raises(InputError, match="channel_reduction"):
        make_baseline("integrated_gradients", cnn, channel_reduction="max")


def test_gradcam_matches_manual_formula(cnn):
    x = torch.randn(2, 3, 8, 8)
    h = make_baseline("gradcam", cnn, layer="conv2").attribute(x, target=1)
    acts = []
    handle = cnn.conv2.register_forward_hook(lambda m, i, o: acts.append(o))
    out = cnn(x)
    handle.remove()
    (g,) = torch.autograd.grad(out[:, 1].sum(), acts[0])
    manual = F.relu((g.mean(dim=(2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
    assert torch.allclose(h, F.interpolate(manual, size=(8, 8), mode="bilinear"), atol=1e-6)
