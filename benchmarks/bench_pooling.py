"""What softmax and max pooling cost, before and after the chunked, project-then-resize path (issue 21.5).

For ResNet-50 (random init, nothing downloaded) at 224 px with M = 4,741 concepts and 1,000 classes,
at prompting grids 7 and 14 (the tapped ``layer4`` map is 7x7):

* **FLOPs** (``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, exact) of
  ``model(x)`` and ``model.explain(x, top_k=5)`` over the bare timm forward, for the new path and
  for the reference path (every ``(B, M, Hg, Wg)`` map built, then pooled: salfcbm <= 0.1). The
  counter does not see bilinear resizing; its multiply-adds are given apart (``resize_madds``, 4
  taps per output cell), so that nothing is hidden.
* **Peak memory** of the adapter step (tapped features -> pooled activations) at batch 8 and 64, measured
  in a fresh process as the rise of its peak resident set over what it held before the call (the
  features and the weights; Linux ``/proc/self/clear_refs`` resets the peak, ``VmHWM`` reads it), on CPU; ``torch.cuda.max_memory_allocated`` with
  ``--device cuda``.
* **Time** of the adapter step, reference and new interleaved in rounds (process CPU time, one
  thread; wall time after synchronisation on a GPU), median ratio over rounds.

Exactness is checked on the way (``allclose``, atol 1e-5 relative to the activations' scale) and by
``tests/core/test_pooling_exact.py``.

Run::

    python benchmarks/bench_pooling.py            # batch 8 for memory and time
    python benchmarks/bench_pooling.py --quick    # batch 2, fewer rounds

Results: ``benchmarks/results/pooling.json`` and ``benchmarks/results/pooling.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write_text  # noqa: E402
from salfcbm.core.activations import pooled_activations  # noqa: E402
from salfcbm.core.pooling import get_pooling  # noqa: E402

M, CLASSES, C, TAPPED = 4741, 1000, 2048, (7, 7)


def reference_activations(fmap, weight, grid, pooling, config):
    """Every map, then the pooling (the path before 21.5)."""
    f = fmap if tuple(fmap.shape[-2:]) == grid else F.interpolate(fmap, size=grid, mode="bilinear",
                                                                 align_corners=False)
    return get_pooling(pooling)(F.conv2d(f, weight), config)


def flops(fn, module: torch.nn.Module) -> int:
    """Exact FLOPs of one call. The module's parameters are frozen meanwhile: the counter's module
    tracker cannot hook an output that holds a parameter (the lazy output keeps the bottleneck's weight)."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def flop_rows(grids, poolings) -> list[dict]:
    import timm

    import salfcbm

    torch.manual_seed(0)
    backbone = timm.create_model("resnet50", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    bare = flops(lambda: backbone(x), backbone)
    rows = []
    for grid in grids:
        for pooling in poolings:
            m = salfcbm.wrap(backbone, concepts=[f"c{i}" for i in range(M)], num_classes=CLASSES, grid=grid,
                             pooling=pooling, backbone_weights=None).eval()

            def old():
                return m.head_from_maps(m.concept_maps_from_features(m.forward_features(x)))[2]

            new, expl, ref = flops(lambda: m(x).logits, m), flops(lambda: m.explain(x, top_k=5), m), flops(old, m)
            first = TAPPED[0] * TAPPED[1] < grid * grid
            resize = 4 * grid * grid * (M if first else C) if (grid, grid) != TAPPED else 0
            with torch.no_grad():
                a, b = m(x).concept_activations, m.head_from_maps(m.concept_maps_from_features(
                    m.forward_features(x)))[0]
            rows.append({"grid": grid, "pooling": pooling, "bare_flops": bare, "reference_flops": ref,
                         "new_flops": new, "explain_flops": expl,
                         "reference_over_bare": ref / bare, "new_over_bare": new / bare,
                         "explain_over_bare": expl / bare, "resize_madds": resize,
                         "max_abs_diff": float((a - b).abs().max()), "scale": float(b.abs().max())})
            print(f"grid {grid:2d} {pooling:7s} FLOPs over bare: reference {rows[-1]['reference_over_bare']:.3f}, "
                  f"new {rows[-1]['new_over_bare']:.3f}, explain {rows[-1]['explain_over_bare']:.3f}", flush=True)
    return rows


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status (this measurement needs Linux)")


def _child(variant: str, grid: int, pooling: str, batch: int, device: str) -> None:
    """One measurement in a fresh process: the rise of peak memory during one adapter step."""
    torch.manual_seed(0)
    dev = torch.device(device)
    fmap = torch.randn(batch, C, *TAPPED, device=dev)
    weight = torch.randn(M, C, 1, 1, device=dev) / C**0.5
    config = SimpleNamespace(softmax_temperature=1.0)
    fn = (lambda: reference_activations(fmap, weight, (grid, grid), pooling, config)) if variant == "reference" \
        else (lambda: pooled_activations(fmap, weight, None, (grid, grid), get_pooling(pooling), config))
    with torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
        else:  # Linux: reset the peak resident set (clear_refs 5), then read it back (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kib("VmRSS")
            fn()
            peak = max(0, _status_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(variant, grid, pooling, batch, device) -> int:
    cmd = [sys.executable, __file__, "--child", variant, str(grid), pooling, str(batch), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                                                                               # big blocks straight from and back to the OS,
                                                                               # so the resident set follows the live tensors
                                                                               "MALLOC_MMAP_THRESHOLD_": "65536"})
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def timing(grid, pooling, batch, rounds, device) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    fmap = torch.randn(batch, C, *TAPPED, device=dev)
    weight = torch.randn(M, C, 1, 1, device=dev) / C**0.5
    config = SimpleNamespace(softmax_temperature=1.0)
    fns = {"reference": lambda: reference_activations(fmap, weight, (grid, grid), pooling, config),
           "new": lambda: pooled_activations(fmap, weight, None, (grid, grid), get_pooling(pooling), config)}
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    times = {k: [] for k in fns}
    with torch.no_grad():
        a, b = fns["new"](), fns["reference"]()
        for _ in range(rounds):
            for k, fn in fns.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = clock()
                fn()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[k].append(clock() - t0)
    ratios = [n / r for n, r in zip(times["new"], times["reference"])]
    return {"reference_s": statistics.median(times["reference"]), "new_s": statistics.median(times["new"]),
            "new_over_reference": statistics.median(ratios), "best_ratio": min(ratios),
            "allclose": bool(torch.allclose(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-5))}


def table(result) -> str:
    bs = result["batches_for_memory"]
    lines = ["| grid | pooling | FLOPs reference / bare | FLOPs new / bare | explain / bare | resize madds (not counted) | "
             + " | ".join(f"peak MiB B={b}: reference -> new" for b in bs) + f" | time new / reference (B={result['batch_for_time']}) |",
             "|---|---|---|---|---|---|" + "---|" * len(bs) + "---|"]
    for f in result["flops"]:
        m = next(r for r in result["adapter"] if r["grid"] == f["grid"] and r["pooling"] == f["pooling"])
        lines.append(f"| {f['grid']} | {f['pooling']} | {f['reference_over_bare']:.3f} | {f['new_over_bare']:.3f} | "
                     f"{f['explain_over_bare']:.3f} | {f['resize_madds'] / 1e6:.1f} M | "
                     + " | ".join(f"{m[f'peak_reference_b{b}'] / 2**20:.0f} -> {m[f'peak_new_b{b}'] / 2**20:.0f}" for b in bs)
                     + f" | {m['new_over_reference']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "GRID", "POOLING", "BATCH"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pooling"))
    args = ap.parse_args(argv)
    if args.child:
        v, g, p, b = args.child
        return _child(v, int(g), p, int(b), args.device)
    torch.set_num_threads(1)
    batch, rounds = (2, 3) if args.quick else (8, 5)
    memory_batches = (2,) if args.quick else (8, 64)
    grids, poolings = (7, 14), ("softmax", "max")
    result = {"backbone": "timm:resnet50 (random init)", "input": "224 px", "concepts": M, "classes": CLASSES,
              "batch_for_time": batch, "batches_for_memory": list(memory_batches), "rounds": rounds, "device": args.device,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "flops": flop_rows(grids, poolings), "adapter": []}
    for grid in grids:
        for pooling in poolings:
            row = {"grid": grid, "pooling": pooling, **timing(grid, pooling, batch, rounds, args.device)}
            for b in memory_batches:
                row[f"peak_reference_b{b}"] = peak_memory("reference", grid, pooling, b, args.device)
                row[f"peak_new_b{b}"] = peak_memory("new", grid, pooling, b, args.device)
            result["adapter"].append(row)
            print(f"grid {grid:2d} {pooling:7s} peak MiB " + ", ".join(
                f"B={b}: {row[f'peak_reference_b{b}'] / 2**20:.0f} -> {row[f'peak_new_b{b}'] / 2**20:.0f}"
                for b in memory_batches) + f"; time x{row['new_over_reference']:.2f}", flush=True)
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), table(result) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
