"""``fit`` at growing N: backbone images, wall time and peak memory per stage, growth exponents.

The road to the paper's ImageNet table (1.28 M training images, 4,741 concepts, 1,000 classes,
ResNet-50 at 224 px). Each N runs ``salfcbm.fit`` in a fresh process on generated images (a seeded
generator per index: nothing is downloaded or stored) with the backbone features *above the
feature-cache limit* (``max_feature_cache_gb=0``: computed on the fly, the ImageNet regime), a
pixel-reading stand-in scorer (a fixed random projection of each prompted cell; CLIP is not
reachable offline) and the full pipeline otherwise. Per stage it records

* the images each split's dataset delivered (= backbone or scorer images processed),
* the wall time,
* the peak resident memory (sampled every 20 ms) and, on a GPU, the peak allocated GPU memory,

then fits ``cost = a * N ** b`` per stage over the three N (least squares in log-log), prints the
exponents, the fit's error at each measured point and the extrapolation to ImageNet's N, and
saves everything as JSON. The invariant it checks: the validation images read by the backbone
(``metrics["backbone_images"]["val"]``) equal the validation set size, whatever N (validation
features are computed once, never per check).

    python benchmarks/bench_scale.py                # ImageNet shapes, N = 2k, 8k, 32k (a GPU box)
    python benchmarks/bench_scale.py --cpu          # scaled shapes for a CPU: resnet18 at 64 px, N = 512, 1k, 2k
    python benchmarks/bench_scale.py --quick        # smallest: N = 128, 256, 512 (a smoke run)
    python benchmarks/bench_scale.py --summarize benchmarks/results/scale_cpu.json   # the tables again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
IMAGENET_N = 1_281_167
STAGES = ("similarities", "concept_filter", "features", "bottleneck", "cutoff", "head", "presence", "baseline")

PROFILES = {  # backbone, image size, concepts, classes, val size, N values
    "imagenet": dict(backbone="resnet50", size=224, concepts=4741, classes=1000, val=2000, ns=[2000, 8000, 32000],
                     grid=7, batch=128),
    "cpu": dict(backbone="resnet18", size=64, concepts=4741, classes=100, val=256, ns=[512, 1024, 2048],
                grid=2, batch=64),
    "quick": dict(backbone="resnet18", size=32, concepts=512, classes=10, val=64, ns=[128, 256, 512],
                  grid=1, batch=64),
}


class GeneratedImages:
    """``n`` seeded random uint8 images with labels ``i % classes``; counts every read."""

    def __init__(self, n: int, size: int, classes: int, seed: int, log: list):
        self.n, self.size, self.num_classes, self.seed, self.log = n, size, classes, seed, log
        self.targets = [i % classes for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        self.log.append(time.perf_counter())
        g = torch.Generator().manual_seed(self.seed * 10_000_019 + int(i))
        return torch.randint(0, 256, (3, self.size, self.size), dtype=torch.uint8, generator=g), self.targets[i]


class ProjectionScorer:
    """A pixel-reading stand-in for CLIP: each prompted cell's mean colour through a fixed projection."""

    def __init__(self, d: int = 64):
        self.d = d

    def fingerprint(self) -> dict:
        return {"scorer": "bench-scale-projection", "d": self.d}

    def embed(self, images, indices, prompts):
        import torch
        import torch.nn.functional as F

        gh, gw = prompts.grid
        cells = F.adaptive_avg_pool2d(images.float(), (gh, gw)).permute(0, 2, 3, 1)  # (B, gh, gw, 3)
        proj = torch.randn(3, self.d, generator=torch.Generator().manual_seed(1))
        return torch.tanh(cells @ proj + 0.1 * torch.randn(*cells.shape[:3], self.d,
                                                           generator=torch.Generator().manual_seed(int(indices[0]))))

    def similarity(self, embeddings, concepts):
        import torch

        text = torch.randn(self.d, len(concepts), generator=torch.Generator().manual_seed(len(concepts)))
        return embeddings.float() @ (text / text.norm(dim=0, keepdim=True))

    def text_embeddings(self, texts):
        raise NotImplementedError


class Sampler(threading.Thread):
    """Samples resident memory (and GPU memory) every ``period`` seconds: ``(t, rss_bytes, gpu_bytes)``."""

    def __init__(self, period: float = 0.02):
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()

    def run(self) -> None:
        import torch

        page = os.sysconf("SC_PAGE_SIZE")
        cuda = torch.cuda.is_available()
        while not self.stop.is_set():
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            gpu = torch.cuda.memory_allocated() if cuda else 0
            self.samples.append((time.perf_counter(), rss, gpu))
            time.sleep(self.period)


