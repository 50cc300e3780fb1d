"""Which interpretability-cutoff statistic should be the library's default? Measured on the demo world.

For each seed the demo's world (procedural scenes, the stand-in backbone, the ground-truth scorer)
is built once and the bottleneck trained once; then `salfcbm.fit` is rerun on the same run
directory with every ``cutoff_statistic`` (``cell``, ``pooled``, ``lfcbm``) and ``cutoff_guard``
(``keep``, ``warn``) at the library's cutoff (0.45): the bottleneck resumes, only the cutoff and
the head change. Recorded per run: concepts kept (of the candidates), the concepts the cutoff
removed that the head on every concept uses, those kept for the head, SALF-CBM's test accuracy
and the standard sparse head's (the paper's selection, LF-CBM's fixed lambda, for both).

Run::

    python benchmarks/bench_cutoff.py            # 3 seeds, the sizes below (~minutes per seed on 2 cores)
    python benchmarks/bench_cutoff.py --quick    # 1 seed, smaller world

Results go to ``benchmarks/results/cutoff.json``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from salfcbm._utils.io import atomic_write_text  # noqa: E402
from salfcbm.core.model import wrap  # noqa: E402
from salfcbm.demo.run import DemoConfig, _backbone, _datasets  # noqa: E402
from salfcbm.demo.scenes import GroundTruthScorer  # noqa: E402
from salfcbm.supervision.prompts import PromptGrid  # noqa: E402
from salfcbm.supervision.store import compute_similarity_store  # noqa: E402
from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit  # noqa: E402

STATISTICS = ("cell", "pooled", "lfcbm")
GUARDS = ("keep", "warn")


def _world(cfg: DemoConfig, out: Path):
    data = _datasets(cfg)
    backbone = _backbone(cfg, data, out, progress=False)
    prompts = PromptGrid(grid=(cfg.grid, cfg.grid), radius=cfg.radius)
    sims = {s: compute_similarity_store(out / "similarities" / s, data[s], GroundTruthScorer(data[s]), prompts,
                                        progress=False, shard_size=512) for s in ("train", "val")}
    return data, backbone, sims


def _one(cfg: DemoConfig, out: Path, data, backbone, sims, statistic: str, guard: str, baseline: bool) -> dict:
    model = wrap(backbone, concepts=data["train"].concepts, num_classes=cfg.num_classes,
                 class_names=data["train"].classes, grid=cfg.grid, input_size=(cfg.image_size, cfg.image_size),
                 backbone_weights=None, input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0), input_crop_pct=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit(model, data["train"], data["val"], train_similarities=sims["train"], val_similarities=sims["val"],
                  test_data=data["test"], run_dir=out, progress=False, baseline=baseline,
                  bottleneck=BottleneckConfig(max_steps=cfg.bottleneck_steps, batch_size=256, val_every=50, patience=8,
                                              lr=cfg.bottleneck_lr, seed=cfg.seed, cutoff_statistic=statistic,
                                              cutoff_guard=guard),
                  head=HeadConfig.paper("default", n_lambdas=30))
    m = res.metrics
    row = {"statistic": statistic, "guard": guard, "candidates": res.cutoff["candidates"],
           "kept": res.model.num_concepts, "dropped": res.cutoff["dropped"],
           "needed_by_head": [c for c, _ in res.cutoff["needed_by_head"]], "kept_for_head": res.cutoff["kept_for_head"],
           "salfcbm_test": m["salfcbm"]["test_accuracy"], "salfcbm_val": m["salfcbm"]["val_accuracy"],
           "nec": m["salfcbm"]["nec"], "warned": any("interpretability cutoff" in str(w.message) for w in caught)}
    if baseline:
        row["standard_sparse_test"] = m["standard_sparse"]["test_accuracy"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cutoff.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    size = dict(n_train=800, n_val=300, n_test=300, backbone_epochs=6, bottleneck_steps=600) if args.quick else \
        dict(n_train=2000, n_val=500, n_test=500, backbone_epochs=10, bottleneck_steps=1000)
    rows = []
    for seed in seeds:
        cfg = DemoConfig(seed=seed, **size)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            data, backbone, sims = _world(cfg, out)
            base = None
            for statistic in STATISTICS:
                for guard in GUARDS:
                    r = _one(cfg, out, data, backbone, sims, statistic, guard, baseline=base is None)
                    base = r.get("standard_sparse_test", base)
                    r.update(seed=seed, standard_sparse_test=base)
                    rows.append(r)
                    print(f"seed {seed} {statistic:6s} {guard:4s} kept {r['kept']}/{r['candidates']} "
                          f"salf {r['salfcbm_test']:.3f} std {base:.3f} needed {r['needed_by_head']}", flush=True)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    result = {"config": {**size, "cutoff": BottleneckConfig().cutoff, "head": "HeadConfig.paper('default')"},
              "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    print()
    print("| statistic | guard | seed | concepts kept | cut but needed by the head | SALF-CBM test | standard sparse test "
          "| difference (pp) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        needed = len(r["needed_by_head"])
        print(f"| {r['statistic']} | {r['guard']} | {r['seed']} | {r['kept']}/{r['candidates']} | {needed} "
              f"| {100 * r['salfcbm_test']:.1f} | {100 * r['standard_sparse_test']:.1f} "
              f"| {100 * (r['salfcbm_test'] - r['standard_sparse_test']):+.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
