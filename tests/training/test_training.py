"""The bottleneck loss and training stage, the one-call fit(), resumption and the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import salfcbm
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import ShardedStore, compute_similarity_store
from salfcbm.training import (
    BottleneckConfig,
    HeadConfig,
    bottleneck_loss,
    cubic_cosine_similarity,
    train_bottleneck,
)


def _lfcbm_single(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """LF-CBM's cos_similarity_cubed_single, written out for one cell."""
    q = q - q.mean(0, keepdim=True)
    p = p - p.mean(0, keepdim=True)
    q, p = q**3, p**3
    return (q / q.norm(dim=0, keepdim=True) * p / p.norm(dim=0, keepdim=True)).sum(0)


def test_cubic_cosine_matches_lfcbm_per_cell():
    q, p = torch.randn(32, 3, 2, 2), torch.randn(32, 3, 2, 2)
    sim = cubic_cosine_similarity(q, p)
    for m in range(3):
        for h in range(2):
            for w in range(2):
                assert torch.allclose(sim[m, h, w], _lfcbm_single(q[:, m, h, w], p[:, m, h, w]), atol=1e-6)
    assert torch.allclose(bottleneck_loss(q, p), -sim.sum())


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(0.1, 10), shift=st.floats(-5, 5), seed=st.integers(0, 1000))
def test_cubic_cosine_is_invariant_to_positive_affine_maps(scale, shift, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 2, 3, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(cubic_cosine_similarity(x, scale * x + shift), torch.ones(2, 3, 3, dtype=torch.float64),
                          atol=1e-4)
    assert torch.allclose(cubic_cosine_similarity(x, -scale * x + shift), -torch.ones(2, 3, 3, dtype=torch.float64),
                          atol=1e-4)


def test_cubic_cosine_rejects_bad_batches():
    with pytest.raises(salfcbm.errors.InputError, match="at least 2"):
        cubic_cosine_similarity(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2))
    with pytest.raises(salfcbm.errors.InputError, match="same shape"):
        cubic_cosine_similarity(torch.randn(4, 2, 2, 2), torch.randn(4, 3, 2, 2))


class _Table:
    """A dataset of indices and a scorer that returns a fixed table of similarities."""

    def __init__(self, table: torch.Tensor):  # (N, Hg, Wg, D)
        self.table = table

    def __len__(self):
        return self.table.shape[0]

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8), 0

    def fingerprint(self):
        return {"scorer": "table", "sum": float(self.table.sum())}

    def embed(self, images, indices, prompts):
        return self.table[indices]

    def similarity(self, emb, concepts):
        return emb[..., [int(c[1:]) for c in concepts]]


def _linear_problem(tmp_path, n, seed):
    """Features F (N, C, 3, 3) and targets P = A F for concepts c0..c2 (one fixed A), plus pure noise for c3."""
    a = torch.randn(3, 6, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 6, 3, 3, generator=g)
    p = torch.einsum("mc,nchw->nmhw", a, feats)
    p = torch.cat([p, torch.randn(n, 1, 3, 3, generator=g)], 1)  # c3: unrelated to the features
    fstore = ShardedStore(tmp_path / f"f{seed}", manifest={"k": seed}, item_shape=(6, 3, 3), length=n,
                          shard_size=64, dtype=torch.float32)
    for i in fstore.missing_shards():
        a_, b_ = fstore.shard_range(i)
        fstore.write_shard(i, feats[a_:b_])
    table = _Table(p.permute(0, 2, 3, 1).contiguous())
    sims = compute_similarity_store(tmp_path / f"s{seed}", table, table, PromptGrid(grid=(3, 3), radius=1),
                                    progress=False, dtype=torch.float32)
    return fstore, sims


def test_bottleneck_learns_a_linear_target_and_cuts_the_noise_concept(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=["c0", "c1", "c2", "c3"], num_classes=2, grid=3, input_size=(6, 6))
    f_train, s_train = _linear_problem(tmp_path, 512, 0)
    f_val, s_val = _linear_problem(tmp_path, 256, 1)
    report = train_bottleneck(model, f_train, s_train, f_val, s_val,
                              BottleneckConfig(max_steps=300, val_every=25, batch_size=128, lr=1e-2, cutoff=0.45),
                              progress=False)
    assert report.concept_similarity["c0"] > 0.95
    assert report.concept_similarity["c1"] > 0.95
    assert report.concept_similarity["c3"] < 0.45
    assert [d[0] for d in report.dropped] == ["c3"]
    assert model.concepts == ["c0", "c1", "c2"]
    assert model.bottleneck.weight.shape[0] == 3 and model.head.weight.shape[1] == 3
    assert report.best_val_similarity == max(h["val_similarity"] for h in report.history)


