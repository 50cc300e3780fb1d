"""Calibrated presence (issue 22, item 2): "present" follows a per-concept threshold chosen on the
validation split against the targets (label-free), is measured against ground-truth masks, and is
saved with the model."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.errors import InputError
from salfcbm.demo.checks import presence_check
from salfcbm.evaluation.presence import presence_scores
from salfcbm.explain import ExplanationBatch
from salfcbm.training.presence import calibrate_presence, f1_thresholds, otsu_split, target_presence

CONCEPTS = ["fur", "wing", "grass", "sky"]
SIZE = 32


# ----------------------------------------------------------------------------- the calibration
def test_otsu_split_separates_the_two_groups_and_leaves_constants_alone():
    v = torch.tensor([[0.0, 0.2, 1.0], [0.0, 0.2, 1.0], [0.05, 0.2, 1.0], [0.7, 0.2, 1.0], [0.9, 0.2, 1.0]])
    th = otsu_split(v)
    assert 0.05 < th[0] < 0.7
    assert target_presence(v)[:, 0].tolist() == [False, False, False, True, True]
    assert not target_presence(v)[:, 1:].any()  # a constant column has no split: never present


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-20, 20), st.booleans()), min_size=1, max_size=25))
def test_f1_threshold_is_the_best_of_every_threshold(pairs):
    scores = torch.tensor([[float(s)] for s, _ in pairs])
    labels = torch.tensor([[y] for _, y in pairs])

    def f1(th: float) -> float:
        p = scores[:, 0] > th
        tp = int((p & labels[:, 0]).sum())
        return 2 * tp / (int(p.sum()) + int(labels.sum())) if labels.any() else 0.0

    th, got = f1_thresholds(scores, labels)
    candidates = [float(s) - 0.5 for s in scores[:, 0]] + [float(scores.max()) + 0.5]
    best = max(f1(c) for c in candidates)
    assert f1(float(th[0])) == pytest.approx(best) and float(got[0]) == pytest.approx(best)


def test_calibration_checks_its_inputs():
    with pytest.raises(InputError, match="same shape"):
        calibrate_presence(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(InputError, match="NaN"):
        calibrate_presence(torch.full((4, 2), float("nan")), torch.zeros(4, 2))
    th, report = calibrate_presence(torch.tensor([[0.0], [3.0]]), torch.tensor([[0.0], [1.0]]))
    assert 0 < float(th[0]) < 3 and report["val_f1"] == [1.0]


# ----------------------------------------------------------------------------- stored with the model
@pytest.fixture
def model():
    torch.manual_seed(0)
    m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=CONCEPTS, num_classes=2,
                     class_names=["cat", "bird"], grid=4, backbone_weights=None, input_size=(SIZE, SIZE))
    return m.eval()


def test_presence_threshold_survives_save_and_load(model, tmp_path):
    assert model.presence_threshold is None
    model.save_pretrained(tmp_path / "plain")
    assert "presence_threshold" not in json.loads((tmp_path / "plain" / "config.json").read_text())  # as before
    assert salfcbm.SALFCBM.from_pretrained(tmp_path / "plain", backbone=model.backbone).presence_threshold is None
    model.set_presence_threshold([0.5, -1.0, 2.0, 0.25])
    model.save_pretrained(tmp_path / "calibrated")
    loaded = salfcbm.SALFCBM.from_pretrained(tmp_path / "calibrated", backbone=model.backbone)
    assert loaded.presence_threshold.tolist() == [0.5, -1.0, 2.0, 0.25]
    loaded.select_concepts(["sky", "fur"])
    assert loaded.presence_threshold.tolist() == [0.25, 0.5]
    with pytest.raises(InputError, match="presence_threshold"):
        model.set_presence_threshold([1.0, 2.0])  # one per concept
    with pytest.raises(InputError, match="presence_threshold"):
        model.set_presence_threshold([1.0, 2.0, float("inf"), 0.0])


def test_a_file_saved_before_calibration_loads_with_the_training_mean_rule(model, tmp_path):
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["version"] = 3  # what salfcbm wrote before this field existed (same content)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone, verify=False)
    assert loaded.presence_threshold is None
    image = torch.randn(1, 3, SIZE, SIZE)
    ce = loaded.explain(image, top_k=4)[0].top
    assert ce.presence_rule == "training_mean" and ce.peaks is None
    assert ce.present == (ce.activations > 0).tolist()


def test_explanations_follow_the_calibrated_rule(model):
    image = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(image)
        model.concept_mean.copy_(out.concept_activations.mean(0))
        model.concept_std.fill_(1.0)
        model.head.weight.copy_(torch.tensor([[1.0, -2.0, -1.0, 0.5], [0.5, 1.0, -0.5, 1.0]]))
        peaks = out.concept_maps.flatten(2).amax(-1) - model.concept_mean  # (2, M), standardised (std 1)
    # thresholds between the two images' peaks: each concept is present in exactly one image
    model.set_presence_threshold(peaks.mean(0))
    expl = model.explain(image, top_k=4, skip_zero=False)
    for i in range(2):
        ce = expl[i].top
        want = (peaks[i, ce.concept_indices] > peaks.mean(0)[ce.concept_indices]).tolist()
        assert ce.present == want and ce.presence_rule == "calibrated"
        torch.testing.assert_close(ce.peaks, peaks[i, ce.concept_indices])
        for kind, s, p in zip(ce.evidence, ce.scores.tolist(), want):
            assert kind.startswith("present" if p else "absent")
            if s != 0:
                assert kind.endswith("supports") == (s > 0)  # "supports" names the contribution's sign
    assert [sum(expl[i].top.present) for i in range(2)] != [4, 4]
    again = ExplanationBatch.from_dict(expl.to_dict())  # the JSON keeps the rule's numbers
    assert again[0].top.present == expl[0].top.present
    torch.testing.assert_close(again[0].top.presence_threshold, expl[0].top.presence_threshold)
    assert expl.to_dict()["images"][0]["classes"][0]["presence_rule"] == "calibrated"


def test_presence_scores_counts():
    present = torch.tensor([[True, True, False], [False, True, True]])
    truth = torch.tensor([[True, False, False], [True, True, False]])
    r = presence_scores(present, truth, torch.tensor([[1, 0], [0, 1]]))
    assert r["shown_present"] == 3 and r["shown_present_absent"] == pytest.approx(1 / 3)
    assert r["shown_recall"] == pytest.approx(2 / 3) and r["top1_present_absent"] == 1
    assert r["pairs_precision"] == pytest.approx(2 / 4) and r["pairs_recall"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- on the demo's ground truth
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The smallest demo the training tests use (800 scenes, 4 classes): fit calibrates presence."""
    from salfcbm.demo.run import DemoConfig, run_demo

    cfg = DemoConfig(n_train=800, n_val=200, n_test=200, backbone_epochs=5, bottleneck_steps=300,
                     num_classes=4, report_images=2, backbone_width=16)
    return run_demo(tmp_path_factory.mktemp("presence-demo"), cfg, progress=False)


@pytest.mark.slow
def test_fit_calibrates_presence_and_it_beats_the_training_mean_on_ground_truth(demo):
    model = demo.model.eval()
    assert model.presence_threshold is not None and demo.metrics["presence"]["images"] == 200
    r = presence_check(model, demo.datasets["test"], top_k=4)["rules"]
    mean, cal = r["training_mean"], r["calibrated"]
    # fewer concepts labelled present are absent from the image, and more of the concepts that are
    # there are labelled present (precision and recall against the masks, over every image-concept pair)
    assert cal["shown_present_absent"] < mean["shown_present_absent"] - 0.02
    assert cal["pairs_precision"] > mean["pairs_precision"]
    assert cal["pairs_recall"] >= mean["pairs_recall"]
    # the demo's own report measures the rule the explanations use
    shown = demo.metrics["explanations"]["present"]
    assert shown["mask_empty"] < mean["shown_present_absent"]


@pytest.mark.slow
def test_presence_survives_the_demo_save(demo):
    from salfcbm.demo.run import load_demo

    model, _ = load_demo(demo.out)
    torch.testing.assert_close(model.presence_threshold, demo.model.presence_threshold)
