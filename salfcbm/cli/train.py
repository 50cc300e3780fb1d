"""``salfcbm similarities`` and ``salfcbm train``: the prompted CLIP store and a SALF-CBM trained on image folders."""

from __future__ import annotations

import json
from pathlib import Path

from salfcbm._utils.argtypes import concepts_file, float_in, in_dir, int_in, out_dir
from salfcbm.cli.args import LR, SIMILARITY, Formatter, add_common, add_scorer_args
from salfcbm.cli.choices import BOTTLENECK_DEFAULTS, CUTOFF_GUARDS, CUTOFF_STATISTICS, HEAD_PRESETS, poolings
from salfcbm.cli.common import (
    check_pooling,
    image_folder,
    init_distributed,
    make_scorer,
    set_threads,
    workers,
    write_args,
)
from salfcbm.cli.models import build_cli_backbone

__all__ = ["add_similarities_parser", "add_train_parser", "cmd_similarities", "cmd_train", "head_config"]


def add_similarities_parser(sub) -> None:
    """Add ``salfcbm similarities`` to the sub-parsers ``sub``."""
    s = sub.add_parser("similarities", formatter_class=Formatter,
                       help="compute the prompted CLIP similarity store of an image folder",
                       description="Compute the prompted CLIP similarity store of an image folder (resumable; "
                                   "under torchrun the ranks split the shards).")
    s.add_argument("--data", type=in_dir, required=True, help="image folder (class sub-folders)")
    s.add_argument("--out", type=out_dir, required=True, help="store directory (resumable; torchrun-aware)")
    s.add_argument("--shard-size", type=int_in(1, 10**7), default=1024,
                   help="images per shard file (the unit of resuming and of recomputation)")
    add_scorer_args(s)
    add_common(s)
    s.set_defaults(func=cmd_similarities)


def cmd_similarities(args) -> int:
    """Compute (or resume) the similarity store of ``--data`` in ``--out``."""
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.supervision.store import compute_similarity_store

    set_threads(args)
    init_distributed(args)
    data = image_folder(args.data, args.image_size, args.skip_corrupt)
    scorer = make_scorer(args)
    prompts = PromptGrid(grid=(args.grid, args.grid), radius=args.radius)
    store = compute_similarity_store(args.out, data, scorer, prompts, batch_size=args.batch_size,
                                     num_workers=workers(args), progress=not args.quiet, shard_size=args.shard_size)
    print(f"{store} complete")
    return 0


def add_train_parser(sub) -> None:
    """Add ``salfcbm train`` to the sub-parsers ``sub`` (defaults: `salfcbm.cli.choices`, checked against the library)."""
    b = BOTTLENECK_DEFAULTS
    t = sub.add_parser("train", formatter_class=Formatter, help="train a SALF-CBM on image folders",
                       description="Train a SALF-CBM on image folders (one sub-folder per class). The run directory "
                                   "holds args.json, the stores, metrics.json and the saved model (RUN_DIR/model); "
                                   "a rerun with the same arguments resumes.")
    t.add_argument("--backbone", required=True, help="backbone name: timm:NAME, torchvision:NAME or a timm NAME")
    t.add_argument("--backbone-weights", default="default",
                   help="'default' (the source's pretrained weights), a weights tag, a local .safetensors/.pt file, "
                        "or 'none' for a random init")
    t.add_argument("--layer", default=None, help="module to tap (default: the last spatial stage)")
    t.add_argument("--train", type=in_dir, required=True, help="training image folder (class sub-folders)")
    t.add_argument("--val", type=in_dir, required=True, help="validation image folder, same classes")
    t.add_argument("--test", type=in_dir, default=None, help="optional test image folder, evaluated at the end")
    t.add_argument("--concepts", type=concepts_file, required=True,
                   help="text file, one concept per line, or lf-cbm:NAME (a published concept set)")
    t.add_argument("--run-dir", type=out_dir, required=True, help="run directory (resumable)")
    t.add_argument("--pooling", default="mean", metavar="NAME",
                   help=f"concept-map pooling: {', '.join(poolings())}, or a name registered with "
                        "salfcbm.core.pooling.register_pooling (checked against the registry when the command runs)")
    t.add_argument("--cls-concat", action="store_true", help="concatenate the CLS token to every position (ViTs)")
    t.add_argument("--steps", type=int_in(1, 10**8), default=None,
                   help="maximum bottleneck training steps (default: scaled with the training images, 500 to 5000; "
                        "--quick: 300)")
    t.add_argument("--lr", type=LR, default=b["lr"], help="bottleneck learning rate (Adam)")
    t.add_argument("--cutoff", type=SIMILARITY, default=b["cutoff"], help="interpretability cutoff (LF-CBM's 0.45)")
    t.add_argument("--cutoff-statistic", default=b["cutoff_statistic"], choices=CUTOFF_STATISTICS,
                   help="what the cutoff is compared with: per-cell map similarity, pooled against the prompted "
                        "targets, or LF-CBM's (pooled against the unprompted images)")
    t.add_argument("--cutoff-guard", default=b["cutoff_guard"], choices=CUTOFF_GUARDS,
                   help="a concept the cutoff removes but the head uses: keep it (listed in metrics.json), or "
                        "remove it and warn (LF-CBM)")
    _add_head_args(t)
    add_scorer_args(t)
    add_common(t)
    t.set_defaults(func=cmd_train)


