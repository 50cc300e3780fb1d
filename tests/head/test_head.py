"""Tests for the sparse final layer (paper 3.4, Eq. 2): salfcbm.head.solver."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from salfcbm.errors import InputError, SalfCBMError
from salfcbm.head import (
    HeadFit,
    PathPoint,
    select_point,
    elastic_net_objective,
    fit_dense_head,
    fit_sparse_head,
    kkt_violation,
    lambda_max,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small problems run faster on one thread (and do not fight other test processes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def clusters(n: int, m: int, n_cls: int, k: int, seed: int = 0, sep: float = 1.5):
    """Class clusters that differ only on the first ``k`` of ``m`` features; standardised."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_cls, k, generator=g) * sep
    y = torch.randint(0, n_cls, (n,), generator=g)
    x = torch.randn(n, m, generator=g)
    x[:, :k] += centres[y]
    x = (x - x.mean(0)) / x.std(0)
    return x, y


@pytest.fixture(scope="module")
def data():
    x, y = clusters(1600, 30, 4, 4, seed=1, sep=2.5)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def path_fit(data):
    xt, yt, xv, yv = data
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return fit_sparse_head(xt, yt, xv, yv, n_lambdas=25, lambda_min_ratio=1e-2, progress=False)


def independent_kkt(w, b, x, y, lam, alpha):
    """Sub-gradient optimality conditions of Eq. 2 via autograd in float64 (no library code)."""
    w = w.double().clone().requires_grad_(True)
    b = b.double().clone().requires_grad_(True)
    smooth = torch.nn.functional.cross_entropy(x.double() @ w.T + b, y) + 0.5 * lam * (1 - alpha) * w.pow(2).sum()
    gw, gb = torch.autograd.grad(smooth, (w, b))
    w = w.detach()
    nz = w != 0
    on_support = (gw + lam * alpha * torch.sign(w))[nz].abs()
    off_support = (gw[~nz].abs() - lam * alpha).clamp_min(0)
    parts = [gb.abs().max()] + [t.max() for t in (on_support, off_support) if t.numel()]
    return float(torch.stack(parts).max())


def test_recovers_sparse_support(data, path_fit):
    xt, yt, xv, yv = data
    informative = {0, 1, 2, 3}
    entered: list[int] = []
    for p in path_fit.path:
        for j in (p.weight != 0).any(0).nonzero().flatten().tolist():
            if j not in entered:
                entered.append(j)
    assert set(entered[:4]) == informative  # the first four features to enter are the true ones
    col_norm = path_fit.weight.abs().sum(0)
    assert set(col_norm.topk(4).indices.tolist()) == informative
    assert path_fit.point.val_acc > 0.9
    # the selected model puts most of its weight on the true support
    assert col_norm[:4].sum() > 0.9 * col_norm.sum()


def test_lambda_max_gives_all_zero_weights(data, path_fit):
    xt, yt, _, _ = data
    lm = lambda_max(xt, yt)
    assert lm == pytest.approx(path_fit.lam_max, rel=1e-5)
    assert path_fit.path[0].lam == pytest.approx(lm)
    assert path_fit.path[0].nnz == 0
    fit = fit_sparse_head(xt, yt, lambdas=[lm * 1.001, lm * 0.97], select="last", progress=False)
    assert fit.path[0].nnz == 0
    assert fit.path[1].nnz > 0  # lam_max is tight: just below it a weight becomes non-zero
    # with W = 0 the bias is the log of the class frequencies
    freq = torch.bincount(yt, minlength=4).double() / len(yt)
    assert torch.allclose(torch.softmax(fit.path[0].bias.double(), 0), freq, atol=1e-4)


def test_lambda_max_closed_form():
    x = torch.tensor([[1.0], [-1.0], [3.0], [-3.0]])
    y = torch.tensor([0, 1, 0, 1])
    # pi = (1/2, 1/2); grad = X^T (pi - Y) / N -> |(-1/2 * 1 + ... )| = (0.5 + 0.5 + 1.5 + 1.5) / 4 = 1
    assert lambda_max(x, y, alpha=1.0) == pytest.approx(1.0)
    assert lambda_max(x, y, alpha=0.5) == pytest.approx(2.0)


