"""The end-to-end demo on the built-in procedural scenes (runs offline, on the CPU, in minutes).

No pretrained weights or datasets can be assumed, so the demo stands in for each
missing piece with something whose truth is known:

* the images are `SyntheticScenes` (each concept has a mask);
* the "pretrained backbone" is a small CNN trained on those scenes, then frozen;
* the CLIP scorer is `GroundTruthScorer`, which reads the
  masks (it is *not* CLIP: it tells how much of each prompt circle a concept covers).

Then the real pipeline runs unchanged: prompted similarities, cached features,
bottleneck (Eq. 1), sparse head (Eq. 2), the standard-sparse baseline, explanations,
and a report that compares concept maps with the ground-truth masks.
"""

from __future__ import annotations

import html
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.io import atomic_write_bytes, checked_safetensors, read_checked_metadata
from salfcbm._utils.modes import preserved_modes
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.explain.mixin import SALFCBM
from salfcbm.errors import InputError
from salfcbm.demo.checks import explanation_mask_check
from salfcbm.explain.evidence import EVIDENCE_LABELS
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.store import compute_similarity_store
from salfcbm.demo.backbone import SmallConvNet
from salfcbm.demo.config import FLAT_BOTTLENECK_KEYWORDS, DemoConfig, demo_bottleneck
from salfcbm.demo.dataset import SyntheticScenes
from salfcbm.demo.pretrain import pretrain_backbone
from salfcbm.demo.scorer import GroundTruthScorer
from salfcbm.training import FitResult, HeadConfig, fit

#: The folder of a saved model that holds its example images (the explorer's default images).
EXAMPLES_DIR = "examples"
#: How many test scenes the demo saves as examples with its model.
EXAMPLE_IMAGES = 200

__all__ = ["DemoConfig", "DemoResult", "demo_bottleneck", "run_demo", "load_demo", "concept_map_miou",
           "FLAT_BOTTLENECK_KEYWORDS", "write_examples", "EXAMPLES_DIR", "EXAMPLE_IMAGES"]


@dataclass
class DemoResult:
    model: SALFCBM
    fit: FitResult | None
    metrics: dict[str, Any]
    out: Path
    datasets: dict[str, SyntheticScenes] = field(default_factory=dict)


def _datasets(cfg: DemoConfig) -> dict[str, SyntheticScenes]:
    kw = dict(image_size=cfg.image_size, seed=cfg.seed, num_classes=cfg.num_classes, compound_concepts=True)
    return {
        "train": SyntheticScenes(n=cfg.n_train, split="train", **kw),
        "val": SyntheticScenes(n=cfg.n_val, split="val", **kw),
        "test": SyntheticScenes(n=cfg.n_test, split="test", **kw),
    }


def _backbone(cfg: DemoConfig, data: dict[str, SyntheticScenes], out: Path, progress: bool) -> SmallConvNet:
    """Train (or reload) the stand-in for a pretrained backbone; saved as checked safetensors.

    The file records a key of every setting that determines the backbone (data, width, epochs,
    seed) and a checksum: a rerun with other settings, or a corrupt file, trains it again.
    """
    from safetensors.torch import load_file

    path = out / "backbone.safetensors"
    key = _backbone_key(cfg)
    net = SmallConvNet(num_classes=cfg.num_classes, width=cfg.backbone_width)
    meta = read_checked_metadata(path) if path.exists() else None
    if meta is not None and meta.get("salfcbm.key") == key:
        net.load_state_dict(load_file(path))
        return net.eval()
    net = pretrain_backbone(
        data["train"], epochs=cfg.backbone_epochs, width=cfg.backbone_width, num_classes=cfg.num_classes,
        val_dataset=data["val"], seed=cfg.seed, progress=progress,
    )
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(path, checked_safetensors(state, {"salfcbm.key": key}))
    return net.eval()


