"""SALF-CBM heatmaps against attribution baselines: segmentation, deletion/insertion, speed (paper 4.2, Table 2).

Offline (the default): the procedural scenes of ``salfcbm.demo.scenes``, whose ground-truth
masks say where each class's evidence is, with the backbone and the SALF-CBM trained by the
demo pipeline (``salfcbm.demo.run.run_demo``; run here with a small configuration if
``--demo-dir`` holds no finished run)::

    python benchmarks/bench_attribution.py --quick          # 32 images, coarse curves, ~1 min after the demo
    python benchmarks/bench_attribution.py --threads 1      # 200 images, 100-step curves, a few minutes
    python benchmarks/bench_attribution.py --update-docs    # also refresh docs/benchmarks.md and its figure

Real data: a SALF-CBM saved with ``save_pretrained`` (a folder or a Hub repo) whose backbone is
a pretrained timm model, and the ImageNet-segmentation file ``gtsegs_ijcv.mat``; the baselines
explain the same timm model with its own ImageNet classifier::

    python benchmarks/bench_attribution.py --model path/or/hub-repo \\
        --imagenet-seg gtsegs_ijcv.mat --images 4276 --device cuda

For every method the run reports pixel accuracy, mIoU, mAP (Chefer et al.'s protocol), the
deletion and insertion AUC (RISE, on the model the method explains), seconds per image and
that time as a ratio to SALF-CBM's (same device, same batch), plus the wrapped model's
forward time as a ratio to the bare backbone's, and the field's metrics (pointing game,
relevance mass and rank accuracy, top-k intersection, on the signed and on the rectified map;
Average Drop / Increase in Confidence; faithfulness correlation; see docs/evaluation.md). Results: ``--out`` (JSON), the same name
with ``.md`` (table) and ``attribution_examples.png`` (the same images explained by each
method, paper figure 4) next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from salfcbm._utils.io import atomic_write, atomic_write_text
from salfcbm.demo.checks import class_evidence_masks, explanation_mask_check
from salfcbm.evaluation.baselines import list_baselines
from salfcbm.evaluation.benchmark import (
    build_methods,
    constant_substrate,
    forward_speed,
    plot_attribution_examples,
    run_attribution_benchmark,
)

ALL_METHODS = ["salfcbm", "salfcbm_logit", *list_baselines()]
#: Demo run when --demo-dir has none: small enough for demo + benchmark in ~10 min on 2 CPU cores.
BENCH_DEMO = {"n_train": 1500, "n_val": 300, "n_test": 300, "backbone_epochs": 8, "bottleneck_steps": 600}
CONFIG_FILE = "bench_demo_config.json"
DOCS_START, DOCS_END = "<!-- attribution-results:start -->", "<!-- attribution-results:end -->"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo-dir", default="runs/demo", help="finished demo run to load, or where to run a small one")
    p.add_argument("--images", type=int, default=None, help="images to evaluate (default 200, 32 with --quick)")
    p.add_argument("--methods", nargs="+", default=ALL_METHODS, choices=ALL_METHODS, metavar="METHOD",
                   help=f"methods to compare (default: all of {ALL_METHODS})")
    p.add_argument("--quick", action="store_true", help="few images, coarse deletion/insertion curves, short IG")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attribution.json"))
    p.add_argument("--target", choices=("predicted", "label"), default="predicted",
                   help="explain each model's predicted class (Chefer et al.) or the true label (synthetic only)")
    p.add_argument("--target-mask", choices=("objects", "concepts"), default="objects",
                   help="synthetic ground truth: the objects satisfying the class rule, or the union of its concepts")
    p.add_argument("--steps", type=int, default=None, help="deletion/insertion steps (default 100, 32 with --quick)")
    p.add_argument("--ig-steps", type=int, default=None, help="integrated-gradients steps (default 50, 16 with --quick)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (also the timing batch)")
    p.add_argument("--timing-repeats", type=int, default=None, help="timed calls per method (default 3, 2 with --quick)")
    p.add_argument("--examples", type=int, default=4, help="images in the example figure")
    p.add_argument("--model", default=None, help="real data: a saved SALF-CBM folder or Hub repo (timm backbone)")
    p.add_argument("--imagenet-seg", default=None, help="real data: path to gtsegs_ijcv.mat")
    p.add_argument("--size", type=int, default=224, help="real data: evaluation resolution of the masks")
    p.add_argument("--workers", type=int, default=0, help="real data: DataLoader workers")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own); 1 gives stable timings on a busy machine")
    p.add_argument("--update-docs", action="store_true",
                   help="copy the table and figure into docs/benchmarks.md and docs/img/")
    p.add_argument("--no-progress", action="store_true")
    return p


# --------------------------------------------------------------------------- model and data


def _demo(args, progress: bool):
    from salfcbm.demo.run import DemoConfig, load_demo, run_demo

    out = Path(args.demo_dir)
    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    cfg_file = out / CONFIG_FILE
    finished = (out / "model" / "model.safetensors").exists()
    if cfg_file.exists():
        saved = json.loads(cfg_file.read_text())
        cfg = DemoConfig(**{k: v for k, v in saved.items() if k in fields})
    elif finished:
        cfg = DemoConfig()  # a run made by `salfcbm demo` with its defaults
    else:
        cfg = DemoConfig(**{k: v for k, v in BENCH_DEMO.items() if k in fields})
    if not finished:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_file, json.dumps(dataclasses.asdict(cfg), indent=2))
        print(f"no finished demo run in {out}; running the demo with {dataclasses.asdict(cfg)}", flush=True)
        t0 = time.perf_counter()
        run_demo(out, cfg, progress=progress, device=args.device)
        print(f"demo finished in {time.perf_counter() - t0:.0f} s", flush=True)
    model, data = load_demo(out, cfg)
    return model, data, dataclasses.asdict(cfg)


def _table2_model(demo_model, data, cfg: dict, out: Path, progress: bool, device):
    """The paper's Table 2 model on the scenes: the demo's frozen backbone, one concept per class.

    Trained with the concepts "An image of a {class}" (their ground truth: the objects that meet
    the class rule), the paper's head selection, in ``out/table2`` (resumable).
    """
    from salfcbm import wrap
    from salfcbm.demo.scenes import GroundTruthScorer
    from salfcbm.explain.attribution import CLASS_TEMPLATE
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, HeadConfig, fit

    classes = data["train"].classes
    c = demo_model.config
    model = wrap(demo_model.backbone, concepts=[CLASS_TEMPLATE.replace("{class}", k) for k in classes],
                 num_classes=len(classes), class_names=classes, grid=demo_model.grid, backbone_weights=None,
                 input_size=tuple(c["input_size"]), input_mean=c["input_mean"], input_std=c["input_std"])
    res = fit(
        model, data["train"], data["val"], scorer=GroundTruthScorer(data["train"], class_template=CLASS_TEMPLATE),
        prompts=PromptGrid(grid=demo_model.grid, radius=cfg["radius"]), run_dir=out / "table2", baseline=False,
        head=HeadConfig.paper("default"), progress=progress, device=device,
        filter_concepts=False,  # the class concepts are the protocol: LF-CBM's filters would drop them as too long
        bottleneck=BottleneckConfig(max_steps=cfg["bottleneck_steps"], batch_size=256, val_every=50, patience=8,
                                    lr=cfg["bottleneck_lr"], cutoff=cfg["cutoff"], seed=cfg["seed"]),
    )
    return res.model.eval()


class _KeepRule:
    """Calls an attributor after putting ``module.rule`` back: Captum's LRP deletes every rule after each call."""

    def __init__(self, attributor, module, rule_factory) -> None:
        self.attributor, self.module, self.rule_factory = attributor, module, rule_factory

    def attribute(self, inputs, target=None):
        if not hasattr(self.module, "rule"):
            self.module.rule = self.rule_factory()
        return self.attributor.attribute(inputs, target)


