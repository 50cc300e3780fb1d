"""Where the SALF-CBM class map's maximum lands, next to Grad-CAM (docs/evaluation.md, pointing game study).

Loads a finished demo run (``salfcbm demo --out DIR``) and scores, on its test scenes against the
class-evidence masks, the class map (signed, rectified, nearest upsampling, upsampled with the
prompt centres as nodes), Grad-CAM of the same SALF-CBM and Grad-CAM of the backbone::

    salfcbm demo --out runs/demo --n-train 1500 --n-val 300 --n-test 300
    python benchmarks/bench_pointing_game.py --demo-dir runs/demo --images 200
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from salfcbm.demo.checks import class_evidence_masks
from salfcbm.demo.run import load_demo
from salfcbm.evaluation.baselines import make_baseline
from salfcbm.evaluation.benchmark import build_methods
from salfcbm.evaluation.localisation import LocalisationMetrics
from salfcbm.explain.attribution import SALFCBMAttribution


def _interp_matrix(n: int, m: int) -> torch.Tensor:
    """``(n, m)`` linear interpolation with cell ``i`` at pixel ``(i + 1) n / (m + 1)`` (the prompt centre)."""
    c = ((torch.arange(n, dtype=torch.float64) + 0.5) * (m + 1) / n - 1.0).clamp(0, m - 1)
    lo = c.floor().long().clamp(max=m - 2)
    w = c - lo
    a = torch.zeros(n, m, dtype=torch.float64)
    a[torch.arange(n), lo] = 1 - w
    a[torch.arange(n), lo + 1] = w
    return a.float()


def _study(heat: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    lm = LocalisationMetrics()
    lm.update(heat, masks)
    r = lm.compute()
    h = heat[:, 0]
    dist, ties = [], []
    for i in range(h.shape[0]):
        m = masks[i].numpy()
        if m.any():
            at = (h[i] == h[i].max()).numpy()
            dist.append(distance_transform_edt(~m)[at].min())
            ties.append(at.sum() > 1)
    d = np.array(dist)
    keys = ("pointing_game", "pointing_game_tolerant", "relevance_mass", "relevance_mass_relu", "relevance_rank")
    out = {k: round(r[k], 4) for k in keys}
    out.update(within_2px=round(float(np.mean(d <= 2)), 4), within_4px=round(float(np.mean(d <= 4)), 4),
               median_miss_px=round(float(np.median(d[d > 0])), 2) if (d > 0).any() else 0.0,
               tied_max=round(float(np.mean(ties)), 4), negative_pixels=round(float((h < 0).float().mean()), 4))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-dir", default="runs/demo")
    p.add_argument("--images", type=int, default=200)
    args = p.parse_args()
    torch.manual_seed(0)
    model, data = load_demo(args.demo_dir)
    model.eval()
    ds, idx = data["test"], list(range(args.images))
    x01 = torch.stack([ds[i][0] for i in idx])
    masks = class_evidence_masks(ds, idx)
    x = model.preprocess(x01, crop=False)
    with torch.no_grad():
        t = model(x).logits.argmax(1)
    H, W = x01.shape[-2:]
    grid = SALFCBMAttribution(model, upsample=False).attribute(x, t)
    full = SALFCBMAttribution(model).attribute(x, t)
    gh, gw = grid.shape[-2:]
    gb = build_methods(model, ["gradcam"])[0]["gradcam"]
    xb = gb.inputs(x01)
    gc = make_baseline("gradcam", model.as_classifier().eval(), "model.backbone." + model.layer)
    maps = {
        "class map, signed, bilinear": full,
        "class map, rectified": full.clamp(min=0),
        "class map, prompt-centre nodes": _interp_matrix(H, gh) @ grid @ _interp_matrix(W, gw).T,
        "class map, nearest": F.interpolate(grid, size=(H, W), mode="nearest"),
        "Grad-CAM, same SALF-CBM": gc.attribute(x, t),
        "Grad-CAM, backbone": gb.attribute(xb, gb.logits(xb).argmax(1)),
    }
    print(json.dumps({k: _study(v.detach().float(), masks) for k, v in maps.items()}, indent=1))


if __name__ == "__main__":
    main()
