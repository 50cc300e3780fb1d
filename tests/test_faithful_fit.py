"""Issue 15 in fit(): the paper's head selection with test accuracy and matched NEC; scorer splits;
concept filtering in the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

import salfcbm
from salfcbm.prompts import PromptGrid
from salfcbm.training import BottleneckConfig, HeadConfig, fit


def _data():
    from salfcbm.synthetic import SyntheticScenes

    kw = dict(num_classes=2, image_size=32)
    return (SyntheticScenes(n=64, split="train", **kw), SyntheticScenes(n=32, split="val", **kw),
            SyntheticScenes(n=32, split="test", **kw))


def _model(concepts):
    from salfcbm.synthetic import SmallConvNet

    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=concepts, num_classes=2, grid=4,
                        input_size=(32, 32), backbone_weights=None)


_FAST = BottleneckConfig(max_steps=20, val_every=10, batch_size=16, cutoff=-1.0)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    from salfcbm.synthetic import GroundTruthScorer

    train, val, test = _data()
    run = tmp_path_factory.mktemp("paper")
    res = fit(_model(train.concepts), train, val, scorer=GroundTruthScorer(train), prompts=PromptGrid(grid=(4, 4),
              radius=4), test_data=test, run_dir=run, head=HeadConfig.paper("default"), bottleneck=_FAST,
              progress=False)
    return res


def test_fit_reports_test_accuracy_and_matched_nec(paper_run):
    m = paper_run.metrics
    assert m["salfcbm"]["selection"] == "fixed" and m["salfcbm"]["lambda"] == pytest.approx(7e-4)
    assert 0 <= m["salfcbm"]["test_accuracy"] <= 1 and 0 <= m["standard_sparse"]["test_accuracy"] <= 1
    matched = m["matched_nec"]
    assert matched["nec"] == pytest.approx(m["salfcbm"]["nec"])
    assert matched["standard_sparse"]["nec"] <= matched["nec"] + 1e-9
    assert "test_accuracy" in matched["standard_sparse"] and "test_accuracy" in matched["salfcbm"]
    saved = json.loads((paper_run.run_dir / "metrics.json").read_text())
    assert saved["matched_nec"]["standard_sparse"]["nec"] == pytest.approx(matched["standard_sparse"]["nec"])
