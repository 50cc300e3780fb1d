"""The model-parameter randomisation test (Adebayo et al. 2018): salfcbm.evaluation.sanity (tiny models, offline)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.demo.scenes import SmallConvNet
from salfcbm.errors import DegenerateResultWarning, InputError
from salfcbm.evaluation.sanity import model_randomisation_test, spearman, ssim

CONCEPTS = ["a", "b", "c", "d"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=3, width=4).eval()
    return salfcbm.wrap(net, concepts=CONCEPTS, num_classes=3, grid=4, input_size=(32, 32),
                        backbone_weights=None).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_randomisation_changes_salfcbm_maps_and_gradcam_and_leaves_the_model_alone(model, images):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateResultWarning)  # a pass must not warn
        r = model_randomisation_test(model, images, baselines=("gradcam",))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was randomised
    assert r.steps[:2] == ["head", "bottleneck"] and r.steps[2] == "backbone.fc"
    assert r.methods == ["class_map", "concept_maps", "gradcam"] and r.passed and r.failures == []
    # every map moves away from the intact one once weights it depends on are randomised ...
    for m in r.methods:
        dep = [i for i, d in enumerate(r.expected_change[m]) if d]
        assert dep and all(r.spearman[m][i] < 0.9 for i in dep), (m, r.spearman[m])
    # ... and the head does not produce concept maps nor Grad-CAM: they stay exactly as they were
    assert r.expected_change["concept_maps"][0] is False and r.spearman["concept_maps"][0] == pytest.approx(1.0)
    assert r.expected_change["gradcam"][:2] == [False, False] and r.ssim["gradcam"][0] == pytest.approx(1.0)
    # the backbone's classifier does not produce SALF-CBM's maps (they are taken before it), Grad-CAM's yes
    fc = r.steps.index("backbone.fc")
    assert not r.expected_change["class_map"][fc] and r.expected_change["gradcam"][fc]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["passed"] is True and d["steps"] == r.steps and len(d["spearman_abs"]["class_map"]) == len(r.steps)
    assert "| head |" in r.table()


def test_a_map_that_ignores_the_weights_is_flagged_loudly(model, images):
    def edges(m, x, t):  # an "explanation" computed from the image alone
        return x.mean(1, keepdim=True)

    with pytest.warns(DegenerateResultWarning, match="edges after randomising head"):
        r = model_randomisation_test(model, images, baselines=(), extra_methods={"edges": edges})
    assert not r.passed
    flagged = {s for m, s in r.failures if m == "edges"}
    assert flagged == {s for s, d in zip(r.steps, r.expected_change["edges"]) if d}
    assert all(m == "edges" for m, _ in r.failures)  # SALF-CBM's own maps pass
    assert r.to_dict()["failures"][0] == ["edges", "head"]


def test_a_class_map_that_ignores_the_head_is_flagged(model, images):
    def concept_sum(m, x, t):  # depends on the bottleneck and the backbone but not on the head
        maps = m(x).concept_maps.sum(1, keepdim=True)
        return torch.nn.functional.interpolate(maps, size=x.shape[-2:], mode="bilinear")

    with pytest.warns(DegenerateResultWarning):
        r = model_randomisation_test(model, images, baselines=(), extra_methods={"concept_sum": concept_sum})
    assert ("concept_sum", "head") in r.failures and ("concept_sum", "bottleneck") not in r.failures


def test_plot_randomisation_draws_curves_and_examples(model, images, tmp_path):
    from salfcbm.viz import plot_randomisation

    r = model_randomisation_test(model, images, baselines=())
    fig = plot_randomisation(r, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    assert len(fig.axes) == 2 + len(r.methods) * (len(r.steps) + 1)
    with pytest.raises(InputError, match="RandomisationResult"):
        plot_randomisation({"steps": []})


def test_bad_arguments_are_refused(model, images):
    with pytest.raises(InputError, match="SALFCBM"):
        model_randomisation_test(torch.nn.Linear(2, 2), images)
    with pytest.raises(InputError, match="images"):
        model_randomisation_test(model, images[0])
    with pytest.raises(InputError, match="baselines"):
        model_randomisation_test(model, images, baselines="gradcam")
    with pytest.raises(InputError, match="always tested"):
        model_randomisation_test(model, images, baselines=["salfcbm_logit"])
    with pytest.raises(InputError, match="clash"):
        model_randomisation_test(model, images, baselines=(), extra_methods={"class_map": lambda *a: None})
    with pytest.raises(InputError, match="unchanged_at"):
        model_randomisation_test(model, images, unchanged_at=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 20))
def test_spearman_matches_scipy_and_ssim_is_one_on_itself(seed, n):
    from scipy.stats import spearmanr

    g = np.random.default_rng(seed)
    a = torch.from_numpy(g.integers(0, 4, size=(n, n)).astype(float))  # many ties
    b = torch.from_numpy(g.normal(size=(n, n)))
    assert spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic, abs=1e-9)
    assert ssim(b, b) == pytest.approx(1.0) and ssim(b, 3 * b - 2) == pytest.approx(1.0)
    assert ssim(a, b) < 1.0


@pytest.mark.parametrize("side", [11, 24, 37])
def test_ssim_matches_skimage_when_available(side):
    sk = pytest.importorskip("skimage.metrics")
    g = np.random.default_rng(side)
    a, b = g.random((side, side)), g.random((side, side))
    b = 0.5 * a + 0.5 * b  # partly similar
    a01 = (a - a.min()) / (a.max() - a.min())
    b01 = (b - b.min()) / (b.max() - b.min())
    want = sk.structural_similarity(a01, b01, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(want, abs=1e-9)
