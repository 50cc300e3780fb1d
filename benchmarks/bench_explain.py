"""Cost of explaining a batch (paper 3.5) against the model's own forward pass and Captum baselines.

All numbers come from one run, on one device, one backbone and one batch:

* ``backbone``: the bare timm model's forward (``no_grad``), the usual "prediction" cost.
* ``salfcbm forward``: the wrapped SALF-CBM's forward (backbone up to the tapped layer,
  concept bottleneck, pooling, head).
* ``salfcbm explain``: ``model.explain(x, top_k=5)``: the forward above plus contributions,
  top-k and bilinear upsampling of the top-k maps only. Target: at most 1.1x ``salfcbm forward``.
* ``captum LayerGradCam``: ``LayerGradCam(backbone, <tapped layer>).attribute(x, target)`` followed by
  ``LayerAttribution.interpolate(..., (H, W), "bilinear")`` (one forward + one backward).
* ``captum IntegratedGradients``: ``n_steps=50`` with ``internal_batch_size`` (default 50).

* ``explain post-processing``: ``model.explain(x, top_k=5, output=out)`` with the forward output
  given, i.e. only what explaining adds on top of the forward pass.

Ratios are taken within each round of interleaved repeats (every method once per round, on the
same batch) and the median over rounds is reported, as in ``bench_inference.py``: a ratio of two
separate best-of times could put ``explain`` below the forward pass it contains, and cannot resolve
5%. On CPU the clock is the process's CPU time (all threads), which other processes on a shared
machine disturb far less than wall time (wall times are in the JSON too); on GPU, wall time. FLOPs
(``torch.utils.flop_counter``) are exact. IG runs fewer times: it is slow. Weights are random
(``pretrained=False``): speed does not depend on them and nothing is downloaded.

Run::

    python benchmarks/bench_explain.py --quick          # resnet18, batch 4 at 112 px, CPU, < 1 min
    python benchmarks/bench_explain.py                  # resnet50, batch 8 at 224 px, 4741 concepts

Results go to ``benchmarks/results/explain.json``.
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

import salfcbm  # noqa: E402
from salfcbm._utils.io import atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import flops, paired_ratio  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads)."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and batch (resnet18, 4 x 112 px)")
    p.add_argument("--model", default=None, help="timm model name (default resnet50; resnet18 with --quick)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--concepts", type=int, default=None, help="number of concepts M (default 4741, 500 with --quick)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default 1000, 100 with --quick)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-internal-batch-size", type=int, default=50)
    p.add_argument("--ig-repeats", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "explain.json"))
    a = p.parse_args(argv)

    quick = a.quick
    name = a.model or ("resnet18" if quick else "resnet50")
    B = a.batch_size or (4 if quick else 8)
    S = a.size or (112 if quick else 224)
    M = a.concepts or (500 if quick else 4741)
    L = a.classes or (100 if quick else 1000)
    R = a.repeats or (10 if quick else 5)
    device = torch.device(a.device)

    import timm
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False).to(device).eval()
    model = salfcbm.wrap(
        backbone, concepts=[f"concept {i}" for i in range(M)], num_classes=L, backbone_weights=None,
        input_size=(S, S),
    ).to(device)
    with torch.no_grad():
        model.head.weight.normal_()
    x = torch.randn(B, 3, S, S, device=device)
    with torch.no_grad():
        target = model(x).logits.argmax(-1)
    layer = dict(backbone.named_modules())[model.layer]
    gradcam = LayerGradCam(backbone, layer)
    ig = IntegratedGradients(backbone)

    def bare():
        with torch.no_grad():
            backbone(x)

    def forward():
        with torch.no_grad():
            model(x)

    def explain():
        model.explain(x, top_k=5)

    with torch.no_grad():
        out = model(x)

    def post():
        model.explain(x, top_k=5, output=out)

    def cam():
        attr = gradcam.attribute(x, target=target)
        LayerAttribution.interpolate(attr, (S, S), "bilinear")

    def igrad():
        ig.attribute(x, target=target, n_steps=a.ig_steps, internal_batch_size=a.ig_internal_batch_size)

    fns = {
        "backbone": bare,
        "salfcbm forward": forward,
        "salfcbm explain": explain,
        "explain post-processing": post,
        "captum LayerGradCam": cam,
    }
    for fn in fns.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(R):
        for k, fn in fns.items():
            w, c = _time(fn, device)
            wall[k].append(w)
            cpu[k].append(c)
    ig_t = [_time(igrad, device) for _ in range(a.ig_repeats)]
    wall["captum IntegratedGradients"] = [w for w, _ in ig_t]
    cpu["captum IntegratedGradients"] = [c for _, c in ig_t]
    # On CPU, ratios use process CPU time (all threads), which other processes on a shared machine
    # disturb far less than wall time; on GPU, wall time. Best of R; medians are saved too.
    clock = "cpu" if device.type == "cpu" else "wall"
    times = cpu if clock == "cpu" else wall
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.no_grad():
        counted = {k: flops(fn) for k, fn in fns.items()}

    def ratio(k, ref):  # median of per-round ratios (IG ran apart from the rounds: ratio of medians)
        if len(times[k]) == len(times[ref]):
            return paired_ratio(times[k], times[ref])["median"]
        return med[k] / med[ref]

    rows = []
    for k, t in med.items():
        rows.append({
            "method": k,
            "seconds": t,
            "best_wall_seconds": min(wall[k]),
            "ms_per_image": 1000 * t / B,
            "x_salfcbm_forward": ratio(k, "salfcbm forward"),
            "x_backbone": ratio(k, "backbone"),
            "x_salfcbm_explain": ratio(k, "salfcbm explain"),
            "flops_x_backbone": counted[k] / counted["backbone"] if k in counted else None,
        })
    result = {
        "config": {
            "model": name, "batch_size": B, "size": S, "concepts": M, "classes": L, "layer": model.layer,
            "grid": list(model.grid), "repeats": R, "ig_steps": a.ig_steps,
            "ig_internal_batch_size": a.ig_internal_batch_size, "ig_repeats": a.ig_repeats, "quick": quick,
        },
        "environment": {
            "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "rows": rows,
        "explain_over_forward": ratio("salfcbm explain", "salfcbm forward"),
        "explain_over_backbone": ratio("salfcbm explain", "backbone"),
        "explain_overhead_over_forward": ratio("explain post-processing", "salfcbm forward"),
        "target_explain_over_forward": 1.1,
        "meets_target": ratio("salfcbm explain", "salfcbm forward") <= 1.1,
        "clock": clock,
        "raw_wall_seconds": wall,
        "raw_cpu_seconds": cpu,
    }

    print(f"\n{name}, batch {B} at {S}px, {M} concepts, {L} classes, device {device}, "
          f"{torch.get_num_threads()} threads, median of {R} interleaved rounds, {clock} time")
    print(f"{'method':<28}{'s/batch':>10}{'ms/img':>10}{'x fwd':>9}{'x backbone':>12}{'x explain':>11}")
    for r in rows:
        print(f"{r['method']:<28}{r['seconds']:>10.4f}{r['ms_per_image']:>10.1f}{r['x_salfcbm_forward']:>9.3f}"
              f"{r['x_backbone']:>12.3f}{r['x_salfcbm_explain']:>11.1f}")
    print(f"explain / forward = {result['explain_over_forward']:.3f} (target <= 1.1): "
          f"{'OK' if result['meets_target'] else 'MISSED'}; explain / backbone = {result['explain_over_backbone']:.3f}; "
          f"post-processing alone = {result['explain_overhead_over_forward']:.4f} x forward")

    out = Path(a.out)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"saved {out}")
    return result


if __name__ == "__main__":
    main()
