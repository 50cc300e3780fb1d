"""FeatureTap and wrap(): layouts, default layers, errors, spatial correctness, hook hygiene."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import salfcbm
from salfcbm.errors import InputError, LayerNotFoundError, NonSpatialLayerError
from salfcbm.core.tap import FeatureTap, token_grid
from tests.core._zoo import REPRESENTATIVE

CONCEPTS = ["a wing", "a beak", "water"]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())




@pytest.mark.parametrize("key", list(REPRESENTATIVE))
def test_wrap_default_layer_on_representative_models(key):
    build, size, layout, grid = REPRESENTATIVE[key]
    backbone = build()
    model = salfcbm.wrap(
        backbone, concepts=CONCEPTS, num_classes=4, grid=(3, 3), input_size=(size, size), backbone_weights=None
    )
    assert model.tap.layout == layout
    x = torch.randn(2, 3, size, size)
    fmap = model.forward_features(x)
    assert tuple(fmap.shape[-2:]) == grid
    assert fmap.shape[1] == model.config["feature_channels"]
    out = model(x)
    assert out.logits.shape == (2, 4)
    assert out.concept_maps.shape == (2, 3, 3, 3)
    assert out.concept_activations.shape == (2, 3)
    assert torch.isfinite(out.logits).all()
    assert _no_hooks(backbone)


def test_prefix_tokens_come_from_the_contract():
    deit = timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=1)
    reg = timm.create_model("test_vit2")
    assert FeatureTap(deit).num_prefix_tokens == 2
    assert FeatureTap(reg).num_prefix_tokens == reg.num_prefix_tokens
    tv = torchvision.models.VisionTransformer(32, 16, num_layers=1, num_heads=1, hidden_dim=32, mlp_dim=32)
    assert FeatureTap(tv).num_prefix_tokens == 1


def test_patch_tokens_are_folded_in_row_major_order():
    """The map at (i, j) is exactly the token of patch (i, j): checked at the patch embedding."""
    vit = timm.create_model("test_vit", dynamic_img_size=True)
    tap = FeatureTap(vit, "patch_embed")
    x = torch.randn(1, 3, 160, 96)  # non-square, not the default size
    fmap = tap(x)
    assert fmap.shape[-2:] == (10, 6)
    x2 = x.clone()
    x2[:, :, 16 * 3 : 16 * 4, 16 * 5 : 16 * 6] += 1.0  # patch (3, 5)
    diff = (tap(x2) - fmap).abs().sum(1)[0]
    assert diff[3, 5] > 0
    diff[3, 5] = 0
    assert diff.max() == 0


def test_dynamic_size_tokens_after_prefix():
    vit = timm.create_model("test_vit2", dynamic_img_size=True)
    tap = FeatureTap(vit)
    assert tap(torch.randn(2, 3, 64, 128)).shape[-2:] == (4, 8)


def test_cnn_change_stays_in_matching_cells():
    """Changing one corner of the input changes an early CNN map mostly in the matching cells."""
    cnn = timm.create_model("resnet10t", num_classes=3).eval()
    tap = FeatureTap(cnn, "layer1")
    x = torch.randn(1, 3, 64, 64)
    base = tap(x)  # (1, C, 16, 16)
    x2 = x.clone()
    x2[:, :, 40:56, 8:24] = torch.randn(1, 3, 16, 16)
    delta = (tap(x2) - base).abs().sum(1)[0]
    cells = torch.zeros_like(delta, dtype=torch.bool)
    cells[10:14, 2:6] = True  # the changed region at stride 4
    grown = torch.nn.functional.max_pool2d(cells[None, None].float(), 7, 1, 3)[0, 0].bool()  # receptive field
    assert delta[grown].sum() / delta.sum() > 0.95
    assert delta[cells].mean() > 5 * delta[~grown].mean() + 1e-12


def test_cls_concat_appends_the_cls_token_everywhere():
    vit = timm.create_model("test_vit").eval()
    plain, cat = FeatureTap(vit), FeatureTap(vit, cls_concat=True)
    x = torch.randn(2, 3, 160, 160)
    a, b = plain(x), cat(x)
    assert b.shape[1] == 2 * a.shape[1]
    assert torch.equal(b[:, : a.shape[1]], a)
    cls = b[:, a.shape[1] :]
    assert torch.equal(cls, cls[:, :, :1, :1].expand_as(cls))
    with torch.no_grad():
        tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
    assert torch.allclose(cls[:, :, 3, 7], tokens[:, 0], atol=1e-5)


def test_cls_concat_needs_a_cls_token():
    with pytest.raises(InputError, match="CLS token"):
        FeatureTap(timm.create_model("test_vit2"), cls_concat=True)
    with pytest.raises(InputError, match="cls_concat=False"):
        FeatureTap(timm.create_model("resnet10t"), cls_concat=True)


def test_wrong_layer_name_lists_closest_names():
    cnn = timm.create_model("resnet10t")
    with pytest.raises(LayerNotFoundError, match="'layer4'") as e:
        salfcbm.wrap(cnn, concepts=CONCEPTS, num_classes=2, layer="layer_4", backbone_weights=None)
    assert isinstance(e.value, KeyError)
    assert "layer4" in e.value.suggestions


def test_non_spatial_layer_explains_and_suggests():
    cnn = timm.create_model("resnet10t")
    with pytest.raises(NonSpatialLayerError, match="try layer='layer4'") as e:
        salfcbm.wrap(cnn, concepts=CONCEPTS, num_classes=2, layer="global_pool", backbone_weights=None)
    assert isinstance(e.value, ValueError)
    assert "not a spatial map" in str(e.value)


class _Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.boom = False

    def forward(self, x):
        x = self.stem(x)
        if self.boom:
            raise RuntimeError("kaboom")
        return self.body(x)


def test_no_hook_survives_an_exception_in_forward():
    net = _Exploding()
    model = salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, layer="body", input_size=(32, 32))
    net.boom = True
    with pytest.raises(RuntimeError, match="kaboom"):
        model(torch.randn(1, 3, 32, 32))
    assert _no_hooks(net)
    net.boom = False
    assert model(torch.randn(1, 3, 32, 32)).logits.shape == (1, 2)
    assert _no_hooks(net)


def test_wrap_does_not_mutate_the_users_model():
    cnn = timm.create_model("resnet10t", num_classes=3)
    cnn.train()
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    flags = [p.requires_grad for p in cnn.parameters()]
    model = salfcbm.wrap(cnn, concepts=CONCEPTS, num_classes=2, input_size=(64, 64), backbone_weights=None)
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    out.logits.sum().backward()
    assert cnn.training and all(m.training for m in cnn.modules())
    assert [p.requires_grad for p in cnn.parameters()] == flags
    after = cnn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics untouched while frozen
    assert all(p.grad is None for p in cnn.parameters())
    assert model.bottleneck.weight.grad is not None
    assert model.unwrap() is cnn
    assert _no_hooks(cnn)
    with pytest.raises(salfcbm.SalfCBMError, match="unwrapped"):
        model(torch.randn(1, 3, 64, 64))


def test_unfrozen_backbone_trains():
    cnn = timm.create_model("resnet10t", num_classes=3)
    model = salfcbm.wrap(cnn, concepts=CONCEPTS, num_classes=2, input_size=(64, 64), freeze_backbone=False)
    model(torch.randn(2, 3, 64, 64)).logits.sum().backward()
    assert any(p.grad is not None for p in cnn.parameters())
    assert len(model.trainable_parameters()) > 4


def test_input_gradients_flow_through_a_frozen_backbone():
    """Captum-style attribution on the wrapped model needs d logits / d input."""
    model = salfcbm.wrap(timm.create_model("resnet10t"), concepts=CONCEPTS, num_classes=2, input_size=(32, 32))
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x).logits[0, 0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dtype_and_device_moves():
    model = salfcbm.wrap(timm.create_model("test_vit"), concepts=CONCEPTS, num_classes=2, backbone_weights=None)
    model = model.to(torch.float64)
    out = model(torch.randn(1, 3, 160, 160, dtype=torch.float64))
    assert out.logits.dtype == torch.float64 and out.concept_maps.dtype == torch.float64


def test_issue_example_resnet50():
    model = salfcbm.wrap(timm.create_model("resnet50"), concepts=CONCEPTS, num_classes=10, backbone_weights=None)
    out = model(torch.randn(2, 3, 224, 224))
    assert out.logits.shape == (2, 10)
    assert out.concept_maps.shape == (2, 3, 7, 7)
    assert out.concept_activations.shape == (2, 3)
    assert model.layer == "layer4"


def test_wrap_by_name_records_spec():
    model = salfcbm.wrap("timm:test_vit", pretrained=False, concepts=CONCEPTS, num_classes=2)
    assert model.backbone_spec == {"source": "timm", "name": "test_vit", "weights": None, "kwargs": {}}
    tv = salfcbm.wrap(torchvision.models.resnet18(), concepts=CONCEPTS, num_classes=2, backbone_weights=None)
    assert tv.backbone_spec["source"] == "torchvision"
    assert tv.backbone_spec["name"] == "resnet18"


def test_bad_arguments_fail_eagerly():
    vit = timm.create_model("test_vit")
    with pytest.raises(InputError, match="unique"):
        salfcbm.wrap(vit, concepts=["a", "a"], num_classes=2)
    with pytest.raises(InputError, match="pooling"):
        salfcbm.wrap(vit, concepts=CONCEPTS, num_classes=2, pooling="median")
    with pytest.raises(InputError, match="grid"):
        salfcbm.wrap(vit, concepts=CONCEPTS, num_classes=2, grid=(0, 7))
    with pytest.raises(InputError, match="Unknown keyword"):
        salfcbm.wrap(vit, concepts=CONCEPTS, num_classes=2, bogus=1)


def test_token_grid_matches_aspect_ratio():
    assert token_grid(196, 224, 224) == (14, 14)
    assert token_grid(60, 160, 96) == (10, 6)
    assert token_grid(60, 96, 160) == (6, 10)
    assert token_grid(197, 224, 224) is None
