"""Tests of salfcbm.evaluation.interventions: intervention curves with policies (issue 19, item 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import salfcbm
from salfcbm.demo.scenes import SmallConvNet, SyntheticScenes
from salfcbm.errors import InputError, SalfCBMError
from salfcbm.evaluation import (
    ConceptTargets,
    PolicyState,
    intervention_curve,
    presence_threshold,
    targets_from_activations,
    targets_from_labels,
    targets_from_masks,
    targets_from_similarities,
)
from salfcbm.evaluation.interventions import POLICIES


# --------------------------------------------------------------------------- a tiny untrained model
@pytest.fixture(scope="module")
def scenes() -> SyntheticScenes:
    return SyntheticScenes(n=12, image_size=32, seed=3, split="test")


@pytest.fixture(scope="module")
def tiny(scenes):
    """A SALF-CBM around a random SmallConvNet with a random head and spread-out statistics."""
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=scenes.num_classes, width=4).eval()
    model = salfcbm.wrap(net, concepts=scenes.concepts, num_classes=scenes.num_classes, grid=4, input_size=(32, 32),
                         backbone_weights=None, input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0),
                         input_crop_pct=1.0).eval()
    with torch.no_grad():
        x = torch.stack([scenes[i][0] for i in range(len(scenes))])
        act = model(x).concept_activations
        model.concept_mean.copy_(act.mean(0))
        model.concept_std.copy_(act.std(0).clamp_min(1e-3))
        model.head.weight.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def mask_targets(scenes):
    return targets_from_masks(scenes.masks_batch(range(len(scenes))), scenes.concepts)


def _z_and_labels(model, scenes):
    with torch.no_grad():
        x = torch.stack([scenes[i][0] for i in range(len(scenes))])
        z = model.standardize(model(x).concept_activations).float()
    return z, torch.tensor([scenes[i][1] for i in range(len(scenes))])


def test_k0_is_the_model_and_all_known_is_the_head_on_the_targets(tiny, scenes):
    z, y = _z_and_labels(tiny, scenes)
    values = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    m = tiny.num_concepts
    c = intervention_curve(tiny, scenes, targets_from_activations(values), policy="random", ks=[0, m])
    with torch.no_grad():
        acc0 = float((tiny.head(z).argmax(1) == y).float().mean())
        acc_all = float((tiny.head(values).argmax(1) == y).float().mean())
        p_all = float(tiny.head(values).softmax(-1).gather(1, y[:, None]).mean())
    assert c.accuracy["random"] == pytest.approx([acc0, acc_all])
    assert c.true_class_probability["random"][1] == pytest.approx(p_all, abs=1e-5)


def test_region_mode_over_the_whole_map_equals_map_mode(tiny, scenes):
    """Mean pooling: setting every cell to mean + std * t is setting c*_norm to t (the two modes agree)."""
    n, m = len(scenes), tiny.num_concepts
    labels = (torch.rand(n, m, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    full = ConceptTargets(labels=labels, regions=torch.ones(n, m, 32, 32), source="full masks")
    kw = dict(policy=["uncertainty", "contribution"], ks=[0, 1, 3, m])
    a = intervention_curve(tiny, scenes, full, mode="map", **kw)
    b = intervention_curve(tiny, scenes, full, mode="region", **kw)
    for p in a.accuracy:
        assert a.accuracy[p] == pytest.approx(b.accuracy[p])
        assert a.true_class_probability[p] == pytest.approx(b.true_class_probability[p], abs=1e-5)


def test_region_mode_edits_only_inside_the_region(tiny, scenes):
    """A region in the left half: the edited activation moves by the left half's share only."""
    n, m = len(scenes), tiny.num_concepts
    left = torch.zeros(n, m, 32, 32)
    left[..., :16] = 1
    values = torch.full((n, m), float("nan"))
    values[:, 0] = 3.0
    t = ConceptTargets(values=values, regions=left)
    seen = {}

    def spy(state: PolicyState) -> torch.Tensor:
        seen["z"] = state.normalized
        return torch.zeros_like(state.normalized)

    c = intervention_curve(tiny, scenes, t, policy=spy, ks=[1], mode="region")
    with torch.no_grad():
        x = torch.stack([scenes[i][0] for i in range(n)])
        maps = tiny(x).concept_maps[:, 0]
        mean, std = tiny.concept_mean[0], tiny.concept_std[0]
        v = mean + std * 3.0
        edited = maps.clone()
        edited[..., :2] = v  # grid 4: the left two columns are the left half
        z = tiny.standardize(tiny(x).concept_activations)
        z[:, 0] = (edited.mean((-2, -1)) - mean) / std
        y = torch.tensor([scenes[i][1] for i in range(n)])
        expect = float(tiny.head(z).softmax(-1).gather(1, y[:, None]).mean())
    assert c.true_class_probability["spy"][0] == pytest.approx(expect, abs=1e-5)


