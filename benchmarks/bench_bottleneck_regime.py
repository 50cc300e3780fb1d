"""How the bottleneck's optimisation regime changes accuracy and concepts kept (issue 18, item 4).

LF-CBM trains its (non-spatial) projection with ``proj_batch_size`` 50,000 images, at most
1,000 steps, a validation check every 50 steps and a stop at the first validation increase,
from ``nn.Linear``'s default init. salfcbm's recipes v1 used 256 images, up to 5,000 steps,
patience 10 and a normal(1/sqrt(C)) init. This script trains the SALF-CBM bottleneck of the
offline demo world (``salfcbm.demo``: procedural scenes, a small frozen CNN, the ground-truth
scorer) under a small grid of regimes, with 2 seeds each (the seed draws the init and the batch
order; the data, backbone and stores are shared), and reports for each:

* ``steps``, ``best_step``, the mean per-cell validation similarity (Eq. 1),
* concepts kept at the interpretability cutoff 0.45 by the per-cell and the pooled statistic,
* test accuracy of the paper's head (LF-CBM's fixed lambda 7e-4) on all concepts,
* seconds of bottleneck training (this machine; for the ranking only).

Run::

    python benchmarks/bench_bottleneck_regime.py --threads 1   # ~20 min on one CPU core
    python benchmarks/bench_bottleneck_regime.py --quick       # fewer images and regimes
    python benchmarks/bench_bottleneck_regime.py --memory      # bytes per image of one step at ImageNet's shapes

Prints a markdown table and writes JSON to ``--out`` (default
``benchmarks/results/bottleneck_regime.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (name, images per step (0 = the whole training set), max steps, patience, init)
REGIMES = [
    ("recipes v1: 256, 5000 steps, patience 10, normal init", 256, 5000, 10, "normal"),
    ("full batch, 1000 steps, first increase, LF-CBM init (LF-CBM)", 0, 1000, 1, "lf-cbm"),
    ("256, 1000 steps, first increase, LF-CBM init", 256, 1000, 1, "lf-cbm"),
    ("256, 1000 steps, first increase, normal init", 256, 1000, 1, "normal"),
    ("64, 1000 steps, first increase, LF-CBM init", 64, 1000, 1, "lf-cbm"),
    ("256, 5000 steps, first increase, LF-CBM init", 256, 5000, 1, "lf-cbm"),
    ("full batch, 3000 steps, first increase, LF-CBM init", 0, 3000, 1, "lf-cbm"),
]
CUTOFF = 0.45


def _world(out: Path, quick: bool, progress: bool):
    """The demo world's datasets, frozen backbone, wrapped model and stores (cached under ``out``)."""
    from salfcbm.core.model import wrap
    from salfcbm.demo.run import DemoConfig, _backbone, _datasets
    from salfcbm.demo.scenes import GroundTruthScorer
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store
    from salfcbm.training.pipeline import feature_store

    n = (300, 100, 100, 4) if quick else (600, 200, 200, 5)
    cfg = DemoConfig(n_train=n[0], n_val=n[1], n_test=n[2], backbone_epochs=n[3])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data = _datasets(cfg)
    backbone = _backbone(cfg, data, out, progress)
    size = (cfg.image_size, cfg.image_size)
    model = wrap(backbone, concepts=data["train"].concepts, num_classes=cfg.num_classes,
                 class_names=data["train"].classes, grid=cfg.grid, input_size=size, backbone_weights=None,
                 input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0), input_crop_pct=1.0)
    prompts = PromptGrid(grid=(cfg.grid, cfg.grid), radius=cfg.radius)
    sims = {s: compute_similarity_store(out / "similarities" / s, data[s], GroundTruthScorer(data[s]), prompts,
                                        progress=progress, shard_size=512) for s in ("train", "val")}
    feats = {s: feature_store(model, data[s], out / "features" / s, progress=progress) for s in ("train", "val", "test")}
    return cfg, data, model, sims, feats


