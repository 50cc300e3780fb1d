"""The reports of one trained run of a recipe (one process; rank 0 under torchrun, after training).

`report_run` takes a `TrainedRun` (a run after `salfcbm.fit`) and measures what the paper's tables
need besides SALF-CBM's sparse head: the "standard" heads on pooled backbone features, the backbone's
own classifier, the non-sparse SALF-CBM head, the reload-and-explain checks (with the explanations
report and appendix C's neuron figure) and Table 2's ImageNet-segmentation benchmark
(`segmentation_rows`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from salfcbm._utils.tensors import accuracy
from salfcbm.errors import ConfigError, DryRunError, RecipeRunError
from salfcbm.reproduce.recipes import Recipe

__all__ = ["TrainedRun", "backbone_head_accuracy", "report_run", "segmentation_rows"]


def _standard_heads(recipe: Recipe, run: Path, train, val, test, num_classes: int) -> dict[str, float]:
    """The standard model's heads on pooled backbone features (sparse with ``standard_lam``; dense)."""
    from salfcbm.head import fit_dense_head
    from salfcbm.supervision.store import ShardedStore
    from salfcbm.head import HeadConfig, fit_head
    from salfcbm.training.features import fit_standardization, labels_of, store_pooled_features

    g = [store_pooled_features(ShardedStore.open(run / "features" / s)) for s in ("train", "val", "test")]
    y = [labels_of(d) for d in (train, val, test)]
    _, _, z = fit_standardization(*g)
    out = {}
    sparse = fit_head(z[0], y[0], z[1], y[1], num_classes, HeadConfig(lam=recipe.standard_lam, alpha=recipe.alpha),
                      progress=False)
    out["standard_sparse"] = 100 * accuracy(sparse.logits(z[2]), y[2])
    if recipe.dense:
        dense = fit_dense_head(z[0], y[0], z[1], y[1], num_classes=num_classes, progress=False)
        out["standard_dense"] = 100 * accuracy(dense.logits(z[2]), y[2])
    return out


@torch.no_grad()
def backbone_head_accuracy(model, dataset, *, batch_size: int = 256, device=None) -> float:
    """Accuracy (%) of the backbone's own classifier on ``dataset``: the paper's "standard, non-sparse" row.

    The backbone of ``model`` runs whole, with its published head, on the model's own view of
    every image (`SALFCBM.image_transform`, normalised as for the concept maps). Its modes are
    restored afterwards.

    Raises:
        ConfigError: the backbone's output is not one logit per class of ``model``.
    """
    from salfcbm._utils.modes import preserved_modes
    from salfcbm.core.images import align_dataset

    device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
    loader = torch.utils.data.DataLoader(align_dataset(dataset, model.image_transform), batch_size=batch_size)
    correct = seen = 0
    with preserved_modes(model.backbone, mode=False):
        for x, y in loader:
            out = model.backbone(model.image_transform.normalize(x.to(device)))
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != model.num_classes:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(f"The backbone's own classifier gives {got} per batch, expected (B, "
                                  f"{model.num_classes}) logits in the dataset's label order. Use the recipe "
                                  "setting standard_dense='refit' (a dense head fitted on its features) instead.")
            correct += int((out.argmax(1).cpu() == torch.as_tensor(y)).sum())
            seen += len(y)
    return 100 * correct / max(seen, 1)


def _salf_dense(model, run: Path, train, val, test) -> float:
    from salfcbm.head import fit_dense_head
    from salfcbm.supervision.store import ShardedStore
    from salfcbm.training.features import fit_standardization, labels_of, store_concept_activations

    a = [store_concept_activations(model, ShardedStore.open(run / "features" / s)) for s in ("train", "val", "test")]
    y = [labels_of(d) for d in (train, val, test)]
    _, _, z = fit_standardization(*a)
    dense = fit_dense_head(z[0], y[0], z[1], y[1], num_classes=model.num_classes, progress=False)
    return 100 * accuracy(dense.logits(z[2]), y[2])


def _check_reload_and_explain(model, backbone, run: Path, test, n: int = 2) -> dict[str, Any]:
    """Reload the saved model, compare logits, explain ``n`` test images into an HTML report."""
    from salfcbm import SALFCBM  # with its explanation methods
    from salfcbm.viz import write_html_report

    paths = [p for p, _ in test.samples[: min(n, len(test))]]
    x = model.image_transform.view(paths)  # what the model sees, [0, 1]
    model.eval()
    reloaded = SALFCBM.from_pretrained(str(run / "model"), backbone=backbone).eval()
    with torch.no_grad():
        a, b = model(model.preprocess(paths)).logits, reloaded(reloaded.preprocess(paths)).logits.to(model.head.weight.device)
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise DryRunError(f"The reloaded model's logits differ from the trained one's by {(a - b).abs().max():.3g}.")
    expl = model.explain(model.preprocess(paths), top_k=5)
    if not (run / "explanations.html").exists():  # pictures are a resumable stage too
        write_html_report(run / "explanations.html", x.cpu(), expl, model=model)
    return {"reload_max_abs_diff": float((a - b).abs().max()), "explained": int(x.shape[0]),
            "neurons": _neuron_figure(model, test, run / "neurons.png")}


