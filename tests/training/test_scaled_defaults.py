"""Training defaults scale with the data (issue 22, item 5): bottleneck steps and patience, head path
length, DataLoader workers capped at the machine's cores, and ``salfcbm train --quick``."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from salfcbm._utils.workers import available_cpus, resolve_num_workers
from salfcbm.cli import build_parser, main
from salfcbm.errors import InputError
from salfcbm.training import BottleneckConfig, HeadConfig

open_clip.factory._MODEL_CONFIGS.setdefault("salf-defaults-tiny", {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
})


# ----------------------------------------------------------------------------- the bottleneck
def test_small_data_stops_much_sooner_than_the_former_fixed_defaults():
    small = BottleneckConfig().for_data(36)  # the 36 images: one batch per epoch
    assert small.max_steps == 500 and small.val_every * small.patience == 50  # was 5000 steps, 50 x 10 = 500
    big = BottleneckConfig().for_data(1_281_167)  # ImageNet: the former defaults
    assert (big.max_steps, big.val_every, big.patience) == (5000, 50, 10)


@settings(max_examples=40, deadline=None)
@given(a=st.integers(0, 3_000_000), b=st.integers(0, 3_000_000))
def test_steps_and_patience_grow_with_the_data(a, b):
    small, large = sorted((a, b))
    cs, cl = BottleneckConfig().for_data(small), BottleneckConfig().for_data(large)
    assert 500 <= cs.max_steps <= cl.max_steps <= 5000
    assert 50 <= cs.val_every * cs.patience <= cl.val_every * cl.patience + cl.val_every  # the no-gain window
    assert 10 <= cs.val_every <= cl.val_every <= 50


def test_explicit_bottleneck_settings_are_kept():
    c = BottleneckConfig(max_steps=7, val_every=3, patience=2).for_data(10**6)
    assert (c.max_steps, c.val_every, c.patience) == (7, 3, 2)
    quick = BottleneckConfig.quick()
    assert quick.for_data(10**6).max_steps == 300 and BottleneckConfig.quick(max_steps=20).max_steps == 20
    with pytest.raises(InputError, match="n_train"):
        BottleneckConfig().for_data(-1)
    with pytest.raises(InputError, match="max_steps"):
        BottleneckConfig(max_steps=0)


# ----------------------------------------------------------------------------- the head
@settings(max_examples=40, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_path_length_grows_with_the_data(a, b):
    small, large = sorted((a, b))
    ps, pl = HeadConfig().for_data(small).n_lambdas, HeadConfig().for_data(large).n_lambdas
    assert 10 <= ps <= pl <= 40


def test_path_length_of_small_data_and_explicit_settings():
    assert HeadConfig().for_data(36).n_lambdas == 10  # was 40
    assert HeadConfig().for_data(10**6).n_lambdas == 40
    assert HeadConfig(n_lambdas=7).for_data(36).n_lambdas == 7
    assert HeadConfig.paper("cub").for_data(36).lam == 2e-4
    with pytest.raises(InputError, match="n_lambdas"):
        HeadConfig(n_lambdas=0)


# ----------------------------------------------------------------------------- workers
def test_num_workers_never_exceed_the_cores():
    cores = available_cpus()
    assert cores <= (os.cpu_count() or cores)
    assert resolve_num_workers(None) <= max(0, cores - 1) and resolve_num_workers(None) <= 4
    assert resolve_num_workers(10 * cores) == cores  # the former fixed 4 on 2 cores: torch's warning
    assert resolve_num_workers(0) == 0
    assert [resolve_num_workers(None, cpus=c) for c in (1, 2, 3, 16)] == [0, 1, 2, 4]
    with pytest.raises(InputError, match="num_workers"):
        resolve_num_workers(-1)


def test_cli_default_workers_respect_the_cores(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    (tmp_path / "c.txt").write_text("fur\n")
    args = build_parser().parse_args(["train", "--backbone", "x", "--train", str(tmp_path / "a"), "--val",
                                      str(tmp_path / "b"), "--concepts", str(tmp_path / "c.txt"),
                                      "--run-dir", str(tmp_path / "d")])
    assert args.num_workers is None and args.steps is None and args.path_points is None and args.quick is False
    from salfcbm.cli import _workers

    assert _workers(args) <= max(0, available_cpus() - 1)


# ----------------------------------------------------------------------------- end to end
def _folder(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("defaults-data")
    for split, n, seed in (("train", 6, 0), ("val", 3, 1)):
        _folder(root / split, n, seed)
    (root / "concepts.txt").write_text("fur\nwhiskers\ngrass\nsky\n")
    return root


def _train(data: Path, run: Path, *extra) -> dict:
    argv = ["train", "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", data / "train",
            "--val", data / "val", "--concepts", data / "concepts.txt", "--run-dir", run,
            "--scorer", "salf-defaults-tiny", "--pretrained", "none", "--image-size", "32", "--grid", "2",
            "--radius", "4", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--cutoff", "-1",
            "--no-filter", "--quiet", *extra]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main([str(a) for a in argv]) == 0
    return json.loads((run / "metrics.json").read_text())


def test_train_quick_is_accepted_and_small(data, tmp_path):
    m = _train(data, tmp_path / "quick", "--quick")
    s = m["settings"]
    assert s["bottleneck"]["max_steps"] == 300 and s["head"]["n_lambdas"] == 10
    assert m["bottleneck"]["steps"] <= 300 and "standard_sparse" not in m  # no baseline in a first try
    assert s["num_workers"] <= max(0, available_cpus() - 1)


def test_train_defaults_scale_with_12_images(data, tmp_path):
    m = _train(data, tmp_path / "auto")
    s = m["settings"]
    assert s["bottleneck"]["max_steps"] == 500 and s["head"]["n_lambdas"] == 10
    b = m["bottleneck"]
    # early stop after 50 steps without a gain (the former defaults waited 500 steps, so ran at least 500)
    assert b["steps"] <= min(500, b["best_step"] + 50)
    assert "standard_sparse" in m
