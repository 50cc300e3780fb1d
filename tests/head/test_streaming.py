"""The out-of-core sparse head (issue 21.2): same path as in memory, one chunk at a time, over ranks (21.3)."""

from __future__ import annotations

import gc
import os
import socket
import weakref

import pytest
import torch

from salfcbm.errors import InputError
from salfcbm.head import (
    ArrayChunks,
    StoreChunks,
    elastic_net_objective,
    fit_sparse_head,
    fit_sparse_head_streaming,
    kkt_violation,
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def clusters(n: int, m: int, n_cls: int, k: int, seed: int = 0, sep: float = 2.0, corr: float = 0.0):
    """Class clusters on the first ``k`` of ``m`` features (optionally mixed with a shared factor); standardised."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_cls, k, generator=g) * sep
    y = torch.randint(0, n_cls, (n,), generator=g)
    x = torch.randn(n, m, generator=g)
    if corr:
        x = x + corr * torch.randn(n, 1, generator=g)  # one common factor: correlated features
    x[:, :k] += centres[y]
    return (x - x.mean(0)) / x.std(0), y


@pytest.fixture(scope="module")
def problem():
    x, y = clusters(1500, 25, 4, 4, seed=3, corr=1.5)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def both(problem):
    xt, yt, xv, yv = problem
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        mem = fit_sparse_head(xt, yt, xv, yv, n_lambdas=12, lambda_min_ratio=0.02, progress=False)
        ooc = fit_sparse_head_streaming(ArrayChunks(xt, yt, 128), (xv, yv), lambdas=[p.lam for p in mem.path],
                                        progress=False)
    return mem, ooc


def test_out_of_core_matches_in_memory_objective_and_support(problem, both):
    xt, yt, _, _ = problem
    mem, ooc = both
    assert len(ooc.path) == len(mem.path)
    for p, q in zip(mem.path, ooc.path):
        om = elastic_net_objective(p.weight, p.bias, xt, yt, p.lam)
        oo = elastic_net_objective(q.weight, q.bias, xt, yt, q.lam)
        assert abs(oo - om) <= 1e-4 * abs(om), (p.lam, om, oo)
        assert q.objective == pytest.approx(oo, rel=1e-5)
    # a clear problem (features 0-3 carry the classes): the same support at the sparse end of the path
    for p, q in list(zip(mem.path, ooc.path))[:6]:
        assert torch.equal(p.weight != 0, q.weight != 0), p.lam
    assert ooc.selected == mem.selected and ooc.criterion == "val_acc"


def test_every_point_carries_a_kkt_certificate(problem, both):
    xt, yt, _, _ = problem
    _, ooc = both
    tol = ooc.info["tol_abs"]
    assert ooc.info["kkt_ok"] and ooc.info["kkt_max"] <= tol
    for q in ooc.path:
        exact = kkt_violation(q.weight, q.bias, xt, yt, q.lam)
        assert q.kkt <= tol and exact <= 2 * tol, (q.lam, q.kkt, exact, tol)


class CountingChunks:
    """A chunk source that records how many of the rows it handed out are alive at once."""

    def __init__(self, x, y, rows):
        self.inner = ArrayChunks(x, y, rows)
        self.alive = 0
        self.peak = 0
        self.reads = 0

    def __len__(self):
        return len(self.inner)

    def _gone(self, n):
        self.alive -= n

    def __getitem__(self, i):
        x, y = self.inner[i]
        x = x.clone()  # a fresh tensor per read, as a read from disk is
        self.reads += 1
        self.alive += x.shape[0]
        self.peak = max(self.peak, self.alive)
        weakref.finalize(x, self._gone, x.shape[0])
        return x, y


def test_memory_is_bounded_by_the_chunk(problem):
    xt, yt, _, _ = problem
    src = CountingChunks(xt, yt, 100)
    gc.collect()
    fit = fit_sparse_head_streaming(src, n_lambdas=6, lambda_min_ratio=0.05, select="last", progress=False)
    assert src.reads >= 10 * fit.info["passes"] - 10  # it really streamed, pass after pass
    # at most the chunk being read and the one just used are alive: never the (N, M) matrix
    assert src.peak <= 2 * 100 < xt.shape[0]


def test_standardises_on_the_fly(problem):
    xt, yt, _, _ = problem
    raw = xt * 3.0 + 5.0
    a = fit_sparse_head_streaming(xt, y_train=yt, chunk_rows=256, n_lambdas=5, lambda_min_ratio=0.1, select="last",
                                  progress=False)
    b = fit_sparse_head_streaming(raw, y_train=yt, chunk_rows=256, mean=torch.full((25,), 5.0),
                                  std=torch.full((25,), 3.0), n_lambdas=5, lambda_min_ratio=0.1, select="last",
                                  progress=False)
    assert torch.allclose(a.weight, b.weight, atol=1e-4)


def test_reads_a_sharded_store_from_disk(tmp_path, problem):
    from salfcbm.supervision.store import ShardedStore

    xt, yt, _, _ = problem
    store = ShardedStore(tmp_path / "s", manifest={"what": "pooled"}, item_shape=(25,), length=1000, shard_size=300,
                         dtype=torch.float32)
    for i in range(store.num_shards):
        s, e = store.shard_range(i)
        store.write_shard(i, xt[s:e])
    a = fit_sparse_head_streaming(StoreChunks(store, yt), n_lambdas=5, lambda_min_ratio=0.1, select="last",
                                  progress=False)
    b = fit_sparse_head_streaming(xt, y_train=yt, chunk_rows=300, n_lambdas=5, lambda_min_ratio=0.1, select="last",
                                  progress=False)
    assert torch.allclose(a.weight, b.weight, atol=1e-5)


def test_a_dataloader_is_a_chunk_source(problem):
    from torch.utils.data import DataLoader, TensorDataset

    xt, yt, _, _ = problem
    dl = DataLoader(TensorDataset(xt, yt), batch_size=200)
    a = fit_sparse_head_streaming(dl, n_lambdas=4, lambda_min_ratio=0.1, select="last", progress=False)
    b = fit_sparse_head_streaming(xt, y_train=yt, chunk_rows=200, n_lambdas=4, lambda_min_ratio=0.1, select="last",
                                  progress=False)
    assert torch.allclose(a.weight, b.weight, atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, y: ((x[i:i + 100], y[i:i + 100]) for i in range(0, 1000, 100)), "one-shot"),
        (lambda x, y: [(x[:500], y[:500]), (x[500:, :3], y[500:])], "same M"),
        (lambda x, y: [(x[:500], y[:500]), (x[500:].sum(1), y[500:])], "expected \\(B, M\\)"),
        (lambda x, y: [(x, -y)], "negative label"),
        (lambda x, y: [(x, torch.zeros_like(y))], "single class"),
        (lambda x, y: [], "no chunk"),
        (lambda x, y: 42, "chunk source"),
        (lambda x, y: [(torch.full_like(x, float("nan")), y)], "NaN"),
    ],
)
def test_bad_chunk_sources_are_refused(problem, make, match):
    xt, yt, _, _ = problem
    with pytest.raises(InputError, match=match):
        fit_sparse_head_streaming(make(xt, yt), n_lambdas=2, select="last", progress=False)


def test_labels_above_num_classes_are_refused(problem):
    xt, yt, _, _ = problem
    with pytest.raises(InputError, match="num_classes=3"):
        fit_sparse_head_streaming(xt, y_train=yt, num_classes=3, n_lambdas=2, select="last", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y = clusters(1000, 25, 4, 4, seed=3, corr=1.5)
        src = CountingChunks(x, y, 100)
        fit = fit_sparse_head_streaming(src, n_lambdas=6, lambda_min_ratio=0.05, select="last", progress=False)
        from salfcbm.head import HeadConfig, fit_head

        auto = fit_head(x[:800], y[:800], x[800:], y[800:], 4, HeadConfig(n_lambdas=6, lambda_min_ratio=0.05),
                        progress=False)  # "auto" under 2 ranks: each rank fits its share of the chunks
        torch.save({"w": fit.weight, "b": fit.bias, "reads": src.reads, "ranks": fit.info["ranks"],
                    "auto_w": auto.weight, "auto_b": auto.bias, "auto_lam": auto.lam, "auto_solver": auto.info.get("solver", "in memory"),
                    "passes": fit.info["passes"],
                    "n": fit.info["num_train"]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_share_the_chunks_and_agree_with_one(tmp_path):
    import torch.multiprocessing as tmp_mp

    tmp_mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    x, y = clusters(1000, 25, 4, 4, seed=3, corr=1.5)
    src = CountingChunks(x, y, 100)
    one = fit_sparse_head_streaming(src, n_lambdas=6, lambda_min_ratio=0.05, select="last", progress=False)
    assert r0["ranks"] == r1["ranks"] == 2 and r0["n"] == r1["n"] == 1000  # every row counted once
    # each rank read only its own half of the 10 chunks in every pass: both worked, neither read everything
    assert r0["passes"] == r1["passes"] > 10
    assert r0["reads"] == r1["reads"] == 5 * r0["passes"]
    assert src.reads == 10 * one.info["passes"]
    assert torch.equal(r0["w"], r1["w"])  # the ranks agree exactly (same all-reduced sums)
    assert torch.allclose(r0["w"], one.weight, atol=1e-4) and torch.allclose(r0["b"], one.bias, atol=1e-4)
    # fit_head under two ranks streams by itself and agrees with the in-memory head of one process
    from salfcbm.head import HeadConfig, fit_head

    mem = fit_head(x[:800], y[:800], x[800:], y[800:], 4, HeadConfig(n_lambdas=6, lambda_min_ratio=0.05),
                   progress=False)
    assert r0["auto_solver"].startswith("out-of-core") and "solver" not in mem.info
    assert torch.equal(r0["auto_w"], r1["auto_w"])
    assert r0["auto_lam"] == pytest.approx(mem.lam, rel=1e-5)
    om = elastic_net_objective(mem.weight, mem.bias, x[:800], y[:800], mem.lam)
    oo = elastic_net_objective(r0["auto_w"], r0["auto_b"], x[:800], y[:800], mem.lam)
    assert abs(oo - om) <= 1e-4 * om


@pytest.mark.parametrize("cfg_kw", [{"n_lambdas": 6, "lambda_min_ratio": 0.05}, {"lam": 5e-3, "n_lambdas": 6}])
def test_fit_head_streams_when_the_config_says_so(problem, cfg_kw):
    from salfcbm.head import HeadConfig, fit_head

    xt, yt, xv, yv = problem
    mem = fit_head(xt, yt, xv, yv, 4, HeadConfig(**cfg_kw), progress=False)
    assert "solver" not in mem.info  # "auto": these features are far below max_memory_gb, in memory as before
    ooc = fit_head(xt, yt, xv, yv, 4, HeadConfig(out_of_core=True, chunk_rows=300, **cfg_kw), progress=False)
    assert ooc.info["solver"].startswith("out-of-core") and ooc.criterion == mem.criterion
    assert [p.lam for p in ooc.path] == pytest.approx([p.lam for p in mem.path], rel=1e-5)
    om = elastic_net_objective(mem.weight, mem.bias, xt, yt, mem.lam)
    oo = elastic_net_objective(ooc.weight, ooc.bias, xt, yt, ooc.lam)
    assert abs(oo - om) <= 1e-4 * om
    auto = HeadConfig(max_memory_gb=1e-6, chunk_rows=300, **cfg_kw)  # 1 kB: these features count as too big
    assert auto.streams(*xt.shape) and fit_head(xt, yt, xv, yv, 4, auto, progress=False).info["passes"] > 0