def _add_head_args(t) -> None:
    t.add_argument("--no-filter", action="store_true", help="skip LF-CBM's concept filters (on by default)")
    t.add_argument("--clip-cutoff", type=SIMILARITY, default=0.25,
                   help="'never fires' filter: LF-CBM's 0.25 (0.26 CUB, 0.28 ImageNet/Places365)")
    t.add_argument("--dense", action="store_true", help="dense head instead of the sparse path")
    t.add_argument("--path-points", type=int_in(1, 10**4), default=None,
                   help="points on the sparse head's regularisation path (default: one per 25 training images, "
                        "10 to 40; --quick: 10)")
    t.add_argument("--quick", action="store_true",
                   help="a first try: at most 300 bottleneck steps, stopping after 30 without a gain, a 10-point "
                        "head path, and no standard-sparse baseline (explicit --steps/--path-points still apply)")
    sel = t.add_mutually_exclusive_group()
    sel.add_argument("--target-nec", type=float_in(0.0, 1e6, open_low=True), default=None,
                     help="choose the head by non-zeros per class (default: by validation accuracy)")
    sel.add_argument("--lam", type=float_in(0.0, 1e3, open_low=True), default=None,
                     help="the paper's selection: one fixed lambda (LF-CBM's default is 7e-4)")
    sel.add_argument("--preset", default=None, choices=HEAD_PRESETS,
                     help="the paper's selection: LF-CBM's fixed lambda for this dataset")


def cmd_train(args) -> int:
    """Train (or resume) a SALF-CBM in ``--run-dir``."""
    import torch

    from salfcbm import wrap  # the model class with its explanation methods
    from salfcbm.supervision.concepts import load_concepts
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training import BottleneckConfig, fit

    check_pooling(args.pooling)
    set_threads(args)
    torch.manual_seed(args.seed)
    folders = {"train": args.train, "val": args.val, "test": args.test}
    data = {k: image_folder(v, args.image_size, args.skip_corrupt) for k, v in folders.items() if v is not None}
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
    write_args(run, args)
    head = head_config(args)
    settings = {"cutoff": args.cutoff, "lr": args.lr, "seed": args.seed, "cutoff_statistic": args.cutoff_statistic,
                "cutoff_guard": args.cutoff_guard}
    if args.steps is not None:
        settings["max_steps"] = args.steps
    bottleneck = (BottleneckConfig.quick if args.quick else BottleneckConfig)(**settings)
    res = fit(model, data["train"], data["val"], scorer=make_scorer(args), test_data=data.get("test"),
              prompts=PromptGrid(grid=(args.grid, args.grid), radius=args.radius), run_dir=run, baseline=not args.quick,
              bottleneck=bottleneck, head=head, batch_size=args.batch_size, num_workers=workers(args),
              device=args.device, precision=args.precision, progress=not args.quiet,
              filter_concepts=False if args.no_filter else {"activation_cutoff": args.clip_cutoff})
    if not args.quiet:
        print(json.dumps({k: v for k, v in res.metrics.items() if k != "path"}, indent=2, default=str))
    print(f"saved to {run / 'model'}")
    return 0


def head_config(args):
    """The head selection asked for on the command line (``--preset``, ``--lam``, ``--target-nec``)."""
    from salfcbm.training import HeadConfig

    points = args.path_points if args.path_points is not None else (10 if getattr(args, "quick", False) else None)
    kw = {"sparse": not args.dense, "n_lambdas": points}
    if args.preset:
        return HeadConfig.paper(args.preset, **kw)
    if args.lam is not None:
        return HeadConfig(select="fixed", lam=args.lam, **kw)
    if args.target_nec:
        return HeadConfig(select="nec", target_nec=args.target_nec, **kw)
    return HeadConfig(**kw)