def test_unknown_targets_are_never_corrected_and_user_callable_order(tiny, scenes):
    z, y = _z_and_labels(tiny, scenes)
    n, m = z.shape
    values = torch.full((n, m), float("nan"))
    values[:, 5] = -4.0
    values[:, 2] = 4.0

    def last_first(state: PolicyState) -> torch.Tensor:  # highest concept index first
        return torch.arange(m, dtype=torch.float32).expand(state.normalized.shape[0], -1)

    c = intervention_curve(tiny, scenes, targets_from_activations(values), policy=last_first, ks=[0, 1, 2, m])
    with torch.no_grad():
        one = z.clone()
        one[:, 5] = -4.0  # concept 5 first: the highest index with a target
        two = one.clone()
        two[:, 2] = 4.0
        probs = [float(tiny.head(t).softmax(-1).gather(1, y[:, None]).mean()) for t in (z, one, two, two)]
    assert c.true_class_probability["last_first"] == pytest.approx(probs, abs=1e-5)
    assert c.meta["concepts_with_targets"] == 2


def test_random_policy_is_seeded(tiny, scenes, mask_targets):
    kw = dict(policy="random", ks=[0, 1, 2, 4, 8])
    a = intervention_curve(tiny, scenes, mask_targets, seed=0, **kw)
    b = intervention_curve(tiny, scenes, mask_targets, seed=0, **kw)
    assert a.accuracy == b.accuracy and a.true_class_probability == b.true_class_probability
    others = [intervention_curve(tiny, scenes, mask_targets, seed=s, **kw).true_class_probability["random"]
              for s in (1, 2, 3)]
    assert any(o != a.true_class_probability["random"] for o in others)


def test_policies_rank_as_defined(tiny, scenes):
    """Each built-in policy's first pick, checked against its definition on one concept per image."""
    z, _ = _z_and_labels(tiny, scenes)
    n, m = z.shape
    w = tiny.head.weight.detach()
    with torch.no_grad():
        pred = tiny.head(z).argmax(1)
    thr = presence_threshold(tiny)
    assert torch.equal(thr, torch.zeros(m))
    expected = {
        "uncertainty": (z - thr).abs().argmin(1),
        "contribution": (w[pred] * z).abs().argmax(1),
        "gradient": (w[pred] - tiny.head(z).softmax(-1) @ w).abs().argmax(1),  # d log p_yhat / d z, linear head
    }
    values = z + 10.0  # a far target: the first correction is visible in the logits
    for name, first in expected.items():
        c = intervention_curve(tiny, scenes, targets_from_activations(values), policy=name, ks=[1])
        one = z.clone()
        one[torch.arange(n), first] = values[torch.arange(n), first]
        y = torch.tensor([scenes[i][1] for i in range(n)])
        with torch.no_grad():
            p = float(tiny.head(one).softmax(-1).gather(1, y[:, None]).mean())
        assert c.true_class_probability[name][0] == pytest.approx(p, abs=1e-5), name


