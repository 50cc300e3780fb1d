"""The GPU path, checked on CPU: torch.compile without graph breaks, bf16 autocast and bf16 weights,
channels-last inputs."""

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
    return m


def test_compile_has_no_graph_breaks_and_matches_eager(model):
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    compiled = torch.compile(model, backend="eager")
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.concept_maps, ref.concept_maps)
    assert all(not m._forward_hooks for m in model.backbone.modules())


def test_bf16_autocast_matches_fp32_within_tolerance(model):
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    scale = float(ref.logits.detach().abs().max())
    torch.testing.assert_close(out.logits.float(), ref.logits, rtol=0.05, atol=0.05 * scale)
    assert out.concept_maps.shape == ref.concept_maps.shape


def test_bf16_weights_and_channels_last_inputs(model):
    import copy

    x = torch.randn(2, 3, 64, 64)
    ref = model(x).logits
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    out = m16(x.to(torch.bfloat16))
    assert out.logits.dtype == torch.bfloat16
    torch.testing.assert_close(out.logits.float(), ref, rtol=0.05, atol=0.05 * float(ref.detach().abs().max()))
    cl = model(x.to(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
