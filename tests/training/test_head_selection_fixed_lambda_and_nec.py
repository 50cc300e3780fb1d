"""The paper's head selection (LF-CBM's fixed lambda), test accuracy, matched NEC (issue 15, item 3)."""

from __future__ import annotations

import pytest
import torch

import salfcbm
from salfcbm.head.solver import fit_sparse_head
from salfcbm.training.head_stage import PAPER_LAMBDAS, HeadConfig, fit_head


def _problem(seed=0, n=500, m=20):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g)
    y = (x[:, :4] + 0.5 * torch.randn(n, 4, generator=g)).argmax(1)
    return x[:300], y[:300], x[300:], y[300:]


def test_paper_presets_are_lfcbm_lambdas():
    assert HeadConfig.paper("imagenet").lam == 1e-4
    assert HeadConfig.paper("places365").lam == 3e-4
    assert HeadConfig.paper("Places").lam == 3e-4
    assert HeadConfig.paper("cub").lam == 2e-4
    assert HeadConfig.paper().lam == 7e-4
    cfg = HeadConfig.paper("cub")
    assert cfg.select == "fixed" and cfg.alpha == 0.99
    assert cfg.for_baseline().lam == 2e-5  # LF-CBM's standard-sparse CUB lambda
    assert set(PAPER_LAMBDAS) >= {"imagenet", "places365", "cub", "default"}
    with pytest.raises(salfcbm.errors.InputError, match="paper preset"):
        HeadConfig.paper("imagenett")
    with pytest.raises(salfcbm.errors.InputError, match="needs lam"):
        HeadConfig(select="fixed")
    assert HeadConfig(lam=1e-3).select == "fixed"  # a lam alone is the fixed selection
    with pytest.raises(salfcbm.errors.InputError, match="only used with select='fixed'"):
        HeadConfig(select="nec", target_nec=5, lam=1e-3)


def test_fixed_lambda_is_the_solution_at_lam_and_ignores_validation():
    xt, yt, xv, yv = _problem()
    cfg = HeadConfig(select="fixed", lam=0.02)
    a = fit_head(xt, yt, xv, yv, 4, cfg, progress=False)
    b = fit_head(xt, yt, xv, yv[torch.randperm(len(yv))], 4, cfg, progress=False)  # shuffled val labels
    assert a.criterion == "fixed" and a.lam == pytest.approx(0.02 / 0.99)  # GLM-SAGA's lam / alpha (issue 18.7)
    assert torch.equal(a.weight, b.weight), "the paper's selection must not look at the validation set"
    direct = fit_sparse_head(xt, yt, num_classes=4, lambdas=[0.02 / 0.99], select="last", progress=False, tol=1e-6,
                             max_iter=20000)
    assert torch.allclose(a.weight, direct.weight, atol=5e-3)
    assert 0 < a.point.nnz < a.weight.numel()


def test_fixed_lambda_above_lam_max_warns():
    xt, yt, xv, yv = _problem()
    with pytest.warns(salfcbm.errors.DegenerateResultWarning, match="lam_max"):
        f = fit_head(xt, yt, xv, yv, 4, HeadConfig(select="fixed", lam=50.0), progress=False)
    assert f.point.nnz == 0


def _cli_inputs(tmp_path, monkeypatch) -> None:
    """The folders and the concept file the train flags name (the CLI checks they exist when parsing)."""
    monkeypatch.chdir(tmp_path)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    (tmp_path / "c").write_text("fur\n")


def test_cli_head_options(tmp_path, monkeypatch):
    from salfcbm.cli import _head_config, build_parser

    _cli_inputs(tmp_path, monkeypatch)
    base = ["train", "--backbone", "timm:resnet18", "--train", "a", "--val", "b", "--concepts", "c", "--run-dir", "d"]
    args = build_parser().parse_args(base + ["--preset", "imagenet"])
    assert _head_config(args) == HeadConfig.paper("imagenet")
    args = build_parser().parse_args(base + ["--lam", "3e-4"])
    assert _head_config(args).select == "fixed" and _head_config(args).lam == 3e-4
    args = build_parser().parse_args(base + ["--target-nec", "5"])
    assert _head_config(args).select == "nec"
    args = build_parser().parse_args(base)
    assert _head_config(args).select == "val_acc"


def test_cli_filter_and_cutoff_options(tmp_path, monkeypatch):
    from salfcbm.cli import build_parser

    _cli_inputs(tmp_path, monkeypatch)
    base = ["train", "--backbone", "timm:resnet18", "--train", "a", "--val", "b", "--concepts", "c", "--run-dir", "d"]
    args = build_parser().parse_args(base)
    assert not args.no_filter and args.clip_cutoff == 0.25 and args.cutoff_statistic == "cell"
    args = build_parser().parse_args(base + ["--no-filter", "--clip-cutoff", "0.28", "--cutoff-statistic", "pooled"])
    assert args.no_filter and args.clip_cutoff == 0.28 and args.cutoff_statistic == "pooled"
