"""Coverage sweep: does ``salfcbm.wrap`` with the default layer work on every architecture?

One model per timm architecture module (the smallest, by parameter count, counted on
the meta device) and every torchvision classification model, all randomly
initialised. For each: the layer found, its layout, the concept-map grid of the
tapped features, pass/fail and why. Prints a table and writes JSON.

    python benchmarks/coverage.py                 # everything (tens of minutes on a laptop CPU)
    python benchmarks/coverage.py --quick         # a sample of 12 timm modules + 6 torchvision models
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import salfcbm  # noqa: E402
from salfcbm._utils.io import atomic_write_text  # noqa: E402

warnings.filterwarnings("ignore")


class _Timeout(Exception):
    pass


def _alarm(_sig, _frm):
    raise _Timeout


def _n_params_meta(build) -> int:
    with torch.device("meta"):
        m = build()
    return sum(p.numel() for p in m.parameters())


def smallest_timm_models(modules: list[str]) -> list[tuple[str, str]]:
    out = []
    for mod in modules:
        names = timm.list_models(module=mod)
        if not names:
            continue
        best, best_n = None, None
        for n in names:
            try:
                k = _n_params_meta(lambda n=n: timm.create_model(n, pretrained=False))
            except Exception:  # noqa: BLE001 - some builders refuse meta; try them last
                continue
            if best_n is None or k < best_n:
                best, best_n = n, k
        out.append((mod, best or names[0]))
    return out


def try_one(source: str, name: str, build, timeout: int) -> dict:
    row = {"source": source, "model": name, "status": "fail", "layer": None, "layout": None, "feature_grid": None,
           "channels": None, "input": None, "seconds": None, "reason": ""}
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        backbone = build().eval()
        model = salfcbm.wrap(backbone, concepts=["a", "b", "c"], num_classes=2, backbone_weights=None)
        h, w = model.config["input_size"]
        row["input"] = [h, w]
        with torch.no_grad():
            fmap = model.forward_features(torch.zeros(1, 3, h, w))
            out = model(torch.zeros(1, 3, h, w))
        if out.concept_maps.shape != (1, 3, 7, 7) or not torch.isfinite(out.logits).all():
            raise RuntimeError(f"bad output {tuple(out.concept_maps.shape)}")
        row.update(status="pass", layer=model.layer, layout=model.tap.layout,
                   feature_grid=list(fmap.shape[-2:]), channels=int(fmap.shape[1]))
        row["prefix_tokens"] = model.tap.num_prefix_tokens
        if any(m._forward_hooks for m in backbone.modules()):
            row.update(status="fail", reason="a hook survived")
    except _Timeout:
        row["reason"] = f"timed out after {timeout}s"
    except Exception as e:  # noqa: BLE001 - the reason is the result
        row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        row["trace"] = traceback.format_exc(limit=3)[-600:]
    finally:
        signal.alarm(0)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small sample")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--only", choices=["timm", "torchvision"], default=None)
    ap.add_argument("--out", default="benchmarks/results/coverage.json")
    ap.add_argument("--markdown", default=None, help="also write the table as a Markdown page")
    ap.add_argument("--from-json", nargs="+", default=None, help="only render these result files (no run)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out and run the rest")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = [r for f in args.from_json for r in json.loads(Path(f).read_text())["rows"]]
        write_markdown(rows, Path(args.markdown or "docs/coverage.md"))
        return 0
    torch.set_grad_enabled(False)

    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if args.resume and out.exists() else []
    done = {(r["source"], r.get("module") or r["model"]) for r in rows}

    def save():
        atomic_write_text(out, json.dumps({"passed": sum(r["status"] == "pass" for r in rows), "total": len(rows),
                                           "timm": timm.__version__, "torchvision": torchvision.__version__,
                                           "rows": rows}, indent=1))

    if args.only in (None, "timm"):
        modules = [m for m in sorted(timm.list_modules()) if ("timm", m) not in done]
        if args.quick:
            modules = [m for m in modules if m in {"resnet", "vision_transformer", "swin_transformer", "convnext",
                                                   "efficientnet", "deit", "maxxvit", "levit", "beit", "mobilevit",
                                                   "regnet", "eva"}]
        for mod, name in smallest_timm_models(modules):
            r = try_one("timm", name, lambda name=name: timm.create_model(name, pretrained=False), args.timeout)
            r["module"] = mod
            rows.append(r)
            save()
            print(f"{r['status']:4} timm/{mod}:{name} {r['layer']} {r['layout']} {r['feature_grid']} {r['reason']}",
                  flush=True)
    if args.only in (None, "torchvision"):
        names = torchvision.models.list_models(module=torchvision.models)
        if args.quick:
            names = ["resnet18", "vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small"]
        for name in [n for n in names if ("torchvision", n) not in done]:
            r = try_one("torchvision", name, lambda name=name: torchvision.models.get_model(name), args.timeout)
            rows.append(r)
            save()
            print(f"{r['status']:4} torchvision:{name} {r['layer']} {r['layout']} {r['feature_grid']} {r['reason']}",
                  flush=True)

    n_pass = sum(r["status"] == "pass" for r in rows)
    print()
    print("| source | model | layer | layout | grid | status | reason |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        grid = "x".join(map(str, r["feature_grid"])) if r["feature_grid"] else "-"
        print(f"| {r['source']} | {r['model']} | {r['layer'] or '-'} | {r['layout'] or '-'} | {grid} | "
              f"{r['status']} | {r['reason']} |")
    print(f"\n{n_pass}/{len(rows)} models pass")
    save()
    print(f"wrote {out}")
    if args.markdown:
        write_markdown(rows, Path(args.markdown))
    return 0


def write_markdown(rows: list[dict], path: Path) -> None:
    """The coverage table as a documentation page."""
    n_pass = sum(r["status"] == "pass" for r in rows)
    by_src = {}
    for r in rows:
        by_src.setdefault(r["source"], []).append(r)
    lines = [
        "# Backbone coverage",
        "",
        "`salfcbm.wrap` with the **default layer** on the smallest model of every timm architecture module",
        "(`timm.list_modules()`) and on every torchvision classification model, randomly initialised, at each",
        "model's own input size. Produced by:",
        "",
        "```bash",
        "python benchmarks/coverage.py --markdown docs/coverage.md",
        "```",
        "",
        f"**{n_pass} of {len(rows)} models pass** "
        + ", ".join(f"{src}: {sum(r['status'] == 'pass' for r in rs)}/{len(rs)}" for src, rs in by_src.items())
        + ". *layout* is what the tapped module emits (NCHW maps, NHWC stages, NLC tokens); *grid* is",
        "the size of the tapped map before it is resized to the 7 x 7 prompting grid.",
        "",
    ]
    for src, rs in by_src.items():
        lines += [f"## {src}", "", "| module | model | layer | layout | prefix tokens | grid | status | reason |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rs:
            grid = "x".join(map(str, r["feature_grid"])) if r.get("feature_grid") else "-"
            lines.append(f"| {r.get('module', '-')} | `{r['model']}` | `{r['layer'] or '-'}` | {r['layout'] or '-'} | "
                         f"{r.get('prefix_tokens', '-') if r['layout'] == 'NLC' else '-'} | {grid} | {r['status']} | "
                         f"{(r['reason'] or '').replace('|', '/')} |")
        lines.append("")
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
