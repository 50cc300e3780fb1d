"""Bottleneck training: peak memory at N and 10 x N images, images/s, loss layout and batch production.

Synthetic stores (random backbone features and prompted embeddings, the same layout as
real runs) are written first; then a fresh process trains the bottleneck for a fixed
number of epochs and reports its peak resident memory. Memory must stay nearly flat
when N grows ten-fold, because training streams shard by shard.

    python benchmarks/bench_training.py            # N = 4096 and 40960
    python benchmarks/bench_training.py --quick    # N = 2048 and 20480
    python benchmarks/bench_training.py --speed    # loss layout and batch production only

``--speed`` measures (one thread, interleaved rounds, CPU time, median of per-round ratios):

* the loss step (forward + backward of Eq. 1 on one batch of 256 at M = 4741, C = 2048, 7x7) as
  the library runs it (channels-last features, one ``addmm``, contiguous channels-last targets)
  against a hand-written contiguous reference, and against the layout used before (``nn.Conv2d``
  on NCHW features, targets as a permuted view with M innermost);
* the share of bottleneck training time spent waiting for batches at M = 143 (fp16 features
  read, converted and permuted once per shard in a background thread).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from salfcbm._utils.io import atomic_write_text

C, GRID, D, M = 256, 7, 64, 200
VAL_N = 1024  # the validation set stays the same size: only the training set grows


class TableScorer:
    """Deterministic pseudo-embeddings from the image index; similarity = emb @ text."""

    def __init__(self, n: int, d: int = D):
        self.n, self.d = n, d

    def fingerprint(self):
        return {"scorer": "bench-table", "n": self.n, "d": self.d}

    def embed(self, images, indices, prompts):
        import torch

        g = torch.Generator().manual_seed(int(indices[0]))
        return torch.randn(len(indices), GRID, GRID, self.d, generator=g)

    def similarity(self, emb, concepts):
        import torch

        text = torch.randn(self.d, len(concepts), generator=torch.Generator().manual_seed(0))
        return emb.float() @ text


class Blank:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        return torch.zeros(3, 4, 4), 0


def build(root: Path, n: int) -> None:
    import torch

    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import ShardedStore, compute_similarity_store

    for split, size in (("train", n), ("val", VAL_N)):
        f = ShardedStore(root / split / "features", manifest={"n": size, "split": split}, item_shape=(C, GRID, GRID),
                         length=size, shard_size=1024)
        for i in f.missing_shards():
            a, b = f.shard_range(i)
            f.write_shard(i, torch.randn(b - a, C, GRID, GRID, generator=torch.Generator().manual_seed(i)))
        compute_similarity_store(root / split / "sims", Blank(size), TableScorer(size),
                                 PromptGrid(grid=(GRID, GRID), radius=8), progress=False, shard_size=1024,
                                 batch_size=1024)


def train(root: Path, n: int, epochs: int) -> dict:
    import torch

    import salfcbm
    from salfcbm.supervision.store import PromptedEmbeddingStore, ShardedStore
    from salfcbm.training.pipeline import BottleneckConfig, train_bottleneck

    torch.set_num_threads(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, C, 1))
    model = salfcbm.SALFCBM(net, concepts=[f"c{i}" for i in range(M)], num_classes=2, grid=(GRID, GRID),
                            layer="0", input_size=[GRID, GRID], layout="NCHW", feature_channels=C,
                            backbone_spec={"source": "custom", "name": "bench"})
    sets = {}
    for split in ("train", "val"):
        size = n if split == "train" else VAL_N
        sets[split] = (ShardedStore.open(root / split / "features"),
                       PromptedEmbeddingStore.open(root / split / "sims", TableScorer(size)))
    batch = 256
    steps = epochs * (n // batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rep = train_bottleneck(model, sets["train"][0], sets["train"][1], sets["val"][0], sets["val"][1],
                           BottleneckConfig(max_steps=steps, val_every=max(1, steps), batch_size=batch,
                                            patience=10**6, cutoff=-1.0), progress=False)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "steps": rep.steps, "seconds": dt, "images_per_s": rep.steps * batch / dt,
            "peak_rss_mb": peak / 1024, "rss_before_training_mb": rss0 / 1024}


def _loss_layouts(M: int = 4741, Cf: int = 2048, B: int = 256, rounds: int = 5) -> dict:
    """Seconds of one loss step (fwd + bwd) per layout, interleaved; ratios within rounds."""
    import statistics

    import torch

    from salfcbm.training.batches import project_channels_last
    from salfcbm.training.pipeline import bottleneck_loss

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(Cf, M, 1)
    x_nchw = torch.randn(B, Cf, GRID, GRID)
    x_nhwc = x_nchw.permute(0, 2, 3, 1).contiguous()
    p_nhwc = torch.randn(B, GRID, GRID, M)
    p_view = p_nhwc.permute(0, 3, 1, 2)  # what PromptedEmbeddingStore.targets returned before: M innermost
    w, b = conv.weight.view(M, Cf), conv.bias

    def reference():  # hand-written: contiguous operands, one addmm, the loss inline
        q = torch.addmm(b, x_nhwc.view(-1, Cf), w.t()).view(B, GRID, GRID, M)
        q = q - q.mean(0)
        q = q**3
        q = q / q.norm(dim=0).clamp_min(1e-12)
        p = p_nhwc - p_nhwc.mean(0)
        p = p**3
        p = p / p.norm(dim=0).clamp_min(1e-12)
        (-(q * p).sum()).backward()

    fns = {
        "library": lambda: bottleneck_loss(project_channels_last(conv, x_nhwc), p_nhwc).backward(),
        "reference": reference,
        "before": lambda: bottleneck_loss(conv(x_nchw), p_view).backward(),
        "conv on NCHW, contiguous targets": lambda: bottleneck_loss(conv(x_nchw), p_view.contiguous()).backward(),
    }
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            conv.zero_grad(set_to_none=True)
            t = time.process_time()
            fn()
            times[k].append(time.process_time() - t)

    def ratio(a, r):
        return statistics.median(x / y for x, y in zip(times[a], times[r]))

    return {
        "M": M, "C": Cf, "batch": B, "grid": GRID, "rounds": rounds,
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        "library_over_reference": ratio("library", "reference"),
        "before_over_reference": ratio("before", "reference"),
        "conv_nchw_over_addmm_nhwc": ratio("conv on NCHW, contiguous targets", "library"),
        "target_library_over_reference": 1.1,
    }


def _batch_production(root: Path, n: int = 1024, M_small: int = 143, Cf: int = 2048, epochs: int = 3) -> dict:
    """Share of bottleneck training time spent waiting for batches (features fp16 on disk)."""
    import torch

    import salfcbm
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import ShardedStore, compute_similarity_store
    from salfcbm.training.pipeline import BottleneckConfig, train_bottleneck

    sets = {}
    for split, size in (("train", n), ("val", 256)):
        f = ShardedStore(root / split / "features", manifest={"n": size, "split": split, "c": Cf},
                         item_shape=(Cf, GRID, GRID), length=size, shard_size=512)
        for i in f.missing_shards():
            a, b = f.shard_range(i)
            f.write_shard(i, torch.randn(b - a, Cf, GRID, GRID, generator=torch.Generator().manual_seed(i)))
        s = compute_similarity_store(root / split / "sims", Blank(size), TableScorer(size, 512),
                                     PromptGrid(grid=(GRID, GRID), radius=8), progress=False, shard_size=512,
                                     batch_size=512)
        sets[split] = (f, s)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, Cf, 1))
    model = salfcbm.SALFCBM(net, concepts=[f"c{i}" for i in range(M_small)], num_classes=2, grid=(GRID, GRID),
                            layer="0", input_size=[GRID, GRID], layout="NCHW", feature_channels=Cf,
                            backbone_spec={"source": "custom", "name": "bench"})
    batch = 256
    steps = epochs * (n // batch)
    rep = train_bottleneck(model, *sets["train"], *sets["val"],
                           BottleneckConfig(max_steps=steps, val_every=10**6, batch_size=batch, patience=10**6,
                                            cutoff=-1.0), progress=False, prune=False)
    return {"M": M_small, "C": Cf, "n": n, "batch": batch, "steps": rep.steps, "seconds": rep.seconds,
            "data_seconds": rep.data_seconds, "share": rep.data_seconds / rep.seconds, "target_share": 0.10}


def speed(out: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    loss = _loss_layouts()
    with tempfile.TemporaryDirectory(prefix="salfcbm-bench-") as tmp:
        prod = _batch_production(Path(tmp))
    print("| loss step (B=256, M=4741, C=2048, 7x7) | median per-round ratio |")
    print("|---|---|")
    print(f"| library (channels-last, addmm) / contiguous reference | {loss['library_over_reference']:.3f}x |")
    print(f"| before (conv NCHW, permuted-view targets) / reference | {loss['before_over_reference']:.3f}x |")
    print(f"| nn.Conv2d on NCHW / addmm on channels-last | {loss['conv_nchw_over_addmm_nhwc']:.3f}x |")
    print(f"\nbatch production at M={prod['M']}: {prod['data_seconds']:.2f} s of {prod['seconds']:.2f} s "
          f"= {100 * prod['share']:.1f}% of bottleneck training time (target < 10%)")
    result = {"loss_layout": loss, "batch_production": prod}
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default=None, help="default benchmarks/results/training.json (training_speed.json with --speed)")
    ap.add_argument("--speed", action="store_true", help="loss layout and batch production figures only")
    ap.add_argument("--_worker", nargs=3, metavar=("MODE", "ROOT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        mode, root, n = args._worker
        if mode == "build":
            build(Path(root), int(n))
            return 0
        print(json.dumps(train(Path(root), int(n), args.epochs)))
        return 0

    if args.speed:
        speed(Path(args.out or "benchmarks/results/training_speed.json"))
        return 0
    n = args.n or (2048 if args.quick else 4096)
    rows = []
    with tempfile.TemporaryDirectory(prefix="salfcbm-bench-") as tmp:
        for size in (n, 10 * n):
            root = Path(tmp) / str(size)
            subprocess.run([sys.executable, __file__, "--_worker", "build", str(root), str(size)], check=True)
            out = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--_worker", "train",
                                  str(root), str(size)], check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"| images | steps | images/s | peak RSS (MB) | peak RSS / N={base['n']} |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["peak_ratio"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        print(f"| {r['n']} | {r['steps']} | {r['images_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {r['peak_ratio']:.2f} |")
    out = Path(args.out or "benchmarks/results/training.json")
    atomic_write_text(out, json.dumps({"rows": rows, "features": [C, GRID, GRID], "embedding_dim": D, "concepts": M},
                                      indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