def _backbone_key(cfg: DemoConfig) -> str:
    import hashlib
    import json

    fields = ("image_size", "seed", "num_classes", "n_train", "n_val", "backbone_width", "backbone_epochs")
    return hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in fields}, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def concept_map_miou(
    model: SALFCBM, dataset: SyntheticScenes, *, n: int | None = None, random_maps: bool = False, seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """Zero-shot segmentation of every present concept by its concept map, against the true mask.

    For each test image and each concept of the model present in it, the concept map
    upsampled to the image is scored with the Chefer et al. protocol
    (`SegmentationMetrics`), and with the field's localisation metrics (`LocalisationMetrics`:
    pointing game, relevance mass and rank accuracy, top-k intersection, on the signed and the
    rectified map; keys prefixed ``loc_``). ``random_maps=True`` scores random grid maps
    instead: the floor to compare with.
    """
    from salfcbm.evaluation.localisation import LocalisationMetrics
    from salfcbm.evaluation.metrics import SegmentationMetrics

    n = len(dataset) if n is None else min(n, len(dataset))
    index = [dataset.concepts.index(c) for c in model.concepts]
    seg = SegmentationMetrics(ap_backend="torch")  # the same AP as sklearn's, batched
    loc, scored = LocalisationMetrics(), False
    g = torch.Generator().manual_seed(seed)
    for a in range(0, n, batch_size):
        idx = list(range(a, min(a + batch_size, n)))
        images = torch.stack([dataset[i][0] for i in idx])
        masks = dataset.masks_batch(idx)[:, index]  # (B, M, H, W)
        maps = model(model.preprocess(images)).concept_maps.float()
        if random_maps:
            maps = torch.rand(maps.shape, generator=g)
        up = upsample_bilinear(maps, images.shape[-2:])
        present = masks.flatten(2).any(-1)  # (B, M)
        b, m = present.nonzero(as_tuple=True)
        if len(b):
            seg.update(up[b, m][:, None], masks[b, m])
            loc.update(up[b, m], masks[b, m])
            scored = True
    out = seg.compute()
    if scored:
        out.update({f"loc_{k}": v for k, v in loc.compute().items()})
    return out


def _figures(model: SALFCBM, data: SyntheticScenes, out: Path, k: int, n_images: int) -> list[dict[str, Any]]:
    """Per test image: top contributions, their evidence kinds and heatmaps, above the ground-truth masks."""
    from salfcbm.viz.figures import plot_explanation, save_figure

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    rows = []
    idx = list(range(n_images))
    images = torch.stack([data[i][0] for i in idx])
    labels = [data[i][1] for i in idx]
    expl = model.explain(model.preprocess(images), top_k=k)
    for j, i in enumerate(idx):
        ce = expl[j].classes[0]
        masks = data.masks(i)[[data.concepts.index(n) for n in ce.concepts]]
        fig = plot_explanation(expl[j], images[j], masks=masks, panel_size=2.2)
        fig.axes[0].set_title(f"pred: {model.class_names[ce.target]}\ntrue: {model.class_names[labels[j]]}", fontsize=7)
        path = figs / f"test_{i:03d}.png"
        save_figure(fig, path, dpi=90)
        rows.append({
            "image": i,
            "figure": str(path.relative_to(out)),
            "predicted": model.class_names[ce.target],
            "true": model.class_names[labels[j]],
            "contributions": [(n_, round(float(s), 3)) for n_, s in zip(ce.concepts, ce.scores)],
            "evidence": list(ce.evidence),
            "mask_empty": [not bool(m.any()) for m in masks],
        })
    return rows


def _interventions(model: SALFCBM, data: SyntheticScenes, out: Path, n: int) -> dict[str, Any]:
    """Intervention curves on the first ``n`` test scenes, with the ground-truth masks as targets:
    whole-map and region edits, every policy; the whole-map curves are drawn to figures/interventions.png."""
    from salfcbm.evaluation.interventions import intervention_curve, targets_from_masks
    from salfcbm.viz.figures import save_figure

    idx = list(range(n))
    targets = targets_from_masks(data.masks_batch(idx), data.concepts)
    subset = torch.utils.data.Subset(data, idx)
    res = {mode: intervention_curve(model, subset, targets, mode=mode) for mode in ("map", "region")}
    path = out / "figures" / "interventions.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(res["map"].plot(), path, dpi=90)
    return {**{mode: r.to_dict() for mode, r in res.items()}, "figure": str(path.relative_to(out))}


def _path_figure(path_rows: list[dict[str, Any]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nec = [r["nec"] for r in path_rows]
    acc = [r.get("val_acc") for r in path_rows]
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(nec, acc, marker="o", ms=3)
    sel = [r for r in path_rows if r.get("selected")]
    if sel:
        ax.plot([sel[0]["nec"]], [sel[0]["val_acc"]], "r*", ms=12, label="selected")
        ax.legend()
    ax.set_xlabel("non-zero weights per class (NEC)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Sparse head: regularisation path")
    fig.tight_layout()
    p = out / "figures" / "path.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return str(p.relative_to(out))


def _matched_rows(metrics: dict[str, Any]) -> list[str]:
    """The standard-sparse baseline at SALF-CBM's NEC, as a report table row."""
    b = (metrics.get("matched_nec") or {}).get("standard_sparse")
    if not b:
        return []
    return [f"<tr><td>standard, sparse, at SALF-CBM's NEC</td><td>{b.get('test_accuracy', float('nan')):.3f}</td>"
            f"<td>{b['val_accuracy']:.3f}</td><td>{b['nec']:.2f}</td><td>same features</td></tr>"]


def _write_report(out: Path, metrics: dict[str, Any], rows: list[dict[str, Any]], path_png: str,
                  sankey: str | None) -> Path:
    s, b = metrics["salfcbm"], metrics.get("standard_sparse", {})
    seg, rnd = metrics["segmentation"], metrics["segmentation_random"]
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>salfcbm demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}img{max-width:100%}</style></head><body>",
        "<h1>SALF-CBM on procedural scenes</h1>",
        "<p>Stand-ins: the backbone is a small CNN trained on the scenes; the concept scorer reads ground-truth "
        "masks instead of running CLIP. Everything else is the real pipeline.</p>",
        "<h2>Accuracy (test)</h2><table><tr><th>model</th><th>test accuracy</th><th>val accuracy</th>"
        "<th>non-zeros per class (NEC)</th><th>inputs</th></tr>",
        f"<tr><td>SALF-CBM (sparse)</td><td>{s.get('test_accuracy', float('nan')):.3f}</td>"
        f"<td>{s['val_accuracy']:.3f}</td><td>{s['nec']:.2f}</td><td>{s['concepts']} concepts</td></tr>",
        f"<tr><td>standard, sparse</td><td>{b.get('test_accuracy', float('nan')):.3f}</td>"
        f"<td>{b.get('val_accuracy', float('nan')):.3f}</td><td>{b.get('nec', float('nan')):.2f}</td>"
        f"<td>{b.get('features', '-')} features</td></tr>",
        *_matched_rows(metrics),
        "</table><p>Heads selected as in the paper (LF-CBM's fixed lambda). Accuracies of heads with different "
        "sparsity are not comparable; the last row is the standard-sparse baseline re-selected on its path at "
        "SALF-CBM's non-zeros per class.</p>",
        "<h2>Where: concept maps vs ground-truth masks</h2><table><tr><th>maps</th><th>pixel accuracy</th>"
        "<th>mIoU</th><th>mAP</th></tr>",
        f"<tr><td>SALF-CBM concept maps</td><td>{seg['pixel_accuracy']:.3f}</td><td>{seg['miou']:.3f}</td>"
        f"<td>{seg['map']:.3f}</td></tr>",
        f"<tr><td>random maps (floor)</td><td>{rnd['pixel_accuracy']:.3f}</td><td>{rnd['miou']:.3f}</td>"
        f"<td>{rnd['map']:.3f}</td></tr></table>",
        _cutoff_html(metrics.get("cutoff")),
        f"<h2>Sparse head</h2><img src='{esc(path_png)}' style='max-width:480px'>",
    ]
    if sankey:
        parts.append(f"<h2>Decision rules</h2><img src='{esc(sankey)}' style='max-width:900px'>")
    parts.append(_mask_check_html(metrics.get("explanations")))
    parts.append(_interventions_html(metrics.get("interventions")))
    parts.append("<h2>Explanations of test images</h2><p>Top row: the top contributions by |S| and their "
                 "standardised concept maps, on one colour scale (the colour bar; 0 is the concept's training mean). "
                 "Solid frames: the model detects the concept (the peak of its standardised map is above the "
                 "concept's calibrated threshold); dashed frames marked ABSENT: the model does not detect it "
                 "and its absence is what contributes. The ground truth below shows where detection is wrong. "
                 "Bottom row: the ground-truth mask of the same concept.</p>")
    for r in rows:
        contrib = ", ".join(f"{esc(n)} ({v:+.2f}, {esc(EVIDENCE_LABELS.get(e, e))})"
                            for (n, v), e in zip(r["contributions"], r.get("evidence", [""] * len(r["contributions"]))))
        parts.append(f"<h3>test image {r['image']}: predicted {esc(r['predicted'])}, true {esc(r['true'])}</h3>"
                     f"<p>{contrib}</p><img src='{esc(r['figure'])}'>")
    parts.append("</body></html>")
    path = out / "report.html"
    atomic_write_bytes(path, "\n".join(parts).encode())
    return path


def _cutoff_html(cut: dict[str, Any] | None) -> str:
    """The interpretability cutoff's line of the report: what it removed, and what the head needed."""
    if not cut:
        return ""
    esc = html.escape
    kept = cut.get("kept_for_head", [])
    needed = [n[0] for n in cut.get("needed_by_head", []) if n[0] not in kept]
    text = (f"<h2>Interpretability cutoff</h2><p>{esc(str(cut.get('statistic')))} statistic, cutoff "
            f"{cut.get('cutoff')}: {len(cut.get('dropped', []))} concepts removed")
    if kept:
        text += (f"; <b>{len(kept)} concepts below the cutoff kept because the head uses them</b> "
                 f"(their maps follow the scorer less well): {esc(', '.join(kept))}")
    if needed:
        text += f"; <b>removed although the head uses them</b>: {esc(', '.join(needed))}"
    return text + ".</p>"


def _interventions_html(curves: dict[str, Any] | None) -> str:
    """The intervention curves' figure and their areas (whole-map and region edits)."""
    if not curves:
        return ""
    head = "".join(f"<th>AUC accuracy, {m}</th>" for m in ("map", "region") if m in curves)
    rows = "".join(
        f"<tr><td>{html.escape(p)}</td>"
        + "".join(f"<td>{curves[m]['auc'][p]['accuracy']:.3f}</td>" for m in ("map", "region") if m in curves)
        + "</tr>"
        for p in curves["map"]["auc"]
    )
    return (f"<h2>Intervention curves</h2><p>For each of {curves['map']['n_images']} test scenes, k concepts chosen by "
            "a policy are corrected against the ground truth (the masks): a concept the model gets wrong (present "
            "but not there, or there but not present) is set to the mean activation of the scenes where it is "
            "absent / there, and accuracy is measured again; the area is normalised over k (see "
            "docs/evaluation.md). Region edits change the concept map inside the annotated mask only.</p>"
            f"<img src='{html.escape(curves['figure'])}' style='max-width:900px'>"
            f"<table><tr><th>policy</th>{head}</tr>{rows}</table>")


def _mask_check_html(check: dict[str, Any] | None) -> str:
    """The table of how often a shown concept is absent from the image (its mask is empty)."""
    if not check:
        return ""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = "".join(
        f"<tr><td>{html.escape(EVIDENCE_LABELS.get(k, k))}</td><td>{v['shown']}</td><td>{pct(v['mask_empty'])}</td></tr>"
        for k, v in check["by_evidence"].items()
    )
    return (
        f"<h2>Are the shown concepts in the image?</h2><p>Top-{check['top_k']} concepts of {check['images']} test "
        f"images: {pct(check['shown_mask_empty'])} of all shown concepts have an empty ground-truth mask (top-1: "
        f"{check['top1_mask_empty']} images). Of the concepts shown as <b>present</b>, "
        f"{pct(check['present']['mask_empty'])} have an empty mask; of those shown as <b>absent</b>, "
        f"{pct(check['absent']['mask_empty'])} do.</p><table><tr><th>evidence</th><th>shown</th>"
        f"<th>mask empty</th></tr>{rows}</table>"
    )


def run_demo(out: str | os.PathLike = "runs/demo", config: DemoConfig | None = None, *, progress: bool = True,
             device: str | None = None) -> DemoResult:
    """Run the whole pipeline on the procedural scenes and write ``out/report.html``.

    Resumable: the backbone, stores and bottleneck are reused when ``out`` already holds them.

    Examples:
        >>> result = run_demo("runs/demo", DemoConfig(n_train=600, n_val=200, n_test=200))  # doctest: +SKIP
        >>> result.metrics["salfcbm"]["test_accuracy"]  # doctest: +SKIP
    """
    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "demo_config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = _datasets(cfg)
    backbone = _backbone(cfg, data, out, progress)
    size = (cfg.image_size, cfg.image_size)
    model = SALFCBM(backbone, concepts=list(data["train"].concepts), num_classes=cfg.num_classes,
                    class_names=list(data["train"].classes), grid=(cfg.grid, cfg.grid), input_size=list(size),
                    backbone_spec=backbone.spec,  # timm's salfcbm_demo_convnet: the saved model loads by name
                    input_mean=[0.0, 0.0, 0.0], input_std=[1.0, 1.0, 1.0],  # the CNN normalises its [0, 1] inputs
                    input_crop_pct=1.0)  # the model's view is the whole scene, where the ground-truth masks are
    prompts = PromptGrid(grid=(cfg.grid, cfg.grid), radius=cfg.radius)
    sims = {
        split: compute_similarity_store(out / "similarities" / split, data[split], GroundTruthScorer(data[split]),
                                        prompts, progress=progress, shard_size=512,
                                        desc=f"Prompted embeddings ({split})")
        for split in ("train", "val")
    }
    result = fit(
        model, data["train"], data["val"], train_similarities=sims["train"], val_similarities=sims["val"],
        test_data=data["test"], run_dir=out, progress=progress, device=device,
        bottleneck=cfg.bottleneck,
        head=HeadConfig.paper("default", n_lambdas=30),  # the paper's selection: LF-CBM's fixed lambda (7e-4)
    )
    model = result.model.eval()
    write_examples(data["test"], out / "model" / EXAMPLES_DIR, n=min(EXAMPLE_IMAGES, cfg.n_test))
    metrics = dict(result.metrics)
    metrics["backbone"] = {"accuracy_val": _backbone_accuracy(backbone, data["val"])}
    metrics["segmentation"] = concept_map_miou(model, data["test"])
    metrics["segmentation_random"] = concept_map_miou(model, data["test"], random_maps=True, seed=cfg.seed)
    rows = _figures(model, data["test"], out, k=4, n_images=min(cfg.report_images, cfg.n_test))
    metrics["explanations"] = explanation_mask_check(model, data["test"], range(min(200, cfg.n_test)), top_k=4)
    metrics["interventions"] = _interventions(model, data["test"], out, n=min(200, cfg.n_test))
    path_png = _path_figure(result.metrics["path"], out)
    sankey = None
    try:
        from salfcbm.viz.figures import save_sankey

        rules = [model.decision_rules(c) for c in range(min(3, model.num_classes))]
        p = save_sankey(rules, out / "figures" / "sankey.png")
        sankey = str(Path(p).relative_to(out))
    except Exception:  # noqa: BLE001 - the report is still useful without the diagram
        sankey = None
    metrics["seconds"]["demo_total"] = time.perf_counter() - t0
    metrics["report"] = {"explanations": rows}
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2, default=str).encode())
    _write_report(out, metrics, rows, path_png, sankey)
    return DemoResult(model=model, fit=result, metrics=metrics, out=out, datasets=data)


