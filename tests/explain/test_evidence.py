"""Explanations that tell the truth: present vs absent evidence, one colour scale, reports that say which is which."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

import salfcbm  # noqa: E402
from salfcbm.explain.evidence import evidence_kinds  # noqa: E402
from salfcbm.explain import ClassExplanation, ExplanationBatch  # noqa: E402
from salfcbm.viz import plot_explanation, write_html_report  # noqa: E402

CONCEPTS = ["fur", "wing", "grass", "sky"]
SIZE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=CONCEPTS, num_classes=2,
                     class_names=["cat", "bird"], grid=4, backbone_weights=None, input_size=(SIZE, SIZE))
    return m.eval()


@pytest.fixture
def image():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _set_head(model, image, z, weight):
    """Set the training statistics so the image's standardised activations are exactly ``z``."""
    with torch.no_grad():
        act = model(image).concept_activations[0]
        std = torch.ones(len(CONCEPTS))
        model.concept_std.copy_(std)
        model.concept_mean.copy_(act - torch.tensor(z))
        model.head.weight.copy_(torch.tensor(weight))
        model.head.bias.zero_()


def test_absent_concept_with_negative_weight_is_reported_as_absent(model, image):
    # "wing" is below its training mean (absent) with a negative weight for "cat": S = +3, the top contribution.
    _set_head(model, image, z=[0.5, -1.5, 0.2, -0.1], weight=[[1.0, -2.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    ce = model.explain(image, target="cat", top_k=4)[0].top
    assert ce.concepts[0] == "wing" and float(ce.scores[0]) == pytest.approx(3.0, abs=1e-4)
    kinds = dict(zip(ce.concepts, ce.evidence))
    assert kinds == {"wing": "absent_supports", "fur": "present_supports", "grass": "present_opposes",
                     "sky": "absent_opposes"}
    assert ce.present == [k.startswith("present") for k in ce.evidence]
    torch.testing.assert_close(ce.activations, model.standardize(model(image).concept_activations)[0, ce.concept_indices])
    assert ce.by_evidence()["absent_supports"] == [("wing", pytest.approx(3.0, abs=1e-4))]


def test_evidence_is_the_sign_pattern_of_weight_and_activation():
    w = torch.tensor([2.0, -2.0, -2.0, 2.0, 0.0])
    z = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    kinds = evidence_kinds(w, z)
    s = w * z
    for k, si in zip(kinds, s.tolist()):
        assert (k.endswith("supports") and si > 0) or (k.endswith("opposes") and si < 0) or (k == "no_weight" and si == 0)


def test_json_round_trip_keeps_evidence_and_maps(model, image):
    _set_head(model, image, z=[0.5, -1.5, 0.2, -0.1], weight=[[1.0, -2.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    batch = model.explain(image, top_k=3)
    back = ExplanationBatch.from_json(batch.to_json(heatmaps="full"))
    a, b = batch[0].top, back[0].top
    assert b.evidence == a.evidence and b.concepts == a.concepts and b.target == a.target
    torch.testing.assert_close(b.activations, a.activations.float())
    torch.testing.assert_close(b.heatmaps, a.heatmaps.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.standardized_heatmaps(), a.standardized_heatmaps(), atol=1e-5, rtol=1e-5)
    assert back.concept_names == CONCEPTS and back.class_names == ["cat", "bird"]
    entry = json.loads(batch.to_json())["images"][0]["classes"][0]["top_concepts"][0]
    assert entry["evidence"] in ("present_supports", "present_opposes", "absent_supports", "absent_opposes")
    assert ExplanationBatch.from_dict(batch.to_dict(heatmaps="summary"))[0].top.heatmaps is None


def _hand_explanation(strong: torch.Tensor, weak: torch.Tensor) -> ClassExplanation:
    return ClassExplanation(
        target=0, class_name="cat", logit=1.0, probability=0.7, bias=0.0, contributions=torch.tensor([1.0, 0.1]),
        concept_indices=torch.tensor([0, 1]), concepts=["fur", "grass"], scores=torch.tensor([1.0, 0.1]),
        heatmaps=torch.stack([strong, weak]), evidence=["present_supports", "present_supports"],
        activations=torch.tensor([1.0, 0.05]), concept_mean=torch.zeros(2), concept_std=torch.ones(2),
    )


def test_weak_map_looks_weak_on_the_shared_scale_with_a_colour_bar():
    g = torch.Generator().manual_seed(0)
    strong = torch.zeros(SIZE, SIZE)
    strong[8:24, 8:24] = 6.0  # six training stds above the mean
    weak = 0.05 * torch.rand(SIZE, SIZE, generator=g)  # never far from the mean
    img = torch.full((3, SIZE, SIZE), 0.5)
    fig = plot_explanation(_hand_explanation(strong, weak), img)
    labels = [ax.get_label() for ax in fig.axes]
    assert "<colorbar>" in labels  # one colour bar for the figure
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][1:]
    shown = [np.asarray(ax.images[0].get_array(), dtype=np.float32) for ax in panels]
    plain = img.permute(1, 2, 0).numpy()
    # the strong concept is drawn where it is; the weak one barely changes the image (no min-max blob)
    assert np.abs(shown[0][12:20, 12:20] - plain[12:20, 12:20]).mean() > 0.1
    assert np.abs(shown[1] - plain).max() < 0.15


def test_pictures_and_html_mark_absent_concepts(model, image, tmp_path):
    _set_head(model, image, z=[0.5, -1.5, 0.2, -0.1], weight=[[1.0, -2.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
    expl = model.explain(image, target="cat", top_k=4)
    fig = plot_explanation(expl[0], image[0], model=model)
    titles = {ax.get_title() for ax in fig.axes}
    assert any(t.startswith("ABSENT: wing") for t in titles)
    assert any(t.startswith("fur") and "present, supports" in t for t in titles)
    text = write_html_report(tmp_path / "r.html", image, expl, model=model).read_text()
    assert "absent; its absence supports" in text and "present, opposes" in text
    assert 'class="ev-absent_supports"' in text


def test_empty_explanation_warns_and_the_report_says_why(model, image, tmp_path):
    with torch.no_grad():
        model.head.weight.zero_()
    with pytest.warns(salfcbm.errors.DegenerateResultWarning, match="No concept contributes"):
        expl = model.explain(image, top_k=3)
    assert expl[0].top.concepts == []
    with pytest.warns(salfcbm.errors.DegenerateResultWarning):
        text = write_html_report(tmp_path / "r.html", image, model.explain(image), model=model).read_text()
    assert "No concept contributes to this class" in text


def test_mask_check_counts_shown_concepts_without_mask():
    from salfcbm.demo.checks import explanation_mask_check
    from salfcbm.demo.scenes import SmallConvNet, SyntheticScenes

    ds = SyntheticScenes(n=6, image_size=32, seed=1)
    m = salfcbm.wrap(SmallConvNet(num_classes=ds.num_classes, width=4).eval(), concepts=ds.concepts,
                     num_classes=ds.num_classes, grid=4, input_size=(32, 32), backbone_weights=None).eval()
    r = explanation_mask_check(m, ds, top_k=3)
    assert r["images"] == 6 and r["shown"] == 18
    # recount by hand
    empty = total = 0
    x = torch.stack([ds[i][0] for i in range(6)])
    for i, e in enumerate(m.explain(m.preprocess(x), top_k=3, heatmaps=False)):
        masks = ds.masks(i)
        for c in e.top.concepts:
            total += 1
            empty += int(not masks[ds.concepts.index(c)].any())
    assert r["shown_mask_empty"] == pytest.approx(empty / total)
    n = sum(v["shown"] for v in r["by_evidence"].values())
    assert n == total and r["present"]["shown"] + r["absent"]["shown"] == total
    from salfcbm.evaluation.benchmark import BenchmarkResult

    assert "empty ground-truth mask" in BenchmarkResult(rows={}, meta={"explanation_masks": r}).to_markdown()
    with pytest.raises(salfcbm.errors.InputError, match="not concepts of the dataset"):
        explanation_mask_check(salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["zebra"], num_classes=2,
                                            grid=4, input_size=(32, 32), backbone_weights=None), ds)
