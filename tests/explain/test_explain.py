"""Explanations and interaction (paper 3.5-3.6): definitions checked on hand-set heads and maps."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.explain.attribution import SALFCBMAttribution
from salfcbm.errors import ClassNotFoundError, ConceptNotFoundError, InputError, SalfCBMError
from salfcbm.explain import (
    DecisionRule,
    ExplanationBatch,
    box_mask,
    mask_to_grid,
    points_mask,
    region_masks,
    upsample_maps,
)

CONCEPTS = ["fur", "grass", "sky", "wing", "beak"]
CLASSES = ["cat", "dog", "bird"]
SIZE = 64
GRID = 4  # divides SIZE: bilinear upsampling keeps the mean, area pooling is an exact block mean


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = salfcbm.wrap(
        timm.create_model("resnet10t", pretrained=False),
        concepts=CONCEPTS,
        num_classes=3,
        class_names=CLASSES,
        grid=GRID,
        backbone_weights=None,
        input_size=(SIZE, SIZE),
    )
    return m.eval()


def set_head(model, weight=None, bias=None, mean=None, std=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    M, L = model.num_concepts, model.num_classes
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(L, M, generator=g) if weight is None else torch.as_tensor(weight))
        model.head.bias.copy_(torch.randn(L, generator=g) if bias is None else torch.as_tensor(bias))
        model.concept_mean.copy_(torch.randn(M, generator=g) * 0.1 if mean is None else torch.as_tensor(mean))
        model.concept_std.copy_(torch.rand(M, generator=g) + 0.5 if std is None else torch.as_tensor(std))


@pytest.fixture
def images():
    return torch.randn(2, 3, SIZE, SIZE)


# ---------------------------------------------------------------------- tell what, show where
def test_contributions_plus_bias_equal_logit(model, images):
    set_head(model)
    out = model(images)
    expl = model.explain(images, target=[[0, 1, 2], [2, 0, 1]], top_k=3)
    assert isinstance(expl, ExplanationBatch) and len(expl) == 2
    norm = (out.concept_activations - model.concept_mean) / model.concept_std
    for i, ex in enumerate(expl):
        assert [c.target for c in ex.classes] == ([0, 1, 2] if i == 0 else [2, 0, 1])
        for ce in ex.classes:
            expected = model.head.weight[ce.target] * norm[i]
            torch.testing.assert_close(ce.contributions, expected.detach())
            assert ce.contributions.sum().item() + ce.bias == pytest.approx(ce.logit, abs=1e-5)
            assert ce.logit == pytest.approx(out.logits[i, ce.target].item(), abs=1e-5)
            # top-k by |S|, signed scores, names match indices
            ranked = expected.abs().argsort(descending=True)[:3]
            assert ce.concept_indices.tolist() == ranked.tolist()
            torch.testing.assert_close(ce.scores, expected[ranked].detach())
            assert ce.concepts == [CONCEPTS[j] for j in ranked.tolist()]
        assert ex.prediction == int(out.logits[i].argmax())
        assert ex.predicted_class == CLASSES[ex.prediction]
        torch.testing.assert_close(ex.probabilities, out.logits[i].softmax(-1).detach())


def test_heatmaps_are_bilinear_upsampled_top_k_maps(model, images):
    set_head(model)
    out = model(images)
    expl = model.explain(images, top_k=2)
    for i, ex in enumerate(expl):
        assert ex.top.target == ex.prediction
        assert ex.heatmaps.shape == (2, SIZE, SIZE)
        sel = out.concept_maps[i, ex.concept_indices][:, None].detach()
        expected = F.interpolate(sel, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
        torch.testing.assert_close(ex.heatmaps, expected)
    small = model.explain(images, top_k=2, heatmap_size=(16, 16))
    assert small[0].heatmaps.shape == (2, 16, 16)
    assert model.explain(images, heatmaps=False)[0].heatmaps is None


def test_explain_runs_the_backbone_once(model, images):
    set_head(model)
    calls = []
    handle = model.backbone.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        model.explain(images, target=[[0, 1], [2]], top_k=3)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_target_forms(model, images):
    set_head(model)
    by_int = model.explain(images, target=1)
    by_name = model.explain(images, target="dog")
    by_tensor = model.explain(images, target=torch.tensor([1, 1]))
    by_list = model.explain(images, target=["dog", 1])
    for e in (by_int, by_name, by_tensor, by_list):
        assert [ex.top.target for ex in e] == [1, 1]
        torch.testing.assert_close(e[0].scores, by_int[0].scores)
    with pytest.raises(InputError, match=r"one entry per image.*target=\[\[3, 5\]\]"):
        model.explain(images[:1], target=[0, 2])
    with pytest.raises(ClassNotFoundError, match="Closest class names: 'dog'"):
        model.explain(images, target="dgo")
    with pytest.raises(InputError, match="out of range for 3 classes"):
        model.explain(images, target=7)


def test_skip_zero_drops_concepts_without_contribution(model, images):
    w = torch.zeros(3, 5)
    w[0, 1], w[0, 3] = 2.0, -1.0
    set_head(model, weight=w)
    ex = model.explain(images, target=0, top_k=5)[0]
    assert sorted(ex.concepts) == ["grass", "wing"]
    assert ex.heatmaps.shape[0] == 2
    assert len(model.explain(images, target=0, top_k=5, skip_zero=False)[0].concepts) == 5


def test_explain_reuses_a_given_output(model, images):
    set_head(model)
    # hand-built maps: the explanation follows the given output, not a new forward pass
    maps = torch.arange(2 * 5 * GRID * GRID, dtype=torch.float32).reshape(2, 5, GRID, GRID) / 100
    act, norm, logits = model.head_from_maps(maps)
    out = salfcbm.SALFCBMOutput(logits=logits, concept_maps=maps, concept_activations=act)
    ex = model.explain(images, output=out, top_k=5)[1]
    torch.testing.assert_close(ex.top.contributions, (model.head.weight[ex.prediction] * norm[1]).detach())
    with pytest.raises(InputError, match="SALFCBMOutput"):
        model.explain(images[:1], output=out)


def test_to_dict_and_json(model, images, tmp_path):
    set_head(model)
    expl = model.explain(images, top_k=2)
    d = json.loads(expl.to_json(tmp_path / "e.json"))
    assert d == json.loads((tmp_path / "e.json").read_text())
    first = d["images"][0]["classes"][0]
    assert [c["concept"] for c in first["top_concepts"]] == expl[0].concepts
    assert first["heatmaps"][0]["shape"] == [SIZE, SIZE]
    assert sum(first["contributions"]) + first["bias"] == pytest.approx(first["logit"], abs=1e-5)
    assert expl.to_dict(heatmaps="drop")["images"][0]["classes"][0]["heatmaps"] is None
    full = expl[0].to_dict(heatmaps="full")["classes"][0]["heatmaps"]
    assert len(full) == 2 and len(full[0]) == SIZE and len(full[0][0]) == SIZE
    with pytest.raises(InputError, match="heatmaps"):
        expl.to_dict(heatmaps="all")


# ---------------------------------------------------------------------- explain anything
def test_region_activation_is_sum_of_mask_times_upsampled_maps(model, images):
    set_head(model)
    x = images[:1]
    up = upsample_maps(model(x).concept_maps[0].detach(), (SIZE, SIZE))
    masks = torch.zeros(3, SIZE, SIZE)
    masks[0, 5:30, 7:50] = 1
    masks[1, 40:, :20] = 1
    masks[2] = torch.rand(SIZE, SIZE)  # soft weights are allowed
    rep = model.explain_region(x, mask=masks, top_k=3)
    assert len(rep) == 3 and rep.masks.shape == (3, SIZE, SIZE)
    for r in range(3):
        expected = (masks[r] * up).sum((-2, -1))
        torch.testing.assert_close(rep[r].activations, expected, rtol=1e-4, atol=1e-3)
        assert rep[r].concept_indices.tolist() == expected.argsort(descending=True)[:3].tolist()
        assert rep[r].area == pytest.approx(float(masks[r].sum()), rel=1e-5)


def test_whole_image_region_ranks_like_pooled_activations(model, images):
    set_head(model)
    x = images[1:]
    out = model(x)
    rep = model.explain_region(x, mask=torch.ones(SIZE, SIZE, dtype=torch.bool), top_k=5)
    pooled = out.concept_activations[0].detach()  # mean pooling
    torch.testing.assert_close(rep[0].activations / SIZE**2, pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rep[0].mean_activations, pooled, rtol=1e-4, atol=1e-5)
    assert rep[0].concept_indices.tolist() == pooled.argsort(descending=True).tolist()
    assert rep[0].area_fraction == pytest.approx(1.0)
    std = model.explain_region(x, mask=torch.ones(SIZE, SIZE), standardize=True, output=out)
    expected = SIZE**2 * (pooled - model.concept_mean) / model.concept_std
    torch.testing.assert_close(std[0].activations, expected, rtol=1e-4, atol=1e-3)


def test_box_points_and_mask_describe_the_same_region(model, images):
    set_head(model)
    x = images[0]
    out = model(x[None])
    mask = torch.zeros(SIZE, SIZE)
    mask[10:30, 4:20] = 1  # rows y 10..29, columns x 4..19
    by_mask = model.explain_region(x, mask=mask, output=out)
    by_box = model.explain_region(x, box=(4, 10, 20, 30), output=out)
    torch.testing.assert_close(by_box[0].activations, by_mask[0].activations)
    # one point with radius 0 is one pixel; a disk is the pixels within radius
    pix = torch.zeros(SIZE, SIZE)
    pix[12, 40] = 1
    torch.testing.assert_close(
        model.explain_region(x, points=[(40, 12)], radius=0, output=out)[0].activations,
        model.explain_region(x, mask=pix, output=out)[0].activations,
    )
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disks = ((xx - 20) ** 2 + (yy - 30) ** 2 <= 25) | ((xx - 50) ** 2 + (yy - 5) ** 2 <= 25)
    torch.testing.assert_close(
        model.explain_region(x, points=[(20, 30), (50, 5)], radius=5, output=out)[0].activations,
        model.explain_region(x, mask=disks, output=out)[0].activations,
    )
    several = model.explain_region(x, box=[(4, 10, 20, 30), (0, 0, 64, 64)], output=out)
    assert len(several) == 2
    torch.testing.assert_close(several[0].activations, by_box[0].activations)
    two_groups = model.explain_region(x, points=[[(20, 30)], [(50, 5)]], radius=5, output=out)
    assert len(two_groups) == 2


def test_region_validation(model, images):
    x = images[0]
    with pytest.raises(InputError, match=r"Region\(s\) \[1\] are empty"):
        model.explain_region(x, mask=torch.stack([torch.ones(SIZE, SIZE), torch.zeros(SIZE, SIZE)]))
    with pytest.raises(InputError, match="outside the 64x64"):
        model.explain_region(x, box=(10, 10, 80, 20))
    with pytest.raises(InputError, match="empty or outside"):
        model.explain_region(x, box=(10, 10, 10, 20))
    with pytest.raises(InputError, match="outside the 64x64"):
        model.explain_region(x, points=[(70, 3)])
    with pytest.raises(InputError, match="exactly one region"):
        model.explain_region(x, box=(0, 0, 4, 4), points=[(1, 1)])
    with pytest.raises(InputError, match="exactly one region"):
        model.explain_region(x)
    with pytest.raises(InputError, match=r"\(H, W\) = \(64, 64\)"):
        model.explain_region(x, mask=torch.ones(32, 32))
    with pytest.raises(InputError, match="one image"):
        model.explain_region(images, box=(0, 0, 4, 4))


def test_region_helpers():
    assert box_mask((1, 0, 3, 2), (3, 4)).int().tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert points_mask([(1, 1)], (3, 3), radius=1).int().tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    # default point radius: half a grid cell
    m = region_masks((64, 64), points=[(32, 32)], grid=(4, 4))
    assert m.shape == (1, 64, 64) and int(m.sum()) == int(points_mask([(32, 32)], (64, 64), 8).sum())


@settings(max_examples=40, deadline=None)
@given(
    x0=st.integers(0, 63), y0=st.integers(0, 63), w=st.integers(1, 64), h=st.integers(1, 64),
    grid=st.sampled_from([1, 2, 4, 8, 16]),
)
def test_box_area_and_grid_downsampling_keep_the_area_fraction(x0, y0, w, h, grid):
    x1, y1 = min(64, x0 + w), min(64, y0 + h)
    m = box_mask((x0, y0, x1, y1), (64, 64))
    assert int(m.sum()) == (x1 - x0) * (y1 - y0)
    g = mask_to_grid(m, (grid, grid))
    assert g.shape == (grid, grid)
    assert float(g.mean()) == pytest.approx((x1 - x0) * (y1 - y0) / 64**2, abs=1e-6)


# ---------------------------------------------------------------------- local intervention
@pytest.mark.parametrize("beta", [2.5, -1.5])
def test_intervention_changes_logits_by_beta_w_area_over_std(model, images, beta):
    w = torch.tensor([[0.0, 1.5, 0.0, 0.0, -0.5], [0.3, 0.0, 0.0, 0.0, 0.0], [0.0, -2.0, 1.0, 0.0, 0.0]])
    std = torch.tensor([1.0, 0.5, 2.0, 1.0, 4.0])
    set_head(model, weight=w, std=std)
    x = images[0]
    box = (3, 5, 40, 27)  # not aligned with the grid cells
    frac = (40 - 3) * (27 - 5) / SIZE**2
    res = model.intervene(x, "grass", box=box, beta=beta)
    expected = beta * w[:, 1] * frac / std[1]
    torch.testing.assert_close(res.delta_logits, expected, rtol=1e-4, atol=1e-5)
    assert res.concepts == ["grass"] and res.concept_indices == [1] and res.betas == [beta]
    assert float(res.region.mean()) == pytest.approx(frac)
    # several concepts, one beta each, whole image
    res2 = model.intervene(x, ["grass", 4], beta=[1.0, 2.0])
    torch.testing.assert_close(res2.delta_logits, w[:, 1] / std[1] + 2.0 * w[:, 4] / std[4], rtol=1e-4, atol=1e-5)
    # contributions before/after follow the definition
    norm_a = (res.activations_after - model.concept_mean) / model.concept_std
    torch.testing.assert_close(res.contributions_after, (w[res.target] * norm_a).detach())
    assert res.contributions_after.sum().item() + model.head.bias[res.target].item() == pytest.approx(
        res.logits_after[res.target].item(), abs=1e-5
    )


def test_intervention_accepts_grid_masks_and_flips_predictions(model, images):
    w = torch.zeros(3, 5)
    w[2, 3] = 1.0
    set_head(model, weight=w, bias=torch.zeros(3), std=torch.ones(5))
    x = images[0]
    grid_mask = torch.zeros(GRID, GRID)
    grid_mask[0, :2] = 1  # 2 of 16 cells
    res = model.intervene(x, "wing", region=grid_mask, beta=100.0)
    torch.testing.assert_close(res.region, grid_mask)
    assert res.delta_logits[2].item() == pytest.approx(100.0 * 2 / 16, rel=1e-5)
    assert res.prediction_after == 2 and res.class_after == "bird"
    same = model.intervene(x, "wing", region=(0, 0, 32, 16), beta=100.0)  # the same cells, as a box
    torch.testing.assert_close(same.logits_after, res.logits_after)
    d = json.loads(res.to_json())
    assert d["class_after"] == "bird" and len(d["region_grid"]) == GRID


def test_unknown_concept_lists_closest_names(model, images):
    with pytest.raises(ConceptNotFoundError, match=r"Unknown concept 'gras'\. Closest concepts: 'grass'") as e:
        model.intervene(images[0], "gras")
    assert isinstance(e.value, KeyError) and isinstance(e.value, SalfCBMError)
    with pytest.raises(InputError, match="one number per concept"):
        model.intervene(images[0], ["fur", "sky"], beta=[1.0])
    with pytest.raises(InputError, match="at most one of"):
        model.intervene(images[0], "fur", box=(0, 0, 4, 4), mask=torch.ones(SIZE, SIZE))


# ---------------------------------------------------------------------- decision rules
def test_decision_rules_list_exactly_the_non_zero_weights(model):
    w = torch.tensor([[0.0, 0.7, 0.0, -1.2, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0], [3.0, 0.0, -0.2, 0.0, 0.0]])
    set_head(model, weight=w)
    r = model.decision_rules("cat")
    assert isinstance(r, DecisionRule)
    assert r.pairs() == [("wing", pytest.approx(-1.2)), ("grass", pytest.approx(0.7)), ("beak", pytest.approx(0.1))]
    assert r.bias == pytest.approx(model.head.bias[0].item())
    assert len(model.decision_rules(1)) == 0
    rules = model.decision_rules([0, "bird"], top_k=1)
    assert [x.concepts for x in rules] == [["wing"], ["fur"]]
    assert model.decision_rules(0, threshold=0.5).concepts == ["wing", "grass"]
    assert json.loads(r.to_json())["rules"][0]["concept"] == "wing"


# ---------------------------------------------------------------------- Captum-style adapter
def test_attribution_equals_the_hand_formula(model, images):
    set_head(model)
    out = model(images)
    target = torch.tensor([0, 2])
    attr = SALFCBMAttribution(model).attribute(images, target=target)
    assert attr.shape == (2, 1, SIZE, SIZE) and not attr.requires_grad
    up = upsample_maps(out.concept_maps.detach(), (SIZE, SIZE))  # (B, M, H, W)
    coef = model.head.weight[target].detach() / model.concept_std  # (B, M)
    expected = (coef[:, :, None, None] * up).sum(1, keepdim=True)
    torch.testing.assert_close(attr, expected, rtol=1e-4, atol=1e-4)
    # the grid map's mean plus a constant is the logit (mean pooling)
    grid = SALFCBMAttribution(model, upsample=False).attribute(images, target=target)
    assert grid.shape == (2, 1, GRID, GRID)
    W, b, mu, sd = model.head.weight.detach(), model.head.bias.detach(), model.concept_mean, model.concept_std
    const = b[target] - (W[target] * mu / sd).sum(-1)
    torch.testing.assert_close(grid.mean((-3, -2, -1)) + const, out.logits[torch.arange(2), target].detach(), rtol=1e-4, atol=1e-4)
    relu = SALFCBMAttribution(model, relu=True).attribute(images, target=target)
    torch.testing.assert_close(relu, expected.clamp_min(0), rtol=1e-4, atol=1e-4)
    pred = SALFCBMAttribution(model).attribute(images)  # target None = prediction
    torch.testing.assert_close(pred, SALFCBMAttribution(model).attribute(images, target=out.logits.argmax(-1)))
    conc = SALFCBMAttribution(model, mode="concept").attribute(images, target="sky")
    torch.testing.assert_close(conc[:, 0], up[:, 2])
    with pytest.raises(ConceptNotFoundError, match="Closest concepts: 'sky'"):
        SALFCBMAttribution(model, mode="concept").attribute(images, target="skye")
    with pytest.raises(InputError, match="mode"):
        SALFCBMAttribution(model, mode="layer")
