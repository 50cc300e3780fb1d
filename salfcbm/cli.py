"""The ``salfcbm`` command line: ``demo``, ``similarities``, ``train``, ``explain``, ``push``, ``app``, ``reproduce``.

Every subcommand has ``--help`` (with defaults) and ``--quiet``; long steps show one
labelled progress bar per stage; training writes a run directory with ``args.json``,
``metrics.json`` and the saved model. A user error (a missing file, a bad argument, a
corrupt image, any `SalfCBMError`) ends with one line, ``salfcbm: error: ...``, and exit
code 2; set ``SALFCBM_DEBUG=1`` to see the Python traceback instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ADAPTER_FILES = ("config.json", "model.safetensors", "README.md")


# ----------------------------------------------------------------------------- argument types
def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {s!r}")
    return v


_grid = _positive_int  # kept for callers of the old name


# ----------------------------------------------------------------------------- shared pieces
def _set_threads(args) -> None:
    n = getattr(args, "threads", 0)
    if n:
        import torch

        torch.set_num_threads(n)


def _workers(args) -> int:
    """``--num-workers``, capped at this process's CPU cores; by default ``min(4, cores - 1)``."""
    from salfcbm._utils.workers import resolve_num_workers

    return resolve_num_workers(args.num_workers)


def _scorer(args):
    """The CLIP scorer; a random init (``--pretrained none``) is seeded so a rerun resumes its stores."""
    import torch

    from salfcbm.supervision.scorers import CLIPScorer

    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    with torch.random.fork_rng(devices=[]):  # a random init (`none`, a local-dir: without weights) is seeded
        torch.manual_seed(args.seed)
        return CLIPScorer(args.scorer, pretrained=pretrained, device=args.device, precision=args.precision)


def _image_folder(root: str, size: int, skip_corrupt: bool = False):
    from salfcbm.datasets.folder import ImageFolderDataset

    return ImageFolderDataset(root, size=size, skip_corrupt=skip_corrupt)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_state_file(path: Path) -> dict:
    """A state dict from ``.safetensors`` (or a torch file, loaded with ``weights_only=True``)."""
    import torch

    from salfcbm.errors import WeightsFormatError

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise WeightsFormatError(f"Could not read backbone weights from {str(path)!r}: {type(e).__name__}: {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def build_cli_backbone(name: str, weights: str | None):
    """The backbone named ``name`` with ``weights``: a tag, ``"default"``, ``"none"`` or a local file.

    Returns ``(module, spec_weights)``: what the saved config records as the spec's weights
    (``None`` for a random init, the tag, or ``"file:<sha256>"`` for a local file, which
    ``salfcbm explain --backbone-weights FILE`` checks when it rebuilds the backbone).
    """
    from salfcbm.core.backbones import build_backbone, parse_backbone_name
    from salfcbm.errors import BackboneSpecError, WeightsFormatError

    weights = "default" if weights in (None, "") else weights
    local = Path(weights).expanduser()
    is_file = local.is_file() or weights.endswith((".safetensors", ".pt", ".pth", ".bin"))
    if weights == "none" or is_file:
        spec = parse_backbone_name(name, pretrained=False)
    else:
        spec = parse_backbone_name(name, pretrained=True)
        if weights != "default":
            spec["weights"] = weights
    module = build_backbone(spec)
    if not is_file:
        return module, spec["weights"]
    if not local.is_file():
        raise FileNotFoundError(f"Backbone weights file {weights!r} does not exist; pass a tag, 'none' or a file.")
    state = _load_state_file(local)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise WeightsFormatError(f"{str(local)!r} does not fit the backbone {name!r}: {str(e).splitlines()[0]}") from e
    if missing:
        raise BackboneSpecError(
            f"{str(local)!r} lacks {len(missing)} weights of {name!r} (e.g. {missing[:3]}); pass the file saved "
            "from this architecture."
        )
    return module, f"file:{_sha256(local)}"


def _write_args(run: Path, args) -> None:
    from salfcbm._utils.io import atomic_write_bytes

    plain = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_bytes(run / "args.json", (json.dumps(plain, indent=2, default=str) + "\n").encode())


# ----------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from salfcbm.demo.run import DemoConfig, run_demo

    _set_threads(args)
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
    mb = m.get("matched_nec", {}).get("standard_sparse")
    if mb:
        print(f"| standard, sparse, same NEC | {mb.get('test_accuracy', float('nan')):.3f} | {mb['val_accuracy']:.3f} "
              f"| {mb['nec']:.2f} |")
    print()
    print(f"concept maps vs ground-truth masks: mIoU {seg['miou']:.3f} (random maps {rnd['miou']:.3f}), "
          f"pixel acc {seg['pixel_accuracy']:.3f}, mAP {seg['map']:.3f} (random {rnd['map']:.3f})")
    print(f"dropped by the interpretability cutoff: {len(m['bottleneck']['dropped'])} concepts")
    ex = m.get("explanations")
    if ex and ex["shown"]:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"top-{ex['top_k']} concepts of {ex['images']} test images with an empty ground-truth mask: "
              f"{pct(ex['shown_mask_empty'])} of all shown; {pct(ex['present']['mask_empty'])} of those shown as "
              f"present, {pct(ex['absent']['mask_empty'])} of those shown as absent")
    print(f"report: {res.out / 'report.html'}")
    print(f"model:  {res.out / 'model'}")
    return 0


