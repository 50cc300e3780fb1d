"""Cost and difficulty of the built-in synthetic dataset (``salfcbm.demo.scenes``).

All numbers come from one run on one machine:

* ``render (getitem)``: ``SyntheticScenes.__getitem__`` for a 64 px scene, against decoding the
  same image from an in-memory PNG with PIL (what a dataset of files would pay at least).
* ``render + masks (sample)``: image, label and all 16 ground-truth masks.
* ``GroundTruthScorer.embed``: disc coverage of every concept at 7x7 prompts, per image, against
  ``PromptGrid.draw`` of the same 49 prompts (what a CLIP scorer pays before its first forward).
* ``pretrain_backbone``: wall and CPU time, and validation accuracy, of the stand-in backbone,
  against two baselines that see no pixels layout: logistic regression on a global colour
  histogram, and on the 16 ground-truth concept-presence bits (a bag of concepts without binding).

Times per item are the best of several repeats of a loop, CPU time of this process (all threads),
which other processes on a shared machine disturb less than wall time; wall time is in the JSON.

Run::

    python benchmarks/bench_synthetic.py --quick     # 600 training scenes, 4 epochs, < 1 min
    python benchmarks/bench_synthetic.py             # 3000 training scenes, the default 12 epochs

Results go to ``benchmarks/results/synthetic.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write_text
from salfcbm.supervision.prompts import PromptGrid  # noqa: E402
from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes, pretrain_backbone  # noqa: E402


def _per_item(fn, n: int, repeats: int = 3) -> tuple[float, float]:
    """Best (CPU ms, wall ms) per item over ``repeats`` loops of ``n`` calls."""
    best_c = best_w = float("inf")
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        best_c = min(best_c, (time.process_time() - c) / n * 1e3)
        best_w = min(best_w, (time.perf_counter() - w) / n * 1e3)
    return best_c, best_w


def _logreg_acc(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000).fit(sc.transform(xtr), ytr)
    return float((clf.predict(sc.transform(xva)) == yva).mean())


def _colour_hist(images: torch.Tensor, bins: int = 4) -> np.ndarray:
    q = (images.clamp(0, 0.999) * bins).long()  # (N, 3, H, W)
    code = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    return np.stack([np.bincount(c.flatten().numpy(), minlength=bins**3) for c in code]).astype(np.float32)


def _presence(ds: SyntheticScenes) -> np.ndarray:
    return np.stack([ds.masks(i).any(dim=(1, 2)).numpy() for i in range(len(ds))]).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 1 min)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthetic.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_train = args.n_train or (600 if args.quick else 3000)
    epochs = args.epochs or (4 if args.quick else 12)
    n_val = 400 if args.quick else 1000
    n_loop = 100 if args.quick else 500

    ds = SyntheticScenes(n=max(n_loop, 8), image_size=64, seed=0)
    rows = []

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((ds[0][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()

    def decode(_i: int) -> torch.Tensor:
        arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    base_c, base_w = _per_item(decode, n_loop)
    get_c, get_w = _per_item(lambda i: ds[i], n_loop)
    smp_c, smp_w = _per_item(lambda i: ds.sample(i), n_loop)
    rows += [
        ("PNG decode (baseline)", base_c, base_w, 1.0),
        ("render (getitem)", get_c, get_w, get_c / base_c),
        ("render + masks (sample)", smp_c, smp_w, smp_c / base_c),
    ]

    grid = PromptGrid(grid=(7, 7), radius=8, reference_size=64)  # 8 px on the 64 px scenes
    scorer = GroundTruthScorer(ds)
    bs = 32
    images = torch.stack([ds[i][0] for i in range(bs)])
    idx = torch.arange(bs)
    draw_c, draw_w = _per_item(lambda _i: grid.draw(images), 3)
    emb_c, emb_w = _per_item(lambda _i: scorer.embed(images, idx, grid), 3)
    rows += [
        ("PromptGrid.draw 7x7 (baseline)", draw_c / bs, draw_w / bs, 1.0),
        ("GroundTruthScorer.embed 7x7", emb_c / bs, emb_w / bs, emb_c / draw_c),
    ]

    train = SyntheticScenes(n=n_train, image_size=64, seed=0, split="train")
    val = SyntheticScenes(n=n_val, image_size=64, seed=0, split="val")
    c, w = time.process_time(), time.perf_counter()
    net = pretrain_backbone(train, epochs=epochs, val_dataset=val, progress=False)
    train_cpu, train_wall = time.process_time() - c, time.perf_counter() - w
    xv, yv = val.tensors()
    with torch.no_grad():
        pred = torch.cat([net(xv[s : s + 256]).argmax(1) for s in range(0, len(xv), 256)])
    acc = float((pred == yv).float().mean())
    per_class = [float((pred[yv == k] == k).float().mean()) for k in range(len(val.classes))]

    xt, yt = train.tensors()
    hist_acc = _logreg_acc(_colour_hist(xt), yt.numpy(), _colour_hist(xv), yv.numpy())
    pres_acc = _logreg_acc(_presence(train), yt.numpy(), _presence(val), yv.numpy())

    print(f"{'operation':34s} {'CPU ms/img':>11s} {'wall ms/img':>12s} {'ratio':>7s}")
    for name, cms, wms, r in rows:
        print(f"{name:34s} {cms:11.3f} {wms:12.3f} {r:7.2f}")
    print()
    print(f"pretrain_backbone: {n_train} scenes x {epochs} epochs, {torch.get_num_threads()} threads: "
          f"wall {train_wall:.1f} s, CPU {train_cpu:.1f} s")
    print(f"{'classifier':44s} {'val acc':>8s}")
    print(f"{'chance':44s} {1 / len(val.classes):8.3f}")
    print(f"{'logreg on colour histogram (baseline)':44s} {hist_acc:8.3f}")
    print(f"{'logreg on GT concept presence (baseline)':44s} {pres_acc:8.3f}")
    print(f"{'SmallConvNet (pretrain_backbone)':44s} {acc:8.3f}")
    print("per class:", ", ".join(f"{n}: {a:.2f}" for n, a in zip(val.classes, per_class)))

    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "cpus": os.cpu_count()},
        "quick": args.quick,
        "per_item_ms": [{"name": n, "cpu_ms": c_, "wall_ms": w_, "ratio_vs_baseline": r} for n, c_, w_, r in rows],
        "pretrain": {
            "n_train": n_train,
            "n_val": n_val,
            "epochs": epochs,
            "wall_s": train_wall,
            "cpu_s": train_cpu,
            "val_acc": acc,
            "val_acc_per_class": dict(zip(val.classes, per_class)),
            "history": net.history,
        },
        "baselines_val_acc": {"chance": 1 / len(val.classes), "colour_histogram_logreg": hist_acc, "concept_presence_logreg": pres_acc},
    }
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
