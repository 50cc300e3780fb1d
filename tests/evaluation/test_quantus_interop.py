"""Quantus interop: salfcbm heatmaps as Quantus's a_batch, and a Quantus explain_func for SALF-CBM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import salfcbm
from salfcbm.demo.scenes import SmallConvNet, SyntheticScenes
from salfcbm.errors import InputError
from salfcbm.demo.checks import class_evidence_masks
from salfcbm.evaluation.localisation import relevance_rank_accuracy
from salfcbm.evaluation.quantus_interop import a_batch, explain_func
from salfcbm.explain.attribution import SALFCBMAttribution


@pytest.fixture(scope="module")
def tiny():
    scenes = SyntheticScenes(n=4, image_size=32, seed=3, split="test")
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=scenes.num_classes, width=4).eval()
    model = salfcbm.wrap(net, concepts=scenes.concepts, num_classes=scenes.num_classes, grid=4,
                         input_size=(32, 32), backbone_weights=None, class_names=scenes.classes)
    x01 = torch.stack([scenes[i][0] for i in range(4)])
    masks = class_evidence_masks(scenes, list(range(4)))
    return model, model.preprocess(x01, crop=False), masks


def test_a_batch_from_grid_maps_tensor_and_explanation(tiny):
    model, x, _ = tiny
    grid = SALFCBMAttribution(model, upsample=False).attribute(x, 0)
    a = a_batch(grid, size=tuple(x.shape[-2:]))
    full = SALFCBMAttribution(model).attribute(x, 0)
    assert a.shape == (4, 1, 32, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, full.numpy(), atol=1e-5)  # one call gives the input-resolution map
    assert (a_batch(full, relu=True) >= 0).all()
    batch = model.explain(x, top_k=2)
    ab = a_batch(batch, size=32)
    assert ab.shape == (4, 1, 32, 32)
    np.testing.assert_allclose(ab[1, 0], batch[1].top.heatmaps[0].numpy(), atol=1e-5)
    with pytest.raises(InputError, match="heatmaps"):
        a_batch("not a map")
    with pytest.raises(InputError, match="size"):
        a_batch(full, size=(0, 3))


def test_quantus_metric_runs_end_to_end_with_salfcbm_explain_func(tiny):
    quantus = pytest.importorskip("quantus", reason="Quantus 0.6 is a test-only extra (scripts/setup.sh)")
    model, x, masks = tiny
    model.train()  # explain_func runs the model in eval mode and restores the caller's mode
    clf = model.as_classifier()
    y = model.eval()(x).logits.argmax(1).numpy()
    model.train()
    metric = quantus.RelevanceRankAccuracy(disable_warnings=True, display_progressbar=False, return_aggregate=False)
    scores = metric(model=clf.eval(), x_batch=x.numpy(), y_batch=y, s_batch=masks[:, None].numpy().astype(float),
                    explain_func=explain_func, explain_func_kwargs={"mode": "class"}, channel_first=True,
                    device="cpu")
    ours = relevance_rank_accuracy(SALFCBMAttribution(model.eval()).attribute(x, torch.from_numpy(y)), masks)
    keep = masks.flatten(1).any(1).numpy()
    np.testing.assert_allclose(np.asarray(scores)[keep], ours.numpy()[keep], atol=1e-6)
    model.train()
    explain_func(clf, x.numpy(), y)
    assert model.training
    with pytest.raises(InputError, match="as_classifier"):
        explain_func(torch.nn.Linear(2, 2), x.numpy(), y)
