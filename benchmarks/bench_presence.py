"""Does "present" mean present? Both presence rules against the demo's ground-truth concept masks.

Trains (or reuses) the demo (``salfcbm.demo.run_demo``: procedural scenes, every concept has a
ground-truth mask), explains test images (predicted class, top-4 concepts by ``|S|``) and scores
three presence rules on the same explanations (`salfcbm.demo.checks.presence_check`):

* ``training_mean``: the standardised pooled activation is above 0 (the rule before calibration,
  and the rule of uncalibrated models);
* ``calibrated``: the peak of the standardised concept map is above the concept's threshold,
  chosen by ``fit`` on the validation split against the targets (label-free; stored in the model);
* ``oracle``: the same statistic with thresholds chosen on the validation split's *ground-truth
  masks* (F1): not available on real data; the best a per-concept threshold can do here.

Run::

    python benchmarks/bench_presence.py                 # the default demo (a few minutes), 200 test images
    python benchmarks/bench_presence.py --quick         # a small demo (~1 min)

Results go to ``benchmarks/results/presence.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write_text  # noqa: E402
from salfcbm.demo.run import DemoConfig, run_demo  # noqa: E402
from salfcbm.demo.checks import presence_check  # noqa: E402
from salfcbm.training.presence import f1_thresholds  # noqa: E402

QUICK = dict(n_train=800, n_val=200, n_test=200, backbone_epochs=5, bottleneck_steps=300, num_classes=4,
             report_images=2, backbone_width=16)


@torch.no_grad()
def oracle_thresholds(model, val) -> torch.Tensor:
    """Per-concept thresholds on the standardised map peak chosen with the validation masks (F1)."""
    col = [val.concepts.index(c) for c in model.concepts]
    peaks, truth = [], []
    for a in range(0, len(val), 128):
        part = list(range(a, min(a + 128, len(val))))
        out = model(model.preprocess(torch.stack([val[i][0] for i in part])))
        peaks.append((out.concept_maps.flatten(2).amax(-1).float() - model.concept_mean) / model.concept_std)
        truth.append(val.masks_batch(part).flatten(2).any(-1)[:, col])
    return f1_thresholds(torch.cat(peaks), torch.cat(truth))[0]


def table(rules: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    lines = ["| rule | shown as present | of them absent (mask empty) | recall (shown) | top-1 present but absent "
             "| precision (all pairs) | recall (all pairs) |", "|---|---|---|---|---|---|---|"]
    for name, r in rules.items():
        lines.append(f"| {name} | {r['shown_present']} | {pct(r['shown_present_absent'])} | {pct(r['shown_recall'])} "
                     f"| {r['top1_present_absent']} | {pct(r['pairs_precision'])} | {pct(r['pairs_recall'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small demo (800 training scenes, 4 classes)")
    ap.add_argument("--run-dir", default=None, help="demo run directory (reused when it holds a finished run)")
    ap.add_argument("--images", type=int, default=200, help="test images explained")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "presence.json"))
    args = ap.parse_args()
    cfg = DemoConfig(**QUICK) if args.quick else DemoConfig()
    run = Path(args.run_dir or ("runs/bench_presence_quick" if args.quick else "runs/bench_presence"))
    t0 = time.perf_counter()
    res = run_demo(run, cfg, progress=False)
    model, data = res.model.eval(), res.datasets
    n = min(args.images, len(data["test"]))
    check = presence_check(model, data["test"], range(n), top_k=4)
    oracle = presence_check(model, data["test"], range(n), top_k=4, thresholds=oracle_thresholds(model, data["val"]))
    rules = {**check["rules"], "oracle (validation masks)": oracle["rules"]["calibrated"]}
    result = {
        "demo_config": cfg.__dict__, "images": n, "top_k": 4, "rules": rules,
        "test_accuracy": res.metrics["salfcbm"].get("test_accuracy"), "presence_fit": res.metrics.get("presence"),
        "seconds": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
    }
    print(table(rules))
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
