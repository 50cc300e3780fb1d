"""Stores and caches: checksummed shards, content-keyed inputs, kill -9 mid-computation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from salfcbm.datasets.folder import ImageFolderDataset
from salfcbm.errors import StoreCorruptError
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import ShardedStore, compute_similarity_store

from . import _models as M

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = PromptGrid(grid=(2, 2), radius=3)


def _shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard_*.safetensors"))}


def _compute(root, data, **kw):
    return compute_similarity_store(root, data, M.ColourScorer(), PROMPTS, shard_size=2, batch_size=2,
                                    progress=False, **kw)


def _flip(path: Path, pos: int) -> None:
    b = bytearray(path.read_bytes())
    b[pos] ^= 0x5A
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("where", ["data", "header", "truncate"])
def test_a_corrupt_shard_is_unfinished_and_recomputed(tmp_path, where):
    data = M.images(6)
    _compute(tmp_path / "s", data)
    good = _shards(tmp_path / "s")
    shard = tmp_path / "s" / "shard_000001.safetensors"
    if where == "truncate":
        shard.write_bytes(shard.read_bytes()[:-3])
    else:
        _flip(shard, len(shard.read_bytes()) - 5 if where == "data" else 20)
    store = ShardedStore.open(tmp_path / "s")
    assert store.missing_shards() == [1] and not store.is_complete
    with pytest.raises(StoreCorruptError, match="fails its checksum.*recomputes"):
        store.read([2])
    _compute(tmp_path / "s", data)
    assert _shards(tmp_path / "s") == good


def _folder(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:02d}.png")
    return root


def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.glob("shard_*.safetensors")}


@pytest.mark.parametrize("change", ["replace", "add", "remove"])
def test_changed_images_recompute_exactly_their_shards(tmp_path, change):
    folder = _folder(tmp_path / "imgs", 8)
    _compute(tmp_path / "s", ImageFolderDataset(folder, size=16))
    before = _mtimes(tmp_path / "s")
    time.sleep(0.01)
    if change == "replace":  # same name, other pixels: c1/07.png is the last image (shard 3)
        Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(folder / "c1" / "07.png")
    elif change == "add":
        Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(folder / "c1" / "09.png")
    else:
        (folder / "c1" / "07.png").unlink()
    data = ImageFolderDataset(folder, size=16)
    store = _compute(tmp_path / "s", data).store
    fresh = _compute(tmp_path / "fresh", data).store
    assert torch.equal(store.read(slice(None)), fresh.read(slice(None)))  # nothing stale
    after = _mtimes(tmp_path / "s")
    kept = sorted(n for n in before if after.get(n) == before[n])
    untouched = 4 if change == "add" else 3  # the new image sorts last: it only adds a shard
    assert kept == [f"shard_{i:06d}.safetensors" for i in range(untouched)], kept


def test_content_keyed_generic_dataset(tmp_path):
    data = M.images(6)
    _compute(tmp_path / "s", data)
    data[3] = (torch.zeros(3, 16, 16), 1)  # a plain list: keyed by pixels
    store = _compute(tmp_path / "s", data).store
    assert torch.equal(store.read([3]), _compute(tmp_path / "fresh", data).store.read([3]))


def test_local_dir_clip_without_weights_fingerprints_the_weights(tmp_path):
    import open_clip

    from salfcbm.supervision.scorers import CLIPScorer

    tiny = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    open_clip.factory._MODEL_CONFIGS.setdefault("salf-rel-tiny", tiny)
    d = tmp_path / "clip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny}))
    a, b = (CLIPScorer(f"local-dir:{d}", device="cpu") for _ in range(2))
    assert a.fingerprint() != b.fingerprint()  # two different random models


CHILD = """
import sys, torch
torch.set_num_threads(1)
from tests.reliability import _models as M
M.run_stages(sys.argv[1], slow=True)
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted tiny run: the artefacts every resumed run must reproduce byte for byte."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    M.run_stages(ref)
    return ref


def test_kill_9_during_similarities_features_and_fit_resumes_identically(tmp_path, reference):
    """Kill a run at random moments (3 seeds), resume it, compare every artefact with an uninterrupted run."""
    ref = reference
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for seed in range(3):
        run = tmp_path / f"killed{seed}"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "similarities").exists() and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        M.run_stages(run)
        assert M.artefacts(run) == M.artefacts(ref), seed


def test_demo_backbone_is_keyed_by_its_settings_and_checked(tmp_path):
    from salfcbm.demo.run import DemoConfig, _backbone, _datasets

    cfg = DemoConfig(n_train=12, n_val=4, n_test=4, image_size=16, num_classes=2, backbone_epochs=1, backbone_width=2)
    data = _datasets(cfg)
    path = tmp_path / "backbone.safetensors"
    net = _backbone(cfg, data, tmp_path, progress=False)
    stamp = path.stat().st_mtime_ns
    again = _backbone(cfg, data, tmp_path, progress=False)
    assert path.stat().st_mtime_ns == stamp  # same settings: reused
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    wider = DemoConfig(**{**cfg.__dict__, "backbone_width": 3})
    net3 = _backbone(wider, _datasets(wider), tmp_path, progress=False)  # other settings: trained again
    assert [v.shape for v in net3.state_dict().values()] != [v.shape for v in net.state_dict().values()]
    _flip(path, len(path.read_bytes()) - 3)  # a corrupt file is trained again, not loaded
    fixed = _backbone(wider, _datasets(wider), tmp_path, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(net3.state_dict().values(), fixed.state_dict().values()))


def test_flipped_run_files_are_recomputed_to_the_same_result(tmp_path, reference):
    """A flipped byte in a similarity shard, a feature shard and the bottleneck checkpoint: the rerun
    recomputes exactly those and ends byte-identical."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    targets = [run / "similarities" / "train" / "shard_000000.safetensors",
               run / "features" / "val" / "shard_000001.safetensors", run / "bottleneck.safetensors"]
    for path in targets:
        _flip(path, len(path.read_bytes()) - 7)
    M.run_stages(run)
    assert M.artefacts(run) == M.artefacts(reference)


def test_flipped_manifest_is_a_salfcbm_error(tmp_path, reference):
    import shutil

    from salfcbm.errors import SalfCBMError

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    manifest = run / "features" / "train" / "manifest.json"
    good = manifest.read_bytes()
    rng = random.Random(0)
    for pos in rng.sample(range(len(good)), 10):
        _flip(manifest, pos)
        with pytest.raises(SalfCBMError):
            M.run_stages(run)
        manifest.write_bytes(good)


def test_full_disk_during_a_run_then_resume(small_tmpfs, reference):
    """Run with 0..96 pages free: each run finishes or fails with ENOSPC; after freeing the
    space, the resumed run is byte-identical to the reference."""
    import errno
    import shutil

    from .conftest import fill

    outcomes = []
    for free_pages in (0, 6, 12, 24, 48, 96):
        run = small_tmpfs / "run"
        fill(small_tmpfs, free_pages)
        try:
            M.run_stages(run)
            outcomes.append("finished")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            outcomes.append("full")
        (small_tmpfs / "filler").unlink()
        M.run_stages(run)
        assert M.artefacts(run) == M.artefacts(reference), free_pages
        shutil.rmtree(run)
    assert outcomes[0] == "full" and outcomes[-1] == "finished", outcomes
