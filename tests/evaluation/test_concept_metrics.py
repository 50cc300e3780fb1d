"""Concept accuracy where annotations exist: salfcbm.evaluation.concept_metrics (tiny demo model, offline)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import salfcbm
from salfcbm.demo.scenes import GroundTruthScorer, SmallConvNet, SyntheticScenes, pretrain_backbone
from salfcbm.errors import InputError
from salfcbm.evaluation.concepts import ConceptAnnotations, concept_metrics, present_decision

SIZE = 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A SALF-CBM trained on the demo world (16 concepts, 32 px), and its test scenes."""
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    kw = dict(image_size=SIZE, seed=0, num_classes=4)
    data = {s: SyntheticScenes(n=n, split=s, **kw) for s, n in (("train", 240), ("val", 60), ("test", 60))}
    net = pretrain_backbone(data["train"], epochs=2, width=8, num_classes=4, seed=0, progress=False)
    model = salfcbm.wrap(net, concepts=data["train"].concepts, num_classes=4, class_names=data["train"].classes,
                         grid=4, input_size=(SIZE, SIZE), backbone_weights=None, input_mean=(0.0, 0.0, 0.0),
                         input_std=(1.0, 1.0, 1.0), input_crop_pct=1.0)
    out = tmp_path_factory.mktemp("demo")
    prompts = PromptGrid(grid=(4, 4), radius=32)
    sims = {s: compute_similarity_store(out / s, data[s], GroundTruthScorer(data[s]), prompts, progress=False)
            for s in ("train", "val")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit(model, data["train"], data["val"], train_similarities=sims["train"], val_similarities=sims["val"],
                  run_dir=out, progress=False, baseline=False, filter_concepts=False,
                  bottleneck=BottleneckConfig(max_steps=150, batch_size=128, val_every=50, lr=5e-3, cutoff=0.0),
                  head=HeadConfig(n_lambdas=5))
    return res.model.eval(), data["test"]


def test_concept_activations_detect_annotated_concepts_above_chance_on_the_demo(demo):
    model, test = demo
    r = concept_metrics(model, test, test)  # the demo world's masks are the annotations
    assert len(model.concepts) >= 10 and r.unannotated == []  # the interpretability cutoff may drop a few
    assert [row["concept"] for row in r.per_concept] == model.concepts
    aurocs = [row["auroc"] for row in r.per_concept]
    assert sum(a > 0.5 for a in aurocs) >= 0.75 * len(aurocs), aurocs
    assert r.macro["auroc"] > 0.6 and r.macro["above_chance"] == sum(a > 0.5 for a in aurocs)
    for row in r.per_concept:
        masks = test.masks_batch(range(len(test)))[:, test.concepts.index(row["concept"])]
        assert row["n_present"] == int(masks.flatten(1).any(1).sum()) and row["n_images"] == len(test)
        assert 0 <= row["pointing"] <= 1 and 0 <= row["top_region_iou"] <= 1 and 0 < row["mask_fraction"] <= 1
        assert row["n_localised"] == row["n_present"]
    d = json.loads(json.dumps(r.to_dict()))
    assert set(d["macro"]) >= {"auroc", "average_precision", "accuracy", "pointing", "pixel_auroc"}
    assert model.presence_threshold is not None  # fit calibrates presence: the metrics use that rule
    assert "| **macro** |" in r.table() and "calibrated threshold" in r.threshold


def test_accuracy_uses_the_presence_decision_and_metrics_agree_with_sklearn(demo):
    from sklearn.metrics import average_precision_score, roc_auc_score

    model, test = demo
    images = torch.stack([test[i][0] for i in range(len(test))])
    cols = [test.concepts.index(c) for c in model.concepts]
    labels = test.masks_batch(range(len(test)))[:, cols].flatten(2).any(-1).double()
    r = concept_metrics(model, images, labels, localisation=False)  # a (N, K) tensor in model.concepts order
    with torch.no_grad():
        out = model(model.preprocess(images, crop=False))
        z = model.standardize(out.concept_activations)
        peaks = (out.concept_maps.flatten(2).amax(-1) - model.concept_mean) / model.concept_std
    idx = list(range(len(model.concepts)))
    present = present_decision(model, z, peaks, idx)  # the calibrated rule, as explanations use it
    assert torch.equal(present, peaks > model.presence_threshold)
    for k, row in enumerate(r.per_concept):
        y = labels[:, k] > 0.5
        assert row["accuracy"] == pytest.approx(float((present[:, k] == y).double().mean()))
        if 0 < int(y.sum()) < len(y):
            assert row["auroc"] == pytest.approx(roc_auc_score(y, z[:, k]))
            assert row["average_precision"] == pytest.approx(average_precision_score(y, z[:, k]))
        assert "pointing" not in row


def test_user_labels_by_name_with_unknowns(demo):
    model, test = demo
    images = torch.stack([test[i][0] for i in range(8)])
    r = concept_metrics(model, images, {"A Circle ": [1, 0, None, 1, 0, math.nan, 1, 0], "not a concept": [0] * 8})
    assert [row["concept"] for row in r.per_concept] == ["a circle"]
    assert r.per_concept[0]["n_images"] == 6 and r.per_concept[0]["n_present"] == 3
    assert len(r.unannotated) == len(model.concepts) - 1


def test_localisation_scores_a_perfect_and_a_wrong_map():
    from salfcbm.evaluation.concepts import _localise

    mask = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    mask[0, 0, :4, :4] = True
    mask[0, 1, 4:, 4:] = True
    good = mask.float()  # maps equal to the masks
    (_, hit, iou, auc, frac), (_, hit2, iou2, auc2, _) = _localise(good, mask)
    assert (hit, iou, auc, frac) == (1.0, 1.0, 1.0, 0.25) and (hit2, iou2, auc2) == (1.0, 1.0, 1.0)
    wrong = good.flip(1)  # each concept's map lies on the other's mask
    (_, hit, iou, auc, _), _ = _localise(wrong, mask)
    # the mask's pixels (0) tie with the 32 zero pixels outside both masks and lose to the 16 ones: 0.5 * 32 / 48
    assert (hit, iou) == (0.0, 0.0) and auc == pytest.approx(1 / 3)


def test_bad_annotations_are_refused():
    m = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["a", "b"], num_classes=2, grid=4,
                     input_size=(SIZE, SIZE), backbone_weights=None).eval()
    images = torch.rand(3, 3, SIZE, SIZE)
    with pytest.raises(InputError, match="None of the annotated concepts"):
        concept_metrics(m, images, {"zebra": [1, 0, 1]})
    with pytest.raises(InputError, match="1 \\(present\\), 0 \\(absent\\) or NaN"):
        ConceptAnnotations(["a"], labels=torch.tensor([[2.0]]))
    with pytest.raises(InputError, match="equal length"):
        concept_metrics(m, images, {"a": [1, 0, 1], "b": [1]})
    with pytest.raises(InputError, match="annotations"):
        concept_metrics(m, images, "labels.csv")
    with pytest.raises(InputError, match="more images than the annotations"):
        concept_metrics(m, images, {"a": [1, 0]})
