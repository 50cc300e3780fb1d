"""The command line under bad arguments, bad paths, conflicting flags, no network and signals.

Every failure is one line on stderr, ``salfcbm: error: ...`` naming the fix, exit code 2 (no
traceback); SIGINT and SIGTERM end with one line and exit 130 / 143, and the same command rerun
completes. The argument cases run `salfcbm.cli.main` in-process (they fail at parse time, before
anything is loaded); the signal cases run ``salfcbm`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import salfcbm
from salfcbm.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    """Image folders, a concept file, a plain file, a FIFO and a saved tiny model."""
    from tests.reliability import _models

    root = tmp_path_factory.mktemp("cli-failures")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "concepts.txt").write_text("fur\nwhiskers\ngrass\nsky\n")
    (root / "afile").write_text("not a folder\n")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    os.mkfifo(root / "fifo.png")
    _models.model().save_pretrained(root / "model")
    return {"root": root, "img": root / "train" / "cat" / "0.png", "file": root / "afile", "model": root / "model"}


def _train(p, *extra) -> list:
    r = p["root"]
    return ["train", *extra, "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", r / "train",
            "--val", r / "val", "--concepts", r / "concepts.txt", "--run-dir", r / "run", "--device", "cpu",
            "--quiet"]


def _sims(p, *extra) -> list:
    return ["similarities", *extra, "--data", p["root"] / "train", "--out", p["root"] / "sims", "--device", "cpu"]


def _explain(p, *extra, images=None) -> list:
    return ["explain", "--model", p["model"], *extra, *(images or [p["img"]])]


def _repro(p, *extra) -> list:
    return ["reproduce", "table1", "--dataset", "cub", *extra]


# (id, argv builder, words the one line must hold)
CASES = [
    # numbers: finite, inside sane bounds
    ("lr-1e308", lambda p: _train(p, "--lr", "1e308"), ["--lr", "1e308"]),
    ("lr-nan", lambda p: _train(p, "--lr", "nan"), ["--lr"]),
    ("lr-inf", lambda p: _train(p, "--lr", "inf"), ["--lr"]),
    ("lr-zero", lambda p: _train(p, "--lr", "0"), ["--lr"]),
    ("seed-2**70", lambda p: _train(p, "--seed", str(2**70)), ["--seed", str(2**70)]),
    ("seed-negative", lambda p: _train(p, "--seed", "-1"), ["--seed"]),
    ("demo-seed-2**70", lambda p: ["demo", "--seed", str(2**70)], ["--seed"]),
    ("sims-seed-2**64", lambda p: _sims(p, "--seed", str(2**64)), ["--seed"]),
    ("steps-zero", lambda p: _train(p, "--steps", "0"), ["--steps"]),
    ("steps-1e12", lambda p: _train(p, "--steps", str(10**12)), ["--steps"]),
    ("grid-1000", lambda p: _train(p, "--grid", "1000"), ["--grid"]),
    ("image-size-1e9", lambda p: _train(p, "--image-size", str(10**9)), ["--image-size"]),
    ("batch-size-zero", lambda p: _train(p, "--batch-size", "0"), ["--batch-size"]),
    ("cutoff-2", lambda p: _train(p, "--cutoff", "2"), ["--cutoff"]),
    ("cutoff-nan", lambda p: _train(p, "--cutoff", "nan"), ["--cutoff"]),
    ("clip-cutoff--5", lambda p: _train(p, "--clip-cutoff", "-5"), ["--clip-cutoff"]),
    ("target-nec-inf", lambda p: _train(p, "--target-nec", "inf"), ["--target-nec"]),
    ("lam-negative", lambda p: _train(p, "--lam", "-1"), ["--lam"]),
    ("path-points-zero", lambda p: _train(p, "--path-points", "0"), ["--path-points"]),
    ("threads-negative", lambda p: _train(p, "--threads", "-1"), ["--threads"]),
    ("workers-1e5", lambda p: _train(p, "--num-workers", "100000"), ["--num-workers"]),
    ("demo-n-train-zero", lambda p: ["demo", "--n-train", "0"], ["--n-train"]),
    ("demo-steps-float", lambda p: ["demo", "--bottleneck-steps", "1e3"], ["--bottleneck-steps"]),
    ("explain-top-k-zero", lambda p: _explain(p, "--top-k", "0"), ["--top-k"]),
    ("app-port-70000", lambda p: ["app", p["model"], "--port", "70000"], ["--port"]),
    ("sims-shard-size-zero", lambda p: _sims(p, "--shard-size", "0"), ["--shard-size"]),
    ("reproduce-gpus-zero", lambda p: _repro(p, "--gpus", "0"), ["--gpus"]),
    ("reproduce-throughput-nan", lambda p: _repro(p, "--throughput", "nan"), ["--throughput"]),
    # devices: parsed and available here
    ("demo-device-foo", lambda p: ["demo", "--device", "foo"], ["--device", "foo"]),
    ("train-device-foo", lambda p: _train(p, "--device", "foo"), ["--device", "foo"]),
    ("train-device-cuda:99", lambda p: _train(p, "--device", "cuda:99"), ["--device", "cuda:99"]),
    ("sims-device-meta", lambda p: _sims(p, "--device", "meta"), ["--device", "meta"]),
    ("reproduce-device-foo", lambda p: _repro(p, "--device", "foo"), ["--device"]),
    # paths: a folder where a folder is meant, a file where a file is
    ("demo-out-file", lambda p: ["demo", "--out", p["file"]], ["--out", "afile"]),
    ("demo-out-under-file", lambda p: ["demo", "--out", p["file"] / "sub"], ["--out", "afile"]),
    ("train-run-dir-file", lambda p: _train(p, "--run-dir", p["file"]), ["--run-dir", "afile"]),
    ("sims-out-file", lambda p: _sims(p, "--out", p["file"]), ["--out", "afile"]),
    ("train-train-file", lambda p: _train(p, "--train", p["file"]), ["--train", "afile"]),
    ("train-val-missing", lambda p: _train(p, "--val", p["root"] / "no-val"), ["--val", "no-val"]),
    ("train-concepts-folder", lambda p: _train(p, "--concepts", p["root"] / "train"), ["--concepts", "train"]),
    ("train-concepts-missing", lambda p: _train(p, "--concepts", p["root"] / "c.txt"), ["--concepts", "c.txt"]),
    ("explain-out-folder", lambda p: _explain(p, "--out", p["root"]), ["--out", "file name"]),
    ("explain-out-under-file", lambda p: _explain(p, "--out", p["file"] / "r.html"), ["--out", "afile"]),
    ("explain-one-image-missing", lambda p: _explain(p, images=[p["img"], p["root"] / "gone.png"]), ["gone.png"]),
    ("explain-image-folder", lambda p: _explain(p, images=[p["root"] / "train"]), ["folder"]),
    ("explain-image-fifo", lambda p: _explain(p, images=[p["root"] / "fifo.png"]), ["fifo.png", "regular file"]),
    ("app-images-file", lambda p: ["app", p["model"], "--images", p["file"]], ["--images", "afile"]),
    ("scorer-local-dir-missing", lambda p: _sims(p, "--scorer", f"local-dir:{p['root'] / 'no-clip'}"),
     ["no-clip", "local-dir:FOLDER"]),
    ("scorer-local-dir-file", lambda p: _train(p, "--scorer", f"local-dir:{p['file']}"), ["afile", "is a file"]),
    ("reproduce-data-root-file", lambda p: _repro(p, "--data-root", p["file"]), ["--data-root"]),
    ("reproduce-run-dir-file", lambda p: _repro(p, "--run-dir", p["file"]), ["--run-dir"]),
    ("reproduce-seg-file-missing", lambda p: _repro(p, "--seg-file", p["root"] / "x.mat"), ["--seg-file"]),
    # conflicting flags: one would be ignored
    ("dense-target-nec", lambda p: _train(p, "--dense", "--target-nec", "5"), ["--target-nec", "--dense"]),
    ("dense-lam", lambda p: _train(p, "--dense", "--lam", "7e-4"), ["--lam", "--dense"]),
    ("dense-preset", lambda p: _train(p, "--dense", "--preset", "cub"), ["--preset", "--dense"]),
    ("dense-path-points", lambda p: _train(p, "--dense", "--path-points", "5"), ["--path-points", "--dense"]),
    ("no-filter-clip-cutoff", lambda p: _train(p, "--no-filter", "--clip-cutoff", "0.3"), ["--clip-cutoff"]),
    ("local-dir-pretrained", lambda p: _train(p, "--scorer", f"local-dir:{p['root']}", "--pretrained", "openai"),
     ["--pretrained", "local-dir:"]),
    ("hf-hub-pretrained", lambda p: _sims(p, "--scorer", "hf-hub:org/clip", "--pretrained", "none"),
     ["--pretrained", "hf-hub:"]),
    ("measure-and-state-throughput", lambda p: _repro(p, "--measure-throughput", "--throughput", "5"),
     ["--throughput"]),
    ("dry-run-scorer-without-dry-run", lambda p: _repro(p, "--dry-run-scorer", "tiny"), ["--dry-run"]),
    # the parser's own errors, on one line too
    ("push-bad-repo-id", lambda p: ["push", "--model", p["model"], "--repo-id", "not a repo"], ["--repo-id"]),
    ("unknown-flag", lambda p: _train(p, "--bogus"), ["--bogus"]),
    ("missing-required", lambda p: ["train"], ["required", "--backbone"]),
]


def _one_line_error(capsys, argv) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("build, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_failure_is_one_line(paths, capsys, build, words):
    line = _one_line_error(capsys, build(paths))
    for w in words:
        assert w in line, (w, line)
    assert "(see `salfcbm" in line or "pass" in line or "drop" in line  # names the fix


def test_explain_checks_every_image_before_loading_the_model(paths, capsys, monkeypatch):
    import salfcbm.cli.explain as cli_explain

    def no_load(args):
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(cli_explain, "load_model", no_load)
    line = _one_line_error(capsys, _explain(paths, images=[paths["img"], paths["root"] / "bad.png"]))
    assert "bad.png" in line and "nothing was explained" in line


# ----------------------------------------------------------------------------- the Hub, offline
def test_push_offline_is_one_line(paths, capsys, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    line = _one_line_error(capsys, ["push", "--model", paths["model"], "--repo-id", "u/m"])
    assert "HF_HUB_OFFLINE" in line and "unset" in line


def test_push_without_network_is_one_line(paths, capsys, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_token")
    line = _one_line_error(capsys, ["push", "--model", paths["model"], "--repo-id", "u/m"])
    assert "could not reach the Hugging Face Hub" in line and "network" in line


def test_model_push_to_hub_offline_is_a_salfcbm_error(monkeypatch):
    import huggingface_hub.constants as c

    from salfcbm.errors import HubUnavailableError
    from tests.reliability import _models

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        _models.model().push_to_hub("u/m")


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("labels", [["1", "0", "1"], ["cat", "dog", "cat"], [0.5, 1.0, 0.0],
                                    np.array(["a", "b", "a"])], ids=["digit-strings", "names", "fractions", "np-str"])
def test_string_or_fractional_labels_are_refused(labels):
    from salfcbm.errors import InputError
    from salfcbm.training.pipeline import labels_of

    class Items:
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return None, labels[i]

    class Targets:
        targets = labels

    for ds in (Items(), Targets()):
        with pytest.raises(InputError, match="integer class indices"):
            labels_of(ds)


def test_integer_labels_of_every_kind_still_read():
    import torch

    from salfcbm.training.pipeline import labels_of

    class Items:
        items = [0, np.int64(1), torch.tensor(2), 1.0]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return None, self.items[i]

    assert labels_of(Items()).tolist() == [0, 1, 2, 1]


# ----------------------------------------------------------------------------- --help
def test_help_shows_each_default_once_and_never_none():
    from salfcbm.cli import _subparsers, build_parser

    for name, p in _subparsers(build_parser()).items():
        text = " ".join(p.format_help().split())
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
        for a in p._actions:
            if a.help and a.option_strings:
                shown = p._get_formatter()._get_help_string(a)
                assert shown.count("default:") <= 1, (name, a.dest, shown)
    layer = next(a for a in _subparsers(build_parser())["train"]._actions if a.dest == "layer")
    assert _subparsers(build_parser())["train"].format_help().count("the last spatial stage") == 1, layer


# ----------------------------------------------------------------------------- signals
_PRELUDE = textwrap.dedent(f"""
    import sys, time, atexit, logging
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "initialized randomly" notice for the tiny CLIP
    import open_clip
    open_clip.factory._MODEL_CONFIGS.setdefault("salf-sig-tiny", {TINY_CLIP!r})
    import salfcbm.cli
