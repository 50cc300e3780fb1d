"""The ``salfcbm`` command line, run in-process on tiny image folders, a tiny timm model and a tiny random CLIP."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import salfcbm
from salfcbm.cli import build_cli_backbone, build_parser, main

open_clip.factory._MODEL_CONFIGS.setdefault("salf-cli-tiny", {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
})


def _folder(root: Path, classes=("cat", "dog"), n: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_user_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-data")
    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        _folder(root / split, seed=seed)
    (root / "concepts.txt").write_text("fur\nwhiskers\ngrass\nsky\n")
    return root


def _train_args(data: Path, run: Path, *extra) -> list:
    return ["train", "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", data / "train",
            "--val", data / "val", "--test", data / "test", "--concepts", data / "concepts.txt", "--run-dir", run,
            "--scorer", "salf-cli-tiny", "--pretrained", "none", "--image-size", "32", "--grid", "2",
            "--radius", "4", "--steps", "4", "--lr", "0.01", "--batch-size", "4", "--num-workers", "0",
            "--device", "cpu", "--threads", "1", "--seed", "3", "--cutoff", "0", "--path-points", "3",
            "--no-filter",  # a random CLIP's text embeddings are all alike: LF-CBM's filters would drop everything
            *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One `salfcbm train` run (progress bars on), with its captured stderr."""
    import contextlib
    import io

    run = tmp_path_factory.mktemp("cli-run")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in _train_args(data, run)])
    assert rc == 0, err.getvalue()[-2000:]
    return run, err.getvalue()


# ----------------------------------------------------------------------------- the parser
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"salfcbm {salfcbm.__version__}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_shows_its_default():
    subs = _subparsers(build_parser())
    assert set(subs) == {"demo", "similarities", "train", "explain", "push", "app", "reproduce"}
    for name, p in subs.items():
        text = p.format_help()
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest} has no help"
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS) and not a.required:
                assert f"(default: {a.default})" in " ".join(text.split()), (name, a.dest)
        assert "--quiet" in text


@pytest.mark.parametrize("argv, flag", [
    (["train", "--grid", "0", "--backbone", "x", "--train", "a", "--val", "b", "--concepts", "c", "--run-dir", "d"],
     "--grid"),
    (["train", "--lr", "-1", "--backbone", "x", "--train", "a", "--val", "b", "--concepts", "c", "--run-dir", "d"],
     "--lr"),
    (["explain", "--top-k", "many", "--model", "m", "img.png"], "--top-k"),
])
def test_bad_arguments_are_one_line(argv, flag, capsys):
    rc, _, err = _run(capsys, *argv)
    _assert_user_error(rc, err, flag, "--help")


# ----------------------------------------------------------------------------- train
def test_train_records_arguments_image_size_and_split(trained):
    run, _ = trained
    args = json.loads((run / "args.json").read_text())
    assert "func" not in args and all(isinstance(v, (str, int, float, bool, type(None))) for v in args.values())
    assert args["steps"] == 4 and args["seed"] == 3 and args["test"].endswith("test")
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["input_size"] == [32, 32]  # features were computed at --image-size, and it says so
    assert config["backbone"]["weights"] is None  # --backbone-weights none
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test_accuracy" in metrics["salfcbm"]
    assert metrics["bottleneck"]["steps"] <= 4


def test_train_progress_has_one_label_per_stage(trained):
    _, err = trained
    for label in ("Backbone features (train)", "Backbone features (val)", "Backbone features (test)",
                  "Prompted embeddings (train)", "Prompted embeddings (val)", "Concept bottleneck",
                  "Sparse head path (SALF-CBM)", "Sparse head path (standard baseline)"):
        assert label in err, label


def test_train_rerun_with_random_clip_resumes(trained, data, capsys):
    run, _ = trained
    before = (run / "model" / "model.safetensors").read_bytes()
    rc, out, err = _run(capsys, *_train_args(data, run, "--quiet"))
    assert rc == 0, err
    assert "%|" not in err  # --quiet: no progress bars
    assert out.strip().splitlines() == [f"saved to {run / 'model'}"]
    assert (run / "model" / "model.safetensors").read_bytes() == before


def test_explain_a_trained_model(trained, data, tmp_path, capsys):
    run, _ = trained
    img = data / "test" / "cat" / "0.png"
    args = ("explain", "--model", run / "model", img, "--out", tmp_path / "r.html", "--quiet")
    rc, out, err = _run(capsys, *args)  # trained with --backbone-weights none: its weights were saved with it
    assert rc == 0, err
    assert str(img) in out and (tmp_path / "r.html").is_file()


