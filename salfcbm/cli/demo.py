"""``salfcbm demo``: train and explain a SALF-CBM on the built-in procedural scenes, offline."""

from __future__ import annotations

from salfcbm._utils.argtypes import device, int_in, out_dir
from salfcbm.cli.args import SEED, Formatter, add_common
from salfcbm.cli.common import set_threads

__all__ = ["add_parser", "cmd_demo"]


def add_parser(sub) -> None:
    """Add ``salfcbm demo`` to the sub-parsers ``sub``."""
    d = sub.add_parser("demo", formatter_class=Formatter,
                       help="train and explain a SALF-CBM on the built-in procedural scenes (offline)",
                       description="Train and explain a SALF-CBM end to end on the built-in procedural scenes, "
                                   "offline, and write OUT/report.html.")
    d.add_argument("--out", type=out_dir, default="runs/demo", help="run directory (resumable)")
    d.add_argument("--n-train", type=int_in(1, 10**7), default=3000, help="training scenes")
    d.add_argument("--n-val", type=int_in(1, 10**7), default=600, help="validation scenes")
    d.add_argument("--n-test", type=int_in(1, 10**7), default=600, help="test scenes")
    d.add_argument("--backbone-epochs", type=int_in(1, 10**5), default=12, help="epochs of the stand-in backbone")
    d.add_argument("--bottleneck-steps", type=int_in(1, 10**8), default=1500, help="maximum bottleneck steps")
    d.add_argument("--seed", type=SEED, default=0, help="seed of the scenes and of training")
    d.add_argument("--device", type=device, default=None, help="torch device (default: CPU)")
    add_common(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    """Run the demo and print its table, segmentation and explanation figures."""
    from salfcbm.demo.config import DemoConfig, demo_bottleneck
    from salfcbm.demo.run import run_demo

    set_threads(args)
    cfg = DemoConfig(
        n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, backbone_epochs=args.backbone_epochs,
        bottleneck=demo_bottleneck(args.seed, max_steps=args.bottleneck_steps), seed=args.seed,
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
    if seg.get("loc_pointing_game") is not None:
        f3 = lambda d, k: "-" if d.get(k) is None else f"{d[k]:.3f}"  # noqa: E731
        print(f"concept maps, the field's metrics (docs/evaluation.md): pointing game {f3(seg, 'loc_pointing_game')} "
              f"(random {f3(rnd, 'loc_pointing_game')}), relevance mass {f3(seg, 'loc_relevance_mass')} "
              f"(rectified {f3(seg, 'loc_relevance_mass_relu')}), relevance rank {f3(seg, 'loc_relevance_rank')}, "
              f"top-k intersection {f3(seg, 'loc_top_k_intersection')}")
    cut = m.get("cutoff", {})
    print(f"dropped by the interpretability cutoff ({cut.get('statistic', '?')} statistic, {cut.get('cutoff', '?')}): "
          f"{len(m['bottleneck']['dropped'])} concepts; kept because the head uses them: "
          f"{len(cut.get('kept_for_head', []))}")
    ex = m.get("explanations")
    if ex and ex["shown"]:
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"top-{ex['top_k']} concepts of {ex['images']} test images with an empty ground-truth mask: "
              f"{pct(ex['shown_mask_empty'])} of all shown; {pct(ex['present']['mask_empty'])} of those shown as "
              f"present, {pct(ex['absent']['mask_empty'])} of those shown as absent")
    iv = m.get("interventions")
    if iv:
        print("intervention curves (ground-truth concepts, AUC of accuracy over k): " + ", ".join(
            f"{p} {iv['map']['auc'][p]['accuracy']:.3f} (region {iv['region']['auc'][p]['accuracy']:.3f})"
            for p in iv["map"]["auc"]))
    print(f"report: {res.out / 'report.html'}")
    print(f"model:  {res.out / 'model'}")
    return 0

