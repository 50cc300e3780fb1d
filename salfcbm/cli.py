"""The ``salfcbm`` command line: ``demo``, ``similarities``, ``train``, ``explain``, ``push``.

Every subcommand has ``--help``; long steps show tqdm progress bars; training writes a
run directory with the config, ``metrics.json`` and the saved model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _grid(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError("the grid must be a positive integer")
    return v


def _scorer(args):
    from salfcbm.supervision.scorers import CLIPScorer

    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    return CLIPScorer(args.scorer, pretrained=pretrained, device=args.device, precision=args.precision)


def _image_folder(root: str, size: int):
    from salfcbm.datasets.folder import ImageFolderDataset

    return ImageFolderDataset(root, size=size)


def cmd_demo(args) -> int:
    from salfcbm.demo.run import DemoConfig, run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = DemoConfig(
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, backbone_epochs=args.backbone_epochs,
        bottleneck_steps=args.bottleneck_steps, seed=args.seed,
    )
    res = run_demo(args.out, cfg, progress=not args.quiet, device=args.device)
    m = res.metrics
    s, b = m["salfcbm"], m.get("standard_sparse", {})
    seg, rnd = m["segmentation"], m["segmentation_random"]
    print()
    print("| model | test acc | val acc | NEC |")
    print("|---|---|---|---|")
    print(f"| SALF-CBM (sparse) | {s['test_accuracy']:.3f} | {s['val_accuracy']:.3f} | {s['nec']:.2f} |")
    print(f"| standard, sparse  | {b['test_accuracy']:.3f} | {b['val_accuracy']:.3f} | {b['nec']:.2f} |")
    print()
    print(f"concept maps vs ground-truth masks: mIoU {seg['miou']:.3f} (random maps {rnd['miou']:.3f}), "
          f"pixel acc {seg['pixel_accuracy']:.3f}, mAP {seg['map']:.3f} (random {rnd['map']:.3f})")
    print(f"dropped by the interpretability cutoff: {len(m['bottleneck']['dropped'])} concepts")
    print(f"report: {res.out / 'report.html'}")
    print(f"model:  {res.out / 'model'}")
    return 0


def _init_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): one process per GPU, ranks split the shards."""
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if str(args.device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
        torch.distributed.init_process_group("nccl")
    else:
        torch.distributed.init_process_group("gloo")


def cmd_similarities(args) -> int:
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    _init_distributed(args)
    data = _image_folder(args.data, args.image_size)
    scorer = _scorer(args)
    prompts = PromptGrid(grid=(args.grid, args.grid), radius=args.radius)
    store = compute_similarity_store(args.out, data, scorer, prompts, batch_size=args.batch_size,
                                     num_workers=args.num_workers)
    print(f"{store} complete")
    return 0


def cmd_train(args) -> int:
    from salfcbm.core.model import wrap
    from salfcbm.supervision.concepts import load_concepts
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    train, val = _image_folder(args.train, args.image_size), _image_folder(args.val, args.image_size)
    concepts = load_concepts(args.concepts)
    model = wrap(args.backbone, concepts=concepts, num_classes=len(train.classes), class_names=train.classes,
                 layer=args.layer, grid=args.grid, pooling=args.pooling, cls_concat=args.cls_concat)
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
    head = HeadConfig(sparse=not args.dense, select="nec" if args.target_nec else "val_acc",
                      target_nec=args.target_nec)
    res = fit(model, train, val, scorer=_scorer(args), prompts=PromptGrid(grid=(args.grid, args.grid),
              radius=args.radius), run_dir=run, bottleneck=BottleneckConfig(cutoff=args.cutoff), head=head,
              batch_size=args.batch_size, num_workers=args.num_workers, device=args.device)
    print(json.dumps({k: v for k, v in res.metrics.items() if k != "path"}, indent=2, default=str))
    print(f"saved to {run / 'model'}")
    return 0


def cmd_explain(args) -> int:
    import torch
    from PIL import Image

    from salfcbm.core.model import SALFCBM
    from salfcbm.viz.figures import write_html_report

    model = SALFCBM.from_pretrained(args.model).eval()
    size = model.config["input_size"]
    images = []
    for p in args.images:
        im = Image.open(p).convert("RGB").resize((size[1], size[0]))
        images.append(torch.from_numpy(__import__("numpy").asarray(im).copy()).permute(2, 0, 1).float() / 255)
    x = torch.stack(images)
    expl = model.explain(model.preprocess(x), top_k=args.top_k)
    out = write_html_report(args.out, x, expl, model=model, names=[os.path.basename(p) for p in args.images])
    for p, e in zip(args.images, expl):
        c = e.classes[0]
        print(f"{p}: {model.class_names[c.target]} <- " + ", ".join(f"{n} ({float(s):+.2f})"
                                                                   for n, s in zip(c.concepts, c.scores)))
    print(f"report: {out}")
    return 0


def cmd_push(args) -> int:
    from salfcbm.core.model import SALFCBM

    model = SALFCBM.from_pretrained(args.model)
    url = model.push_to_hub(args.repo_id, private=args.private)
    print(url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salfcbm", description="Spatially-aware, label-free concept bottleneck models.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train and explain a SALF-CBM on the built-in procedural scenes (offline)")
    d.add_argument("--out", default="runs/demo", help="run directory (resumable)")
    d.add_argument("--n-train", type=int, default=3000)
    d.add_argument("--n-val", type=int, default=600)
    d.add_argument("--n-test", type=int, default=600)
    d.add_argument("--backbone-epochs", type=int, default=12)
    d.add_argument("--bottleneck-steps", type=int, default=1500)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default=None)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: fastest for these small models, and robust on a busy "
                        "machine; 0 = torch's default)")
    d.set_defaults(func=cmd_demo)

    def scorer_args(q):
        q.add_argument("--scorer", default="ViT-B-16", help="open_clip model name (or hf-hub:/local-dir:)")
        q.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint file; 'none'")
        q.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
        q.add_argument("--grid", type=_grid, default=7)
        q.add_argument("--radius", type=int, default=32, help="circle radius at the scorer's resolution")
        q.add_argument("--image-size", type=int, default=224)
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--num-workers", type=int, default=4)
        q.add_argument("--device", default="cuda" if _cuda() else "cpu")

    s = sub.add_parser("similarities", help="compute the prompted CLIP similarity store of an image folder")
    s.add_argument("--data", required=True, help="image folder (class sub-folders)")
    s.add_argument("--out", required=True, help="store directory (resumable; torchrun-aware)")
    scorer_args(s)
    s.set_defaults(func=cmd_similarities)

    t = sub.add_parser("train", help="train a SALF-CBM on image folders")
    t.add_argument("--backbone", required=True, help="e.g. timm:resnet50 or torchvision:vit_b_16")
    t.add_argument("--layer", default=None)
    t.add_argument("--train", required=True)
    t.add_argument("--val", required=True)
    t.add_argument("--concepts", required=True, help="text file, one concept per line")
    t.add_argument("--run-dir", required=True)
    t.add_argument("--pooling", default="mean", choices=["mean", "softmax", "max"])
    t.add_argument("--cls-concat", action="store_true")
    t.add_argument("--cutoff", type=float, default=0.45, help="interpretability cutoff")
    t.add_argument("--dense", action="store_true", help="dense head instead of the sparse path")
    t.add_argument("--target-nec", type=float, default=None, help="choose lambda by non-zeros per class")
    scorer_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("explain", help="explain images with a saved SALF-CBM and write an HTML report")
    e.add_argument("--model", required=True, help="directory or Hub repo id")
    e.add_argument("images", nargs="+")
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--out", default="explanations.html")
    e.set_defaults(func=cmd_explain)

    u = sub.add_parser("push", help="push a saved SALF-CBM to the Hugging Face Hub")
    u.add_argument("--model", required=True)
    u.add_argument("--repo-id", required=True)
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=cmd_push)
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from salfcbm.errors import SalfCBMError

    try:
        return args.func(args)
    except SalfCBMError as e:
        print(f"salfcbm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