def _one(model, data, sims, feats, regime, seed: int) -> dict:
    from salfcbm.head import HeadConfig, fit_head
    from salfcbm.training import BottleneckConfig, train_bottleneck
    from salfcbm.training.features import fit_standardization, labels_of, store_concept_activations

    name, batch, steps, patience, init = regime
    m = copy.deepcopy(model)
    n_train = feats["train"].length
    cfg = BottleneckConfig(lr=1e-3, batch_size=batch or n_train, max_steps=steps, val_every=50, patience=patience,
                           init=init, seed=seed, cutoff=CUTOFF)
    t = time.perf_counter()
    rep = train_bottleneck(m, feats["train"], sims["train"], feats["val"], sims["val"], cfg, progress=False,
                           prune=False)
    seconds = time.perf_counter() - t
    a = [store_concept_activations(m, feats[s]) for s in ("train", "val", "test")]
    y = [labels_of(data[s]) for s in ("train", "val", "test")]
    _, _, z = fit_standardization(*a)
    head = fit_head(z[0], y[0], z[1], y[1], m.num_classes, HeadConfig.paper("default"), progress=False)
    acc = float((head.logits(z[2]).argmax(1) == y[2]).float().mean())
    return {"regime": name, "batch": batch or n_train, "max_steps": steps, "patience": patience, "init": init,
            "seed": seed, "steps": rep.steps, "best_step": rep.best_step,
            "val_similarity": rep.best_val_similarity,
            "kept_cell": sum(v >= CUTOFF for v in rep.cell_similarity.values()),
            "kept_pooled": sum(v >= CUTOFF for v in rep.pooled_similarity.values()),
            "concepts": len(rep.cell_similarity), "test_accuracy": 100 * acc, "seconds": seconds}


_STEP = """
import resource, sys, torch
from salfcbm.training.batches import project_channels_last
from salfcbm.training.pipeline import bottleneck_loss
b, c, m, g = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(1)
conv = torch.nn.Conv2d(c, m, 1, bias=False)
x, p = torch.randn(b, g, g, c), torch.randn(b, g, g, m)
opt = torch.optim.Adam(conv.parameters(), lr=1e-3)
loss = bottleneck_loss(project_channels_last(conv, x), p)
opt.zero_grad(); loss.backward(); opt.step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def step_memory(channels: int = 2048, concepts: int = 4751, grid: int = 7, batches=(32, 96)) -> dict:
    """Peak host memory of one bottleneck step (fp32, CPU) at two batch sizes, each in a fresh process:
    the slope is the memory per image of a step (ImageNet's ResNet-50 layer4 and 4,751 concepts by default)."""
    import subprocess

    peak = {}
    for b in batches:
        out = subprocess.run([sys.executable, "-c", _STEP, str(b), str(channels), str(concepts), str(grid)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        peak[b] = int(out.stdout.split()[-1])
    per_image = (peak[batches[1]] - peak[batches[0]]) / (batches[1] - batches[0])
    return {"channels": channels, "concepts": concepts, "grid": grid, "peak_bytes": peak,
            "bytes_per_image": per_image, "gb_at": {n: per_image * n / 1e9 for n in (256, 8192, 16384, 50000)}}


def _table(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["regime"], []).append(r)
    lines = ["| regime | images/step | steps run (per seed) | val. similarity | kept, per-cell >= 0.45 | "
             "kept, pooled >= 0.45 | test accuracy % (per seed) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        def join(k, fmt="{}"):
            return " / ".join(fmt.format(r[k]) for r in rs)
        lines.append(f"| {name} | {rs[0]['batch']} | {join('steps')} | {join('val_similarity', '{:.3f}')} | "
                     f"{join('kept_cell')} of {rs[0]['concepts']} | {join('kept_pooled')} | "
                     f"{join('test_accuracy', '{:.1f}')} | {join('seconds', '{:.0f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="runs/bench_bottleneck_regime", help="backbone and stores (reused)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bottleneck_regime.json"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--quick", action="store_true", help="300 training images and three regimes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--regimes", type=int, nargs="+", help="indices into REGIMES (default: all)")
    p.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    p.add_argument("--memory", action="store_true", help="only measure one step's memory per image (ImageNet shapes)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory:
        mem = step_memory()
        print(json.dumps(mem, indent=2))
        path = Path(args.out).with_name("bottleneck_step_memory.json")
        path.write_text(json.dumps({**mem, "machine": {"platform": platform.platform(), "torch": torch.__version__}},
                                   indent=2))
        return mem
    cfg, data, model, sims, feats = _world(Path(args.work_dir) / ("quick" if args.quick else "world"), args.quick,
                                           args.progress)
    regimes = [REGIMES[i] for i in args.regimes] if args.regimes else REGIMES[:3] if args.quick else REGIMES
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if args.append and out.exists() else []
    for regime in regimes:
        for seed in args.seeds:
            rows.append(_one(model, data, sims, feats, regime, seed))
            print(json.dumps(rows[-1]), flush=True)
    table = _table(rows)
    print(table)
    res = {"world": {"n_train": cfg.n_train, "n_val": cfg.n_val, "n_test": cfg.n_test, "concepts": len(model.concepts),
                     "classes": cfg.num_classes, "grid": cfg.grid, "lr": 1e-3, "val_every": 50, "cutoff": CUTOFF,
                     "head": "HeadConfig.paper('default'): fixed lambda 7e-4, alpha 0.99"},
           "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
           "rows": rows, "table": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