def test_grid_mismatch_is_explained(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=["c0", "c1"], num_classes=2, grid=5, input_size=(12, 12))
    f, s = _linear_problem(tmp_path, 64, 0)
    with pytest.raises(salfcbm.errors.InputError, match="grid"):
        train_bottleneck(model, f, s, f, s, progress=False)


def test_head_config_validates():
    with pytest.raises(salfcbm.errors.InputError, match="target_nec"):
        HeadConfig(select="nec")
    with pytest.raises(salfcbm.errors.InputError, match="batch_size"):
        BottleneckConfig(batch_size=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A small but complete demo run: backbone, similarities, bottleneck, head, report."""
    from salfcbm.demo.run import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(n_train=800, n_val=200, n_test=200, backbone_epochs=5, bottleneck_steps=300,
                     num_classes=4, report_images=2, backbone_width=16)
    return run_demo(out, cfg, progress=False), cfg


def test_fit_end_to_end_on_the_procedural_scenes(tiny_run):
    res, _ = tiny_run
    m = res.metrics
    chance = 1 / 4
    assert m["salfcbm"]["test_accuracy"] > chance + 0.2
    assert m["standard_sparse"]["test_accuracy"] > chance + 0.2
    # loosely: the concept bottleneck costs little accuracy even on this tiny budget
    assert m["salfcbm"]["test_accuracy"] > m["standard_sparse"]["test_accuracy"] - 0.1
    # concept maps localise: well above random maps against the ground-truth masks
    assert m["segmentation"]["miou"] > m["segmentation_random"]["miou"] + 0.05
    assert m["segmentation"]["map"] > m["segmentation_random"]["map"] + 0.1
    # and by the field's localisation metrics (issue 19): the map's maximum lands on the concept more often
    assert m["segmentation"]["loc_pointing_game"] > m["segmentation_random"]["loc_pointing_game"] + 0.1
    assert 0 <= m["segmentation"]["loc_relevance_mass_relu"] <= 1
    for f in ("report.html", "metrics.json", "model/config.json", "model/model.safetensors", "figures/path.png"):
        assert (res.out / f).exists(), f
    html = (res.out / "report.html").read_text()
    assert "figures/test_000.png" in html and "mIoU" in html
    saved = json.loads((res.out / "metrics.json").read_text())
    assert saved["salfcbm"]["nec"] == pytest.approx(m["salfcbm"]["nec"])


def test_fit_resumes_without_retraining(tiny_run):
    from salfcbm.demo.run import load_demo, run_demo

    res, cfg = tiny_run
    bfile = res.out / "bottleneck.safetensors"
    stamp = os.stat(bfile).st_mtime_ns
    again = run_demo(res.out, cfg, progress=False)
    assert os.stat(bfile).st_mtime_ns == stamp  # the bottleneck stage was reused, not retrained
    assert again.model.concepts == res.model.concepts
    assert torch.equal(again.model.bottleneck.weight, res.model.bottleneck.weight)
    assert again.metrics["salfcbm"]["test_accuracy"] == pytest.approx(res.metrics["salfcbm"]["test_accuracy"])
    model, data = load_demo(res.out, cfg)
    x = torch.stack([data["test"][i][0] for i in range(4)])
    assert torch.allclose(model(model.preprocess(x)).logits, res.model(res.model.preprocess(x)).logits, atol=1e-5)


def test_cli_help_lists_subcommands(capsys):
    from salfcbm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "similarities", "train", "explain", "push"):
        assert cmd in out
    for cmd in ("demo", "similarities", "train", "explain", "push"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0


def test_cli_explain_writes_a_report(tiny_run, tmp_path, capsys):
    """`salfcbm explain` on a saved model with a custom backbone needs the backbone: use the Python API path."""
    from PIL import Image

    from salfcbm.cli import main

    res, _ = tiny_run
    # a self-contained model dir whose backbone can be rebuilt: wrap a timm model by name
    model = salfcbm.wrap("timm:test_vit", pretrained=False, concepts=["a", "b"], num_classes=2)
    model.save_pretrained(tmp_path / "m")
    img = tmp_path / "x.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(img)
    args = ["explain", "--model", str(tmp_path / "m"), str(img), "--top-k", "2", "--out", str(tmp_path / "r.html")]
    assert main(args) == 0  # a random-init backbone: its weights were saved with the model (backbone.safetensors)
    assert (tmp_path / "r.html").exists()
    assert "x.png" in capsys.readouterr().out


def test_features_on_the_fly_match_the_cache_and_fit_without_disk(tmp_path):
    from salfcbm.demo.scenes import GroundTruthScorer, SmallConvNet, SyntheticScenes
    from salfcbm.training import OnTheFlyFeatures, feature_store, fit

    train = SyntheticScenes(n=48, split="train", num_classes=2)
    val = SyntheticScenes(n=24, split="val", num_classes=2)
    model = salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2,
                         grid=4, input_size=(64, 64))
    cached = feature_store(model, train, tmp_path / "f", shard_size=16, progress=False)
    live = OnTheFlyFeatures(model, train, shard_size=16)
    assert live.num_shards == cached.num_shards == 3
    assert torch.allclose(live.read_shard(1), cached.read_shard(1).float(), atol=1e-2, rtol=1e-2)
    prompts = PromptGrid(grid=(4, 4))  # r = 32 at 224 px: 9 px on the 64 px scenes
    sims = {s: compute_similarity_store(tmp_path / s, d, GroundTruthScorer(d), prompts, progress=False)
            for s, d in (("train", train), ("val", val))}
    res = fit(model, train, val, train_similarities=sims["train"], val_similarities=sims["val"], run_dir=tmp_path / "run",
              cache_features=False, baseline=True, progress=False, filter_concepts=False,
              bottleneck=BottleneckConfig(max_steps=20, val_every=10, batch_size=16, cutoff=-1.0))
    # no training features on disk; the validation features are stored once, in the run's precision
    assert sorted(p.name for p in (tmp_path / "run" / "features").iterdir()) == ["val-fp32"]
    assert res.metrics["salfcbm"]["concepts"] == len(train.concepts)
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_val_tolerance_picks_the_sparsest_point_near_the_best():
    from salfcbm.training.head_stage import fit_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 30, generator=g)
    y = (x[:, :3] @ torch.tensor([2.0, -1.5, 1.0]) + 0.3 * torch.randn(600, generator=g) > 0).long()
    x_val, y_val = x[400:], y[400:]
    best = fit_head(x[:400], y[:400], x_val, y_val, 2, HeadConfig(n_lambdas=20), progress=False)
    loose = fit_head(x[:400], y[:400], x_val, y_val, 2, HeadConfig(n_lambdas=20, val_tolerance=0.05), progress=False)
    top = max(p.val_acc for p in best.path)
    assert loose.point.val_acc >= top - 0.05
    assert loose.point.nnz <= best.point.nnz
    assert torch.equal(loose.weight, loose.point.weight)
    assert loose.criterion == "val_acc_tolerance"
    with pytest.raises(salfcbm.errors.InputError, match="val_tolerance"):
        HeadConfig(val_tolerance=1.5)


def test_a_step_that_raises_stops_the_prefetch_thread(tmp_path, monkeypatch):
    """A failing step (e.g. Adam overflowing at a huge lr) must not leave the prefetch thread running:
    a daemon thread inside torch at interpreter exit aborted the process (exit 134)."""
    import threading

    from salfcbm.training import bottleneck as pipeline

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1))
    model = salfcbm.wrap(net, concepts=["c0", "c1", "c2", "c3"], num_classes=2, grid=3, input_size=(6, 6))
    f, s = _linear_problem(tmp_path, 512, 0)
    calls = {"n": 0}
    real = pipeline.bottleneck_loss

    def failing_loss(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("value cannot be converted to type float without overflow")
        return real(*args)

    monkeypatch.setattr(pipeline, "bottleneck_loss", failing_loss)
    with pytest.raises(RuntimeError, match="overflow"):
        train_bottleneck(model, f, s, f, s, BottleneckConfig(max_steps=50, val_every=25, batch_size=16),
                         progress=False)
    for t in threading.enumerate():
        if t.name == "salfcbm-prefetch":
            t.join(timeout=5)
            assert not t.is_alive(), "the prefetch thread outlived the failed loop"


@pytest.mark.parametrize("lr", [1e308, 11.0])
def test_a_learning_rate_beyond_the_bound_is_refused_up_front(lr):
    with pytest.raises(salfcbm.errors.InputError, match=r"\(0, 10\]"):
        BottleneckConfig(lr=lr)
