"""Bottleneck training: peak memory at N and 10 x N images, and images/s.

Synthetic stores (random backbone features and prompted embeddings, the same layout as
real runs) are written first; then a fresh process trains the bottleneck for a fixed
number of epochs and reports its peak resident memory. Memory must stay nearly flat
when N grows ten-fold, because training streams shard by shard.

    python benchmarks/bench_training.py            # N = 4096 and 40960
    python benchmarks/bench_training.py --quick    # N = 2048 and 20480
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

    def __init__(self, n: int):
        self.n = n

    def fingerprint(self):
        return {"scorer": "bench-table", "n": self.n, "d": D}

    def embed(self, images, indices, prompts):
        import torch

        g = torch.Generator().manual_seed(int(indices[0]))
        return torch.randn(len(indices), GRID, GRID, D, generator=g)

    def similarity(self, emb, concepts):
        import torch

        text = torch.randn(D, len(concepts), generator=torch.Generator().manual_seed(0))
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
    from salfcbm.supervision.store import ShardedStore, SimilarityStore
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
                       SimilarityStore.open(root / split / "sims", TableScorer(size)))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/training.json")
    ap.add_argument("--_worker", nargs=3, metavar=("MODE", "ROOT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        mode, root, n = args._worker
        if mode == "build":
            build(Path(root), int(n))
            return 0
        print(json.dumps(train(Path(root), int(n), args.epochs)))
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
    out = Path(args.out)
    atomic_write_text(out, json.dumps({"rows": rows, "features": [C, GRID, GRID], "embedding_dim": D, "concepts": M},
                                      indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
