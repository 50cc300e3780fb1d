"""A save touches only what it owns: the user's files, subfolders, permissions, owner and symlinks stay;
a reader racing a writer gets one consistent model; a save killed between its replaces is detected and repaired."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.core import persistence
from salfcbm.errors import ChecksumError

from . import _models as M

ROOT = Path(__file__).resolve().parents[2]
OURS = set(persistence.OWNED_FILES)  # config.json, model.safetensors, README.md and backbone.safetensors


def _load(path) -> salfcbm.SALFCBM:
    return salfcbm.SALFCBM.from_pretrained(path, backbone=M.backbone()).eval()


def _which(path) -> int:
    got = M.logits(_load(path))
    hits = [v for v in (0, 1) if torch.equal(got, M.logits(M.model(v)))]
    assert hits, "the folder holds neither model"
    return hits[0]


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name] + \
        [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]


def _user_folder(tmp_path: Path) -> Path:
    out = tmp_path / "model"
    (out / "sub" / "deeper").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "deeper" / "data.bin").write_bytes(b"\x00\x01")
    (out / "README.md").write_text("# My model\n\nMy own notes, not a salfcbm card.\n")
    os.symlink("notes.txt", out / "link-to-notes")
    return out


def _snapshot(folder: Path) -> dict:
    """Every entry except our files: kind, inode, mode, owner and content."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if rel in OURS:
            continue
        st = os.lstat(p)
        body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
        snap[rel] = (stat.S_IFMT(st.st_mode), st.st_ino, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, body)
    return snap


def test_a_save_keeps_every_other_file_subfolder_and_symlink(tmp_path):
    out = _user_folder(tmp_path)
    before = _snapshot(out)
    for v in (0, 1, 0):
        M.model(v).save_pretrained(out)
    assert _snapshot(out) == before  # same inodes: nothing was copied or rebuilt
    assert (out / "README.md").read_text().startswith("# My model")  # the user's own card is kept
    assert _which(out) == 0
    assert not _temps(out)


def test_a_file_held_open_in_a_subfolder_keeps_what_is_written_after_the_save(tmp_path):
    out = _user_folder(tmp_path)
    with open(out / "sub" / "log.txt", "a") as log:
        log.write("before\n")
        log.flush()
        M.model(0).save_pretrained(out)
        log.write("after\n")
    assert (out / "sub" / "log.txt").read_text() == "before\nafter\n"


def test_the_card_is_written_only_when_absent_or_ours(tmp_path):
    out = tmp_path / "m"
    M.model(0).save_pretrained(out)
    ours = (out / "README.md").read_text()
    assert persistence.card_is_ours(out / "README.md")
    other = salfcbm.wrap(M.backbone(), concepts=["fur", "grass"], num_classes=3, layer="2", input_size=(32, 32),
                         grid=4)
    other.save_pretrained(out)  # an unedited salfcbm card is ours: rewritten for the new model
    assert "- fur" in (out / "README.md").read_text() and "- a wing" not in (out / "README.md").read_text()
    edited = (out / "README.md").read_text().replace("# SALF-CBM on", "# My SALF-CBM on")
    (out / "README.md").write_text(edited)
    M.model(0).save_pretrained(out)  # an edited card is the user's now: kept
    assert (out / "README.md").read_text() == edited
    legacy = ours[:ours.rindex("\n<!-- salfcbm model card")].replace("- a wing", "- an old concept")
    (out / "README.md").write_text(legacy)  # an unmarked card written by salfcbm < 0.3
    M.model(0).save_pretrained(out)
    assert (out / "README.md").read_text() == ours
    (tmp_path / "shared.md").write_text(ours)
    (out / "README.md").unlink()
    (out / "README.md").symlink_to(tmp_path / "shared.md")  # a symlinked card is the user's: link and target kept
    other.save_pretrained(out)
    assert (out / "README.md").is_symlink() and (tmp_path / "shared.md").read_text() == ours


@pytest.mark.parametrize("mode", [0o700, 0o2770, 0o755])
def test_the_folder_keeps_its_permissions_and_the_files_theirs(tmp_path, mode):
    out = tmp_path / "m"
    M.model(0).save_pretrained(out)
    os.chmod(out, mode)
    os.chmod(out / "config.json", 0o600)
    M.model(1).save_pretrained(out)
    assert stat.S_IMODE(os.stat(out).st_mode) == mode
    assert stat.S_IMODE(os.stat(out / "config.json").st_mode) == 0o600
    assert _which(out) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing owners needs root")
