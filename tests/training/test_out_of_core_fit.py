"""`fit` out of core (issue 21.2): the pooled activations of the training split live on disk, never in memory.

With ``HeadConfig(out_of_core=True)`` (or ``"auto"`` above ``max_memory_gb``) `fit` writes the pooled
concept activations of train and val to sharded stores under ``run/activations``, measures the
standardisation in one streaming pass and fits the head with `fit_sparse_head_streaming` over the
store's chunks. The head must be the in-memory one (same objective, same selected point), and no
``(N_train, M)`` tensor may be built.
"""

from __future__ import annotations

import pytest
import torch

import salfcbm
import salfcbm.head.chunks as chunks_mod
import salfcbm.training.cutoff_stage as cutoff_mod
import salfcbm.training.features as features_mod
import sys
import salfcbm.training.head_stage as head_mod
from salfcbm.head import elastic_net_objective
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import compute_similarity_store
from salfcbm.training import BottleneckConfig, HeadConfig, fit

fit_mod = sys.modules["salfcbm.training.fit"]  # the module (salfcbm.training.fit is the function)

N_TRAIN, CHUNK = 120, 32


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes

    root = tmp_path_factory.mktemp("scenes")
    train = SyntheticScenes(n=N_TRAIN, split="train", num_classes=2, image_size=32)
    val = SyntheticScenes(n=40, split="val", num_classes=2, image_size=32)
    prompts = PromptGrid(grid=(4, 4), radius=5)
    sims = {s: compute_similarity_store(root / s, d, GroundTruthScorer(d), prompts, progress=False)
            for s, d in (("train", train), ("val", val))}
    return train, val, sims


def _fit(scenes, run_dir, head, bottleneck=None, baseline=False, **kw):
    from salfcbm.demo.scenes import SmallConvNet

    train, val, sims = scenes
    torch.manual_seed(0)
    model = salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2,
                         grid=4, input_size=(32, 32), backbone_weights=None)
    return fit(model, train, val, baseline=baseline, train_similarities=sims["train"], val_similarities=sims["val"], run_dir=run_dir,
               shard_size=48, progress=False, filter_concepts=False, head=head,
               bottleneck=bottleneck or BottleneckConfig(max_steps=20, val_every=10, batch_size=16, cutoff=-2.0), **kw)


class _Spy:
    """Records the rows of every tensor the watched functions build or receive."""

    def __init__(self, monkeypatch):
        self.rows: list[tuple[str, int]] = []
        self.chunk_rows: list[int] = []
        self.pooled = 0
        for mod in (fit_mod,):
            self._wrap_out(monkeypatch, mod, "store_concept_activations")
        for mod in (head_mod, cutoff_mod):
            self._wrap_in(monkeypatch, mod, "fit_standardization")
        get = chunks_mod.StoreChunks.__getitem__

        def getitem(store_chunks, i):
            x, y = get(store_chunks, i)
            self.chunk_rows.append(int(x.shape[0]))
            return x, y

        monkeypatch.setattr(chunks_mod.StoreChunks, "__getitem__", getitem)
        pool = features_mod.pool_concepts

        def pool_concepts(*a, **k):
            self.pooled += 1
            return pool(*a, **k)

        monkeypatch.setattr(features_mod, "pool_concepts", pool_concepts)

    def _wrap_out(self, monkeypatch, mod, name):
        fn = getattr(mod, name)

        def spy(*a, **k):
            out = fn(*a, **k)
            self.rows.append((name, int(out.shape[0])))
            return out

        monkeypatch.setattr(mod, name, spy)

    def _wrap_in(self, monkeypatch, mod, name):
        fn = getattr(mod, name)

        def spy(train, *others):
            self.rows.append((name, int(train.shape[0])))
            return fn(train, *others)

        monkeypatch.setattr(mod, name, spy)