def _init_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): one process per GPU, ranks split the shards."""
    from salfcbm._utils.distributed import init_distributed

    args.device = init_distributed(args.device)


def cmd_similarities(args) -> int:
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    _set_threads(args)
    _init_distributed(args)
    data = _image_folder(args.data, args.image_size, args.skip_corrupt)
    scorer = _scorer(args)
    prompts = PromptGrid(grid=(args.grid, args.grid), radius=args.radius)
    store = compute_similarity_store(args.out, data, scorer, prompts, batch_size=args.batch_size,
                                     num_workers=_workers(args), progress=not args.quiet, shard_size=args.shard_size)
    print(f"{store} complete")
    return 0


def cmd_train(args) -> int:
    import torch

    from salfcbm.core.model import wrap
    from salfcbm.supervision.concepts import load_concepts
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, fit

    _set_threads(args)
    torch.manual_seed(args.seed)
    folders = {"train": args.train, "val": args.val, "test": args.test}
    data = {k: _image_folder(v, args.image_size, args.skip_corrupt) for k, v in folders.items() if v is not None}
    concepts = load_concepts(args.concepts)
    backbone, spec_weights = build_cli_backbone(args.backbone, args.backbone_weights)
    size = (args.image_size, args.image_size)
    model = wrap(backbone, concepts=concepts, num_classes=len(data["train"].classes),
                 class_names=data["train"].classes, layer=args.layer, grid=args.grid, pooling=args.pooling,
                 cls_concat=args.cls_concat, input_size=size, backbone_weights=spec_weights)
    # one geometry: the folders are cropped with the model's own data config (recorded in its config)
    data = {k: d.with_transform(model.image_transform) for k, d in data.items()}
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _write_args(run, args)
    head = _head_config(args)
    settings = {"cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "cutoff_statistic": args.cutoff_statistic}
    if args.steps is not None:
        settings["max_steps"] = args.steps
    bottleneck = (BottleneckConfig.quick if args.quick else BottleneckConfig)(**settings)
    res = fit(model, data["train"], data["val"], scorer=_scorer(args), test_data=data.get("test"),
              prompts=PromptGrid(grid=(args.grid, args.grid), radius=args.radius), run_dir=run, baseline=not args.quick,
              bottleneck=bottleneck, head=head, batch_size=args.batch_size, num_workers=_workers(args),
              device=args.device, precision=args.precision, progress=not args.quiet,
              filter_concepts=False if args.no_filter else {"activation_cutoff": args.clip_cutoff})
    if not args.quiet:
        print(json.dumps({k: v for k, v in res.metrics.items() if k != "path"}, indent=2, default=str))
    print(f"saved to {run / 'model'}")
    return 0


def _head_config(args):
    """The head selection asked for on the command line (``--preset``, ``--lam``, ``--target-nec``)."""
    from salfcbm.training.pipeline import HeadConfig

    points = args.path_points if args.path_points is not None else (10 if getattr(args, "quick", False) else None)
    kw = {"sparse": not args.dense, "n_lambdas": points}
    if args.preset:
        return HeadConfig.paper(args.preset, **kw)
    if args.lam is not None:
        return HeadConfig(select="fixed", lam=args.lam, **kw)
    if args.target_nec:
        return HeadConfig(select="nec", target_nec=args.target_nec, **kw)
    return HeadConfig(**kw)


def _model_source(path: str) -> tuple[str, Path | None]:
    """``("demo", run_dir)``, ``("dir", model_dir)`` or ``("hub", None)`` for ``--model``; bad paths fail here."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "demo_config.json").is_file() and (p / "model").is_dir():
            return "demo", p
        if p.name == "model" and (p.parent / "demo_config.json").is_file() and (p.parent / "backbone.safetensors").is_file():
            return "demo", p.parent
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{path!r} is a directory but holds no saved SALF-CBM (config.json + model.safetensors); pass the "
                "directory written by `save_pretrained`, a `salfcbm train` run's model/ folder or a demo run folder."
            )
        return "dir", p
    if p.exists():
        raise FileNotFoundError(f"--model {path!r} is a file; pass the directory that holds config.json and model.safetensors.")
    if not _HUB_ID.match(path) or Path(path.split("/")[0]).is_dir():
        raise FileNotFoundError(f"No model directory {path!r} (and it is not a Hub repo id like 'user/name').")
    return "hub", None