@torch.no_grad()
def _backbone_accuracy(net: torch.nn.Module, data: SyntheticScenes) -> float:
    correct = 0
    with preserved_modes(net, mode=False):
        for a in range(0, len(data), 128):
            idx = range(a, min(a + 128, len(data)))
            x = torch.stack([data[i][0] for i in idx])
            y = torch.tensor([data[i][1] for i in idx])
            correct += int((net(x).argmax(1) == y).sum())
    return correct / len(data)


def load_demo(out: str | os.PathLike = "runs/demo", config: DemoConfig | None = None) -> tuple[SALFCBM, dict]:
    """Load a finished demo run: the SALF-CBM (with its backbone) and the datasets.

    The run's ``demo_config.json`` is used unless ``config`` is given. The model itself loads like
    any other, ``SALFCBM.from_pretrained(out / "model")``; a run saved before the demo backbone was
    registered with timm (its spec names a custom ``SmallConvNet``) is loaded with the run's
    ``backbone.safetensors``.
    """
    out = Path(out)
    if config is None and (out / "demo_config.json").exists():
        config = DemoConfig.from_dict(json.loads((out / "demo_config.json").read_text()))
    cfg = config or DemoConfig()
    if not (out / "model" / "model.safetensors").exists():
        raise FileNotFoundError(f"No finished demo run in {str(out)!r}; run `salfcbm demo --out {out}` first.")
    saved = json.loads((out / "model" / "config.json").read_text()).get("backbone") or {}
    if saved.get("source") != "custom":
        return SALFCBM.from_pretrained(out / "model").eval(), _datasets(cfg)
    from safetensors.torch import load_file

    net = SmallConvNet(num_classes=cfg.num_classes, width=cfg.backbone_width)  # a run of an earlier release
    net.load_state_dict(load_file(out / "backbone.safetensors"))
    model = SALFCBM.from_pretrained(out / "model", backbone=net.eval()).eval()
    return model, _datasets(cfg)


def write_examples(data: SyntheticScenes, folder: Path, n: int) -> list[Path]:
    """The first ``n`` scenes of ``data`` as PNG files in ``folder`` (``000.png``, ...), the model's examples.

    A saved model folder's ``examples/`` is what the explorer (``salfcbm app``) shows and searches
    by default, so ``salfcbm app runs/demo/model`` brings the demo's test scenes.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = (data[i][0].permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
        path = folder / f"{i:03d}.png"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