def test_out_of_core_fit_matches_in_memory_and_never_builds_the_training_matrix(scenes, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # lam = 1e-2: a clear problem (a unique, well-separated optimum) on these correlated concepts (cond ~7e4)
    mem = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=False))
    assert mem.metrics["head_inputs"] == {"out_of_core": False, "stores": {}}
    assert not (run / "activations").exists()  # the default stays in memory: nothing written

    spy = _Spy(monkeypatch)
    ooc = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=True, chunk_rows=CHUNK))  # the bottleneck resumes
    assert ooc.metrics["head_inputs"]["out_of_core"] is True
    assert ooc.head.info["solver"].startswith("out-of-core")
    # no (N_train, M) tensor: not pooled at once, not standardised at once; the head read chunks of <= 32 rows
    assert all(n != N_TRAIN for _, n in spy.rows), spy.rows
    assert spy.chunk_rows and max(spy.chunk_rows) <= CHUNK
    assert spy.pooled == 120 // 48 + 1 + 1  # each feature shard of train (3) and val (1) pooled once
    # the stores exist on disk, one shard per chunk
    stores = ooc.metrics["head_inputs"]["stores"]
    for split, n in (("train", N_TRAIN), ("val", 40)):
        s = features_mod.ShardedStore.open(stores[split])
        assert s.is_complete and len(s) == n and s.num_shards == -(-n // CHUNK)

    # the same standardisation (float64 streaming moments vs float32 in memory, ddof=1)
    torch.testing.assert_close(ooc.model.concept_mean, mem.model.concept_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ooc.model.concept_std, mem.model.concept_std, rtol=1e-5, atol=1e-6)
    # the same head: the same lam, the objective equal to 1e-5 relative, the weights within 5e-3
    assert ooc.head.lam == pytest.approx(mem.head.lam, rel=1e-6)
    s = features_mod.ShardedStore.open(stores["train"])
    x = torch.cat([v for _, v in s.iter_shards()])
    z = (x - mem.model.concept_mean) / mem.model.concept_std
    y = features_mod.labels_of(scenes[0])
    f_mem = elastic_net_objective(mem.head.weight, mem.head.bias, z, y, mem.head.lam, mem.head.alpha)
    f_ooc = elastic_net_objective(ooc.head.weight, ooc.head.bias, z, y, ooc.head.lam, ooc.head.alpha)
    assert f_ooc == pytest.approx(f_mem, rel=1e-5)
    torch.testing.assert_close(ooc.head.weight, mem.head.weight, rtol=0, atol=5e-3)
    assert torch.equal(ooc.head.weight != 0, mem.head.weight != 0)  # the same support
    assert ooc.metrics["salfcbm"]["train_accuracy"] == pytest.approx(mem.metrics["salfcbm"]["train_accuracy"])


def test_out_of_core_selection_and_resume(scenes, tmp_path, monkeypatch):
    """val_acc selection picks the same path point; a second run reads the stores back (no pooling, same shards)."""
    run = tmp_path / "run"
    cfg = dict(n_lambdas=6, lambda_min_ratio=0.05)
    mem = _fit(scenes, run, HeadConfig(out_of_core=False, **cfg))
    ooc = _fit(scenes, run, HeadConfig(out_of_core=True, chunk_rows=CHUNK, **cfg))
    assert ooc.head.selected == mem.head.selected
    assert ooc.head.lam == pytest.approx(mem.head.lam, rel=1e-4)
    assert ooc.metrics["salfcbm"]["val_accuracy"] == mem.metrics["salfcbm"]["val_accuracy"]
    stores = ooc.metrics["head_inputs"]["stores"]
    shards = sorted(p for d in stores.values() for p in __import__("pathlib").Path(d).glob("shard_*"))
    stamps = [p.stat().st_mtime_ns for p in shards]

    spy = _Spy(monkeypatch)
    again = _fit(scenes, run, HeadConfig(out_of_core=True, chunk_rows=CHUNK, **cfg))
    assert spy.pooled == 0  # nothing recomputed
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert again.metrics["head_inputs"]["stores"] == stores
    torch.testing.assert_close(again.head.weight, ooc.head.weight)


def test_auto_streams_above_max_memory_gb(scenes, tmp_path):
    """``out_of_core="auto"`` streams when the (N, M) float32 matrix exceeds max_memory_gb."""
    tiny = 1e-9  # GB: any training matrix is larger
    res = _fit(scenes, tmp_path / "run", HeadConfig(lam=1e-3, max_memory_gb=tiny, chunk_rows=64),
               cache_features=False)  # training features on the fly: the store is computed from them
    assert res.metrics["head_inputs"]["out_of_core"] is True
    assert res.metrics["features"]["cached"] is False
    assert features_mod.ShardedStore.open(res.metrics["head_inputs"]["stores"]["train"]).is_complete


@pytest.mark.parametrize("pooling", ["mean", "max", "softmax"])
def test_activation_store_holds_the_in_memory_pooled_activations(scenes, tmp_path, pooling):
    """Shard by shard, across feature shards that do not line up with the chunks, the rows are store_concept_activations'."""
    from salfcbm.demo.scenes import SmallConvNet
    from salfcbm.training.features import activation_store, store_concept_activations, feature_store

    train = scenes[0]
    torch.manual_seed(0)
    model = salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2,
                         grid=4, input_size=(32, 32), backbone_weights=None, pooling=pooling)
    feats = feature_store(model, train, tmp_path / "f", shard_size=48, progress=False, dtype=torch.float32)
    store = activation_store(model, feats, tmp_path / "a", rows=CHUNK, features_key="k")
    got = torch.cat([v for _, v in store.iter_shards()])
    torch.testing.assert_close(got, store_concept_activations(model, feats), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        model.bottleneck.weight.mul_(2)  # another bottleneck: another store, never the stale one
    other = activation_store(model, feats, tmp_path / "a", rows=CHUNK, features_key="k")
    assert other.root != store.root and not store.root.exists()  # the stale store is removed
    torch.testing.assert_close(torch.cat([v for _, v in other.iter_shards()]), store_concept_activations(model, feats),
                               rtol=1e-5, atol=1e-5)


def test_out_of_core_cutoff_check_streams_and_agrees(scenes, tmp_path, monkeypatch):
    """The cutoff check (a head on every candidate and one on the survivors) streams too, with the same result."""
    run = tmp_path / "run"
    first = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=False))
    sims = sorted(first.bottleneck.concept_similarity.values())
    cutoff = (sims[len(sims) // 2 - 1] + sims[len(sims) // 2]) / 2  # drops about half of the concepts
    b = BottleneckConfig(max_steps=20, val_every=10, batch_size=16, cutoff=cutoff)
    mem = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=False), bottleneck=b)
    spy = _Spy(monkeypatch)
    ooc = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=True, chunk_rows=CHUNK), bottleneck=b)
    assert all(n != N_TRAIN for _, n in spy.rows), spy.rows
    assert mem.cutoff["dropped"] and ooc.cutoff["dropped"] == mem.cutoff["dropped"]
    for k in ("val_accuracy_without_cutoff", "val_accuracy_with_cutoff", "needed_by_head", "kept_for_head"):
        assert ooc.cutoff[k] == mem.cutoff[k], k
    assert ooc.model.concepts == mem.model.concepts