# ----------------------------------------------------------------------------- explain, push, errors
@pytest.fixture
def demo_run(tmp_path) -> Path:
    """A finished demo run folder, built directly (a custom backbone the spec cannot rebuild)."""
    from safetensors.torch import save_file

    from salfcbm.demo.run import DemoConfig
    from salfcbm.demo.scenes import SmallConvNet

    cfg = DemoConfig(n_train=8, n_val=4, n_test=4, image_size=32, num_classes=2, backbone_width=4)
    run = tmp_path / "demo"
    run.mkdir()
    (run / "demo_config.json").write_text(json.dumps(cfg.to_dict()))
    net = SmallConvNet(num_classes=2, width=4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "backbone.safetensors"))
    model = salfcbm.wrap(net, concepts=["a red circle", "a blue square"], num_classes=2, class_names=["a", "b"],
                         grid=2, input_size=(32, 32), backbone_weights=None)
    model.save_pretrained(run / "model")
    return run


@pytest.mark.parametrize("which", ["run", "model"])
def test_explain_works_on_a_demo_run(demo_run, tmp_path, capsys, which):
    img = _folder(tmp_path / "imgs", classes=("x",), n=1) / "x" / "0.png"
    model = demo_run if which == "run" else demo_run / "model"
    rc, out, err = _run(capsys, "explain", "--model", model, img, "--out", tmp_path / "r.html")
    assert rc == 0, err
    assert "0.png:" in out


def test_explain_custom_backbone_elsewhere_is_one_line(demo_run, tmp_path, capsys):
    import shutil

    shutil.copytree(demo_run / "model", tmp_path / "moved")
    img = _folder(tmp_path / "imgs", classes=("x",), n=1) / "x" / "0.png"
    rc, _, err = _run(capsys, "explain", "--model", tmp_path / "moved", img)
    _assert_user_error(rc, err, "custom backbone")


@pytest.mark.parametrize("model", ["/no/such/model/dir", "./missing-model", "no-such-dir/x/y"])
def test_explain_bad_model_path_is_one_line(model, tmp_path, capsys):
    img = _folder(tmp_path / "imgs", classes=("x",), n=1) / "x" / "0.png"
    rc, _, err = _run(capsys, "explain", "--model", model, img)
    _assert_user_error(rc, err, model)


