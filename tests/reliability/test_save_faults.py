"""save_pretrained under kill -9 at random moments and a full disk (simulated and a real tmpfs): the old model, the
new one, or (killed between the two replaces) a detected interrupted save that the next save repairs."""

from __future__ import annotations

import errno
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.errors import ChecksumError

from . import _models as M
from .conftest import fill

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys, torch
torch.set_num_threads(1)
from tests.reliability import _models as M
a, b = M.model(0), M.model(1)
a.save_pretrained(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    (b if i % 2 == 0 else a).save_pretrained(sys.argv[1])
    i += 1
"""


def _load(path) -> salfcbm.SALFCBM:
    return salfcbm.SALFCBM.from_pretrained(path, backbone=M.backbone()).eval()


def _which(path) -> int:
    """0 or 1: which of the two models the folder holds (it must be exactly one of them)."""
    got = M.logits(_load(path))
    hits = [v for v in (0, 1) if torch.equal(got, M.logits(M.model(v)))]
    assert hits, "the folder holds neither the old nor the new model"
    return hits[0]


def _staging(path: Path) -> list[Path]:
    """Leftovers of a save: temporary files in the folder (and staging folders of salfcbm < 0.3 beside it)."""
    inside = [p for p in path.iterdir() if ".tmp-" in p.name] if path.is_dir() else []
    return inside + [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-")]


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_during_repeated_saves_leaves_a_loadable_model(tmp_path, seed):
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(random.Random(seed).uniform(0.05, 0.6))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        assert _which(out) in (0, 1)
    except ChecksumError as e:  # killed in the microseconds between the two replaces: detected, never mixed
        assert "interrupted" in str(e)
    M.model(0).save_pretrained(out)  # the next save repairs the folder and removes what the killed one left
    assert not _staging(out)
    assert _which(out) == 0


@pytest.mark.parametrize("method", ["write_bytes", "write_text"])
def test_full_disk_during_save_keeps_the_old_model(tmp_path, monkeypatch, method):
    out = tmp_path / "model"
    M.model(0).save_pretrained(out)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, method, full)
    with pytest.raises(OSError, match="No space left"):
        M.model(1).save_pretrained(out)
    monkeypatch.undo()
    assert _which(out) == 0
    assert not _staging(out)


def test_real_full_disk_at_every_size(small_tmpfs):
    """Fill a tmpfs so that 0..5 pages are free, then save over the old model."""
    out = small_tmpfs / "model"
    M.model(0).save_pretrained(out)
    outcomes = []
    filler = small_tmpfs / "filler"
    for free_pages in range(6):
        fill(small_tmpfs, free_pages)
        try:
            M.model(1).save_pretrained(out)
            outcomes.append(("saved", _which(out)))
        except OSError as e:
            assert e.errno == errno.ENOSPC
            outcomes.append(("full", _which(out)))
        assert not _staging(out)
        filler.unlink()
        M.model(0).save_pretrained(out)
    assert all(which == (1 if kind == "saved" else 0) for kind, which in outcomes), outcomes
    assert {kind for kind, _ in outcomes} == {"full", "saved"}, outcomes
