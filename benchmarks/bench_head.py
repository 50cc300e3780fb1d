"""The sparse head in memory, out of core and in glm_saga, on isotropic and on correlated features.

Three solvers of the same elastic-net multinomial logistic regression path (Eq. 2, alpha = 0.99, bias
unregularised) on the same standardised synthetic features, at the same ``lam`` values (glm_saga's
own grid: its ``lam_max`` and ``k`` geometric points down to ``epsilon * lam_max``):

* ``in-memory``: `salfcbm.head.fit_sparse_head` (full-batch FISTA on an in-memory ``(N, M)`` matrix);
* ``out-of-core``: `salfcbm.head.fit_sparse_head_streaming`, reading ``.npy`` chunks of
  ``--chunk-rows`` rows from disk one at a time;
* ``glm_saga``: the ``glm_saga`` package (Wong et al. 2021) that LF-CBM and SALF-CBM use, with LF-CBM's
  step size 0.1 and batch size 256.

Features: ``isotropic`` (i.i.d. Gaussian) and ``correlated`` (covariance with condition number
``--cond``, 1e5 by default: a random rotation of geometric eigenvalues), standardised; labels drawn
from a sparse multinomial logistic model. Each solver runs in its own process, so its peak memory is
its own (and sampled every 2 ms): ``CPU s`` is the solver process's CPU time (the fair measure on a shared machine; ``seconds``
is wall time), ``peak MiB`` is the largest resident set minus the resident set before the data is read
(for in-memory and glm_saga this includes the ``(N, M)`` features; out of core reads one chunk at a
time). Every solution is scored by the same float64 evaluator: objective, KKT violation (relative to
``lam_max * alpha``), validation accuracy, non-zeros.

Run::

    python benchmarks/bench_head.py --quick   # N=4000, M=200, L=20: about 1 minute of CPU
    python benchmarks/bench_head.py --n 10000 --m 500 --classes 50 --chunk-rows 2500 \
        --out benchmarks/results/head_mid.json   # several minutes, most of it glm_saga
    python benchmarks/bench_head.py           # N=20000, M=1000, L=100: glm_saga alone takes more than
                                              # 10 CPU minutes per feature kind (it runs all 60 epochs)

Results go to ``benchmarks/results/head.json`` (``head_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def make_data(n: int, n_val: int, m: int, n_cls: int, k: int, cond: float, seed: int):
    """Standardised features (``cond`` = condition number of their covariance; 1 = isotropic), labels from a
    multinomial logistic model with ``k`` non-zero weights per class."""
    g = torch.Generator().manual_seed(seed)
    mix = None
    if cond > 1:
        q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        ev = torch.logspace(0, -math.log10(cond), m, dtype=torch.float64)
        mix = (q * ev.sqrt()) @ q.T
    wstar = torch.zeros(n_cls, m, dtype=torch.float64)
    for c in range(n_cls):
        wstar[c, torch.randperm(m, generator=g)[:k]] = torch.randn(k, generator=g, dtype=torch.float64) * 2.0

    def draw(rows: int):
        z = torch.randn(rows, m, generator=g, dtype=torch.float64)
        return z @ mix if mix is not None else z

    xt, xv = draw(n), draw(n_val)
    mu, sd = xt.mean(0), xt.std(0)
    xt, xv = (xt - mu) / sd, (xv - mu) / sd

    def labels(x):
        return torch.multinomial(torch.softmax(x @ wstar.T, 1), 1, generator=g).squeeze(1)

    yt, yv = labels(xt), labels(xv)
    measured = float(torch.linalg.cond(torch.cov(xt.T)))
    return xt.float(), yt, xv.float(), yv, measured


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class NpyChunks:
    """Chunks of ``.npy`` files on disk, loaded one at a time (what a feature store on disk does)."""

    def __init__(self, folder: Path, n_chunks: int):
        self.folder, self.n = folder, n_chunks

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return torch.from_numpy(np.load(self.folder / f"x_{i}.npy")), torch.from_numpy(np.load(self.folder / f"y_{i}.npy"))


class _PeakRSS:
    """The largest resident set seen by a thread sampling ``/proc/self/statm`` every 2 ms."""

    def __init__(self):
        self.peak, self._stop = _rss_mib(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss_mib())


def _child(kind: str, folder: str, n_chunks: int, lams: list[float], cfg: dict, q) -> None:
    torch.set_num_threads(cfg["threads"])
    warnings.simplefilter("ignore")
    folder_p = Path(folder)
    import salfcbm.head  # noqa: F401  (imports before the baseline)

    base = _rss_mib()
    sampler = _PeakRSS()
    xv, yv = torch.from_numpy(np.load(folder_p / "xv.npy")), torch.from_numpy(np.load(folder_p / "yv.npy"))
    t0, c0 = time.perf_counter(), time.process_time()
    info: dict = {}
    if kind == "out-of-core":
        from salfcbm.head import fit_sparse_head_streaming

        fit = fit_sparse_head_streaming(NpyChunks(folder_p, n_chunks), (xv, yv), lambdas=lams, select="last",
                                        tol=cfg["tol"], progress=False, chunk_rows=cfg["chunk_rows"])
        path = [(p.weight, p.bias, p.n_iter) for p in fit.path]
        info = {"passes": fit.info["passes"], "kkt_ok": fit.info["kkt_ok"]}
    else:
        xt = torch.from_numpy(np.load(folder_p / "xt.npy"))
        yt = torch.from_numpy(np.load(folder_p / "yt.npy"))
        t0, c0 = time.perf_counter(), time.process_time()
        if kind == "in-memory":
            from salfcbm.head import fit_sparse_head

            fit = fit_sparse_head(xt, yt, lambdas=lams, select="last", tol=cfg["tol"], progress=False)
            path = [(p.weight, p.bias, p.n_iter) for p in fit.path]
        else:
            path, info = _glm_saga(xt, yt, xv, yv, cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = sampler.stop() - base
    q.put({"path": [(w.numpy(), b.numpy(), it) for w, b, it in path], "seconds": seconds, "cpu_seconds": cpu, "peak_mib": peak,
           **info})


def _glm_saga(xt, yt, xv, yv, cfg):
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(cfg["seed"])
    lin = nn.Linear(xt.shape[1], cfg["n_cls"])
    lin.weight.data.zero_()
    lin.bias.data.zero_()
    loader = DataLoader(IndexedTensorDataset(xt, yt), batch_size=256, shuffle=True)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        out = glm_saga(lin, loader, 0.1, cfg["nepochs"], 0.99, epsilon=cfg["epsilon"], k=cfg["k_lams"],
                       val_loader=DataLoader(TensorDataset(xv, yv), batch_size=4096), do_zero=False,
                       n_ex=xt.shape[0], n_classes=cfg["n_cls"], tol=cfg["glm_tol"])
    lams = [float(p["lam"]) for p in out["path"]]
    path = [(p["weight"], p["bias"], 0) for p in out["path"]]
    return path, {"lams": lams, "points_hit_nepochs": log.getvalue().count("did not converge")}


def _run(kind: str, folder: Path, n_chunks: int, lams: list[float], cfg: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(kind, str(folder), n_chunks, lams, cfg, q))
    p.start()
    out = q.get()
    p.join()
    return out


def _score(res: dict, lams, xt, yt, xv, yv, lam_max) -> dict:
    from salfcbm.head import elastic_net_objective, kkt_violation

    objs, kkts, vals, nnz = [], [], [], []
    for (w, b, _), lam in zip(res["path"], lams):
        w, b = torch.from_numpy(w), torch.from_numpy(b)
        objs.append(elastic_net_objective(w, b, xt, yt, lam))
        kkts.append(kkt_violation(w, b, xt, yt, lam) / (lam_max * 0.99))
        vals.append(float(((xv @ w.T + b).argmax(1) == yv).float().mean()))
        nnz.append(int((w != 0).sum()))
    return {"objective": objs, "kkt_rel": kkts, "val_acc": vals, "nnz": nnz}


def run_case(name: str, cond: float, cfg: dict) -> dict:
    from salfcbm.head import lambda_max

    xt, yt, xv, yv, measured = make_data(cfg["n_train"], cfg["n_val"], cfg["m"], cfg["n_cls"], cfg["k"], cond, cfg["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "xt.npy", xt.numpy()), np.save(folder / "yt.npy", yt.numpy())
        np.save(folder / "xv.npy", xv.numpy()), np.save(folder / "yv.npy", yv.numpy())
        r = cfg["chunk_rows"]
        n_chunks = -(-xt.shape[0] // r)
        for i in range(n_chunks):
            np.save(folder / f"x_{i}.npy", xt[i * r : (i + 1) * r].numpy())
            np.save(folder / f"y_{i}.npy", yt[i * r : (i + 1) * r].numpy())
        results = {"glm_saga": _run("glm_saga", folder, n_chunks, [], cfg)}
        lams = results["glm_saga"]["lams"]
        for kind in ("in-memory", "out-of-core"):
            results[kind] = _run(kind, folder, n_chunks, lams, cfg)
    lam_max = lambda_max(xt, yt, cfg["n_cls"])
    rows = {}
    for kind, res in results.items():
        sc = _score(res, lams, xt.double(), yt, xv, yv, lam_max)
        rows[kind] = {"seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"], "peak_mib": res["peak_mib"], **sc,
                      **{k: res[k] for k in ("passes", "kkt_ok", "points_hit_nepochs") if k in res}}
    g = rows["glm_saga"]["objective"]
    for kind, row in rows.items():
        row["max_obj_minus_glm"] = max(o - gg for o, gg in zip(row["objective"], g))
        row["speedup_vs_glm"] = rows["glm_saga"]["seconds"] / row["seconds"]
        row["cpu_speedup_vs_glm"] = rows["glm_saga"]["cpu_seconds"] / row["cpu_seconds"]
    return {"case": name, "cond_measured": measured, "lams": lams, "rows": rows}


def _table(cases: list[dict]) -> str:
    hdr = (f"{'features':>10} | {'solver':>11} | {'seconds':>8} | {'CPU s':>8} | {'x glm (CPU)':>11} | {'peak MiB':>8} | "
           f"{'max obj - glm':>13} | {'max KKT/lam_max':>15} | {'nnz (last)':>10} | {'val acc (last)':>14}")
    lines = [hdr, "-" * len(hdr)]
    for c in cases:
        for kind, r in c["rows"].items():
            lines.append(f"{c['case']:>10} | {kind:>11} | {r['seconds']:8.2f} | {r['cpu_seconds']:8.2f} | "
                         f"{r['cpu_speedup_vs_glm']:11.2f} | "
                         f"{r['peak_mib']:8.1f} | {r['max_obj_minus_glm']:13.2e} | {max(r['kkt_rel']):15.2e} | "
                         f"{r['nnz'][-1]:10d} | {r['val_acc'][-1]:14.4f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problem (N=4000, M=200, L=20)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk of the out-of-core solver")
    ap.add_argument("--cond", type=float, default=1e5, help="condition number of the correlated features")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=None, help="training rows (overrides the size)")
    ap.add_argument("--m", type=int, default=None, help="features (overrides the size)")
    ap.add_argument("--classes", type=int, default=None, help="classes (overrides the size)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        cfg = dict(n_train=4000, n_val=2000, m=200, n_cls=20, k=10, k_lams=5, nepochs=60, chunk_rows=1000)
    else:
        cfg = dict(n_train=20000, n_val=4000, m=1000, n_cls=100, k=10, k_lams=5, nepochs=60, chunk_rows=4000)
    cfg.update(epsilon=1e-2, glm_tol=1e-4, tol=1e-4, threads=args.threads, seed=args.seed, quick=args.quick)
    for key, v in (("chunk_rows", args.chunk_rows), ("n_train", args.n), ("m", args.m), ("n_cls", args.classes)):
        if v:
            cfg[key] = v
    torch.set_num_threads(args.threads)
    cases = [run_case("isotropic", 1.0, cfg), run_case("correlated", args.cond, cfg)]
    print(f"\nN={cfg['n_train']} M={cfg['m']} L={cfg['n_cls']} lams={cfg['k_lams']} (glm_saga's grid, epsilon "
          f"{cfg['epsilon']}) chunk_rows={cfg['chunk_rows']} threads={args.threads}; correlated: cond "
          f"{cases[1]['cond_measured']:.3g}")
    print(_table(cases))
    out = Path(args.out or Path(__file__).parent / "results" / ("head_quick.json" if args.quick else "head.json"))
    result = {"benchmark": "head", "config": cfg, "cases": cases,
              "env": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}}
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    sys.exit(main())