def test_path_is_monotone_ish_in_nnz(path_fit):
    nnz = [p.nnz for p in path_fit.path]
    lams = [p.lam for p in path_fit.path]
    assert all(a > b for a, b in zip(lams, lams[1:]))
    assert nnz[0] == 0 and nnz[-1] > nnz[0]
    drops = sum(max(0, a - b) for a, b in zip(nnz, nnz[1:]))
    assert drops <= 0.1 * nnz[-1]
    rho = np.corrcoef(np.arange(len(nnz)), nnz)[0, 1]
    assert rho > 0.8
    for p in path_fit.path:
        assert p.nec == pytest.approx(p.nnz / 4)
        assert p.weight.shape == (4, 30) and p.bias.shape == (4,)


def test_kkt_conditions_hold_along_the_path(data, path_fit):
    """The real correctness test: each point satisfies the sub-gradient conditions of Eq. 2."""
    xt, yt, _, _ = data
    scale = path_fit.lam_max * path_fit.alpha  # size of the gradient at W = 0
    for p in path_fit.path[1::4]:
        v = independent_kkt(p.weight, p.bias, xt, yt, p.lam, path_fit.alpha)
        assert v <= 3e-4 * scale, (p.lam, v, scale)
        assert kkt_violation(p.weight, p.bias, xt, yt, p.lam) == pytest.approx(v, abs=1e-6)
        # a solver that stops early would also fail this: nothing nearby is better
        obj = elastic_net_objective(p.weight, p.bias, xt, yt, p.lam)
        assert obj == pytest.approx(p.objective, rel=1e-5)
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            dw = torch.randn(p.weight.shape, generator=g) * 1e-3
            assert elastic_net_objective(p.weight + dw, p.bias, xt, yt, p.lam) >= obj - 1e-7