def _record_stage_intervals() -> dict:
    """Stage -> (start, end) on ``time.perf_counter``'s clock, recorded by wrapping fit's stage timer."""
    import contextlib
    import importlib

    fit_module = importlib.import_module("salfcbm.training.fit")  # the module (salfcbm.training.fit is the function)

    intervals, timed = {}, fit_module.timed

    @contextlib.contextmanager
    def recording(timings, name):
        t = time.perf_counter()
        with timed(timings, name):
            yield
        intervals[name] = (t, time.perf_counter())

    fit_module.timed = recording
    return intervals


def _in(ts, a, b) -> int:
    return sum(1 for t in ts if a <= t < b)


def child(n: int, profile: str, out: Path) -> None:
    """One fit at training size ``n`` in this process; writes the per-stage record to ``out``."""
    import torch

    import salfcbm
    from salfcbm.supervision.prompts import PromptGrid

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    import warnings

    from salfcbm.errors import DegenerateResultWarning

    # the images are noise and the labels arbitrary: the head is expected to be degenerate; the cost is measured
    warnings.simplefilter("ignore", DegenerateResultWarning)
    p = PROFILES[profile]
    logs = {"train": [], "val": []}
    train = GeneratedImages(n, p["size"], p["classes"], 1, logs["train"])
    val = GeneratedImages(p["val"], p["size"], p["classes"], 2, logs["val"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = salfcbm.wrap(p["backbone"], concepts=[f"concept {i}" for i in range(p["concepts"])],
                         num_classes=p["classes"], grid=p["grid"], backbone_weights=None, pretrained=False,
                         input_size=(p["size"], p["size"])).to(device)
    prompts = PromptGrid(grid=(p["grid"], p["grid"]), radius=max(2, p["size"] // (2 * p["grid"])))
    intervals = _record_stage_intervals()
    sampler = Sampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        res = salfcbm.fit(model, train, val, scorer=ProjectionScorer(), prompts=prompts, run_dir=run,
                          baseline=False, filter_concepts=False, cache_features="auto", max_feature_cache_gb=0.0,
                          batch_size=p["batch"], progress=False, device=device, precision="fp32",
                          bottleneck=salfcbm.BottleneckConfig(cutoff=-2.0, seed=0),
                          head=salfcbm.HeadConfig(n_lambdas=4))
        t_end = time.perf_counter()
    sampler.stop.set()
    sampler.join()
    seconds = res.metrics["seconds"]
    stages = {}
    for s, (a, b) in intervals.items():
        inside = [x for x in sampler.samples if a <= x[0] < b] or [min(sampler.samples, key=lambda x: abs(x[0] - a))]
        stages[s] = {"seconds": seconds[s], "train_images": _in(logs["train"], a, b),
                     "val_images": _in(logs["val"], a, b),
                     "peak_rss_gb": max(x[1] for x in inside) / 1e9, "peak_gpu_gb": max(x[2] for x in inside) / 1e9}
    record = {"n": n, "val_n": p["val"], "profile": profile, "device": device,
              "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
              "total_seconds": t_end - t0, "stages": stages,
              "bottleneck_steps": res.bottleneck.steps, "val_accuracy": res.metrics["salfcbm"]["val_accuracy"],
              "features": res.metrics.get("features"), "backbone_images": res.metrics.get("backbone_images")}
    out.write_text(json.dumps(record, indent=1, default=str))


def fit_power(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """Least squares of ``log y = log a + b log n``; returns ``(a, b)`` (zeros stay zero)."""
    pts = [(math.log(n), math.log(y)) for n, y in zip(ns, ys) if y > 0]
    if len(pts) < 2:
        return 0.0, 0.0
    mx, my = sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    return math.exp(my - b * mx), b


def cost_model(records: list[dict]) -> dict:
    """Per stage and quantity: exponent, the fit's worst relative error at the points, ImageNet's extrapolation.

    ``seconds_per_image`` (seconds / training images the stage read) separates a stage's cost per image
    from how many images it reads: the bottleneck reads as many as its steps ask for (``max_steps`` x
    batch, cut short by early stopping), which is a setting, not a function of N.
    """
    ns = [r["n"] for r in records]
    model = {}
    for s in STAGES:
        if not all(s in r["stages"] for r in records):
            continue
        model[s] = {}
        for q in ("seconds", "train_images", "val_images", "peak_rss_gb", "seconds_per_image"):
            ys = [_quantity(r["stages"][s], q) for r in records]
            a, b = fit_power(ns, ys)
            err = max((abs(a * n ** b - y) / y for n, y in zip(ns, ys) if y > 0), default=0.0)
            model[s][q] = {"exponent": round(b, 3), "max_rel_error": round(err, 3),
                           "imagenet": a * IMAGENET_N ** b if a else 0.0}
    return model


def _quantity(stage: dict, q: str) -> float:
    if q == "seconds_per_image":
        return stage["seconds"] / stage["train_images"] if stage["train_images"] else 0.0
    return stage[q]


def report(records: list[dict], profile: str) -> bool:
    """Print the per-stage table, the exponents and the validation check; save the JSON. True when the
    backbone ran on each validation image once."""
    p = PROFILES[profile]
    print(f"\nfit at growing N ({profile}: {p['backbone']} {p['size']} px, {p['concepts']} concepts, "
          f"{p['classes']} classes, validation {p['val']} images, features on the fly)")
    print(f"{'N':>7} {'stage':<14} {'seconds':>9} {'train imgs':>11} {'ms/img':>7} {'val imgs':>9} {'peak RSS GB':>12}")
    for r in records:
        for s, v in r["stages"].items():
            per = f"{1e3 * _quantity(v, 'seconds_per_image'):7.2f}" if v["train_images"] else f"{'-':>7}"
            print(f"{r['n']:>7} {s:<14} {v['seconds']:>9.2f} {v['train_images']:>11} {per} {v['val_images']:>9} "
                  f"{v['peak_rss_gb']:>12.2f}")
    model = cost_model(records)
    print(f"\ngrowth exponents (cost ~ N^b) and extrapolation to N = {IMAGENET_N:,} (same shapes)")
    print(f"{'stage':<14} {'b(seconds)':>10} {'fit err':>8} {'s @ ImageNet':>13} {'b(s/img)':>9} {'b(val imgs)':>11} "
          f"{'b(RSS)':>7}")
    for s, m in model.items():
        print(f"{s:<14} {m['seconds']['exponent']:>10.2f} {m['seconds']['max_rel_error']:>8.2f} "
              f"{m['seconds']['imagenet']:>13.0f} {m['seconds_per_image']['exponent']:>9.2f} "
              f"{m['val_images']['exponent']:>11.2f} {m['peak_rss_gb']['exponent']:>7.2f}")
    val_ok = all(r["backbone_images"]["val"] == r["val_n"] for r in records)
    print("\nbackbone images per split (fit's own count): "
          + "; ".join(f"N={r['n']}: {r['backbone_images']}" for r in records))
    print(f"validation backbone images == validation set size at every N: {val_ok}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale_{profile}.json"
    path.write_text(json.dumps({"profile": profile, "shapes": p, "records": records, "cost_model": model,
                                "validation_computed_once": val_ok}, indent=1, default=str))
    print(f"saved {path}")
    return val_ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="scaled shapes for a CPU (resnet18 at 64 px)")
    ap.add_argument("--quick", action="store_true", help="the smallest shapes (a smoke run)")
    ap.add_argument("--ns", type=int, nargs="+", help="training sizes (default: the profile's three)")
    ap.add_argument("--summarize", type=Path, help="print the tables of a saved results JSON again (no run)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    profile = args.profile or ("quick" if args.quick else "cpu" if args.cpu else "imagenet")
    if args.child is not None:
        return child(args.child, profile, args.out)
    if args.summarize is not None:
        saved = json.loads(args.summarize.read_text())
        records, profile = saved["records"], saved["profile"]
    else:
        records = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.ns or PROFILES[profile]["ns"]:
                out = Path(tmp) / f"{n}.json"
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("BENCH_THREADS", "1")}
                subprocess.run([sys.executable, __file__, "--child", str(n), "--profile", profile, "--out", str(out)],
                               check=True, env=env)
                records.append(json.loads(out.read_text()))
    if not report(records, profile):
        sys.exit("validation features were recomputed: the backbone ran on more validation images than exist")


if __name__ == "__main__":
    main()
