"""Softmax, max and other non-linear poolings: the chunked, project-then-resize path gives exactly what
building every concept map and pooling them gives (issue 21.5), without holding all the maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.core import activations
from salfcbm.core.activations import pooled_activations, project_first
from salfcbm.core.pooling import get_pooling

# (tapped map, grid): finer grid (project first), equal, coarser (resize first), non-square both ways
SHAPES = [((4, 4), (7, 7)), ((5, 5), (5, 5)), ((8, 8), (3, 3)), ((3, 5), (6, 4)), ((2, 7), (9, 3))]


def _reference(fmap, weight, bias, grid, pooling, config):
    """All maps at once: resize the features, project, pool (the path of salfcbm <= 0.1)."""
    f = fmap if tuple(fmap.shape[-2:]) == grid else F.interpolate(fmap, size=grid, mode="bilinear",
                                                                 align_corners=False)
    return get_pooling(pooling)(F.conv2d(f, weight, bias), config)


def _model(pooling, grid, bias=False, temperature=1.0):
    torch.manual_seed(0)
    m = salfcbm.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.ReLU()),
                     concepts=[f"c{i}" for i in range(11)], num_classes=3, grid=grid, input_size=(16, 16), layer="1",
                     pooling=pooling, softmax_temperature=temperature)
    if bias:  # a model saved before 0.2 carries a bottleneck bias; the rewrite must keep it exact
        m.bottleneck = torch.nn.Conv2d(6, 11, 1, bias=True)
    with torch.no_grad():
        m.bottleneck.weight.normal_()
        m.concept_std.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("pooling", ["softmax", "max"])
@pytest.mark.parametrize("size,grid", SHAPES)
@pytest.mark.parametrize("chunk", [1, 40, 1 << 22])
def test_chunked_pooling_equals_all_maps_then_pool(pooling, size, grid, chunk):
    torch.manual_seed(1)
    m = _model(pooling, grid, bias=True)
    fmap = torch.randn(3, 6, *size) * 3
    got = pooled_activations(fmap, m.bottleneck.weight, m.bottleneck.bias, grid, get_pooling(pooling), m.config,
                             chunk_elements=chunk)
    want = _reference(fmap, m.bottleneck.weight, m.bottleneck.bias, grid, pooling, m.config)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling,temperature", [("softmax", 1.0), ("softmax", 0.25), ("max", 1.0), ("mean", 1.0)])
@pytest.mark.parametrize("grid", [4, 7, (3, 9)])
def test_model_forward_equals_the_maps_path(pooling, temperature, grid):
    m = _model(pooling, grid, temperature=temperature)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        out = m(x)
        maps = m.concept_maps_from_features(m.forward_features(x))
        act, _, logits = m.head_from_maps(maps)
        assert not out.maps_computed  # the maps are built only when read
        torch.testing.assert_close(out.concept_activations, act, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.concept_maps, maps, atol=1e-5, rtol=1e-5)  # and read, they are the maps


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), gh=st.integers(1, 9), gw=st.integers(1, 9),
       b=st.integers(1, 3), chunk=st.integers(1, 200), pooling=st.sampled_from(["softmax", "max"]),
       seed=st.integers(0, 2**16))
def test_any_shape_and_chunk_is_exact(h, w, gh, gw, b, chunk, pooling, seed):
    g = torch.Generator().manual_seed(seed)
    fmap = torch.randn(b, 5, h, w, generator=g)
    weight, bias = torch.randn(9, 5, 1, 1, generator=g), torch.randn(9, generator=g)
    m = _model(pooling, (gh, gw))
    got = pooled_activations(fmap, weight, bias, (gh, gw), get_pooling(pooling), m.config, chunk_elements=chunk)
    want = _reference(fmap, weight, bias, (gh, gw), pooling, m.config)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_full_maps_are_never_held(monkeypatch):
    """With a small chunk budget, no convolution output holds more than the chunk's maps."""
    m = _model("softmax", 7)
    monkeypatch.setattr(activations, "CHUNK_ELEMENTS", 2 * 7 * 7 * 3)
    seen = []
    real = F.conv2d

    def spy(*a, **k):
        out = real(*a, **k)
        seen.append(out.shape)
        return out

    monkeypatch.setattr(activations.F, "conv2d", spy)
    fmap = torch.randn(2, 6, 7, 7)
    got = pooled_activations(fmap, m.bottleneck.weight, None, (7, 7), get_pooling("softmax"), m.config,
                             chunk_elements=activations.CHUNK_ELEMENTS)
    assert [s[1] for s in seen] == [3, 3, 3, 2]  # 11 concepts in chunks of 3, never all 11
    monkeypatch.setattr(activations.F, "conv2d", real)
    torch.testing.assert_close(got, _reference(fmap, m.bottleneck.weight, None, (7, 7), "softmax", m.config),
                               atol=1e-5, rtol=1e-5)


def test_projection_runs_on_the_smaller_of_map_and_grid():
    assert project_first((7, 7), (14, 14)) and not project_first((14, 14), (7, 7)) and not project_first((7, 7), (7, 7))


def test_explanations_of_a_softmax_model_match_the_maps_path():
    m = _model("softmax", 5)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        batch = m.explain(x, top_k=3)
        maps = m.concept_maps_from_features(m.forward_features(x))
        _, norm, logits = m.head_from_maps(maps)
    for i in range(2):
        c = int(logits[i].argmax())
        assert batch[i].prediction == c
        torch.testing.assert_close(batch[i].normalized_activations.float(), norm[i], atol=1e-5, rtol=1e-5)
        top = batch[i].top
        torch.testing.assert_close(top.contributions.float(), m.head.weight[c] * norm[i], atol=1e-5, rtol=1e-5)
        assert top.heatmaps.shape == (3, 16, 16)
