"""Prediction and explanation cost of a SALF-CBM against its bare backbone (issue 12).

For each backbone (random init, nothing downloaded) and each number of concepts M:

* ``wrapped / bare``: ``model(x)`` (pool-then-project: backbone up to the tapped layer, one
  ``(B, C) x (C, M)`` product, the head) over the bare timm model's forward;
* ``explain / bare``: ``model.explain(x, top_k=5)`` (forward, contributions, the top-k maps only,
  upsampled to the input) over the bare forward;
* ``maps path / bare`` (for reference): the forward as it was before pool-then-project, building
  all ``(B, M, Hg, Wg)`` maps and pooling them.

Method: every round runs each variant once, in the same order, on the same batch (interleaved), so
a slow period of a shared machine hits all of them; a ratio is taken within each round and the
median over rounds is reported (with the best-of-rounds ratio). On CPU the clock is the process's
CPU time with one intra-op thread, which other processes disturb far less than wall time; on a
GPU, wall time after synchronisation. FLOPs are counted exactly by ``torch.utils.flop_counter``
(matmuls and convolutions; noise cannot move them).

Run::

    python benchmarks/bench_inference.py              # ResNet-50 and ViT-B/16, batch 8 at 224 px
    python benchmarks/bench_inference.py --quick      # resnet18 and vit_tiny, batch 2 at 112 px

Results go to ``benchmarks/results/inference.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import salfcbm
from salfcbm._utils.io import atomic_write_text

TARGETS = {"wrapped_over_bare": 1.02, "wrapped_flops_over_bare": 1.01, "explain_over_bare": 1.05}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device):
    """The clock ratios use: process CPU time on CPU, wall time on a GPU."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def interleaved(fns: dict, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every function, ``rounds`` times, one call of each per round."""
    now = clock(device)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t = now()
            fn()
            sync(device)
            times[k].append(now() - t)
    return times


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Median (and best) of the per-round ratios ``num[r] / den[r]``."""
    r = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "best_of": min(num) / min(den)}


def flops(fn) -> int:
    """Exact FLOPs of one call (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _maps_path(model, x):
    """The forward before pool-then-project: every concept map, then pooling."""
    maps = model.concept_maps_from_features(model.forward_features(x))
    return model.head_from_maps(maps)[2]


def bench_backbone(name: str, concepts: list[int], a, device: torch.device) -> list[dict]:
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, img_size=a.size) if "vit" in name else \
        timm.create_model(name, pretrained=False)
    backbone = backbone.to(device).eval()
    x = torch.randn(a.batch_size, 3, a.size, a.size, device=device)
    models = {}
    for M in concepts:
        m = salfcbm.wrap(backbone, concepts=[f"concept {i}" for i in range(M)], num_classes=a.classes,
                         backbone_weights=None, input_size=(a.size, a.size)).to(device)
        with torch.no_grad():
            m.head.weight.normal_()
        models[M] = m

    fns = {"bare": lambda: backbone(x)}
    for M, m in models.items():
        fns[f"wrapped {M}"] = lambda m=m: m(x).logits
        fns[f"explain {M}"] = lambda m=m: m.explain(x, top_k=5)
    biggest = models[max(concepts)]
    fns[f"maps path {max(concepts)}"] = lambda: _maps_path(biggest, x)
    with torch.no_grad():
        counted = {k: flops(fn) for k, fn in fns.items()}
        times = interleaved(fns, a.rounds, device)
    rows = []
    for M, m in models.items():
        row = {"model": name, "concepts": M, "classes": a.classes, "layer": m.layer, "grid": list(m.grid),
               "bare_seconds": statistics.median(times["bare"])}
        for kind in ("wrapped", "explain"):
            key = f"{kind} {M}"
            row[f"{kind}_seconds"] = statistics.median(times[key])
            row[f"{kind}_over_bare"] = paired_ratio(times[key], times["bare"])
            row[f"{kind}_flops_over_bare"] = counted[key] / counted["bare"]
        ref = f"maps path {M}"
        if ref in times:
            row["maps_path_over_bare"] = paired_ratio(times[ref], times["bare"])
            row["maps_path_flops_over_bare"] = counted[ref] / counted["bare"]
        row["flops"] = {"bare": counted["bare"], "wrapped": counted[f"wrapped {M}"],
                        "explain": counted[f"explain {M}"]}
        row["raw_seconds"] = {k: v for k, v in times.items() if k == "bare" or k.endswith(f" {M}")}
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| backbone | M | wrapped / bare | FLOPs | explain(top_k=5) / bare | FLOPs | maps path / bare | FLOPs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mp = r.get("maps_path_over_bare")
        lines.append(
            f"| {r['model']} | {r['concepts']} | {r['wrapped_over_bare']['median']:.3f}x | "
            f"{100 * (r['wrapped_flops_over_bare'] - 1):+.2f}% | {r['explain_over_bare']['median']:.3f}x | "
            f"{100 * (r['explain_flops_over_bare'] - 1):+.2f}% | "
            + (f"{mp['median']:.3f}x | {100 * (r['maps_path_flops_over_bare'] - 1):+.2f}% |" if mp else "| |")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="resnet18 and vit_tiny, batch 2 at 112 px, M = 143, 4741")
    p.add_argument("--models", nargs="+", default=None, help="timm names (default resnet50 vit_base_patch16_224)")
    p.add_argument("--concepts", nargs="+", type=int, default=None, help="values of M (default 143 370 4741)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference.json"))
    a = p.parse_args(argv)
    q = a.quick
    a.models = a.models or (["resnet18", "vit_tiny_patch16_224"] if q else ["resnet50", "vit_base_patch16_224"])
    a.concepts = a.concepts or ([143, 4741] if q else [143, 370, 4741])
    a.batch_size = a.batch_size or (2 if q else 8)
    a.size = a.size or (112 if q else 224)
    a.rounds = a.rounds or 5
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = [r for name in a.models for r in bench_backbone(name, a.concepts, a, device)]
    big = [r for r in rows if r["concepts"] == max(a.concepts)]
    checks = {
        r["model"]: {
            "wrapped_over_bare": r["wrapped_over_bare"]["median"] <= TARGETS["wrapped_over_bare"],
            "wrapped_flops_over_bare": r["wrapped_flops_over_bare"] <= TARGETS["wrapped_flops_over_bare"],
            "explain_over_bare": r["explain_over_bare"]["median"] <= TARGETS["explain_over_bare"],
        }
        for r in big
    }
    result = {
        "config": {"batch_size": a.batch_size, "size": a.size, "classes": a.classes, "rounds": a.rounds,
                   "threads": a.threads, "quick": q, "clock": "cpu" if device.type == "cpu" else "wall"},
        "environment": {"device": str(device), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                        "platform": platform.platform(),
                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "targets": TARGETS,
        "meets_targets": checks,
        "rows": rows,
    }
    print(f"\nbatch {a.batch_size} at {a.size} px, {a.classes} classes, {a.threads} thread(s), device {device}, "
          f"median of {a.rounds} interleaved rounds ({result['config']['clock']} time)")
    print(table(rows))
    print(f"targets at M = {max(a.concepts)}: {json.dumps(checks)}")
    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
