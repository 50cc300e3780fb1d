"""Prompted-similarity pipeline (paper 3.2, Algorithm 1) against its own ceilings and a naive baseline.

Three numbers, all measured in the same run on the same device, model and batch size:

1. **Prompted throughput ratio**: prompted images/s through the whole salfcbm pipeline
   (``compute_similarity_store``: data loading, resize + crop, batched circle drawing,
   normalisation, CLIP ``encode_image``, writing safetensors shards) divided by bare
   ``model.encode_image`` images/s on already-preprocessed tensors. 1.0 means prompting and
   storage cost nothing; the target is >= 0.95.
2. **Speed-up over naive Algorithm 1**: per image and per grid location, draw the circle with
   PIL, preprocess with open_clip's own PIL transform, encode one image at a time. Timed on a
   few images only and extrapolated per image.
3. **Store size on disk per image** (fp16 ``(Hg, Wg, D)`` embeddings) against storing ``P``
   itself (fp16, ``M = 4741`` ImageNet concepts).

The model is a randomly initialised open_clip model (``pretrained=None``): speed does not depend
on the weights, and nothing is downloaded.

Run::

    python benchmarks/bench_similarities.py --quick                      # CPU, ~1-3 min
    python benchmarks/bench_similarities.py --device cuda --precision bf16 --batch-size 256 --images 512

Results go to ``benchmarks/results/similarities.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write_text
from salfcbm.supervision.prompts import PromptGrid  # noqa: E402
from salfcbm.supervision.scorers import CLIPScorer  # noqa: E402
from salfcbm.supervision.store import compute_similarity_store  # noqa: E402

M_IMAGENET = 4741


class RandomImages(torch.utils.data.Dataset):
    """Deterministic random images (3, H, W) in [0, 1], as a decoded dataset would give them."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, self.size, self.size, generator=g), 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_encode(scorer: CLIPScorer, batch_size: int, total: int) -> float:
    """Images/s of model.encode_image (+ L2 norm) on preprocessed, normalised tensors.

    Encodes ``total`` images in batches of ``batch_size``: the same forward calls as the pipeline.
    """
    x = torch.randn(batch_size, 3, *scorer.image_size, device=scorer.device)
    with torch.inference_mode(), scorer._autocast():
        _sync(scorer.device)
        t0 = time.perf_counter()
        for start in range(0, total, batch_size):
            torch.nn.functional.normalize(scorer.model.encode_image(x[: min(batch_size, total - start)]).float(), dim=-1)
        _sync(scorer.device)
    return total / (time.perf_counter() - t0)


def warmup(scorer: CLIPScorer, batch_size: int, iters: int) -> None:
    bare_encode(scorer, batch_size, batch_size * iters)


def pipeline(scorer: CLIPScorer, prompts: PromptGrid, images: int, size: int, batch_size: int, num_workers: int, tmp: str, tag: str) -> tuple[float, int]:
    """Prompted images/s of compute_similarity_store, and bytes on disk of the shard files."""
    data = RandomImages(images, size)
    # batch_size images per embed call -> num_prompts full encode_image batches per call
    _sync(scorer.device)
    t0 = time.perf_counter()
    store = compute_similarity_store(
        Path(tmp) / tag, data, scorer, prompts, shard_size=max(batch_size, 256), batch_size=batch_size,
        num_workers=num_workers, progress=False,
    )
    _sync(scorer.device)
    seconds = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in store.store.root.glob("shard_*.safetensors"))
    return images * prompts.num_prompts / seconds, nbytes