""")


def _spawn(script: str, argv: list, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SALFCBM_DEBUG", None)
    return subprocess.Popen([sys.executable, "-c", _PRELUDE + textwrap.dedent(script), *map(str, argv)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before {path.name} appeared: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.02)


def _stopped_line(proc: subprocess.Popen, code: int) -> str:
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("salfcbm: "), err[-3000:]
    return lines[0]


def _run_args(data: Path, run: Path) -> list:
    return ["train", "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", data / "train",
            "--val", data / "val", "--concepts", data / "concepts.txt", "--run-dir", run, "--scorer", "salf-sig-tiny",
            "--pretrained", "none", "--image-size", "32", "--grid", "2", "--radius", "4", "--steps", "4",
            "--lr", "0.01", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--threads", "1",
            "--seed", "3", "--cutoff", "0", "--path-points", "3", "--no-filter", "--quiet"]


# the images are read slowly, so the signal lands while the run is working (after args.json is written)
_SLOW_IMAGES = """
    import warnings
    warnings.simplefilter("ignore")
    import salfcbm.datasets.folder as folder
    _get = folder.ImageFolderDataset.__getitem__
    folder.ImageFolderDataset.__getitem__ = lambda self, i: (time.sleep(0.3), _get(self, i))[1]
    sys.exit(salfcbm.cli.main())
