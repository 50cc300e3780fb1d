"""torchcam's CAM extractors and LeGrad behind make_baseline / build_methods (optional extra; tiny models)."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch
from torch import nn

import salfcbm
from salfcbm.demo.scenes import SmallConvNet
from salfcbm.errors import InputError, MissingExtraError, UnsupportedBaselineError
from salfcbm.evaluation.baselines import list_baselines, make_baseline
from salfcbm.evaluation.benchmark import build_methods

torchcam = pytest.importorskip("torchcam")

LAYER_METHODS = [n for n in list_baselines(optional=True) if n.startswith("torchcam_")]


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def _state(model: nn.Module):
    hooks = sum(len(getattr(m, d)) for m in model.modules()
                for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))
    return hooks, [m.training for m in model.modules()], [p.grad is None for p in model.parameters()]


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_torchcam_layer_methods_on_a_tiny_cnn(name):
    model = _cnn().train()  # the call runs in eval mode and gives the mode back
    before = _state(model)
    att = make_baseline(name, model, layer="2")
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    heat = att.attribute(x, target=torch.tensor([0, 2]))
    assert heat.shape == (2, 1, 16, 16) and torch.isfinite(heat).all()
    assert heat.min() >= -1e-6 and heat.max() <= 1 + 1e-6  # torchcam normalises to [0, 1] per image
    assert _state(model) == before  # no hook, mode or gradient left behind


def test_torchcam_gradcam_equals_the_gradcam_arithmetic():
    model = _cnn()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    heat = make_baseline("torchcam_gradcam", model, layer="2").attribute(x, target=1)
    acts = {}
    h = model[2].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    out = model(x)
    h.remove()
    a = acts["a"]
    g = torch.autograd.grad(out[0, 1], a)[0]
    cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-8)
    want = nn.functional.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(heat, want, atol=1e-5, rtol=1e-4)


def test_torchcam_cam_needs_a_linear_classifier():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(UnsupportedBaselineError, match="nn.Linear"):
        make_baseline("torchcam_cam", model, layer="0").attribute(torch.rand(1, 3, 8, 8), target=0)


def _tiny_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                            num_classes=3).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: every gradient would be 0
    return vit


def test_legrad_on_a_tiny_torchvision_vit():
    vit = _tiny_vit()
    before = _state(vit)
    att = make_baseline("legrad", vit, n_layers=2)
    assert att.layers == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    heat = att.attribute(torch.rand(2, 3, 32, 32), target=None)
    assert heat.shape == (2, 1, 32, 32) and torch.isfinite(heat).all() and heat.max() > 0
    assert _state(vit) == before


def test_legrad_refuses_a_cnn_and_timm_vits():
    with pytest.raises(UnsupportedBaselineError, match="MultiheadAttention"):
        make_baseline("legrad", _cnn())
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                            num_classes=2)
    with pytest.raises(UnsupportedBaselineError, match="timm"):
        make_baseline("legrad", vit)


def test_build_methods_offers_torchcam_by_name_only():
    net = SmallConvNet(num_classes=2, width=4).eval()
    m = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, grid=4, input_size=(32, 32),
                     backbone_weights=None).eval()
    default, _ = build_methods(m, on_error="record")
    assert not any(n.startswith("torchcam") or n == "legrad" for n in default)
    methods, skipped = build_methods(m, ["torchcam_gradcam", "torchcam_layercam", "legrad"], on_error="record")
    assert sorted(methods) == ["torchcam_gradcam", "torchcam_layercam"] and "MultiheadAttention" in skipped["legrad"]
    assert methods["torchcam_gradcam"].attributor.layer_name == m.layer
    x = torch.rand(2, 3, 32, 32)
    heat = methods["torchcam_layercam"].attribute(methods["torchcam_layercam"].inputs(x), torch.tensor([0, 1]))
    assert heat.shape == (2, 1, 32, 32)
    with pytest.raises(InputError, match="torchcam_gradcam"):
        make_baseline("torchcam_gradcm", net)


def test_missing_torchcam_names_the_install(monkeypatch):
    real_import = builtins.__import__

    def no_torchcam(name, *args, **kwargs):
        if name == "torchcam" or name.startswith("torchcam."):
            raise ImportError("No module named 'torchcam'")
        return real_import(name, *args, **kwargs)

    for mod in [k for k in sys.modules if k == "torchcam" or k.startswith("torchcam.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_torchcam)
    for name in ("torchcam_gradcam", "legrad"):
        with pytest.raises(MissingExtraError, match=r"pip install 'salfcbm\[baselines\]'"):
            make_baseline(name, _cnn(), layer="2") if name != "legrad" else make_baseline(name, _cnn())