def _neuron_figure(model, test, path: Path, n: int = 5, k: int = 3) -> list[str]:
    """Appendix C / Figure 9: the top-``k`` test images of ``n`` randomly chosen concept neurons."""
    from salfcbm.explain.neurons import top_activating_images
    from salfcbm.viz.neurons import plot_top_images

    g = torch.Generator().manual_seed(0)
    chosen = torch.randperm(model.num_concepts, generator=g)[:n].tolist()
    tops = top_activating_images(model, test, chosen, k=min(k, len(test)))
    if not path.exists():
        plot_top_images(tops).savefig(path, dpi=80)
    return [t.concept for t in tops]


def segmentation_rows(recipe: Recipe, model, seg_file: str | os.PathLike, run: Path, *, n_steps: int,
                  max_images: int | None, device) -> dict[str, dict[str, float]]:
    """Table 2: SALF-CBM and the baselines on ImageNet-segmentation."""
    from salfcbm.evaluation.benchmark import build_methods, run_attribution_benchmark
    from salfcbm.datasets.imagenet_seg import ImagenetSegmentation

    seg = ImagenetSegmentation(seg_file, size=recipe.image_size)
    methods, skipped = build_methods(model, ["salfcbm", *recipe.baselines], on_error="record")
    loader = torch.utils.data.DataLoader(seg, batch_size=min(16, recipe.batch_size))
    res = run_attribution_benchmark(methods, loader, n_steps=n_steps, max_images=max_images, device=device,
                                    timing_batch=0, reference=None, progress=False, on_error="record")
    res.save(run / "segmentation.json", run / "segmentation.md")
    failed = skipped.get("salfcbm") or res.rows.get("salfcbm", {}).get("error")
    if failed:  # the baselines may be recorded and skipped; the recipe's own row may not
        why = str(failed).rstrip(".")
        raise RecipeRunError(f"Table 2: the recipe's own method, SALF-CBM, failed on ImageNet-segmentation: {why}. "
                             f"The baselines' rows are in {run / 'segmentation.json'}; no table was written. Check "
                             "that the model kept one class concept per class (recipe interpretability_cutoff=None).")
    out = {k: {m: 100 * float(v[m]) for m in ("pixel_accuracy", "miou", "map") if v.get(m) is not None}
           for k, v in res.rows.items()}
    for name, why in skipped.items():
        warnings.warn(f"Table 2: {name} was left out: {why}", stacklevel=2)
    return out


@dataclass
class TrainedRun:
    """One training run of a recipe (one point of a sweep) after `salfcbm.fit`: what its reports need."""

    recipe: Recipe
    run: Path
    backbone: torch.nn.Module
    data: tuple
    """``(train, val, test)`` aligned to the model's view of an image."""
    num_concepts: int
    result: Any = None
    """`salfcbm.fit`'s `FitResult` (``None`` after ``stores_only``)."""


def report_run(trained: TrainedRun, class_names: list[str], *, device, seg_file, seg_steps: int,
                   seg_max_images: int | None) -> dict[str, Any]:
    """The numbers of one trained run (%): its heads, the baselines, the checks and Table 2 (rank 0 alone)."""
    recipe, run, res = trained.recipe, trained.run, trained.result
    train, val, test = trained.data
    n_inactive = res.metrics.get("concept_filter", {}).get("dropped", 0)
    out: dict[str, Any] = {"salfcbm_sparse": 100 * res.metrics["salfcbm"]["test_accuracy"],
                           "concepts": {"initial": trained.num_concepts, "inactive": n_inactive,
                                        "uninterpretable": len(res.bottleneck.dropped),
                                        "final": res.model.num_concepts,
                                        "kept_for_head": list(res.bottleneck.kept_for_head)},
                           "nec": res.metrics["salfcbm"]["nec"],
                           "bottleneck_ranks": res.bottleneck.ranks}
    out.update(_standard_heads(recipe, run, train, val, test, len(class_names)))
    if recipe.dense and recipe.standard_dense == "backbone":  # the paper's row: the backbone's own classifier
        out["standard_dense_refit"] = out.pop("standard_dense")
        out["standard_dense"] = backbone_head_accuracy(res.model, test, batch_size=recipe.batch_size, device=device)
    if recipe.dense:
        out["salfcbm_dense"] = _salf_dense(res.model, run, train, val, test)
    out["checks"] = _check_reload_and_explain(res.model, trained.backbone, run, test)
    if recipe.segmentation and seg_file is not None:
        out["table2"] = segmentation_rows(recipe, res.model, seg_file, run, n_steps=seg_steps,
                                      max_images=seg_max_images, device=device)
    return out