def test_out_of_core_baseline_matches_in_memory(scenes, tmp_path, monkeypatch):
    """The standard baseline (and its matched-NEC row) streams over a store of pooled backbone features."""
    run = tmp_path / "run"
    mem = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=False), baseline=True)
    assert not (run / "pooled_features").exists()
    calls = []
    pf = features_mod.store_pooled_features

    def pooled(features):
        out = pf(features)
        calls.append(int(out.shape[0]))
        return out

    monkeypatch.setattr(head_mod, "store_pooled_features", pooled)
    spy = _Spy(monkeypatch)
    ooc = _fit(scenes, run, HeadConfig(lam=1e-2, out_of_core=True, chunk_rows=CHUNK), baseline=True)
    assert N_TRAIN not in calls and calls  # validation pooled in memory, the training split never
    assert all(n != N_TRAIN for _, n in spy.rows), spy.rows
    store = features_mod.ShardedStore.open(next((run / "pooled_features").iterdir()))
    assert store.is_complete and len(store) == N_TRAIN and store.num_shards == -(-N_TRAIN // CHUNK)
    a, b = mem.metrics["standard_sparse"], ooc.metrics["standard_sparse"]
    assert b["lambda"] == pytest.approx(a["lambda"], rel=1e-6)
    assert (b["val_accuracy"], b["features"]) == (a["val_accuracy"], a["features"])
    assert b["train_accuracy"] == pytest.approx(a["train_accuracy"], abs=1e-6)  # counted exactly vs a float32 mean
    torch.testing.assert_close(ooc.baseline.weight, mem.baseline.weight, rtol=0, atol=5e-3)
    m_mem, m_ooc = mem.metrics["matched_nec"]["standard_sparse"], ooc.metrics["matched_nec"]["standard_sparse"]
    assert m_ooc["nec"] <= ooc.metrics["matched_nec"]["nec"]
    assert (m_ooc["nec"], m_ooc["val_accuracy"]) == (m_mem["nec"], m_mem["val_accuracy"])
    assert m_ooc["lambda"] == pytest.approx(m_mem["lambda"], rel=1e-4)


def _rank(rank: int, world: int, root: str) -> None:
    from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes

    torch.set_num_threads(1)
    train = SyntheticScenes(n=64, split="train", num_classes=2, image_size=32)
    val = SyntheticScenes(n=32, split="val", num_classes=2, image_size=32)
    prompts = PromptGrid(grid=(4, 4), radius=5)
    sims = {s: compute_similarity_store(f"{root}/sims/{s}", d, GroundTruthScorer(d), prompts, progress=False)
            for s, d in (("train", train), ("val", val))}
    torch.distributed.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank,
                                         world_size=world)
    try:
        res = _fit((train, val, sims), f"{root}/run", HeadConfig(lam=1e-2, out_of_core=True, chunk_rows=16))
        torch.save({"head": res.model.head.weight.detach().clone(), "info": res.head.info,
                    "stores": res.metrics["head_inputs"]["stores"]}, f"{root}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork") or not torch.distributed.is_available(),
                    reason="needs fork and torch.distributed (gloo)")
def test_out_of_core_fit_on_two_ranks(tmp_path):
    """Under torch.distributed the ranks split the store's shards and the head's chunks, and agree on the head."""
    torch.multiprocessing.start_processes(_rank, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["info"]["ranks"] == r1["info"]["ranks"] == 2 and r0["info"]["kkt_ok"]
    assert torch.equal(r0["head"], r1["head"]) and r0["stores"] == r1["stores"]
    store = features_mod.ShardedStore.open(r0["stores"]["train"])
    assert store.is_complete and store.num_shards == 4