def test_area_is_the_normalised_trapezoid(tiny, scenes, mask_targets):
    c = intervention_curve(tiny, scenes, mask_targets, policy="contribution", ks=[0, 1, 4, 16])
    ks, ys = c.ks, c.accuracy["contribution"]
    area = sum((ks[i + 1] - ks[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(3)) / 16
    assert c.auc["contribution"]["accuracy"] == pytest.approx(area)
    assert 0 <= c.auc["contribution"]["true_class_probability"] <= 1


def test_result_serialises_plots_and_reports(tiny, scenes, mask_targets, tmp_path):
    from salfcbm.evaluation.benchmark import BenchmarkResult

    c = intervention_curve(tiny, scenes, mask_targets, policy=["random", "uncertainty"], ks=[0, 2, 4])
    d = json.loads(json.dumps(c.to_dict()))
    assert d["ks"] == [0, 2, 4] and set(d["auc"]) == {"random", "uncertainty"} and d["mode"] == "map"
    fig = c.plot()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    md = c.to_markdown()
    assert "| uncertainty |" in md and "AUC accuracy" in md
    report = BenchmarkResult(rows={}, meta={"interventions": d}).to_markdown()
    assert "Intervention curves (map mode" in report
    assert "Intervention curves" not in BenchmarkResult(rows={}, meta={}).to_markdown()


def test_targets_from_labels_tensor_and_similarities(tiny, scenes):
    n, m = len(scenes), tiny.num_concepts
    labels = (torch.rand(n, m, generator=torch.Generator().manual_seed(4)) > 0.5)
    a = intervention_curve(tiny, scenes, labels, policy="gradient", ks=[0, 3])  # a bool tensor: labels
    b = intervention_curve(tiny, scenes, targets_from_labels(labels.float()), policy="gradient", ks=[0, 3])
    assert a.accuracy == b.accuracy and a.meta["label_values"] == "conditional means"
    sims = torch.rand(n, m, 4, 4, generator=torch.Generator().manual_seed(5))
    t = targets_from_similarities(sims, tiny.concepts)
    pooled = sims.flatten(2).mean(-1)
    assert torch.allclose(t.values, (pooled - pooled.mean(0)) / pooled.std(0), atol=1e-5)
    assert t.values.mean(0).abs().max() < 1e-5
    c = intervention_curve(tiny, scenes, t, policy="uncertainty", ks=[0, m])
    assert c.meta["targets"] == "CLIP similarities"


def test_targets_from_a_similarity_store(tmp_path, scenes):
    from salfcbm.demo.scenes import GroundTruthScorer
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    store = compute_similarity_store(tmp_path / "s", scenes, GroundTruthScorer(scenes), PromptGrid(grid=(4, 4), radius=32),
                                     progress=False)
    t = targets_from_similarities(store, scenes.concepts[:3])
    p = store.targets(list(range(len(scenes))), scenes.concepts[:3]).flatten(2).mean(-1)
    assert torch.allclose(t.values, (p - p.mean(0)) / p.std(0), atol=1e-4)


def test_targets_match_the_model_concepts_by_name(tiny, scenes):
    n = len(scenes)
    values = torch.full((n, 1), 5.0)
    t = targets_from_activations(values, concepts=[tiny.concepts[3]])
    c = intervention_curve(tiny, scenes, t, policy="random", ks=[0, 1, tiny.num_concepts])
    z, y = _z_and_labels(tiny, scenes)
    z[:, 3] = 5.0
    with torch.no_grad():
        p = float(tiny.head(z).softmax(-1).gather(1, y[:, None]).mean())
    assert c.true_class_probability["random"][1:] == pytest.approx([p, p], abs=1e-5)
    with pytest.raises(InputError, match="None of the model's concepts"):
        intervention_curve(tiny, scenes, targets_from_activations(values, concepts=["no such concept"]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(policy="greedy"), r"Unknown intervention policy 'greedy'.*'random', 'uncertainty', 'contribution', 'gradient'"),
    (dict(policy=[]), "at least one policy"),
    (dict(policy=3), "A policy is one of"),
    (dict(ks=[0, 99]), r"ints in \[0, 16\].*\[99\] out of range"),
    (dict(ks=[-1]), r"\[-1\] out of range"),
    (dict(ks=[1.5]), "ints in"),
    (dict(ks=[]), "non-empty"),
    (dict(mode="pixels"), r"Unknown intervention mode 'pixels'.*\['map', 'region'\]"),
    (dict(quantiles=(0.9, 0.1)), "quantiles"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_options_raise_salfcbm_errors(tiny, scenes, mask_targets, kwargs, match):
    with pytest.raises(InputError, match=match):
        intervention_curve(tiny, scenes, mask_targets, **kwargs)


def test_bad_targets_raise_salfcbm_errors(tiny, scenes):
    n, m = len(scenes), tiny.num_concepts
    with pytest.raises(InputError, match="12 rows|has 12 items"):
        intervention_curve(tiny, scenes, torch.zeros(n + 1, m))
    with pytest.raises(InputError, match="16 concepts"):
        intervention_curve(tiny, scenes, torch.zeros(n, m - 1))
    with pytest.raises(InputError, match="no regions"):
        intervention_curve(tiny, scenes, torch.zeros(n, m), mode="region")
    with pytest.raises(InputError, match="0 .absent., 1 .present."):
        targets_from_labels(torch.full((n, m), 2.0)).labels  # noqa: B018
    with pytest.raises(InputError, match="exactly one of"):
        ConceptTargets()
    with pytest.raises(InputError, match="finite fractions"):
        ConceptTargets(labels=torch.ones(n, m), regions=torch.full((n, m, 4, 4), -1.0))
    with pytest.raises(InputError, match="must be ConceptTargets"):
        intervention_curve(tiny, scenes, "labels.csv")
    with pytest.raises(SalfCBMError, match=r"shape \(B, M\)"):
        intervention_curve(tiny, scenes, torch.zeros(n, m), policy=lambda s: torch.zeros(3))
    with pytest.raises(InputError, match="NaN scores"):
        intervention_curve(tiny, scenes, torch.zeros(n, m), policy=lambda s: torch.full_like(s.normalized, math.nan))


def test_the_model_is_left_as_it_was(tiny, scenes, mask_targets):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    intervention_curve(tiny, scenes, mask_targets, policy=list(POLICIES), ks=[0, 4], mode="region")
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert not tiny.training
    tiny.train()
    try:
        again = intervention_curve(tiny, scenes, mask_targets, policy="random", ks=[0])
        assert tiny.training and all(m.training for m in tiny.modules())  # the user's flags come back
    finally:
        tiny.eval()
    assert again.accuracy["random"] == intervention_curve(tiny, scenes, mask_targets, policy="random", ks=[0]).accuracy["random"]


def test_label_targets_correct_only_what_the_model_gets_wrong(tiny, scenes):
    z, y = _z_and_labels(tiny, scenes)
    m = tiny.num_concepts
    agree = (z > 0).float()  # labels that agree with the model everywhere: nothing to correct
    c = intervention_curve(tiny, scenes, agree, policy="random", ks=[0, m])
    assert c.true_class_probability["random"][0] == pytest.approx(c.true_class_probability["random"][1], abs=1e-6)
    flipped = 1 - agree  # every concept wrong: each is set to the mean c*_norm of the images with its label
    c = intervention_curve(tiny, scenes, flipped, policy="random", ks=[m])
    hi = torch.stack([z[flipped[:, j] == 1, j].mean() if (flipped[:, j] == 1).any() else z[:, j].mean()
                      for j in range(m)])
    lo = torch.stack([z[flipped[:, j] == 0, j].mean() if (flipped[:, j] == 0).any() else z[:, j].mean()
                      for j in range(m)])
    target = torch.where(flipped == 1, hi, lo)
    with torch.no_grad():
        p = float(tiny.head(target).softmax(-1).gather(1, y[:, None]).mean())
    assert c.true_class_probability["random"][0] == pytest.approx(p, abs=1e-5)
    # Koh et al.'s quantiles, overwriting every concept
    c = intervention_curve(tiny, scenes, torch.ones(len(scenes), m), policy="random", ks=[m], quantiles=(0.05, 0.95),
                           keep_agreeing=False)
    with torch.no_grad():
        q = torch.quantile(z, 0.95, dim=0).expand_as(z)
        p = float(tiny.head(q).softmax(-1).gather(1, y[:, None]).mean())
    assert c.true_class_probability["random"][0] == pytest.approx(p, abs=1e-5)


# --------------------------------------------------------------------------- on the demo (a trained model)
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo at the size tests/training uses (the smallest whose concepts are learned well enough to help)."""
    from salfcbm.demo.run import DemoConfig, run_demo

    cfg = DemoConfig(n_train=800, n_val=200, n_test=200, backbone_epochs=5, bottleneck_steps=300,
                     num_classes=4, report_images=1, backbone_width=16)
    return run_demo(tmp_path_factory.mktemp("demo"), cfg, progress=False)


@pytest.mark.slow
def test_on_the_demo_correcting_concepts_helps_and_policies_beat_random(demo_run):
    """Measured on this demo (docs/evaluation.md): the best policy lifts accuracy above the model's own, and
    uncertainty beats random. Correcting *every* concept helps with region edits; with whole-map edits it
    depends on the trained model (0.935 vs 0.955 on one run, 0.96 vs 0.95 on another), so it is not asserted."""
    m = demo_run.metrics["interventions"]  # run_demo: the first 200 test scenes, ground-truth mask targets
    for mode in ("map", "region"):
        acc, auc = m[mode]["accuracy"], m[mode]["auc"]
        assert len({ys[0] for ys in acc.values()}) == 1 and acc["random"][0] == m["map"]["accuracy"]["random"][0]
        best = max(acc, key=lambda p: auc[p]["accuracy"])
        assert max(acc[best]) > acc[best][0], mode  # the best policy strictly raises accuracy
        # uncertainty (closest to the presence threshold) picks the concepts worth correcting before random does
        assert auc["random"]["accuracy"] < auc["uncertainty"]["accuracy"], mode
    # Not asserted: that correcting *every* concept helps. With fit's default cutoff guard the model keeps
    # concepts the bottleneck follows poorly because the head uses them; setting all of those to their
    # targets lowered accuracy on this run (0.95 -> 0.87 with region edits), see docs/evaluation.md.
    html = (demo_run.out / "report.html").read_text()
    assert "<h2>Intervention curves</h2>" in html and (demo_run.out / m["figure"]).is_file()


@pytest.mark.slow
def test_salfcbm_demo_prints_the_area_per_policy(demo_run, monkeypatch, tmp_path, capsys):
    import salfcbm.demo.run as demo_module
    from salfcbm.cli import main

    monkeypatch.setattr(demo_module, "run_demo", lambda *a, **k: demo_run)  # the run above, not a second one
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("intervention curves"))
    auc = demo_run.metrics["interventions"]["map"]["auc"]
    for policy in POLICIES:
        assert f"{policy} {auc[policy]['accuracy']:.3f}" in line