def test_matches_scikit_learn_elastic_net():
    """Same optimum as scikit-learn's saga on Eq. 2 (C = 1 / (N * lam))."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = clusters(300, 8, 3, 3, seed=4, sep=1.0)
    lam, alpha = 0.01, 0.99
    fit = fit_sparse_head(x, y, lambdas=[lam], alpha=alpha, select="last", tol=1e-6, progress=False)
    import sklearn as skl

    major, minor = (int(v) for v in skl.__version__.split(".")[:2])
    extra = {} if (major, minor) >= (1, 8) else {"penalty": "elasticnet"}  # 'penalty' deprecated in 1.8
    clf = sklearn.LogisticRegression(
        **extra, solver="saga", l1_ratio=alpha, C=1.0 / (len(y) * lam), tol=1e-7, max_iter=5000
    )
    clf.fit(x.double().numpy(), y.numpy())
    w_sk = torch.from_numpy(clf.coef_).float()
    b_sk = torch.from_numpy(clf.intercept_).float()
    ours = elastic_net_objective(fit.weight, fit.bias, x, y, lam, alpha)
    theirs = elastic_net_objective(w_sk, b_sk, x, y, lam, alpha)
    assert ours <= theirs + 1e-6
    assert ours == pytest.approx(theirs, abs=1e-4)
    # logits are invariant to a shift of all class biases/weights only without a penalty; with it
    # the solution is unique, so the weights agree too
    assert torch.allclose(fit.weight, w_sk, atol=2e-2)


def test_select_nec_respects_target(data):
    xt, yt, xv, yv = data
    fit = fit_sparse_head(xt, yt, xv, yv, select="nec", target_nec=2.0, n_lambdas=30, progress=False)
    assert fit.criterion == "nec"
    assert fit.point.nec <= 2.0
    assert fit.point.nec == max(p.nec for p in fit.path if p.nec <= 2.0)
    assert fit.path[-1].nec > 2.0 or len(fit.path) == 30  # the path stops once past the target
    assert all(p.nec <= 2.0 for p in fit.path[:-1])
    assert fit.weight is fit.point.weight and fit.lam == fit.point.lam


def test_select_val_acc_prefers_sparser_on_ties():
    def pt(lam, acc, nnz):
        return PathPoint(lam, torch.zeros(2, 2), torch.zeros(2), 0.0, acc, acc, nnz, nnz / 2)

    path = [pt(1.0, 0.5, 0), pt(0.5, 0.9, 1), pt(0.2, 0.9, 3), pt(0.1, 0.8, 4)]
    assert select_point(path, "val_acc", None) == 1
    assert select_point(path, "nec", 1.5) == 2
    assert select_point(path, "last", None) == 3


def test_selected_is_best_val_acc(path_fit):
    accs = [p.val_acc for p in path_fit.path]
    assert path_fit.point.val_acc == max(accs)
    assert path_fit.selected == accs.index(max(accs))
    assert path_fit.criterion == "val_acc"


def test_patience_stops_the_path(data):
    xt, yt, xv, yv = data
    fit = fit_sparse_head(xt, yt, xv, yv, n_lambdas=40, patience=3, progress=False)
    assert len(fit.path) < 40
    best = fit.selected
    assert len(fit.path) - 1 - best <= 3


def test_dense_head_reaches_high_accuracy_on_separable_data():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 12, generator=g)
    w_true = torch.randn(3, 12, generator=g)
    y = (x @ w_true.T).argmax(1)  # linearly separable
    fit = fit_dense_head(x[:400], y[:400], x[400:], y[400:], weight_decay=1e-4, progress=False)
    assert fit.criterion == "dense"
    assert fit.point.train_acc >= 0.99
    assert fit.point.val_acc >= 0.95
    assert fit.point.nnz == 3 * 12  # no sparsity
    assert fit.point.kkt < 1e-3
    logits = fit.logits(x[400:])
    assert float((logits.argmax(1) == y[400:]).float().mean()) == pytest.approx(fit.point.val_acc)


def test_dense_head_picks_weight_decay_on_validation(data):
    xt, yt, xv, yv = data
    fit = fit_dense_head(xt, yt, xv, yv, weight_decay=[1.0, 1e-3], progress=False)
    assert [p.lam for p in fit.path] == [1.0, 1e-3]
    assert fit.point.val_acc == max(p.val_acc for p in fit.path)


def test_accepts_dataloaders_and_numpy(data):
    xt, yt, xv, yv = data
    ref = fit_sparse_head(xt, yt, xv, yv, n_lambdas=6, lambda_min_ratio=0.05, progress=False)
    dl = DataLoader(TensorDataset(xt, yt), batch_size=128)
    vdl = DataLoader(TensorDataset(xv, yv), batch_size=500)
    fit = fit_sparse_head(dl, None, vdl, None, n_lambdas=6, lambda_min_ratio=0.05, progress=False)
    assert torch.allclose(fit.weight, ref.weight, atol=1e-5)
    indexed = [(xt[i : i + 250], yt[i : i + 250], torch.arange(i, i + 250)) for i in range(0, 1000, 250)]
    fit_idx = fit_sparse_head(indexed, x_val=xv, y_val=yv, n_lambdas=6, lambda_min_ratio=0.05, progress=False)
    assert torch.allclose(fit_idx.weight, ref.weight, atol=1e-5)
    fit_np = fit_sparse_head(
        xt.double().numpy(), yt.numpy(), xv.numpy(), yv.numpy(), n_lambdas=6, lambda_min_ratio=0.05, progress=False
    )
    assert torch.allclose(fit_np.weight, ref.weight, atol=1e-4)


def test_absent_class_gets_zero_weights(data):
    xt, yt, xv, yv = data
    fit = fit_sparse_head(xt, yt, num_classes=6, n_lambdas=5, lambda_min_ratio=0.05, select="last", progress=False)
    assert fit.weight.shape == (6, 30)
    assert (fit.weight[4:] == 0).all()
    assert (fit.bias[4:] < fit.bias[:4].min() - 10).all()


def test_summary_is_json_able(path_fit):
    rows = path_fit.summary()
    text = json.dumps(rows)
    assert len(json.loads(text)) == len(path_fit.path)
    assert {"lam", "train_acc", "val_acc", "nnz", "nec", "selected"} <= set(rows[0])
    assert sum(r["selected"] for r in rows) == 1
    assert isinstance(path_fit, HeadFit)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x_train": torch.randn(10, 3, 2), "y_train": torch.zeros(10, dtype=torch.long)}, "must be 2-D"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.zeros(9, dtype=torch.long)}, "10 rows but y_train has 9"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.full((10,), 5), "num_classes": 3}, r"labels in \[5, 5\]"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.tensor([-1] + [1] * 9)}, r"\[-1, 1\]"),
        ({"x_train": torch.full((10, 3), float("nan")), "y_train": torch.arange(10) % 2}, "NaN or infinite"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.rand(10)}, "integer class indices"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.eye(2)[torch.arange(10) % 2]}, "argmax"),
        ({"x_train": torch.randn(10, 3), "y_train": torch.zeros(10, dtype=torch.long)}, "single class"),
        ({"y_train": torch.zeros(10, dtype=torch.long), "num_classes": 1}, "at least 2"),
        ({"x_train": torch.zeros(10, 3), "y_train": torch.arange(10) % 2}, "no information"),
        ({"x_train": torch.randn(10, 3), "y_train": None}, "y_train is missing"),
        ({"x_train": [1, 2, 3], "y_train": None}, "expected a tuple"),
        ({"x_train": "features.npy", "y_train": torch.zeros(3)}, "must be a torch.Tensor"),
        ({"x_val": torch.randn(5, 4), "y_val": torch.zeros(5, dtype=torch.long)}, "4 features but x_train has 3"),
        ({"alpha": 0.0}, "fit_dense_head"),
        ({"alpha": 1.5}, r"alpha must lie in \(0, 1\]"),
        ({"select": "best"}, "select must be one of"),
        ({"select": "nec"}, "needs target_nec"),
        ({"select": "val_acc", "x_val": None, "y_val": None}, "needs validation data"),
        ({"target_nec": 3}, 'only used with select="nec"'),
        ({"lambdas": [0.1, 0.2]}, "decreasing"),
        ({"lambdas": []}, "non-empty"),
        ({"n_lambdas": 0}, "positive int"),
        ({"lambda_min_ratio": 2.0}, r"\(0, 1\]"),
        ({"max_iter": 1.5}, "positive int"),
    ],
)
def test_input_errors(kwargs, match):
    g = torch.Generator().manual_seed(0)
    args = {
        "x_train": torch.randn(10, 3, generator=g),
        "y_train": torch.arange(10) % 2,
        "x_val": torch.randn(6, 3, generator=g),
        "y_val": torch.arange(6) % 2,
        "progress": False,
    }
    args.update(kwargs)
    with pytest.raises(InputError, match=match) as ei:
        fit_sparse_head(**args)
    assert isinstance(ei.value, SalfCBMError) and isinstance(ei.value, ValueError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight_decay": -1.0}, "weight_decay must be"),
        ({"weight_decay": [1e-2, 1e-3], "x_val": None, "y_val": None}, "need x_val"),
        ({"y_train": torch.arange(10) % 2 + 3, "num_classes": 4}, r"\[0, 3\]"),
    ],
)
def test_dense_input_errors(kwargs, match):
    args = {"x_train": torch.randn(10, 3), "y_train": torch.arange(10) % 2, "x_val": torch.randn(4, 3),
            "y_val": torch.arange(4) % 2, "progress": False}
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        fit_dense_head(**args)


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_cls=st.integers(2, 4),
    m=st.integers(1, 6),
    ratio=st.floats(0.02, 0.9),
    alpha=st.sampled_from([0.5, 0.99, 1.0]),
)
def test_kkt_holds_for_random_problems(seed, n_cls, m, ratio, alpha):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(80, m, generator=g) * torch.rand(m, generator=g).mul(3).add(0.1)  # not standardised
    y = torch.randint(0, n_cls, (80,), generator=g)
    y[:n_cls] = torch.arange(n_cls)
    lm = lambda_max(x, y, alpha=alpha)
    fit = fit_sparse_head(x, y, lambdas=[lm * ratio], alpha=alpha, select="last", progress=False)
    assert independent_kkt(fit.weight, fit.bias, x, y, fit.lam, alpha) <= 3e-4 * lm * alpha


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(data, path_fit):
    xt, yt, xv, yv = data
    fit = fit_sparse_head(xt.cuda(), yt.cuda(), xv.cuda(), yv.cuda(), n_lambdas=25, lambda_min_ratio=1e-2,
                          progress=False)
    assert fit.weight.device.type == "cpu"
    assert math.isclose(fit.lam_max, path_fit.lam_max, rel_tol=1e-4)
    for a, b in zip(fit.path, path_fit.path):
        assert a.objective == pytest.approx(b.objective, abs=1e-4)
