"""salfcbm's sparse-head solver against the ``glm_saga`` package (paper 3.4, Eq. 2).

Both solvers fit the same elastic-net multinomial logistic regression path (alpha = 0.99, the
bias unregularised) on the same standardised synthetic features: Gaussian class clusters that
differ on only a few informative dimensions. glm_saga (Wong et al. 2021, the optimiser LF-CBM and
SALF-CBM use) runs its own path (its ``lam_max`` and geometric grid, LF-CBM's step size 0.1 and
batch size 256); salfcbm is then given exactly the same ``lam`` values, so every row compares the
two at a matched ``lam``. Both solutions are scored by the same float64 evaluator: penalised
objective, KKT violation, train/val accuracy and non-zeros.

Run::

    python benchmarks/bench_glm_saga.py --quick     # ~1-2 min on 1 CPU thread
    python benchmarks/bench_glm_saga.py             # larger problem, several minutes

Results go to ``benchmarks/results/glm_saga.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from salfcbm._utils.io import atomic_write_text
from salfcbm.head.solver import (
    elastic_net_objective,
    fit_sparse_head,
    kkt_violation,
    lambda_max,
)


def make_data(n_train: int, n_val: int, n_test: int, m: int, n_cls: int, k: int, seed: int):
    """Gaussian class clusters separated on ``k`` informative dimensions out of ``m``; standardised."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_cls, k, generator=g) * 0.8

    def draw(n: int):
        y = torch.randint(0, n_cls, (n,), generator=g)
        x = torch.randn(n, m, generator=g)
        x[:, :k] += centres[y]
        return x, y

    xt, yt = draw(n_train)
    xv, yv = draw(n_val)
    xs, ys = draw(n_test)
    mu, sd = xt.mean(0), xt.std(0)
    return (xt - mu) / sd, yt, (xv - mu) / sd, yv, (xs - mu) / sd, ys