def test_the_folder_and_the_files_keep_their_owner(tmp_path):
    out = tmp_path / "m"
    M.model(0).save_pretrained(out)
    for p in (out, out / "config.json", out / "model.safetensors"):
        os.chown(p, 4321, 4322)
    M.model(1).save_pretrained(out)
    for p in (out, out / "config.json", out / "model.safetensors"):
        assert (os.stat(p).st_uid, os.stat(p).st_gid) == (4321, 4322), p


def test_saving_into_a_symlinked_folder_writes_through_to_its_target(tmp_path):
    real = tmp_path / "real"
    M.model(0).save_pretrained(real)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    M.model(1).save_pretrained(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _which(real) == 1 and _which(link) == 1
    assert not _temps(real)


def test_saving_into_the_working_folder_keeps_it(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "script.py").write_text("print('mine')")
    monkeypatch.chdir(work)
    ino = os.stat(".").st_ino
    M.model(0).save_pretrained(".")
    M.model(1).save_pretrained(Path.cwd())
    assert os.path.samefile(os.getcwd(), work) and os.stat(work).st_ino == ino  # the process's cwd still exists
    assert (work / "script.py").read_text() == "print('mine')"
    assert _which(work) == 1


def test_a_full_disk_leaves_the_old_model_and_the_users_files(tmp_path, monkeypatch):
    import errno
    import pathlib

    out = _user_folder(tmp_path)
    M.model(0).save_pretrained(out)
    before = _snapshot(out)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full)  # config.json: the weights' temp file is complete
    with pytest.raises(OSError, match="No space"):
        M.model(1).save_pretrained(out)
    monkeypatch.undo()
    assert _which(out) == 0 and _snapshot(out) == before and not _temps(out)


KILL_BETWEEN = """
import os, signal, sys, torch
torch.set_num_threads(1)
from tests.reliability import _models as M
M.model(0).save_pretrained(sys.argv[1])
real = os.replace
def replace(src, dst):
    real(src, dst)
    if str(dst).endswith("model.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between the weights' and the config's replace
os.replace = replace
M.model(1).save_pretrained(sys.argv[1])
"""


def test_a_save_killed_between_its_replaces_is_detected_and_the_next_save_repairs_it(tmp_path):
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", KILL_BETWEEN, str(out)], env=env, cwd=ROOT, capture_output=True)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-2000:]
    assert any(n.startswith("config.json.tmp-") for n in _temps(out))  # the killed save's leftover
    with pytest.raises(ChecksumError, match="interrupted"):
        _load(out)  # new weights, old config: refused, never a mixed model
    M.model(1).save_pretrained(out)
    assert _which(out) == 1 and not _temps(out)


WRITER = """
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


def test_a_reader_racing_a_writer_gets_one_consistent_model(tmp_path):
    """20 loads while another process saves two models in turn: each load is exactly one of them."""
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, env=env, cwd=ROOT)
    seen = []
    try:
        assert proc.stdout.readline().strip() == b"ready"
        refs = [M.logits(M.model(v)) for v in (0, 1)]
        for _ in range(20):
            got = M.logits(_load(out))
            seen.append([v for v in (0, 1) if torch.equal(got, refs[v])])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert all(len(hits) == 1 for hits in seen), seen


def test_a_reader_in_another_thread_gets_one_consistent_model(tmp_path):
    import threading

    out = tmp_path / "m"
    M.model(0).save_pretrained(out)
    stop, errors = threading.Event(), []
    models = [M.model(0), M.model(1)]

    def write():
        i = 0
        while not stop.is_set():
            try:
                models[i % 2].save_pretrained(out)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        refs = [M.logits(m) for m in models]
        hits = []
        for _ in range(10):
            got = M.logits(_load(out))
            hits.append([v for v in (0, 1) if torch.equal(got, refs[v])])
    finally:
        stop.set()
        t.join()
    assert not errors and all(len(h) == 1 for h in hits), (errors, hits)


def test_two_threads_saving_into_one_folder_leave_one_consistent_model(tmp_path):
    """Each thread's files are replaced as a set (and no thread removes another's temporary files)."""
    import threading

    out = tmp_path / "m"
    M.model(0).save_pretrained(out)
    models, errors = [M.model(0), M.model(1)], []

    def write(m):
        for _ in range(15):
            try:
                m.save_pretrained(out)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=write, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _which(out) in (0, 1) and not _temps(out)