def test_explain_bad_images_are_one_line(demo_run, tmp_path, capsys):
    rc, _, err = _run(capsys, "explain", "--model", demo_run, tmp_path / "nope.png")
    _assert_user_error(rc, err, "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    rc, _, err = _run(capsys, "explain", "--model", demo_run, bad)
    _assert_user_error(rc, err, "bad.png")


def test_push_uploads_the_adapter_without_building_the_backbone(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    import salfcbm.core.backbones as backbones
    from salfcbm.core.model import SALFCBM

    model = salfcbm.wrap(timm_test_resnet(), concepts=["a", "b"], num_classes=2, grid=2, backbone_weights="a1_in1k")
    model.save_pretrained(tmp_path / "m")  # the spec names pretrained weights that cannot be downloaded here
    calls = {}

    def no_build(*a, **k):
        raise AssertionError("push must not build the backbone")

    monkeypatch.setattr(backbones, "build_backbone", no_build)
    monkeypatch.setattr(SALFCBM, "from_pretrained", no_build)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **k: calls.update(repo=repo_id, **k))

    def upload(self, **k):
        calls["upload"] = k
        return huggingface_hub.CommitInfo(commit_url="https://hf.co/u/m/commit/1", commit_message="", commit_description="",
                                          oid="1", pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload)
    rc, out, err = _run(capsys, "push", "--model", tmp_path / "m", "--repo-id", "u/m", "--private")
    assert rc == 0, err
    assert calls["repo"] == "u/m" and calls["private"] is True
    assert Path(calls["upload"]["folder_path"]) == tmp_path / "m"
    assert set(calls["upload"]["allow_patterns"]) == {"config.json", "model.safetensors", "README.md",
                                                       "backbone.safetensors"}
    assert "commit" in out


def test_push_refuses_a_broken_adapter(tmp_path, capsys):
    model = salfcbm.wrap(timm_test_resnet(), concepts=["a", "b"], num_classes=2, grid=2, backbone_weights=None)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["concepts"] = ["a", "b", "c"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _run(capsys, "push", "--model", tmp_path / "m", "--repo-id", "u/m")
    _assert_user_error(rc, err, "config.json", "differs from the config saved with these weights")


def timm_test_resnet():
    import timm

    return timm.create_model("test_resnet", pretrained=False)


def test_backbone_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    from salfcbm.errors import BackboneSpecError

    ref = timm_test_resnet()
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    net, weights = build_cli_backbone("timm:test_resnet", str(f))
    assert weights.startswith("file:") and len(weights) == 5 + 64
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    model = salfcbm.wrap(net, concepts=["a", "b"], num_classes=2, grid=2, backbone_weights=weights)
    model.save_pretrained(tmp_path / "m")  # weights from a local file: saved with the adapter (backbone.safetensors)
    own = salfcbm.SALFCBM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(own.backbone.state_dict().values(), ref.state_dict().values()))
    model.save_pretrained(tmp_path / "m", save_backbone=False)
    with pytest.raises(BackboneSpecError, match="local file"):
        salfcbm.SALFCBM.from_pretrained(tmp_path / "m")
    again = salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=build_cli_backbone("timm:test_resnet", str(f))[0])
    assert all(torch.equal(a, b) for a, b in zip(again.backbone.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("case", ["concepts", "train", "backbone"])
def test_train_user_errors_are_one_line(case, data, tmp_path, capsys):
    argv = _train_args(data, tmp_path / "run")
    if case == "concepts":
        argv[argv.index("--concepts") + 1] = tmp_path / "missing.txt"
    elif case == "train":
        argv[argv.index("--train") + 1] = tmp_path / "no-folder"
    else:
        argv[argv.index("--backbone") + 1] = "resnet-that-does-not-exist"
    rc, _, err = _run(capsys, *argv)
    _assert_user_error(rc, err, {"concepts": "missing.txt", "train": "no-folder",
                                 "backbone": "resnet-that-does-not-exist"}[case])


# ----------------------------------------------------------------------------- corrupt images
def _with_corrupt(root: Path) -> Path:
    _folder(root)
    (root / "dog" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root / "dog" / "2.png"


def test_corrupt_image_is_named_then_skipped(tmp_path, capsys):
    bad = _with_corrupt(tmp_path / "data")
    argv = ["similarities", "--data", tmp_path / "data", "--out", tmp_path / "sims", "--scorer", "salf-cli-tiny",
            "--pretrained", "none", "--image-size", "32", "--grid", "2", "--radius", "4", "--batch-size", "2",
            "--num-workers", "0", "--device", "cpu", "--quiet"]
    rc, _, err = _run(capsys, *argv)
    _assert_user_error(rc, err, str(bad), "--skip-corrupt")
    argv[argv.index("--out") + 1] = tmp_path / "sims-skip"
    with pytest.warns(UserWarning, match="2.png"):
        rc, out, err = _run(capsys, *argv, "--skip-corrupt")
    assert rc == 0, err
    assert "complete" in out


def test_skipping_a_corrupt_image_keeps_the_finished_shards(tmp_path, capsys):
    _folder(tmp_path / "data", n=6)  # a/0-5 are items 0-5, b/0-5 items 6-11: three shards of 4
    (tmp_path / "data" / "dog" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # item 10, shard 2
    argv = ["similarities", "--data", tmp_path / "data", "--out", tmp_path / "sims", "--scorer", "salf-cli-tiny",
            "--pretrained", "none", "--image-size", "32", "--grid", "2", "--radius", "4", "--batch-size", "2",
            "--shard-size", "4", "--num-workers", "0", "--device", "cpu", "--quiet"]
    rc, _, err = _run(capsys, *argv)
    _assert_user_error(rc, err, "4.png")
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "sims").glob("shard_*")}
    assert len(done) == 2  # shards 0 and 1 finished before the corrupt image stopped the run
    with pytest.warns(UserWarning, match="4.png"):
        rc, out, err = _run(capsys, *argv, "--skip-corrupt")
    assert rc == 0, err
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "sims").glob("shard_*")}
    assert len(after) == 3 and all(after[k] == v for k, v in done.items())  # not recomputed, not rewritten


def test_corrupt_image_through_dataloader_workers_is_one_line(tmp_path, capsys):
    from salfcbm.datasets.folder import ImageFolderDataset
    from salfcbm.errors import CorruptImageError

    bad = _with_corrupt(tmp_path / "data")
    ds = ImageFolderDataset(tmp_path / "data", size=32)
    with pytest.raises(CorruptImageError, match="2.png"):
        ds[ds.folder.samples.index((str(bad), 1))]
    from salfcbm.cli.entry import one_line as _one_line

    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=1)
    with pytest.raises(CorruptImageError) as e:
        list(loader)
    line = _one_line(e.value)
    assert line.startswith("Cannot read image") and str(bad) in line and "Traceback" not in line
