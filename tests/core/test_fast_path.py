"""Pool-then-project inference and lazy concept maps give what the maps path gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import salfcbm
from salfcbm.core.outputs import SALFCBMOutput
from tests.core._zoo import REPRESENTATIVE  # the test zoo: CNN, ViT with CLS, registers, Swin, torchvision

CONCEPTS = ["a wing", "a beak", "water", "sky", "grass"]
# (grid, pooling): a grid coarser than, finer than / non-square, and equal to the tapped map
SETTINGS = [((3, 3), "mean"), ((5, 4), "mean"), (None, "mean"), ((3, 3), "softmax"), ((5, 4), "max")]


def _reference(model, x):
    """Today's path: every concept map, then pool, standardise, classify."""
    fmap = model.forward_features(x)
    maps = model.concept_maps_from_features(fmap)
    act, _, logits = model.head_from_maps(maps)
    return maps, act, logits


def _randomize(model):
    with torch.no_grad():
        for p in (model.bottleneck.bias, model.head.weight, model.head.bias):
            if p is not None:  # the bottleneck is bias-free unless an old checkpoint carries one
                p.normal_()
        model.concept_mean.normal_()
        model.concept_std.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("key", list(REPRESENTATIVE))
def test_pool_then_project_matches_the_maps_path(key):
    build, size, _layout, fgrid = REPRESENTATIVE[key]
    backbone = build()
    x = torch.randn(2, 3, size, size)
    for grid, pooling in SETTINGS:
        model = _randomize(salfcbm.wrap(backbone, concepts=CONCEPTS, num_classes=4, grid=grid or fgrid,
                                        pooling=pooling, input_size=(size, size), backbone_weights=None))
        with torch.no_grad():
            maps, act, logits = _reference(model, x)
            out = model(x)
            assert not out.maps_computed  # every pooling builds its maps only when read (21.5)
            tol = {"rtol": 1e-4, "atol": 1e-4 * float(maps.abs().max())}
            torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))
            torch.testing.assert_close(out.concept_activations, act, **tol)
            idx = torch.tensor([[4, 0], [1, 1]])
            torch.testing.assert_close(out.concept_maps_at(idx), maps[torch.arange(2)[:, None], idx], **tol)
            coef = torch.randn(2, len(CONCEPTS))
            torch.testing.assert_close(out.combine_maps(coef), torch.einsum("bm,bmhw->bhw", coef, maps),
                                       rtol=1e-4, atol=1e-3 * float(maps.abs().max()))
            regions = torch.rand(3, *maps.shape[-2:])
            torch.testing.assert_close(out.region_sums(regions, row=1), torch.einsum("rij,mij->rm", regions, maps[1]),
                                       rtol=1e-4, atol=1e-3 * float(maps.abs().max()))
            torch.testing.assert_close(out.concept_maps, maps, **tol)  # the lazy maps, read last


def test_lazy_maps_carry_gradients_like_the_maps_path():
    build, size, _, _ = REPRESENTATIVE["timm-resnet (CNN)"]
    model = salfcbm.wrap(build(), concepts=CONCEPTS, num_classes=4, grid=3, input_size=(size, size),
                         backbone_weights=None)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    (out.logits.sum() + out.concept_maps.square().sum()).backward()
    g_fast = model.bottleneck.weight.grad.clone()
    model.zero_grad()
    maps, _, logits = _reference(model, x)
    (logits.sum() + maps.square().sum()).backward()
    torch.testing.assert_close(g_fast, model.bottleneck.weight.grad, rtol=1e-4, atol=1e-5)


def test_output_behaves_like_a_model_output():
    build, size, _, _ = REPRESENTATIVE["timm-resnet (CNN)"]
    model = salfcbm.wrap(build(), concepts=CONCEPTS, num_classes=4, grid=3, input_size=(size, size),
                         backbone_weights=None)
    out = model(torch.randn(2, 3, size, size))
    assert isinstance(out, SALFCBMOutput)
    assert out["logits"] is out.logits is out[0]
    assert list(out.keys()) == ["logits", "concept_maps", "concept_activations"] == list(out)
    _, maps, act = out.to_tuple()
    assert maps.shape == (2, 5, 3, 3) and act.shape == (2, 5)
    assert out[1:][1] is out.concept_activations
    assert dict(out.items())["concept_maps"] is maps
    assert "lazy" not in repr(out) and len(repr(out)) < 200
    with pytest.raises(KeyError, match="fields"):
        out["maps"]
    with pytest.raises(IndexError):
        out[3]
    y = torch.tensor([0, 3])
    torch.testing.assert_close(F.cross_entropy(model.as_classifier()(torch.zeros(2, 3, size, size)), y),
                               F.cross_entropy(model(torch.zeros(2, 3, size, size)).logits, y))