def naive(scorer: CLIPScorer, prompts: PromptGrid, images: int, size: int) -> float:
    """Seconds per image of Algorithm 1 done naively: PIL circle, PIL preprocess, batch-1 encode."""
    import open_clip
    from PIL import Image, ImageDraw

    tf = open_clip.image_transform(scorer.image_size, is_train=False, mean=scorer.mean, std=scorer.std)
    data = RandomImages(images, size)
    centres = prompts.centres(size, size).view(-1, 2).tolist()
    r = prompts.radius_px(size, size)  # PromptGrid's unit: the same circle size relative to the image
    with torch.inference_mode(), scorer._autocast():
        _ = scorer.model.encode_image(tf(Image.new("RGB", (size, size)))[None].to(scorer.device))  # warm-up
        _sync(scorer.device)
        t0 = time.perf_counter()
        for n in range(images):
            arr = (data[n][0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            base = Image.fromarray(arr)
            for y, x in centres:
                im = base.copy()
                ImageDraw.Draw(im).ellipse((x - r, y - r, x + r, y + r), outline=prompts.color, width=prompts.line_width)
                emb = scorer.model.encode_image(tf(im)[None].to(scorer.device))
                emb = torch.nn.functional.normalize(emb.float(), dim=-1).cpu()
        _sync(scorer.device)
    return (time.perf_counter() - t0) / images


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=None, help="prompted images per encode_image call")
    ap.add_argument("--images", type=int, default=None, help="images through the pipeline")
    ap.add_argument("--naive-images", type=int, default=None, help="images through the naive baseline")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--grid", type=int, default=None, help="grid side (default 7, --quick 2)")
    ap.add_argument("--radius", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=256, help="side of the (square) dataset images")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats, best kept (default 3, --quick 2)")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a handful of images and a 2x2 grid (CPU-friendly)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "similarities.json"))
    args = ap.parse_args(argv)

    grid = args.grid or (2 if args.quick else 7)
    batch_size = args.batch_size or (4 if args.quick else (256 if args.device == "cuda" else 49))
    images = args.images or (2 if args.quick else (512 if args.device == "cuda" else 8))
    naive_images = args.naive_images or (1 if args.quick or args.device == "cpu" else 4)
    repeats = args.repeats or (2 if args.quick else 3)

    torch.manual_seed(0)
    scorer = CLIPScorer(args.model, pretrained=None, device=args.device, precision=args.precision, batch_size=batch_size)
    prompts = PromptGrid(grid=(grid, grid), radius=args.radius)
    print(f"model {args.model} (random init) on {args.device} ({args.precision}), input {scorer.image_size}, "
          f"grid {grid}x{grid} r={args.radius}, batch {batch_size}, {images} images of {args.image_size}px", flush=True)

    total = images * prompts.num_prompts
    warmup(scorer, batch_size, 1 if args.device == "cpu" else 5)
    bares, prompteds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # interleave the two measurements and keep the best of each (robust to a busy machine)
        for rep in range(repeats):
            bares.append(bare_encode(scorer, batch_size, total))
            prompted_rep, nbytes = pipeline(scorer, prompts, images, args.image_size, batch_size, args.num_workers, tmp, f"run{rep}")
            prompteds.append(prompted_rep)
            print(f"  repeat {rep}: bare {bares[-1]:.2f} img/s, pipeline {prompteds[-1]:.2f} prompted img/s", flush=True)
    bare, prompted = max(bares), max(prompteds)
    naive_s = naive(scorer, prompts, naive_images, args.image_size)
    print(f"naive: {naive_s:.2f} s/image", flush=True)

    pipeline_s = prompts.num_prompts / prompted
    d = scorer.embedding_dim
    per_image = nbytes / images
    p_bytes = prompts.num_prompts * M_IMAGENET * 2
    result = {
        "benchmark": "similarities",
        "model": args.model,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        "batch_size": batch_size,
        "grid": [grid, grid],
        "radius": args.radius,
        "images": images,
        "image_size": args.image_size,
        "naive_images": naive_images,
        "repeats": repeats,
        "bare_encode_img_per_s_all": bares,
        "pipeline_prompted_img_per_s_all": prompteds,
        "bare_encode_img_per_s": bare,
        "pipeline_prompted_img_per_s": prompted,
        "throughput_ratio": prompted / bare,
        "pipeline_s_per_image": pipeline_s,
        "naive_s_per_image": naive_s,
        "speedup_vs_naive": naive_s / pipeline_s,
        "store_bytes_per_image": per_image,
        "embedding_dim": d,
        "p_fp16_bytes_per_image_M4741": p_bytes,
        "store_size_ratio_P_over_store": p_bytes / per_image,
        "quick": args.quick,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }
    rows = [
        ("bare encode_image (img/s)", f"{bare:.2f}"),
        ("pipeline, prompted (img/s)", f"{prompted:.2f}"),
        ("throughput ratio (target >= 0.95)", f"{prompted / bare:.3f}"),
        ("naive Algorithm 1 (s/image)", f"{naive_s:.3f}"),
        ("pipeline (s/image)", f"{pipeline_s:.3f}"),
        ("speed-up vs naive", f"{naive_s / pipeline_s:.1f}x"),
        (f"store on disk per image ({grid}x{grid}x{d} fp16)", f"{per_image / 1024:.1f} KiB"),
        (f"P per image ({grid}x{grid}x{M_IMAGENET} fp16)", f"{p_bytes / 1024:.1f} KiB"),
        ("P / store", f"{p_bytes / per_image:.1f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v:>12}" for k, v in rows))
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"\nsaved {out}")
    return result


if __name__ == "__main__":
    main()
