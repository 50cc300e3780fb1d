"""One head package owns its config and its selection, with one vocabulary (issue 20.2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.errors import InputError
from salfcbm.head import SELECT, HeadConfig, PathPoint, fit_head, fit_sparse_head, fit_sparse_head_streaming, select_point

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pt(lam, acc, nnz):
    return PathPoint(lam, torch.zeros(2, 2), torch.zeros(2), 0.0, acc, acc, nnz, nnz / 2)


PATH = [_pt(1.0, 0.5, 0), _pt(0.5, 0.88, 1), _pt(0.2, 0.9, 3), _pt(0.1, 0.8, 4)]


def test_one_vocabulary_for_config_and_solvers():
    assert SELECT == ("val_acc", "nec", "fixed", "last")
    for word in SELECT:
        kw = {"target_nec": 1.5} if word == "nec" else {"lam": 1e-3} if word == "fixed" else {}
        assert HeadConfig(select=word, **kw).select == word  # "last" was refused by HeadConfig before
    with pytest.raises(InputError, match="one of"):
        HeadConfig(select="best")


@pytest.mark.parametrize("rule, kw, expected", [
    ("val_acc", {}, 2), ("val_acc", {"val_tolerance": 0.05}, 1), ("nec", {"target_nec": 1.5}, 2),
    ("fixed", {}, 3), ("last", {}, 3),
])
def test_select_point_applies_every_rule(rule, kw, expected):
    assert select_point(PATH, rule, **kw) == expected


def test_the_solvers_select_with_val_tolerance_themselves():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    a = fit_sparse_head(x[:300], y[:300], x[300:], y[300:], n_lambdas=8, val_tolerance=0.05, progress=False)
    assert a.criterion == "val_acc_tolerance"
    assert a.selected == select_point(a.path, "val_acc", val_tolerance=0.05)
    assert a.point.nnz <= a.path[select_point(a.path, "val_acc")].nnz
    b = fit_sparse_head_streaming((x[:300], y[:300]), (x[300:], y[300:]), lambdas=[p.lam for p in a.path],
                                  val_tolerance=0.05, progress=False)
    assert b.criterion == "val_acc_tolerance" and b.selected == select_point(b.path, "val_acc", val_tolerance=0.05)
    c = fit_head(x[:300], y[:300], x[300:], y[300:], 2, HeadConfig(n_lambdas=8, val_tolerance=0.05), progress=False)
    assert c.selected == a.selected and torch.equal(c.weight, a.weight)


def test_head_config_has_one_home():
    from salfcbm import training
    from salfcbm.training import pipeline

    assert training.HeadConfig is pipeline.HeadConfig is salfcbm.HeadConfig is HeadConfig
    assert HeadConfig.__module__ == "salfcbm.head.config"


def test_training_holds_no_selection_logic():
    """No function in salfcbm/training reads the selection words or the tolerance: it calls the head's API."""
    offenders = []
    for path in (ROOT / "salfcbm" / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for c in ast.walk(node):
                    if isinstance(c, ast.Constant) and c.value in ("val_acc", "nec", "fixed", "last"):
                        offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("val_tolerance", "target_nec"):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
