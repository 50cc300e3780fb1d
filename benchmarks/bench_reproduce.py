"""Dry runs of every recipe at the real shapes, and the cost table of the docs.

Each recipe runs in its own process (so the peak resident memory is its own), with random
weights at the real shapes on a few generated images in the real layout
(:func:`salfcbm.reproduce.dry_run`), twice (the second run must resume to the same numbers).

    python benchmarks/bench_reproduce.py                     # every recipe, tiny scorer + full-scorer CUB
    python benchmarks/bench_reproduce.py --cost-only         # only the cost table
    python benchmarks/bench_reproduce.py --recipes table1-cub --scorer full

Writes ``benchmarks/results/reproduce_dry_runs.{json,md}`` and ``reproduce_cost.md`` (included in
``docs/reproduce.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cost_table() -> str:
    from salfcbm.reproduce.cost import estimate_cost
    from salfcbm.reproduce.recipes import RECIPES

    lines = ["| recipe | images | prompted CLIP forwards | PFLOP | similarity stores | feature cache | "
             "head-stage RAM | hours, 1 GPU | hours, 8 GPUs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, recipe in RECIPES.items():
        one, eight = estimate_cost(recipe), estimate_cost(recipe, gpus=8)
        lines.append(f"| {recipe.key} | {one.images:,} | {one.clip_forwards:,} | {one.flops / 1e15:,.0f} | "
                     f"{one.similarity_store_bytes / 2**30:,.1f} GiB | {one.feature_cache_bytes / 2**30:,.1f} GiB | "
                     f"{one.head_memory_bytes / 2**30:,.1f} GiB | {one.hours:,.2f} | {eight.hours:,.2f} |")
    src = estimate_cost(RECIPES["table1-cub"])
    lines += ["", f"Hours assume {src.throughput:,.0f} prompted CLIP ViT-B/16 forwards per second per GPU "
              f"({src.throughput_source}); measure yours with `salfcbm reproduce table1 --dataset cub "
              "--measure-throughput` and pass `--throughput`. FLOPs are torch's flop counter on the real "
              "architectures (2 per multiply-add); they include an upper bound for the sparse heads (2,000 full-batch "
              "proximal-gradient iterations)."]
    return "\n".join(lines) + "\n"


def one(name: str, scorer: str, out: str, sweep_points: str = "0") -> None:
    import torch

    from salfcbm.reproduce.recipes import get_recipe
    from salfcbm.reproduce.run import dry_run

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix=f"dry-{name}-") as d:
        res = dry_run(get_recipe(name), d, scorer=scorer, sweep_points=int(sweep_points) or None)
    Path(out).write_text(json.dumps({"recipe": name, **res["dry_run"], "table": res["table"]}, default=str))


def main() -> None:
    from salfcbm.reproduce.recipes import RECIPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", nargs="*", default=None)
    ap.add_argument("--scorer", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--also-full", nargs="*", default=["table1-cub"], help="recipes also dry-run with the full scorer")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--sweep-points", type=int, default=2,
                    help="Table 3 points per sweep recipe (spread from the smallest to the largest grid; 0 = all 9)")
    ap.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        return one(*args._one)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reproduce_cost.md").write_text(cost_table())
    if args.cost_only:
        return
    jobs = [(n, args.scorer) for n in (args.recipes or list(RECIPES))]
    jobs += [(n, "full") for n in args.also_full if (n, "full") not in jobs]
    path = RESULTS / "reproduce_dry_runs.json"
    rows = {f"{r['recipe']}/{r['scorer']}": r for r in (json.loads(path.read_text()) if path.exists() else [])}
    for name, scorer in jobs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, __file__, "--_one", name, scorer, tmp, str(args.sweep_points)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            rows[f"{name}/{scorer}"] = {"recipe": name, "scorer": scorer, "error": p.stderr[-2000:]}
        else:
            rows[f"{name}/{scorer}"] = json.loads(Path(tmp).read_text())
        os.unlink(tmp)
        print(name, scorer, {k: v for k, v in rows[f"{name}/{scorer}"].items() if k != "table"}, flush=True)
        path.write_text(json.dumps(list(rows.values()), indent=2, default=str))
    lines = ["| recipe | scorer | runs | concepts | dry run (s) | resumed (s) | peak RSS (GiB) |", "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['scorer']} | failed: {r['error'].splitlines()[-1][:80]} | | | | |")
            continue
        lines.append(f"| {r['recipe']} | {r['scorer']} | {r['runs']} | {r['concepts']:,} | {r['seconds']:.0f} | "
                     f"{r['resume_seconds']:.0f} | {r['peak_rss_gib']:.2f} |")
    (RESULTS / "reproduce_dry_runs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
