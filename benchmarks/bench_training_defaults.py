"""Small data, default settings: how long ``salfcbm train`` takes before and after the scaled defaults.

Two measurements:

* **the CLI on the docs' stand-in data** (32 training images of 2 classes, 16 concepts, a random
  ResNet-18 from a local file, a tiny random CLIP; ``docs/snippets/stand_in.py``), ``salfcbm train``
  with no step or path options, run as a subprocess by the code of ``--before-rev`` (a git revision of
  this repository, extracted with ``git archive``) and by this checkout, also with ``--quick``;
* **fit on procedural scenes** (``salfcbm.demo``: a small CNN backbone, the ground-truth scorer,
  600 training scenes), in-process: the former fixed defaults (5000 steps, a check every 50 and
  patience 10, 40 path points; given explicitly) against the scaled defaults and ``quick``, with
  test accuracy, so that the speed-up is not bought with accuracy.

Times are wall and CPU seconds (CPU: this process or the child's user + system time), repeated
``--repeats`` times in alternating order; the machine's load is recorded.

Run::

    python benchmarks/bench_training_defaults.py --before-rev c784479
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write_text  # noqa: E402

TRAIN_ARGS = ["--backbone", "timm:resnet18", "--backbone-weights", "resnet18-weights.safetensors",
              "--train", "my_images/train", "--val", "my_images/val", "--test", "my_images/test",
              "--concepts", "my_concepts.txt", "--scorer", "local-dir:tiny-clip", "--image-size", "64",
              "--grid", "4", "--radius", "4", "--cutoff", "0", "--no-filter", "--device", "cpu", "--quiet"]


def _stand_in(work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "docs" / "snippets" / "stand_in.py")], cwd=work, check=True, env=env)
    subprocess.run([sys.executable, "-c", "import timm; from safetensors.torch import save_file; "
                    "save_file(timm.create_model('resnet18').state_dict(), 'resnet18-weights.safetensors')"],
                   cwd=work, check=True, env=env)


def _cli_run(code: Path, work: Path, run: str, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", "import sys; from salfcbm.cli import main; sys.exit(main(sys.argv[1:]))",
                        "train", *TRAIN_ARGS, "--run-dir", run, *extra], cwd=work, env=env, capture_output=True,
                       text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    m = json.loads((work / run / "metrics.json").read_text())
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "bottleneck_steps": m["bottleneck"]["steps"], "best_step": m["bottleneck"]["best_step"],
            "val_accuracy": m["salfcbm"]["val_accuracy"], "test_accuracy": m["salfcbm"].get("test_accuracy"),
            "torch_worker_warning": "suggested max number of worker" in p.stderr}


def cli_benchmark(before_rev: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", before_rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        work = tmp / "work"
        work.mkdir()
        _stand_in(work)
        variants = {"before (former defaults)": (old, []), "after (scaled defaults)": (ROOT, []),
                    "after --quick": (ROOT, ["--quick"])}
        rows: dict[str, list[dict]] = {k: [] for k in variants}
        for r in range(repeats):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                code, extra = variants[name]
                rows[name].append(_cli_run(code, work, f"run-{len(rows[name])}-{name.split()[0]}-{len(extra)}", extra))
    return {"before_rev": before_rev, "runs": rows}


def fit_benchmark(repeats: int) -> dict:
    """In-process ``fit`` on procedural scenes: former fixed defaults vs scaled defaults vs quick."""
    from salfcbm.core.model import wrap
    from salfcbm.demo.run import DemoConfig, _backbone, _datasets
    from salfcbm.demo.scenes import GroundTruthScorer
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    cfg = DemoConfig(n_train=600, n_val=200, n_test=200, backbone_epochs=5, num_classes=4, backbone_width=16)
    settings = {
        "former defaults": dict(bottleneck=BottleneckConfig(max_steps=5000, val_every=50, patience=10, cutoff=0.3),
                                head=HeadConfig(n_lambdas=40)),
        "scaled defaults": dict(bottleneck=BottleneckConfig(cutoff=0.3), head=HeadConfig()),
        "quick": dict(bottleneck=BottleneckConfig.quick(cutoff=0.3), head=HeadConfig.quick(), baseline=False),
    }
    rows: dict[str, list[dict]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        data = _datasets(cfg)
        backbone = _backbone(cfg, data, out, False)
        sims = {s: compute_similarity_store(out / "sims" / s, data[s], GroundTruthScorer(data[s]),
                                            PromptGrid(grid=(7, 7), radius=32), progress=False) for s in ("train", "val")}
        for r in range(repeats):
            for name in (list(settings) if r % 2 == 0 else list(reversed(settings))):
                model = wrap(backbone, concepts=data["train"].concepts, num_classes=cfg.num_classes, grid=7,
                             input_size=(64, 64), backbone_weights=None, input_mean=(0.0, 0.0, 0.0),
                             input_std=(1.0, 1.0, 1.0), input_crop_pct=1.0)
                c, w = time.process_time(), time.perf_counter()
                res = fit(model, data["train"], data["val"], train_similarities=sims["train"],
                          val_similarities=sims["val"], test_data=data["test"], run_dir=out / f"run-{name}-{r}",
                          progress=False, filter_concepts=False, **settings[name])
                rows[name].append({"wall_s": time.perf_counter() - w, "cpu_s": time.process_time() - c,
                                   "bottleneck_steps": res.bottleneck.steps, "best_step": res.bottleneck.best_step,
                                   "val_accuracy": res.metrics["salfcbm"]["val_accuracy"],
                                   "test_accuracy": res.metrics["salfcbm"]["test_accuracy"],
                                   "path_points": res.metrics["settings"]["head"]["n_lambdas"]})
    return {"config": cfg.__dict__, "runs": rows}


def _summary(rows: dict[str, list[dict]], ref: str) -> list[dict]:
    med = {k: sorted(r["wall_s"] for r in v)[len(v) // 2] for k, v in rows.items()}
    cpu = {k: sorted(r["cpu_s"] for r in v)[len(v) // 2] for k, v in rows.items()}
    return [{"variant": k, "median_wall_s": round(med[k], 2), "median_cpu_s": round(cpu[k], 2),
             "cpu_ratio_vs_" + ref.split()[0]: round(cpu[ref] / cpu[k], 2),
             "wall_ratio_vs_" + ref.split()[0]: round(med[ref] / med[k], 2),
             "steps": [r["bottleneck_steps"] for r in v], "test_accuracy": [r["test_accuracy"] for r in v]}
            for k, v in rows.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before-rev", default="c784479", help="git revision with the former defaults")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-fit", action="store_true", help="only the CLI measurement")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_defaults.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()}}
    cli = cli_benchmark(args.before_rev, args.repeats)
    result["cli"] = {**cli, "summary": _summary(cli["runs"], "before (former defaults)")}
    if not args.skip_fit:
        f = fit_benchmark(args.repeats)
        result["fit"] = {**f, "summary": _summary(f["runs"], "former defaults")}
    result["machine"]["load_average_after"] = os.getloadavg()
    for part in ("cli", "fit"):
        for row in result.get(part, {}).get("summary", []):
            print(part, json.dumps(row))
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