def _load_model(args):
    from salfcbm.core.model import SALFCBM

    kind, path = _model_source(args.model)
    if kind == "demo":
        if args.backbone:
            raise FileNotFoundError("--backbone does not apply to a demo run; its backbone is in the run folder.")
        from salfcbm.demo.run import load_demo

        return load_demo(path)[0]
    kwargs = {}
    if args.backbone or args.backbone_weights:
        name = args.backbone or _spec_name(path)
        kwargs["backbone"], _ = build_cli_backbone(name, args.backbone_weights)
    kwargs["verify_backbone"] = not getattr(args, "no_verify_backbone", False)
    return SALFCBM.from_pretrained(str(path) if path else args.model, **kwargs).eval()


def _spec_name(path: Path | None) -> str:
    from salfcbm.errors import BackboneSpecError

    spec = json.loads((path / "config.json").read_text()).get("backbone") if path else None
    if not spec or spec.get("source") not in ("timm", "torchvision"):
        raise BackboneSpecError("--backbone-weights needs --backbone NAME for this model (its backbone is not named).")
    return f"{spec['source']}:{spec['name']}"


def cmd_explain(args) -> int:
    from salfcbm.explain.evidence import EVIDENCE_LABELS
    from salfcbm.viz.figures import write_html_report

    _set_threads(args)
    model = _load_model(args)
    x = model.image_transform.view(list(args.images))  # the one image entry point: what the model sees, in [0, 1]
    expl = model.explain(model.image_transform.normalize(x), top_k=args.top_k)
    out = write_html_report(args.out, x, expl, model=model, names=[os.path.basename(p) for p in args.images])
    for p, e in zip(args.images, expl):
        c = e.classes[0]
        shown = ", ".join(f"{n} ({float(s):+.2f}, {EVIDENCE_LABELS.get(k, k)})"
                          for n, s, k in zip(c.concepts, c.scores, c.evidence))
        print(f"{p}: {model.class_names[c.target]} <- " + (shown or "NO CONTRIBUTING CONCEPT: every head weight of "
                                                           "this class is zero (a degenerate head; refit it)"))
    print(f"report: {out}")
    return 0


def _check_adapter(folder: Path) -> None:
    """The saved files are a SALF-CBM adapter (schema, checksums, config and weights agree); no backbone is built."""
    from salfcbm.core import persistence

    config = persistence.read_config(str(folder / "config.json"))
    state = persistence.read_weights(str(folder / "model.safetensors"), config, verify=True)
    persistence.check_concept_count(state, config, str(folder))


