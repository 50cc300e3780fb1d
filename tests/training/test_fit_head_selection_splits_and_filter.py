"""fit() selects the head as the paper does (test accuracy, matched NEC), keeps the scorer's splits and
filters concepts in the pipeline (issue 15)."""

from __future__ import annotations

import json

import pytest
import torch

import salfcbm
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.training import BottleneckConfig, HeadConfig, fit


def _data():
    from salfcbm.demo.scenes import SyntheticScenes

    kw = dict(num_classes=2, image_size=32)
    return (SyntheticScenes(n=64, split="train", **kw), SyntheticScenes(n=32, split="val", **kw),
            SyntheticScenes(n=32, split="test", **kw))


def _model(concepts):
    from salfcbm.demo.scenes import SmallConvNet

    torch.manual_seed(0)
    return salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=concepts, num_classes=2, grid=4,
                        input_size=(32, 32), backbone_weights=None)


_FAST = BottleneckConfig(max_steps=20, val_every=10, batch_size=16, cutoff=-1.0)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    from salfcbm.demo.scenes import GroundTruthScorer

    train, val, test = _data()
    run = tmp_path_factory.mktemp("paper")
    res = fit(_model(train.concepts), train, val, scorer=GroundTruthScorer(train), prompts=PromptGrid(grid=(4, 4),
              radius=4), test_data=test, run_dir=run, head=HeadConfig.paper("default"), bottleneck=_FAST,
              progress=False)
    return res


def test_fit_reports_test_accuracy_and_matched_nec(paper_run):
    m = paper_run.metrics
    # the solved lambda is GLM-SAGA's lam / alpha for LF-CBM's --lam 7e-4
    assert m["salfcbm"]["selection"] == "fixed" and m["salfcbm"]["lambda"] == pytest.approx(7e-4 / 0.99)
    assert 0 <= m["salfcbm"]["test_accuracy"] <= 1 and 0 <= m["standard_sparse"]["test_accuracy"] <= 1
    matched = m["matched_nec"]
    assert matched["nec"] == pytest.approx(m["salfcbm"]["nec"])
    assert matched["standard_sparse"]["nec"] <= matched["nec"] + 1e-9
    assert "test_accuracy" in matched["standard_sparse"] and "test_accuracy" in matched["salfcbm"]
    saved = json.loads((paper_run.run_dir / "metrics.json").read_text())
    assert saved["matched_nec"]["standard_sparse"]["nec"] == pytest.approx(matched["standard_sparse"]["nec"])


def test_one_by_index_scorer_scores_each_split_with_its_own_items(paper_run):
    from salfcbm.supervision.store import SimilarityStore
    from salfcbm.demo.scenes import GroundTruthScorer

    train, val, _ = _data()
    prompts = PromptGrid(grid=(4, 4), radius=4)
    stored = SimilarityStore.open(paper_run.run_dir / "similarities" / "val", GroundTruthScorer(val))
    idx = torch.arange(8)
    images = torch.stack([val[i][0] for i in range(8)])
    own = GroundTruthScorer(val).embed(images, idx, prompts)
    train_images = torch.stack([train[i][0] for i in range(8)])
    wrong = GroundTruthScorer(train).embed(train_images, idx, prompts)  # what a scorer bound to train reads at idx
    assert not torch.allclose(own, wrong)
    assert torch.allclose(stored.embeddings(idx).float(), own, atol=1e-3)


class _ByIndex:
    """A scorer that reads its own table by index and names its dataset, without for_dataset()."""

    def __init__(self, dataset):
        self.dataset = dataset

    def fingerprint(self):
        return {"scorer": "by-index", "dataset": self.dataset.fingerprint()}

    def embed(self, images, indices, prompts):
        return torch.zeros(len(indices), *prompts.grid, 2)

    def similarity(self, emb, concepts):
        return emb[..., : len(concepts)]


def test_a_scorer_bound_to_another_dataset_is_refused(tmp_path):
    from salfcbm.errors import ScorerDatasetError
    from salfcbm.supervision.store import compute_similarity_store

    train, val, _ = _data()
    with pytest.raises(ScorerDatasetError, match="bound to another dataset"):
        compute_similarity_store(tmp_path / "v", val, _ByIndex(train), PromptGrid(grid=(2, 2), radius=4),
                                 progress=False)
    assert compute_similarity_store(tmp_path / "t", train, _ByIndex(train), PromptGrid(grid=(2, 2), radius=4),
                                    progress=False).length == len(train)


def test_fit_filters_concepts_by_default_and_saves_the_report(paper_run):
    report = json.loads((paper_run.run_dir / "concept_filter.json").read_text())["report"]
    assert report["settings"]["activation_source"].startswith("unprompted images")
    assert paper_run.metrics["concept_filter"]["kept"] == len(report["kept"])
    assert paper_run.model.concepts == [c for c in report["kept"] if c in paper_run.model.concepts]
    assert set(paper_run.model.concepts) <= set(report["kept"])


def test_fit_filter_drops_concepts_absent_from_the_unprompted_images(paper_run):
    train, _, _ = _data()
    present = train.masks_batch(range(len(train))).flatten(2).any(-1).sum(0)  # images showing each concept
    # top-5 mean of presence (0 or 1) <= 0.25  <=>  the concept shows in at most one training image
    absent = {c for c, n in zip(train.concepts, present.tolist()) if n <= 1}
    report = json.loads((paper_run.run_dir / "concept_filter.json").read_text())["report"]
    never = {c for c, r in report["dropped"] if r.startswith("never fires")}
    assert never == absent and absent, "the test scenes must hold a concept that (almost) never appears"


def test_fit_filter_option_is_validated(tmp_path):
    from salfcbm.demo.scenes import GroundTruthScorer

    train, val, _ = _data()
    with pytest.raises(salfcbm.errors.InputError, match="filter_concepts must be"):
        fit(_model(train.concepts), train, val, scorer=GroundTruthScorer(train), run_dir=tmp_path, filter_concepts="yes",
            progress=False, prompts=PromptGrid(grid=(4, 4), radius=4))
