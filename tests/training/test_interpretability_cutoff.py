"""The interpretability cutoff's statistic (per cell vs LF-CBM's pooled) and a warning when the cutoff
removes a concept that the head needs (issue 15, item 6)."""

from __future__ import annotations

import warnings

import pytest
import torch

import salfcbm
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import ShardedStore, compute_similarity_store
from salfcbm.training import BottleneckConfig, BottleneckReport, HeadConfig, Splits, train_bottleneck
from salfcbm.training.cutoff_stage import cutoff_stage, warn_needed
from salfcbm.training.rundir import RunDir
from tests.training.problems import Table


def _noisy_problem(tmp_path, n, seed):
    """c0, c1 follow the features exactly; c2 follows them with strong per-cell noise."""
    a = torch.randn(3, 6, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 6, 3, 3, generator=g) + torch.randn(n, 6, 1, 1, generator=g)
    p = torch.einsum("mc,nchw->nmhw", a, feats)
    p[:, 2] += 1.0 * torch.randn(n, 3, 3, generator=g) * p[:, 2].std()
    fstore = ShardedStore(tmp_path / f"f{seed}", manifest={"k": seed}, item_shape=(6, 3, 3), length=n,
                          shard_size=128, dtype=torch.float32)
    for i in fstore.missing_shards():
        a_, b_ = fstore.shard_range(i)
        fstore.write_shard(i, feats[a_:b_])
    table = Table(p.permute(0, 2, 3, 1).contiguous())
    sims = compute_similarity_store(tmp_path / f"s{seed}", table, table, PromptGrid(grid=(3, 3), radius=1),
                                    progress=False, dtype=torch.float32)
    return fstore, sims


@pytest.mark.parametrize("statistic", ["cell", "pooled"])
def test_cutoff_statistic(tmp_path, statistic):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=["c0", "c1", "c2"], num_classes=2, grid=3, input_size=(6, 6))
    f_train, s_train = _noisy_problem(tmp_path, 512, 0)
    f_val, s_val = _noisy_problem(tmp_path, 256, 1)
    cfg = BottleneckConfig(max_steps=300, val_every=25, batch_size=128, lr=1e-2, cutoff=0.65,
                           cutoff_statistic=statistic)
    r = train_bottleneck(model, f_train, s_train, f_val, s_val, cfg, progress=False)
    assert r.statistic == statistic
    # pooling averages the per-cell noise away: LF-CBM's statistic sees a well-learned concept
    assert r.pooled_similarity["c2"] > r.cell_similarity["c2"] + 0.2
    assert r.concept_similarity == (r.pooled_similarity if statistic == "pooled" else r.cell_similarity)
    assert ("c2" in model.concepts) == (statistic == "pooled")


def test_bad_statistic():
    with pytest.raises(salfcbm.errors.InputError, match="cutoff_statistic"):
        BottleneckConfig(cutoff_statistic="mean")


def _needed_problem():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(400, 3, generator=g)
    y = (acts[:, 2] > 0).long()  # only the concept the cutoff removes predicts the class
    report = BottleneckReport(steps=1, best_step=1, best_val_similarity=0.5, concept_similarity={},
                              kept=["c0", "c1", "c2"], dropped=[], pooled_similarity={"c0": .9, "c1": .9, "c2": .7},
                              cell_similarity={"c0": .8, "c1": .8, "c2": .3})
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=["c0", "c1", "c2"], num_classes=2, grid=3, input_size=(6, 6))
    return model, report, Splits(acts[:300], acts[300:]), Splits(y[:300], y[300:])


def test_cutting_a_concept_the_head_needs_warns(tmp_path):
    """cutoff_guard='warn' (the recipes', LF-CBM's behaviour): removed, listed, and a warning."""
    model, report, acts, labels = _needed_problem()
    hcfg = HeadConfig(select="fixed", lam=1e-3)
    report, out = cutoff_stage(model, RunDir(tmp_path), report, BottleneckConfig(cutoff=0.45, cutoff_guard="warn"),
                               ["c0", "c1", "c2"], acts, labels, hcfg, progress=False)
    assert model.concepts == ["c0", "c1"] and out["dropped"] == ["c2"] and out["kept_for_head"] == []
    assert out["needed_by_head"][0][0] == "c2" and out["val_accuracy_without_cutoff"] > 0.9
    with pytest.warns(salfcbm.errors.DegenerateResultWarning, match="c2"):
        warn_needed(out, 0.5)


def test_the_default_keeps_a_concept_the_head_needs_and_says_so(tmp_path):
    """The default cutoff_guard='keep': the concept stays, and the result lists it."""
    model, report, acts, labels = _needed_problem()
    assert BottleneckConfig().cutoff_guard == "keep"
    report, out = cutoff_stage(model, RunDir(tmp_path), report, BottleneckConfig(cutoff=0.45), ["c0", "c1", "c2"],
                               acts, labels, HeadConfig(select="fixed", lam=1e-3), progress=False)
    assert model.concepts == ["c0", "c1", "c2"] and report.kept_for_head == ["c2"]
    assert out["kept_for_head"] == ["c2"] and out["dropped"] == [] and out["kept"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_needed(out, 0.5)  # kept: nothing removed the head needs, nothing to warn about


def test_a_concept_the_head_can_do_without_is_cut_and_not_called_needed(tmp_path):
    """The head on the survivors is as good: the cut concept is removed, with no warning, even with 'keep'."""
    model, report, given, _ = _needed_problem()
    g = torch.Generator().manual_seed(1)
    acts = torch.cat([given.train, given.val])
    y = (acts[:, 0] > 0).long()  # a concept that passes the cutoff predicts the class
    acts[:, 2] = acts[:, 0] + 0.3 * torch.randn(len(acts), generator=g)  # the cut one is a noisy copy
    report, out = cutoff_stage(model, RunDir(tmp_path), report, BottleneckConfig(cutoff=0.45), ["c0", "c1", "c2"],
                               Splits(acts[:300], acts[300:]), Splits(y[:300], y[300:]),
                               HeadConfig(select="fixed", lam=1e-3), progress=False)
    assert out["val_accuracy_with_cutoff"] >= out["val_accuracy_without_cutoff"]
    assert model.concepts == ["c0", "c1"] and out["needed_by_head"] == [] and out["kept_for_head"] == []


def test_the_demo_report_says_what_the_cutoff_kept_and_removed():
    from salfcbm.demo.run import _cutoff_html

    cut = {"statistic": "cell", "cutoff": 0.45, "dropped": ["a", "d"], "needed_by_head": [["c", 0.3], ["d", 0.2]],
           "kept_for_head": ["c"]}  # as read back from metrics.json
    text = _cutoff_html(cut)
    assert "1 concepts below the cutoff kept because the head uses them" in text and ": c" in text
    assert "removed although the head uses them</b>: d" in text and "2 concepts removed" in text