def cmd_push(args) -> int:
    """Upload the saved adapter files as they are: nothing is rebuilt or downloaded."""
    from huggingface_hub import HfApi

    kind, path = _model_source(args.model)
    if kind == "hub":
        raise FileNotFoundError(f"push needs a local model directory; {args.model!r} is not one.")
    folder = path / "model" if kind == "demo" else path
    _check_adapter(folder)
    api = HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
    info = api.upload_folder(repo_id=args.repo_id, folder_path=str(folder), allow_patterns=list(_ADAPTER_FILES),
                             commit_message=args.message, repo_type="model")
    print(getattr(info, "commit_url", None) or info)
    return 0


# ----------------------------------------------------------------------------- the parser
class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default; keeps descriptions as written."""


def _common(q: argparse.ArgumentParser, *, threads: int | None = 1) -> None:
    q.add_argument("--quiet", action="store_true", help="no progress bars; print only the result")
    if threads is not None:
        q.add_argument("--threads", type=_nonneg_int, default=threads,
                       help="torch intra-op CPU threads (0 = torch's default)")


def _scorer_args(q: argparse.ArgumentParser) -> None:
    g = q.add_argument_group("concept scorer (CLIP) and prompts")
    g.add_argument("--scorer", default="ViT-B-16", help="open_clip model name, or hf-hub:ORG/REPO, or local-dir:PATH")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for a random init (seeded by --seed)")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision of the scorer and of the backbone while features are computed")
    g.add_argument("--grid", type=_positive_int, default=7, help="prompting grid (GRID x GRID; 7 = 49 CLIP passes per image)")
    g.add_argument("--radius", type=_positive_int, default=32,
                   help="prompt circle radius in pixels of a 224 px image (scaled to the scorer's resolution)")
    g.add_argument("--image-size", type=_positive_int, default=224,
                   help="the backbone's input size: images are resized with the backbone's own eval transform and "
                        "centre-cropped to it; recorded in the saved config")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images (named in a warning) instead of stopping at the first one")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch")
    g.add_argument("--num-workers", type=_nonneg_int, default=None,
                   help="DataLoader worker processes, at most the CPU cores available (default: min(4, cores - 1))")
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the random CLIP init, bottleneck init and batch order")


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", formatter_class=_Formatter,
                       help="train and explain a SALF-CBM on the built-in procedural scenes (offline)",
                       description="Train and explain a SALF-CBM end to end on the built-in procedural scenes, "
                                   "offline, and write OUT/report.html.")
    d.add_argument("--out", default="runs/demo", help="run directory (resumable)")
    d.add_argument("--n-train", type=_positive_int, default=3000, help="training scenes")
    d.add_argument("--n-val", type=_positive_int, default=600, help="validation scenes")
    d.add_argument("--n-test", type=_positive_int, default=600, help="test scenes")
    d.add_argument("--backbone-epochs", type=_positive_int, default=12, help="epochs of the stand-in backbone")
    d.add_argument("--bottleneck-steps", type=_positive_int, default=1500, help="maximum bottleneck steps")
    d.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the scenes and of training")
    d.add_argument("--device", default=None, help="torch device (default: CPU)")
    _common(d)
    d.set_defaults(func=cmd_demo)


def _train_parser(sub) -> None:
    from salfcbm.training.pipeline import BottleneckConfig

    b = BottleneckConfig()
    t = sub.add_parser("train", formatter_class=_Formatter, help="train a SALF-CBM on image folders",
                       description="Train a SALF-CBM on image folders (one sub-folder per class). The run directory "
                                   "holds args.json, the stores, metrics.json and the saved model (RUN_DIR/model); "
                                   "a rerun with the same arguments resumes.")
    t.add_argument("--backbone", required=True, help="backbone name: timm:NAME, torchvision:NAME or a timm NAME")
    t.add_argument("--backbone-weights", default="default",
                   help="'default' (the source's pretrained weights), a weights tag, a local .safetensors/.pt file, "
                        "or 'none' for a random init")
    t.add_argument("--layer", default=None, help="module to tap (default: the last spatial stage)")
    t.add_argument("--train", required=True, help="training image folder (class sub-folders)")
    t.add_argument("--val", required=True, help="validation image folder, same classes")
    t.add_argument("--test", default=None, help="optional test image folder, evaluated at the end")
    t.add_argument("--concepts", required=True, help="text file, one concept per line")
    t.add_argument("--run-dir", required=True, help="run directory (resumable)")
    t.add_argument("--pooling", default="mean", choices=["mean", "softmax", "max"], help="concept-map pooling")
    t.add_argument("--cls-concat", action="store_true", help="concatenate the CLS token to every position (ViTs)")
    t.add_argument("--steps", type=_positive_int, default=None,
                   help="maximum bottleneck training steps (default: scaled with the training images, 500 to 5000; "
                        "--quick: 300)")
    t.add_argument("--lr", type=_positive_float, default=b.lr, help="bottleneck learning rate (Adam)")
    t.add_argument("--cutoff", type=float, default=b.cutoff, help="interpretability cutoff (LF-CBM's 0.45)")
    t.add_argument("--cutoff-statistic", default="cell", choices=["cell", "pooled"],
                   help="what the cutoff is compared with: per-cell map similarity, or LF-CBM's pooled one")
    t.add_argument("--no-filter", action="store_true", help="skip LF-CBM's concept filters (on by default)")
    t.add_argument("--clip-cutoff", type=float, default=0.25,
                   help="'never fires' filter: LF-CBM's 0.25 (0.26 CUB, 0.28 ImageNet/Places365)")
    t.add_argument("--dense", action="store_true", help="dense head instead of the sparse path")
    t.add_argument("--path-points", type=_positive_int, default=None,
                   help="points on the sparse head's regularisation path (default: one per 25 training images, "
                        "10 to 40; --quick: 10)")
    t.add_argument("--quick", action="store_true",
                   help="a first try: at most 300 bottleneck steps, stopping after 30 without a gain, a 10-point "
                        "head path, and no standard-sparse baseline (explicit --steps/--path-points still apply)")
    sel = t.add_mutually_exclusive_group()
    sel.add_argument("--target-nec", type=_positive_float, default=None,
                     help="choose the head by non-zeros per class (default: by validation accuracy)")
    sel.add_argument("--lam", type=_positive_float, default=None,
                     help="the paper's selection: one fixed lambda (LF-CBM's default is 7e-4)")
    sel.add_argument("--preset", default=None, choices=["imagenet", "places365", "cub", "cifar10", "cifar100", "default"],
                     help="the paper's selection: LF-CBM's fixed lambda for this dataset")
    _scorer_args(t)
    _common(t)
    t.set_defaults(func=cmd_train)


def _explain_parser(sub) -> None:
    e = sub.add_parser("explain", formatter_class=_Formatter,
                       help="explain images with a saved SALF-CBM and write an HTML report",
                       description="Explain images with a saved SALF-CBM: a model directory, a `salfcbm train` "
                                   "run's model/ folder, a `salfcbm demo` run folder, or a Hub repo id.")
    e.add_argument("--model", required=True, help="model directory, demo run directory, or Hub repo id")
    e.add_argument("images", nargs="+", help="image files")
    e.add_argument("--backbone", default=None,
                   help="rebuild the backbone from this name instead of the saved spec (for a custom backbone)")
    e.add_argument("--backbone-weights", default=None,
                   help="with --backbone: 'default', a tag, a local file or 'none' (default: the saved spec's)")
    e.add_argument("--top-k", type=_positive_int, default=5, help="concepts shown per image")
    e.add_argument("--out", default="explanations.html", help="HTML report to write")
    e.add_argument("--no-verify-backbone", action="store_true",
                   help="load even if the backbone's weights differ from the fingerprint saved with the model")
    _common(e)
    e.set_defaults(func=cmd_explain)


def cmd_app(args) -> int:
    from salfcbm.app import launch

    _set_threads(args)
    launch(args.model, images=args.images, host=args.host, port=args.port, share=args.share, top_k=args.top_k,
           quiet=args.quiet)
    return 0


def _app_parser(sub) -> None:
    a = sub.add_parser("app", formatter_class=_Formatter,
                       help="explore a saved SALF-CBM in the browser (pip install 'salfcbm[app]')",
                       description="Start the explorer, a local web app: predict and explain, explain anything "
                                   "(draw a region), intervene with a brush, decision rules, concept search.")
    a.add_argument("model", help="model directory, demo run directory (or its model/ folder), or Hub repo id")
    a.add_argument("--images", default=None,
                   help="folder of images for Concept search (a demo run brings its test scenes)")
    a.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1: this machine only)")
    a.add_argument("--port", type=_positive_int, default=None, help="port (default: the first free one from 7860)")
    a.add_argument("--share", action="store_true", help="ask Gradio for a public link (contacts Gradio's servers)")
    a.add_argument("--top-k", type=_positive_int, default=5, help="concepts shown per class or region")
    _common(a)
    a.set_defaults(func=cmd_app)


def _push_parser(sub) -> None:
    u = sub.add_parser("push", formatter_class=_Formatter,
                       help="upload a saved SALF-CBM adapter to the Hugging Face Hub",
                       description="Upload config.json, model.safetensors and the model card of a saved SALF-CBM "
                                   "to the Hub, as they are: the backbone is neither rebuilt nor downloaded.")
    u.add_argument("--model", required=True, help="model directory (or a demo run directory)")
    u.add_argument("--repo-id", required=True, help="Hub repo id, e.g. user/salf-resnet50")
    u.add_argument("--private", action="store_true", help="create the repo as private")
    u.add_argument("--message", default="Upload SALF-CBM adapter", help="commit message")
    _common(u, threads=None)
    u.set_defaults(func=cmd_push)


def build_parser() -> argparse.ArgumentParser:
    """The ``salfcbm`` argument parser (also the source of ``docs/api/cli.md``)."""
    from salfcbm import __version__

    p = argparse.ArgumentParser(prog="salfcbm", formatter_class=_Formatter,
                                description="Spatially-aware, label-free concept bottleneck models.")
    p.add_argument("--version", action="version", version=f"salfcbm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _demo_parser(sub)
    s = sub.add_parser("similarities", formatter_class=_Formatter,
                       help="compute the prompted CLIP similarity store of an image folder",
                       description="Compute the prompted CLIP similarity store of an image folder (resumable; "
                                   "under torchrun the ranks split the shards).")
    s.add_argument("--data", required=True, help="image folder (class sub-folders)")
    s.add_argument("--out", required=True, help="store directory (resumable; torchrun-aware)")
    s.add_argument("--shard-size", type=_positive_int, default=1024,
                   help="images per shard file (the unit of resuming and of recomputation)")
    _scorer_args(s)
    _common(s)
    s.set_defaults(func=cmd_similarities)
    _train_parser(sub)
    _explain_parser(sub)
    _push_parser(sub)
    _app_parser(sub)
    from salfcbm.reproduce.cli import add_parser as add_reproduce

    add_reproduce(sub, formatter_class=_Formatter)
    return p


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def _user_errors() -> tuple[type[BaseException], ...]:
    from salfcbm.errors import SalfCBMError

    errors: list[type[BaseException]] = [SalfCBMError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                         PermissionError]
    try:
        from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

        errors += [HFValidationError, HfHubHTTPError, LocalEntryNotFoundError]
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    return tuple(errors)


def _one_line(e: BaseException) -> str:
    """The error's message on one line (a DataLoader worker's error: its original last line)."""
    text = str(e)
    if "Original Traceback" in text:  # re-raised by a DataLoader worker: keep the original message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
    return " ".join(text.split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a user error, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("similarities", "train") and args.device is None:
        args.device = "cuda" if _cuda() else "cpu"
    try:
        return args.func(args)
    except _user_errors() as e:
        if os.environ.get("SALFCBM_DEBUG"):
            raise
        print(f"salfcbm: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("salfcbm: interrupted (a rerun with the same arguments resumes)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