def _lrp_rule_for_small_convnet(backbone):
    """SmallConvNet normalises its input in a custom module that Captum's LRP has no rule for.

    The normalisation is a per-pixel affine map in front of the first convolution; passing the
    relevance through it unchanged (Captum's ``IdentityRule``) is the usual treatment. Returns
    the module and the rule factory, or ``None`` for other backbones.
    """
    try:
        from captum.attr._utils.lrp_rules import IdentityRule
    except ImportError:  # pragma: no cover - captum is installed with the baselines extra
        return None
    from salfcbm.demo.scenes import SmallConvNet

    if not isinstance(backbone, SmallConvNet):
        return None
    norm = backbone.stem[0]
    if not hasattr(norm, "rule"):
        norm.rule = IdentityRule()  # present when make_baseline("lrp") checks the model
    return norm, IdentityRule


def _accuracy(fn, x, y) -> float:
    with torch.no_grad():
        return float((fn(x).argmax(1) == y).float().mean())


# --------------------------------------------------------------------------- docs


def _update_docs(md: str, figure: Path, command: str, meta: dict) -> Path:
    docs = ROOT / "docs" / "benchmarks.md"
    img = ROOT / "docs" / "img" / "attribution_examples.png"
    atomic_write(img, lambda tmp: shutil.copyfile(figure, tmp))
    block = "\n".join([
        DOCS_START,
        (
            f"Latest run ({meta['date']}, {meta['device_name']}, {meta['n_images']} images, "
            f"{meta['n_steps']} deletion/insertion steps), produced by:"
        ),
        "",
        "<!-- docs-test: skip (the full benchmark takes minutes; this is the command that produced the table) -->",
        "```bash",
        command,
        "```",
        "",
        md.rstrip(),
        "",
        "![The same test images explained by each method](img/attribution_examples.png)",
        DOCS_END,
    ])
    text = docs.read_text() if docs.exists() else f"# Benchmarks\n\n{DOCS_START}\n{DOCS_END}\n"
    if DOCS_START not in text:
        text = text.rstrip() + f"\n\n{DOCS_START}\n{DOCS_END}\n"
    text = re.sub(re.escape(DOCS_START) + r".*?" + re.escape(DOCS_END), lambda _: block, text, flags=re.DOTALL)
    atomic_write_text(docs, text)
    return docs


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    quick = args.quick
    n_images = args.images or (32 if quick else 200)
    n_steps = args.steps or (32 if quick else 100)
    ig_steps = args.ig_steps or (16 if quick else 50)
    repeats = args.timing_repeats or (2 if quick else 3)
    progress = not args.no_progress
    device = torch.device(args.device or "cpu")
    real = args.model is not None or args.imagenet_seg is not None
    if real and (args.model is None or args.imagenet_seg is None):
        raise SystemExit("Real data needs both --model (a saved SALF-CBM) and --imagenet-seg (gtsegs_ijcv.mat).")
    if real and args.target == "label":
        raise SystemExit("--target label needs class labels; the ImageNet-segmentation file has none.")
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = " ".join(["python benchmarks/bench_attribution.py", *(sys.argv[1:] if argv is None else argv)])

    baseline_kwargs = {"integrated_gradients": {"n_steps": ig_steps, "internal_batch_size": 64}}
    setup: dict = {}
    demo_model = None
    lrp_rule = None
    if real:
        from torch.utils.data import DataLoader, Subset

        from salfcbm.datasets.imagenet_seg import ImagenetSegmentation
        from salfcbm import SALFCBM

        model = SALFCBM.from_pretrained(args.model).eval().to(device)
        ds = ImagenetSegmentation(args.imagenet_seg, size=args.size)
        n = min(n_images, len(ds))
        loader = DataLoader(Subset(ds, range(n)), batch_size=args.batch_size, num_workers=args.workers)
        backbone_preprocess = "model"
        images, masks, labels = loader, None, None
        first = next(iter(loader))[0][: args.batch_size].to(device)
        setup = {"data": f"ImageNet-segmentation ({args.imagenet_seg})", "model": args.model, "size": args.size}
    else:
        from salfcbm.demo.scenes import SmallConvNet

        demo_model, data, demo_cfg = _demo(args, progress)
        test = data["test"]
        # Table 2's protocol: a model trained with "An image of a {class}" concepts, scored by that concept's map
        model = _table2_model(demo_model.eval(), data, demo_cfg, Path(args.demo_dir), progress, device).to(device)
        n = min(n_images, len(test))
        idx = list(range(n))
        images = torch.stack([test[i][0] for i in idx])
        labels = torch.tensor([test[i][1] for i in idx])
        masks = class_evidence_masks(test, idx, mode=args.target_mask)
        # SmallConvNet was trained on [0, 1] images (it normalises inside); a timm backbone on normalised ones.
        backbone_preprocess = None if isinstance(model.backbone, SmallConvNet) else "model"
        lrp_rule = _lrp_rule_for_small_convnet(model.backbone)
        first = images[: args.batch_size].to(device)
        setup = {"data": f"SyntheticScenes test split, first {n} images", "demo_dir": args.demo_dir,
                 "demo_config": demo_cfg, "target_mask": args.target_mask}

    methods, skipped = build_methods(
        model, args.methods, backbone_preprocess=backbone_preprocess, baseline_kwargs=baseline_kwargs,
        on_error="record",
    )
    if "lrp" in methods and lrp_rule is not None:
        methods["lrp"].attributor = _KeepRule(methods["lrp"].attributor, *lrp_rule)
    bpre = model.preprocess if backbone_preprocess == "model" else None
    result = run_attribution_benchmark(
        methods, images, masks, targets="labels" if args.target == "label" else "predicted", labels=labels,
        batch_size=args.batch_size, n_steps=n_steps, deletion_substrate=constant_substrate(model.config["input_mean"]),
        timing_repeats=repeats, reference="salfcbm" if "salfcbm" in methods else None, n_examples=args.examples,
        max_images=n, device=device, on_error="record", progress=progress,
    )
    if not real:  # the scenes have concept masks: how often is a shown concept not in the image at all?
        # on the demo's model: its concepts are the scenes' (the Table 2 model's are class concepts)
        result.meta["explanation_masks"] = explanation_mask_check(demo_model.to(device), test, idx, top_k=4)
        from salfcbm.evaluation.interventions import intervention_curve, targets_from_masks

        result.meta["interventions"] = intervention_curve(  # annotation targets, whole-map edits, every policy
            demo_model, torch.utils.data.Subset(test, list(idx)), targets_from_masks(test.masks_batch(idx), test.concepts)
        ).to_dict()
    for name, reason in skipped.items():
        result.rows[name] = {"explains": "backbone", "error": reason}
    result.rows = {k: result.rows[k] for k in args.methods if k in result.rows}
    result.forward = forward_speed(
        model, model.backbone, first, wrapped_preprocess=model.preprocess, bare_preprocess=bpre, repeats=5
    )
    if labels is not None:
        x = first.float()
        y = labels[: x.shape[0]].to(device)
        setup["accuracy_on_timing_batch"] = {
            "salfcbm": _accuracy(lambda t: model(model.preprocess(t)).logits, x, y),
            "backbone": _accuracy(lambda t: model.backbone(t if bpre is None else bpre(t)), x, y),
        }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    result.meta.update(setup)
    result.meta.update(
        command=command, quick=quick, ig_steps=ig_steps, deletion_substrate="constant colour = backbone input mean",
        date=time.strftime("%Y-%m-%d"), device_name=f"{device.type}: {device_name}", python=platform.python_version(),
    )

    out = Path(args.out)
    md_path = out.with_suffix(".md")
    fig_path = out.with_name("attribution_examples.png")
    md = result.to_markdown()
    result.save(out, md_path)
    plot_attribution_examples(result, fig_path, methods=[m for m in args.methods if m in result.examples.get("heatmaps", {})])
    if result.meta.get("interventions"):  # the demo's intervention curves next to the examples
        from salfcbm.viz import plot_intervention_curves
        from salfcbm.viz import save_figure

        fig = plot_intervention_curves(result.meta["interventions"])
        print(f"intervention curves: {save_figure(fig, out.with_name('intervention_curves.png'), dpi=90)}")
    print()
    print(md)
    print(f"results: {out}, {md_path}, {fig_path}")
    if args.update_docs:
        print(f"docs: {_update_docs(md, fig_path, command, result.meta)}")
    return result.to_dict()


if __name__ == "__main__":
    main()
