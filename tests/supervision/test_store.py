"""Sharded stores (paper 3.2 at scale): atomic shards, resume after kill -9, torchrun sharding."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch

from salfcbm.errors import InputError, StoreCorruptError, StoreMismatchError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorers import CLIPScorer
from salfcbm.supervision.store import PromptedEmbeddingStore, ShardedStore, compute_similarity_store, compute_store

sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import ToyImages, ToyScorer, toy_fn  # noqa: E402

WORKER = Path(__file__).parent / "_dist_worker.py"
REPO = Path(__file__).resolve().parents[2]

open_clip.factory._MODEL_CONFIGS.setdefault(
    "salf-test-tiny",
    {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _toy_store(root, length=10, shard_size=4, **kw) -> ShardedStore:
    return ShardedStore(root, manifest={"fn": "toy"}, item_shape=(2, 3), length=length, shard_size=shard_size, **kw)


def _shard_files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(root).glob("shard_*.safetensors"))}


# -- ShardedStore ------------------------------------------------------------------------
def test_layout_write_and_random_access(tmp_path):
    s = _toy_store(tmp_path / "s", length=10, shard_size=4)
    assert (s.num_shards, len(s), s.shard_range(2), s.missing_shards()) == (3, 10, (8, 10), [0, 1, 2])
    full = torch.randn(10, 2, 3)
    for i in [2, 0]:
        a, b = s.shard_range(i)
        s.write_shard(i, full[a:b])
    assert s.missing_shards() == [1] and not s.is_complete
    s.write_shard(1, full[4:8])
    assert s.is_complete
    ref = full.half()
    idx = [9, 0, 5, 5, 3, 4, -1]
    assert torch.equal(s.read(idx), ref[idx])
    assert torch.equal(s[2:7], ref[2:7]) and torch.equal(s[7], ref[7])
    assert torch.equal(s.read(torch.tensor([8, 1])), ref[[8, 1]])
    assert s.read([]).shape == (0, 2, 3)
    starts = [start for start, _ in s.iter_shards()]
    assert starts == [0, 4, 8] and torch.equal(torch.cat([t for _, t in s.iter_shards()]), ref)
    # survives pickling (DataLoader workers) with open handles
    assert torch.equal(pickle.loads(pickle.dumps(s)).read([3]), ref[[3]])
    reopened = ShardedStore.open(tmp_path / "s")
    assert reopened.dtype == torch.float16 and reopened.item_shape == (2, 3)
    assert torch.equal(reopened.read(range(10)), ref)


def test_write_validates_shape_and_reads_are_checked(tmp_path):
    s = _toy_store(tmp_path / "s")
    with pytest.raises(InputError, match=r"Shard 2 must have shape \(2, 2, 3\)"):
        s.write_shard(2, torch.zeros(4, 2, 3))
    with pytest.raises(InputError, match="Shard index"):
        s.write_shard(3, torch.zeros(2, 2, 3))
    with pytest.raises(StoreCorruptError, match="missing"):
        s.read([0])
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        s.read([10])
    s.shard_path(0).write_bytes(b"not a safetensors file")
    with pytest.raises(StoreCorruptError, match="fails its checksum"):
        s.read([0])


def test_manifest_mismatch_lists_keys(tmp_path):
    _toy_store(tmp_path / "s", length=10, shard_size=4)
    _toy_store(tmp_path / "s", length=10, shard_size=4)  # same settings: fine
    with pytest.raises(StoreMismatchError, match=r"differing keys: length, meta\.fn.*delete this one"):
        ShardedStore(tmp_path / "s", manifest={"fn": "other"}, item_shape=(2, 3), length=11, shard_size=4)
    with pytest.raises(StoreMismatchError, match="shard_size"):
        _toy_store(tmp_path / "s", length=10, shard_size=5)
    with pytest.raises(StoreMismatchError, match="dtype"):
        _toy_store(tmp_path / "s", length=10, shard_size=4, dtype=torch.float32)


def test_open_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(StoreCorruptError, match="No manifest.json"):
        ShardedStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreCorruptError, match="Cannot parse"):
        ShardedStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(StoreCorruptError, match="not a salfcbm.ShardedStore manifest"):
        ShardedStore.open(tmp_path)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "shard_000000.safetensors").write_bytes(b"x")
    with pytest.raises(StoreCorruptError, match="no manifest.json"):
        _toy_store(orphan)
    assert issubclass(StoreCorruptError, OSError)


# -- compute_store -------------------------------------------------------------------------
def test_compute_store_only_missing_shards(tmp_path):
    data = ToyImages(10)
    calls: list[list[int]] = []

    def fn(images, idx):
        calls.append(idx.tolist())
        return toy_fn(images, idx)

    s = _toy_store(tmp_path / "s")
    from salfcbm._utils.provenance import resolve_inputs, shard_digest

    digest = shard_digest(data, 4, 8, resolve_inputs(data, "auto"))
    s.write_shard(1, torch.zeros(4, 2, 3), inputs=digest)  # pretend shard 1 was done by an earlier run
    compute_store(s, data, fn, batch_size=3, progress=False)
    done = sorted(i for c in calls for i in c)
    assert done == [0, 1, 2, 3, 8, 9]
    assert all(len({i // 4 for i in c}) == 1 for c in calls)  # batches never cross shards
    expected = toy_fn(torch.stack([data[i][0] for i in range(10)]), torch.arange(10)).half()
    assert torch.equal(s.read([0, 9]), expected[[0, 9]])
    calls.clear()
    compute_store(s, data, fn, progress=False)  # complete: nothing recomputed
    assert calls == []


def test_compute_store_validation(tmp_path):
    s = _toy_store(tmp_path / "s")
    with pytest.raises(InputError, match="dataset has 7 items"):
        compute_store(s, ToyImages(7), toy_fn, progress=False)
    with pytest.raises(InputError, match=r"expected \(2, 2, 3\)"):
        compute_store(s, ToyImages(10), lambda x, i: torch.zeros(x.shape[0], 5), batch_size=2, progress=False)
    with pytest.raises(InputError, match="different shapes"):
        mixed = [(torch.rand(3, 8, 8 + (i % 2)), 0) for i in range(10)]
        compute_store(s, mixed, toy_fn, batch_size=2, progress=False)


def test_kill9_resume_never_rewrites_complete_shards(tmp_path):
    root = tmp_path / "killed"
    cmd = [sys.executable, str(WORKER), str(root), "--length", "24", "--shard-size", "2", "--batch-size", "2", "--delay", "0.25"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(root.glob("shard_*.safetensors"))) < 2:
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    s = ShardedStore.open(root)
    done = [i for i in range(s.num_shards) if i not in s.missing_shards()]
    assert 2 <= len(done) < s.num_shards
    before = {i: (s.shard_path(i).stat().st_ino, s.shard_path(i).stat().st_mtime_ns) for i in done}
    # a half-written shard left by the crash: a truncated temporary file
    fake = root / f"{s.shard_path(s.missing_shards()[0]).name}.tmp-99999-deadbeef"
    fake.write_bytes(s.shard_path(done[0]).read_bytes()[:50])
    recomputed: list[int] = []

    def fn(images, idx):
        recomputed.extend(idx.tolist())
        return toy_fn(images, idx)

    compute_store(s, ToyImages(24), fn, batch_size=2, progress=False)
    assert s.is_complete and not fake.exists()
    assert {i // 2 for i in recomputed}.isdisjoint(done)
    after = {i: (s.shard_path(i).stat().st_ino, s.shard_path(i).stat().st_mtime_ns) for i in done}
    assert after == before
    one_shot = compute_store(_toy_store(tmp_path / "one", length=24, shard_size=2), ToyImages(24), toy_fn, batch_size=2, progress=False)
    assert _shard_files(root) == _shard_files(one_shot.root)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_disjoint_shards_identical_store(tmp_path):
    root = tmp_path / "dist"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(WORKER), str(root), "--length", "22", "--shard-size", "3", "--kind", "similarity",
    ]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, timeout=180)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    seen = [set(json.loads((root / f"seen_rank{r}.json").read_text())) for r in range(2)]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(22))
    assert {i // 3 for i in seen[0]} == {0, 2, 4, 6} and {i // 3 for i in seen[1]} == {1, 3, 5, 7}
    single = compute_similarity_store(tmp_path / "single", ToyImages(22), ToyScorer(), PromptGrid(grid=(2, 2), radius=4), shard_size=3, progress=False)
    assert _shard_files(root) == _shard_files(single.store.root)
    assert json.loads((root / "manifest.json").read_text()) == json.loads((single.store.root / "manifest.json").read_text())


# -- PromptedEmbeddingStore -------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_scorer():
    torch.manual_seed(0)
    return CLIPScorer("salf-test-tiny", pretrained=None, device="cpu", batch_size=16)


def test_similarity_store_targets_match_scorer(tmp_path, clip_scorer):
    data = ToyImages(5, size=40)
    prompts = PromptGrid(grid=(3, 2), radius=6)
    sims = compute_similarity_store(tmp_path / "sims", data, clip_scorer, prompts, shard_size=2, batch_size=2, progress=False)
    assert isinstance(sims, PromptedEmbeddingStore)
    assert (sims.grid, sims.length, sims.embedding_dim, sims.prompts) == ((3, 2), 5, 32, prompts)
    concepts = ["striped fur", "blue sky", "a wheel", "grass"]
    images = torch.stack([data[i][0] for i in [4, 1]])
    emb = clip_scorer.embed(images, torch.tensor([4, 1]), prompts)  # (2, 3, 2, D)
    expected = torch.einsum("bhwd,md->bmhw", emb, clip_scorer.text_embeddings(concepts))
    got = sims.targets([4, 1], concepts)
    assert got.shape == (2, 4, 3, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # fp16 storage
    manifest = json.loads((tmp_path / "sims" / "manifest.json").read_text())
    meta = manifest["meta"]
    assert meta["scorer"] == json.loads(json.dumps(clip_scorer.fingerprint()))
    assert meta["prompts"] == prompts.to_dict() and meta["dataset"]["type"] == "ToyImages" and manifest["length"] == 5
    assert manifest["item_shape"] == [3, 2, 32] and manifest["dtype"] == "float16"
    act = sims.concept_activity(concepts, top_k=2)
    per_image = sims.targets(range(5), concepts).amax(dim=(2, 3))
    torch.testing.assert_close(act, per_image.topk(2, dim=0).values.mean(dim=0))
    # reopening and re-running with the same settings are no-ops
    again = compute_similarity_store(tmp_path / "sims", data, clip_scorer, prompts, shard_size=2, batch_size=2, progress=False)
    torch.testing.assert_close(again.targets([0], concepts), sims.targets([0], concepts))
    assert PromptedEmbeddingStore.open(tmp_path / "sims", clip_scorer).length == 5


def test_similarity_store_rejects_other_settings(tmp_path, clip_scorer):
    data = ToyImages(3, size=32)
    compute_similarity_store(tmp_path / "sims", data, clip_scorer, PromptGrid(grid=2, radius=5), progress=False)
    with pytest.raises(StoreMismatchError, match=r"meta\.prompts\.radius"):
        compute_similarity_store(tmp_path / "sims", data, clip_scorer, PromptGrid(grid=2, radius=6), progress=False)
    # another length is not a mismatch: the store is resized and only changed shards are recomputed
    longer = compute_similarity_store(tmp_path / "sims", ToyImages(4, size=32), clip_scorer, PromptGrid(grid=2, radius=5),
                                      progress=False)
    assert longer.length == 4
    with pytest.raises(StoreMismatchError, match="another scorer"):
        PromptedEmbeddingStore.open(tmp_path / "sims", ToyScorer())
    generic = _toy_store(tmp_path / "generic")
    with pytest.raises(StoreMismatchError, match="not a similarity store"):
        PromptedEmbeddingStore(generic, clip_scorer)
