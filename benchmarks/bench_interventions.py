"""Intervention curves on the demo world: the figure and table of docs/evaluation.md.

Loads a finished demo run (``--demo-dir``; ``salfcbm demo`` writes one) or runs the demo there
with ``--n-train/--n-val/--n-test`` first, then corrects ``k`` concepts per test scene with every
policy, with the ground-truth masks as targets, in both modes (`salfcbm.evaluation.intervention_curve`)::

    python benchmarks/bench_interventions.py --demo-dir runs/demo --figure docs/img/intervention_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import torch

    from salfcbm.demo.run import DemoConfig, load_demo, run_demo
    from salfcbm.evaluation.interventions import intervention_curve, targets_from_masks
    from salfcbm.viz import save_figure

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", default="runs/demo")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--images", type=int, default=200, help="test scenes to evaluate")
    p.add_argument("--figure", default="docs/img/intervention_curves.png")
    p.add_argument("--json", default=None, help="write the curves here")
    args = p.parse_args(argv)
    out = Path(args.demo_dir)
    if not (out / "model" / "model.safetensors").exists():
        cfg = DemoConfig(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, num_classes=4,
                         backbone_epochs=5, bottleneck_steps=300, report_images=1)
        run_demo(out, cfg, progress=True)
    model, data = load_demo(out)
    test = data["test"]
    idx = list(range(min(args.images, len(test))))
    targets = targets_from_masks(test.masks_batch(idx), test.concepts)
    subset = torch.utils.data.Subset(test, idx)
    res = {mode: intervention_curve(model, subset, targets, mode=mode) for mode in ("map", "region")}
    for r in res.values():
        print(r.to_markdown())
    fig = res["map"].plot(title=f"Intervention curves on the demo's test scenes ({len(idx)} images, whole-map edits, "
                                "ground-truth targets)")
    print(f"figure: {save_figure(fig, args.figure, dpi=90)}")
    result = {"demo_config": json.loads((out / "demo_config.json").read_text()),
              **{m: r.to_dict() for m, r in res.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