def run_glm_saga(xt, yt, xv, yv, n_cls, k_lams, epsilon, lr, nepochs, batch_size, tol, seed):
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga

    torch.manual_seed(seed)
    lin = nn.Linear(xt.shape[1], n_cls)
    lin.weight.data.zero_()
    lin.bias.data.zero_()
    loader = DataLoader(IndexedTensorDataset(xt, yt), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(TensorDataset(xv, yv), batch_size=4096)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = glm_saga(
            lin, loader, lr, nepochs, 0.99, epsilon=epsilon, k=k_lams, val_loader=val_loader,
            do_zero=False, n_ex=xt.shape[0], n_classes=n_cls, tol=tol,
        )
    seconds = time.perf_counter() - t0
    not_converged = log.getvalue().count("did not converge")
    return out["path"], seconds, not_converged


def accuracy(w, b, x, y) -> float:
    return float(((x @ w.T + b).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problem (about a minute)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both solvers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "glm_saga.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.quick:
        cfg = dict(n_train=4000, n_val=2000, n_test=4000, m=150, n_cls=10, k=15, k_lams=8, nepochs=60)
    else:
        cfg = dict(n_train=12000, n_val=4000, n_test=8000, m=300, n_cls=20, k=30, k_lams=12, nepochs=150)
    cfg.update(epsilon=1e-3, lr=0.1, batch_size=256, glm_tol=1e-4, alpha=0.99, ours_tol=1e-4)
    xt, yt, xv, yv, xs, ys = make_data(cfg["n_train"], cfg["n_val"], cfg["n_test"], cfg["m"], cfg["n_cls"], cfg["k"], args.seed)

    gpath, t_glm, glm_nc = run_glm_saga(
        xt, yt, xv, yv, cfg["n_cls"], cfg["k_lams"], cfg["epsilon"], cfg["lr"], cfg["nepochs"],
        cfg["batch_size"], cfg["glm_tol"], args.seed,
    )
    lams = [float(p["lam"]) for p in gpath]

    t0 = time.perf_counter()
    fit = fit_sparse_head(xt, yt, xv, yv, lambdas=lams, alpha=cfg["alpha"], tol=cfg["ours_tol"], progress=False)
    t_ours = time.perf_counter() - t0
    # also time salfcbm's own default 50-point path down to the same lam_min
    t0 = time.perf_counter()
    fit50 = fit_sparse_head(xt, yt, xv, yv, n_lambdas=50, lambda_min_ratio=cfg["epsilon"], progress=False)
    t_ours50 = time.perf_counter() - t0

    rows = []
    for gp, op in zip(gpath, fit.path):
        lam = op.lam
        gw, gb = gp["weight"], gp["bias"]
        va_g, va_o = accuracy(gw, gb, xv, yv), accuracy(op.weight, op.bias, xv, yv)
        rows.append(
            {
                "lam": lam,
                "obj_glm": elastic_net_objective(gw, gb, xt, yt, lam),
                "obj_ours": elastic_net_objective(op.weight, op.bias, xt, yt, lam),
                "kkt_glm": kkt_violation(gw, gb, xt, yt, lam),
                "kkt_ours": kkt_violation(op.weight, op.bias, xt, yt, lam),
                "train_acc_glm": accuracy(gw, gb, xt, yt),
                "train_acc_ours": accuracy(op.weight, op.bias, xt, yt),
                "val_acc_glm": va_g,
                "val_acc_ours": va_o,
                "nnz_glm": int((gw != 0).sum()),
                "nnz_glm_1e-5": int((gw.abs() > 1e-5).sum()),
                "nnz_ours": op.nnz,
                "sec_glm": float(gp["time"]),
                "sec_ours": op.seconds,
            }
        )

    lam_max_ours = lambda_max(xt, yt, alpha=cfg["alpha"])
    hdr = f"{'lam':>9} | {'objective glm / ours':>21} | {'KKT glm / ours':>17} | {'val acc glm / ours':>18} | {'nnz glm / ours':>14} | {'sec glm / ours':>15}"
    print(f"\nN={cfg['n_train']} M={cfg['m']} L={cfg['n_cls']} informative={cfg['k']} threads={args.threads} "
          f"(glm_saga lam_max={lams[0]:.5g}, salfcbm lam_max={lam_max_ours:.5g})")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['lam']:9.3g} | {r['obj_glm']:10.5f} {r['obj_ours']:10.5f} | {r['kkt_glm']:8.1e} {r['kkt_ours']:8.1e} | "
            f"{r['val_acc_glm']:8.4f} {r['val_acc_ours']:8.4f}  | {r['nnz_glm']:6d} {r['nnz_ours']:6d}  | "
            f"{r['sec_glm']:7.2f} {r['sec_ours']:7.3f}"
        )

    # Selection, the same rule for both: best validation accuracy along the matched path (ties ->
    # the sparser, earlier point), then the held-out test accuracy of that point.
    def pick(key: str) -> int:
        best = 0
        for i, r in enumerate(rows):
            if r[key] > rows[best][key]:
                best = i
        return best

    ig, io_ = pick("val_acc_glm"), pick("val_acc_ours")
    test_glm = accuracy(gpath[ig]["weight"], gpath[ig]["bias"], xs, ys)
    test_ours = accuracy(fit.path[io_].weight, fit.path[io_].bias, xs, ys)
    test50 = accuracy(fit50.weight, fit50.bias, xs, ys)
    p = max(test_glm, 1e-3)
    test_noise = 2 * math.sqrt(p * (1 - min(p, 1 - 1e-3)) / xs.shape[0]) + 1 / xs.shape[0]

    # Verdicts, "not worse than glm_saga by more than noise":
    #  * objective at every matched lam (ours must be lower or equal, up to 1e-5 relative);
    #  * non-zeros at every matched lam (at most 2% + 1 more);
    #  * accuracy of the selected model on held-out test data (within 2 binomial std);
    #  * wall time of the whole path.
    # Per-lam accuracies are reported but not judged: at small lam glm_saga stops far from the
    # optimum (see its KKT column), which acts as extra regularisation; a solver that actually
    # solves Eq. 2 can then have a lower val accuracy at that lam and a higher one elsewhere.
    obj_tol = 1e-5
    worse_obj = [r["lam"] for r in rows if r["obj_ours"] > r["obj_glm"] + obj_tol * max(1.0, abs(r["obj_glm"]))]
    worse_nnz = [r["lam"] for r in rows if r["nnz_ours"] > r["nnz_glm"] * 1.02 + 1]
    acc_ok = test_ours >= test_glm - test_noise
    summary = {
        "time_glm_s": t_glm,
        "time_ours_s": t_ours,
        "speedup": t_glm / t_ours,
        "time_ours_50pt_path_s": t_ours50,
        "glm_points_hit_nepochs": glm_nc,
        "max_obj_gap_ours_minus_glm": max(r["obj_ours"] - r["obj_glm"] for r in rows),
        "min_obj_gap_ours_minus_glm": min(r["obj_ours"] - r["obj_glm"] for r in rows),
        "max_kkt_ours": max(r["kkt_ours"] for r in rows),
        "max_kkt_glm": max(r["kkt_glm"] for r in rows),
        "total_nnz_glm": sum(r["nnz_glm"] for r in rows),
        "total_nnz_ours": sum(r["nnz_ours"] for r in rows),
        "selected_glm": {"lam": rows[ig]["lam"], "val_acc": rows[ig]["val_acc_glm"], "test_acc": test_glm,
                         "nnz": rows[ig]["nnz_glm"]},
        "selected_ours": {"lam": rows[io_]["lam"], "val_acc": rows[io_]["val_acc_ours"], "test_acc": test_ours,
                          "nnz": rows[io_]["nnz_ours"]},
        "selected_ours_50pt_path": {"lam": fit50.lam, "val_acc": fit50.point.val_acc, "test_acc": test50,
                                    "nnz": fit50.point.nnz},
        "test_acc_noise": test_noise,
        "points_worse_objective": worse_obj,
        "points_more_nnz": worse_nnz,
        "selected_test_acc_not_worse": acc_ok,
        "not_worse_on_all": not (worse_obj or worse_nnz) and acc_ok and t_ours <= t_glm,
    }
    print(
        f"\nwall time: glm_saga {t_glm:.2f} s, salfcbm {t_ours:.2f} s (x{summary['speedup']:.1f}); "
        f"salfcbm 50-point path {t_ours50:.2f} s"
    )
    print(
        f"objective gap ours-glm: min {summary['min_obj_gap_ours_minus_glm']:.2e} max {summary['max_obj_gap_ours_minus_glm']:.2e}; "
        f"max KKT glm {summary['max_kkt_glm']:.1e} ours {summary['max_kkt_ours']:.1e}; "
        f"glm_saga points that hit nepochs: {glm_nc}/{len(rows)}"
    )
    print(f"total nnz over the path: glm {summary['total_nnz_glm']} ours {summary['total_nnz_ours']}")
    for name, sel in (("glm_saga", summary["selected_glm"]), ("salfcbm", summary["selected_ours"]),
                      ("salfcbm 50-pt", summary["selected_ours_50pt_path"])):
        print(f"selected by val acc, {name:>13}: lam {sel['lam']:.3g} val {sel['val_acc']:.4f} "
              f"test {sel['test_acc']:.4f} nnz {sel['nnz']}")
    print(f"test-acc noise (2 std): {test_noise:.4f}; not worse on all: {summary['not_worse_on_all']}")

    result = {
        "benchmark": "glm_saga",
        "config": cfg | {"threads": args.threads, "seed": args.seed, "quick": args.quick},
        "env": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()},
        "summary": summary,
        "rows": rows,
        "ours_50pt_path": fit50.summary(),
    }
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    sys.exit(main())