"""


def _sims_args(data: Path, out: Path) -> list:
    return ["similarities", "--data", data / "train", "--out", out, "--scorer", "salf-sig-tiny", "--pretrained", "none",
            "--image-size", "32", "--grid", "2", "--radius", "4", "--batch-size", "2", "--shard-size", "2",
            "--num-workers", "0", "--device", "cpu", "--threads", "1", "--quiet"]


# (signal, exit code, command line, file written once the work has begun, last line of a finished rerun)
_RUNS = {
    "SIGINT-train": (signal.SIGINT, 130, _run_args, "args.json", "saved to {out}/model"),
    "SIGTERM-similarities": (signal.SIGTERM, 143, _sims_args, "manifest.json", "complete"),
}


@pytest.mark.parametrize("case", list(_RUNS))
def test_signal_during_a_run_is_one_line_and_a_rerun_completes(paths, tmp_path, case):
    signum, code, argv, marker, done = _RUNS[case]
    out = tmp_path / "out"
    proc = _spawn(_SLOW_IMAGES, argv(paths["root"], out), tmp_path)
    _wait_for(out / marker, proc)
    proc.send_signal(signum)
    line = _stopped_line(proc, code)
    assert signal.Signals(signum).name in line and "resumes" in line
    again = _spawn("import warnings\nwarnings.simplefilter('ignore')\nsys.exit(salfcbm.cli.main())",
                   argv(paths["root"], out), tmp_path)
    stdout, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert stdout.strip().splitlines()[-1].endswith(done.format(out=out)), stdout


# the command has finished and printed its result; the signal arrives while the process exits
_SLOW_EXIT = """
    def _slow_exit():
        open("finished", "w").close()
        time.sleep(60)
    atexit.register(_slow_exit)
    sys.exit(salfcbm.cli.main())
"""


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_as_a_command_finishes_is_one_line(tmp_path, signum, code):
    proc = _spawn(_SLOW_EXIT, ["reproduce", "--list"], tmp_path)
    _wait_for(tmp_path / "finished", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"salfcbm: {'interrupted' if code == 130 else 'terminated'}"), err
    assert "table1" in out or "cub" in out  # the command's own output came through before the signal


def test_main_gives_the_callers_signal_handlers_back():
    """Handlers are installed only while `main` runs and given back after an in-process call."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert salfcbm.__version__
