"""Benchmark SALF-CBM heatmaps against attribution baselines (paper section 4.2, Table 2 and figure 4).

One runner, `run_attribution_benchmark`, scores any set of heatmap methods on
the same images with the same protocol:

* **zero-shot segmentation** against ground-truth foreground masks, with the protocol of
  Chefer et al. (CVPR 2021, ``imagenet_seg_eval.py``) that the paper's Table 2 uses
  (`SegmentationMetrics`: pixel accuracy, mIoU, mAP);
* **faithfulness**: the deletion and insertion AUC of RISE
  (`DeletionInsertion`), each method measured on *the model it
  explains* (SALF-CBM's own logits for SALF-CBM, the standard backbone's for the
  baselines);
* **speed**: seconds per explained image (`time_attribution`,
  same device and batch for every method) and its ratio to SALF-CBM's.

A method is a `BenchmarkMethod`: an attributor (anything with
``attribute(inputs, target) -> (B, 1, h, w)``), the model it explains, and the function
that turns the benchmark's images (``[0, 1]``, as datasets give them) into that model's
inputs. `build_methods` builds SALF-CBM's entry and every baseline of
`salfcbm.evaluation.baselines` for a trained `SALFCBM`: the baselines explain
the wrapped backbone with its own classifier (the "standard model" of Table 2), and the
layer methods use the layer SALF-CBM taps.

Protocol choices (documented in ``docs/benchmarks.md``):

* **Target class**: by default every method explains *its own model's predicted class*,
  as Chefer et al. do (``generate_LRP(..., index=None)`` takes the arg-max; the
  ImageNet-segmentation file has no class labels). Pass ``targets="labels"`` (with
  ``labels=``) to explain the ground-truth class instead.
* **Deletion substrate**: pixels are deleted and inserted in the benchmark's ``[0, 1]``
  image space, before each model's own preprocessing, so every method is perturbed the
  same way; `constant_substrate` with the backbone's normalisation mean is RISE's
  "zeros" of a mean-normalised model.
* **Floors**: ``random`` and ``center`` are scored on the backbone's logits.

The command-line front end is ``benchmarks/bench_attribution.py``.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from salfcbm._utils.modes import module_device
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError, SalfCBMError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM
    from salfcbm.demo.scenes import SyntheticScenes

__all__ = [
    "FIELD_METRIC_COLUMNS",
    "METRIC_COLUMNS",
    "BenchmarkMethod",
    "BenchmarkResult",
    "build_methods",
    "class_evidence_masks",
    "constant_substrate",
    "explanation_mask_check",
    "forward_speed",
    "plot_attribution_examples",
    "run_attribution_benchmark",
]

#: Keys of every method's row in `BenchmarkResult.rows`, in table order.
METRIC_COLUMNS: tuple[str, ...] = (
    "pixel_accuracy",
    "miou",
    "map",
    "deletion_auc",
    "insertion_auc",
    "seconds_per_image",
    "speed_ratio",
)

#: The field's localisation and confidence metrics in every row (``*_relu``: on the rectified map).
FIELD_METRIC_COLUMNS: tuple[str, ...] = (
    "pointing_game",
    "relevance_mass",
    "relevance_mass_relu",
    "relevance_rank",
    "top_k_intersection",
    "average_drop",
    "increase_in_confidence",
    "faithfulness_correlation",
)

_TARGET_MODES = ("predicted", "labels")


# --------------------------------------------------------------------------- methods


@dataclass
class BenchmarkMethod:
    """One heatmap method and the model whose decisions it explains.

    Args:
        attributor: an object with ``attribute(inputs, target) -> (B, 1, h, w)`` (an
            `Attributor`,
            `SALFCBMAttribution`, a Captum method wrapped to
            return one channel) or a plain callable ``f(inputs, target)``.
        model: the explained model, ``inputs -> (B, num_classes)`` logits (or an output
            with a ``.logits`` field, such as a `SALFCBM`). Its arg-max
            is the explained class with ``targets="predicted"`` and its softmax is scored
            by deletion / insertion.
        preprocess: maps the benchmark's images to this model's inputs (resize and
            normalisation); ``None`` feeds them unchanged.
        explains: a short label for the table ("SALF-CBM", "backbone").

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> m = BenchmarkMethod(make_baseline("gradcam", net, layer="0"), net, explains="net")
        >>> m.attribute(torch.rand(1, 3, 8, 8), torch.tensor([1])).shape
        torch.Size([1, 1, 8, 8])
    """

    attributor: Any
    model: Callable[[torch.Tensor], Any]
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    explains: str = ""

    def __post_init__(self) -> None:
        fn = getattr(self.attributor, "attribute", self.attributor)
        if not callable(fn):
            raise InputError(
                "`attributor` must have an `attribute(inputs, target)` method or be callable, "
                f"got {type(self.attributor).__name__}."
            )
        if not callable(self.model):
            raise InputError(f"`model` must be callable (inputs -> logits), got {type(self.model).__name__}.")
        if self.preprocess is not None and not callable(self.preprocess):
            raise InputError(f"`preprocess` must be callable or None, got {type(self.preprocess).__name__}.")

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The model inputs for benchmark ``images``."""
        return images if self.preprocess is None else self.preprocess(images)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits of the explained model for model ``inputs``."""
        return _logits_of(self.model(inputs))

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(B, 1, h, w)`` for model ``inputs`` and one class per image."""
        fn = getattr(self.attributor, "attribute", self.attributor)
        return fn(inputs, target)


def _logits_of(out: Any) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(
            f"The explained model must return (B, num_classes) logits (or an output with `.logits`), got {got}."
        )
    return logits


class _Pipeline(nn.Module):
    """``images -> logits`` of a method's model, for deletion / insertion in image space."""

    def __init__(self, method: BenchmarkMethod) -> None:
        super().__init__()
        self._method = method
        if isinstance(method.model, nn.Module):
            self.model = method.model  # registered, so DeletionInsertion's eval()/restore reaches it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._method.logits(self._method.inputs(images))


def constant_substrate(colour: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A deletion substrate: every deleted pixel becomes ``colour`` (one value per channel).

    With the backbone's normalisation mean this is RISE's "zeros" substrate of a
    mean-normalised model, applied before the normalisation.

    Examples:
        >>> import torch
        >>> constant_substrate([0.5, 0.5, 0.5])(torch.zeros(1, 3, 2, 2)).unique().tolist()
        [0.5]
    """
    values = [float(c) for c in colour]
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"`colour` must be finite numbers, one per channel, got {colour!r}.")

    def substrate(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != len(values):
            raise InputError(
                f"The substrate colour has {len(values)} channels but the images have shape {tuple(images.shape)}."
            )
        c = torch.tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return c.expand_as(images).clone()

    return substrate


def build_methods(
    model: SALFCBM,
    names: Sequence[str] | None = None,
    *,
    backbone_preprocess: str | Callable[[torch.Tensor], torch.Tensor] | None = "model",
    layer: str | None = None,
    baseline_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    reference_colour: Sequence[float] | None = None,
    on_error: str = "raise",
    class_template: str | None = None,
) -> tuple[dict[str, BenchmarkMethod], dict[str, str]]:
    """SALF-CBM and the baselines of `salfcbm.evaluation.baselines`, ready for `run_attribution_benchmark`.

    ``"salfcbm"`` is the paper's Table 2 protocol: the model is trained with one concept per
    class, ``"An image of a {class}"``, and the heatmap of a class is that concept's map
    (`SALFCBMAttribution` in ``"class_concept"`` mode).
    ``"salfcbm_logit"`` is the extra row: the spatial decomposition of the class logit (paper
    3.5; ``"class"`` mode), which any SALF-CBM has. Both run on ``model``, fed
    ``model.preprocess(images)``. Every other name is a baseline built with
    `make_baseline` on ``model.backbone``, the standard model
    with its own classifier (the paper's Table 2 compares against it), at ``layer``
    (default: the layer SALF-CBM taps, ``model.layer``) for the layer methods.

    Args:
        model: a trained SALF-CBM with its backbone.
        names: methods, among ``"salfcbm"`` and `list_baselines` (``optional=True`` adds torchcam's
            ``torchcam_*`` and ``legrad``; default: SALF-CBM's two and the non-optional baselines).
        backbone_preprocess: how benchmark images become backbone inputs: ``"model"``
            (``model.preprocess(images, crop=False)``: resize the whole image and normalise with the
            backbone's statistics,
            right for timm / torchvision backbones), ``None`` (unchanged: a backbone that
            takes ``[0, 1]`` images, like `SmallConvNet`) or a
            callable.
        layer: layer for Grad-CAM, Grad-CAM++ and Score-CAM (default ``model.layer``).
        baseline_kwargs: per-method keyword arguments for ``make_baseline``, e.g.
            ``{"integrated_gradients": {"n_steps": 16}}``.
        reference_colour: the "absent" colour in ``[0, 1]`` image space (default: the
            backbone's normalisation mean, ``model.config["input_mean"]``). Integrated
            gradients integrates from an image of this colour (unless
            ``baseline_kwargs`` sets ``baseline``); use the same colour for the deletion
            substrate (`constant_substrate`).
        class_template: the class-concept phrase of ``"salfcbm"`` (default ``"An image of a {class}"``,
            matched case-insensitively).
        on_error: ``"raise"`` or ``"record"``: a method that cannot explain this model (``"salfcbm"``
            on a model without class concepts, or a baseline
            (`UnsupportedBaselineError`, e.g. LRP on a module
            type without a rule)) is left out and its reason returned.

    Returns:
        ``(methods, skipped)``: the methods by name, and ``{name: reason}`` for those
        left out.

    Examples:
        >>> import timm, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), num_classes=2,
        ...                  concepts=["An image of a cat", "An image of a dog"], class_names=["cat", "dog"],
        ...                  backbone_weights=None)
        >>> methods, skipped = build_methods(m, ["salfcbm", "salfcbm_logit", "gradcam", "random"])
        >>> sorted(methods), methods["gradcam"].attributor.layer_name
        (['gradcam', 'random', 'salfcbm', 'salfcbm_logit'], 'layer4')
    """
    from salfcbm.explain.attribution import CLASS_TEMPLATE, SALFCBMAttribution
    from salfcbm.evaluation.baselines import UnsupportedBaselineError, list_baselines, make_baseline

    if not hasattr(model, "head_from_maps") or getattr(model, "backbone", None) is None:
        raise InputError(f"`model` must be a salfcbm.SALFCBM with its backbone, got {type(model).__name__}.")
    if on_error not in ("raise", "record"):
        raise InputError(f"`on_error` must be 'raise' or 'record', got {on_error!r}.")
    valid = ["salfcbm", "salfcbm_logit", *list_baselines(optional=True)]  # torchcam's methods when named
    names = list(["salfcbm", "salfcbm_logit", *list_baselines()] if names is None else names)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise InputError(f"Unknown method(s) {bad or names}; choose among {valid}.")
    if len(set(names)) != len(names):
        raise InputError(f"Methods are listed twice: {names}.")
    baseline_kwargs = {k: dict(v) for k, v in (baseline_kwargs or {}).items()}
    unknown = sorted(set(baseline_kwargs) - set(valid))
    if unknown:
        raise InputError(f"`baseline_kwargs` names unknown method(s) {unknown}; choose among {valid}.")

    # the benchmark's masks cover the whole image: preprocess without the eval crop, so maps stay aligned
    full_frame = functools.partial(model.preprocess, crop=False)
    if backbone_preprocess == "model":
        bpre: Callable[[torch.Tensor], torch.Tensor] | None = full_frame
    elif backbone_preprocess is None or callable(backbone_preprocess):
        bpre = backbone_preprocess
    else:
        raise InputError(f"`backbone_preprocess` must be 'model', None or a callable, got {backbone_preprocess!r}.")
    colour = list(model.config["input_mean"] if reference_colour is None else reference_colour)
    backbone = model.backbone
    layer = model.layer if layer is None else layer

    methods: dict[str, BenchmarkMethod] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in ("salfcbm", "salfcbm_logit"):
            try:
                attr = SALFCBMAttribution(model, mode="class_concept", template=class_template or CLASS_TEMPLATE) \
                    if name == "salfcbm" else SALFCBMAttribution(model, mode="class")
            except InputError as e:
                if on_error == "raise":
                    raise
                skipped[name] = str(e)
                continue
            methods[name] = BenchmarkMethod(attr, model, full_frame, explains="SALF-CBM")
            continue
        kw = dict(baseline_kwargs.get(name, {}))
        if name == "integrated_gradients" and "baseline" not in kw:
            dev = module_device(backbone)
            ref = constant_substrate(colour)(torch.zeros(1, len(colour), 8, 8, device=dev))
            ref = ref if bpre is None else bpre(ref)
            kw["baseline"] = ref.mean(dim=(2, 3), keepdim=True)  # (1, 3, 1, 1), broadcast over the images
        try:
            attr = make_baseline(name, backbone, layer, **kw)
        except UnsupportedBaselineError as e:
            if on_error == "raise":
                raise
            skipped[name] = str(e)
            continue
        methods[name] = BenchmarkMethod(attr, backbone, bpre, explains="backbone")
    return methods, skipped


# --------------------------------------------------------------------------- target masks


def class_evidence_masks(
    dataset: SyntheticScenes,
    indices: Sequence[int],
    *,
    mode: str = "objects",
    include_background: bool = False,
) -> torch.Tensor:
    """The ground-truth segmentation target of procedural scenes: where the class evidence is.

    A `SyntheticScenes` class is a rule over concepts (``"an
    orange triangle and a blue square"``); the target mask of an image is the part of
    the image its rule talks about:

    * ``mode="objects"`` (default): the objects that satisfy one of the rule's object
      requirements, i.e. for each requirement the intersection of its concept masks
      (``"a triangle"`` and ``"something orange"``), then the union over requirements.
      Distractor objects that share only part of a requirement (a green triangle) are
      left out.
    * ``mode="concepts"``: the union of the masks of every concept in
      ``dataset.class_concepts[class]`` (a distractor sharing one attribute is included).

    Background concepts ("a sky background") are left out unless ``include_background``:
    a background covers most of the image, and the ImageNet-segmentation masks the
    protocol comes from are foreground objects only.

    Returns:
        ``(B, H, W)`` bool masks.

    Examples:
        >>> from salfcbm.demo.scenes import SyntheticScenes
        >>> ds = SyntheticScenes(n=4, image_size=32)
        >>> m = class_evidence_masks(ds, [0, 1])
        >>> m.shape, bool(m.any())
        (torch.Size([2, 32, 32]), True)
    """
    if mode not in ("objects", "concepts"):
        raise InputError(f"`mode` must be 'objects' or 'concepts', got {mode!r}.")
    if not hasattr(dataset, "class_concepts") or not hasattr(dataset, "masks"):
        raise InputError(
            f"`dataset` must be a salfcbm.demo.scenes.SyntheticScenes (it needs masks and class rules), "
            f"got {type(dataset).__name__}."
        )
    background = set(getattr(dataset, "concept_groups", {}).get("background", []))
    # The rule's object requirements (which phrases must hold on the *same* object) are not
    # public on SyntheticScenes; without them, "objects" falls back to the concept union.
    rules = getattr(dataset, "_rules", None)
    idx = {c: k for k, c in enumerate(dataset.concepts)}
    out = []
    for i in indices:
        sample = dataset.sample(int(i))
        masks, name = sample.masks, dataset.classes[sample.label]
        m = torch.zeros(masks.shape[-2:], dtype=torch.bool)
        if mode == "objects" and rules is not None:
            for req in rules[sample.label].objects:
                phrases = req.phrases()
                if phrases:
                    m |= torch.stack([masks[idx[p]] for p in phrases]).all(0)
            if include_background:
                for p in dataset.class_concepts[name]:
                    if p in background:
                        m |= masks[idx[p]]
        else:
            for p in dataset.class_concepts[name]:
                if include_background or p not in background:
                    m |= masks[idx[p]]
        out.append(m)
    if not out:
        raise InputError("`indices` is empty; pass at least one image index.")
    return torch.stack(out)


def explanation_mask_check(
    model: SALFCBM,
    dataset: SyntheticScenes,
    indices: Sequence[int] | None = None,
    *,
    top_k: int = 4,
    batch_size: int = 64,
) -> dict[str, Any]:
    """How often a concept an explanation shows is not in the image at all (its ground-truth mask is empty).

    Each image of a `SyntheticScenes` is explained
    (``model.explain``, its predicted class, ``top_k`` concepts by ``|S|``), and every shown
    concept is looked up in the image's concept masks. A report that draws all top-k concepts
    alike presents each of them as found in the image, so ``shown_mask_empty`` is the share of
    shown concepts it misrepresents; the evidence kinds (`salfcbm.evidence`) should put the
    empty-mask concepts on the absent side: ``present.mask_empty`` is the share of concepts
    *shown as present* that are not there, ``absent.mask_empty`` the share of concepts shown as
    absent that are indeed not there.

    Args:
        model: a SALF-CBM whose concepts are concepts of ``dataset``.
        dataset: procedural scenes with ground-truth masks.
        indices: the images (default: all of them).
        top_k: concepts shown per image.
        batch_size: images per forward pass.

    Returns:
        ``{"images", "top_k", "shown", "shown_mask_empty", "top1_mask_empty",
        "top1_present_mask_empty", "present": {"shown", "mask_empty"}, "absent": {...},
        "by_evidence": {kind: {"shown", "mask_empty"}}}``; shares are fractions (``None`` when
        nothing was shown), ``top1_*`` are image counts.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.demo import SmallConvNet, SyntheticScenes
        >>> ds = SyntheticScenes(n=4, image_size=32)
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=ds.num_classes, width=4), concepts=ds.concepts,
        ...                  num_classes=ds.num_classes, grid=4, input_size=(32, 32), backbone_weights=None)
        >>> r = explanation_mask_check(m, ds, top_k=2)
        >>> r["images"], r["shown"] <= 8
        (4, True)
    """
    from salfcbm.explain.evidence import ABSENT_OPPOSES, ABSENT_SUPPORTS, EVIDENCE_KINDS, PRESENT_KINDS

    if not hasattr(dataset, "masks_batch") or not hasattr(dataset, "concepts"):
        raise InputError(
            f"`dataset` must be a salfcbm.demo.SyntheticScenes (it needs concept masks), got {type(dataset).__name__}."
        )
    missing = [c for c in model.concepts if c not in dataset.concepts]
    if missing:
        raise InputError(
            f"The model's concepts {missing[:5]} are not concepts of the dataset, so they have no masks; "
            "use the scenes the model was trained on."
        )
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise InputError("`indices` is empty; pass at least one image index.")
    col = torch.tensor([dataset.concepts.index(c) for c in model.concepts])
    counts = {k: [0, 0] for k in EVIDENCE_KINDS}  # kind -> [shown, mask empty]
    top1 = top1_present = 0
    for a in range(0, len(idx), batch_size):
        part = idx[a : a + batch_size]
        images = torch.stack([dataset[i][0] for i in part])
        empty = ~dataset.masks_batch(part).flatten(2).any(-1)[:, col]  # (B, M): concept absent from the image
        with torch.no_grad():
            expl = model.explain(model.preprocess(images), top_k=top_k, heatmaps=False)
        for b, e in enumerate(expl):
            ce = e.top
            flags = empty[b, ce.concept_indices.cpu()].tolist()
            for j, (kind, gone) in enumerate(zip(ce.evidence, flags)):
                counts[kind][0] += 1
                counts[kind][1] += int(gone)
                if j == 0 and gone:
                    top1 += 1
                    top1_present += int(kind in PRESENT_KINDS)

    def share(kinds) -> dict[str, Any]:
        n = sum(counts[k][0] for k in kinds)
        return {"shown": n, "mask_empty": (sum(counts[k][1] for k in kinds) / n) if n else None}

    everything = share(EVIDENCE_KINDS)
    return {
        "images": len(idx),
        "top_k": top_k,
        "shown": everything["shown"],
        "shown_mask_empty": everything["mask_empty"],
        "top1_mask_empty": top1,
        "top1_present_mask_empty": top1_present,
        "present": share(PRESENT_KINDS),
        "absent": share([ABSENT_SUPPORTS, ABSENT_OPPOSES]),
        "by_evidence": {k: share([k]) for k in EVIDENCE_KINDS if counts[k][0]},
    }


# --------------------------------------------------------------------------- result


@dataclass
class BenchmarkResult:
    """What `run_attribution_benchmark` measured.

    Attributes:
        rows: per method, ``pixel_accuracy``, ``miou``, ``map`` (segmentation, fractions),
            ``deletion_auc`` (lower is better), ``insertion_auc`` (higher is better),
            ``seconds_per_image`` (wall), ``cpu_seconds_per_image``, ``speed_ratio``
            (÷ the reference method's, on ``meta["speed_clock"]``),
            ``explains``, ``n_images``; or ``error`` for a method that failed with
            ``on_error="record"``.
        meta: the protocol settings (targets, steps, batch sizes, device, ...).
        examples: the first images, their masks and every method's heatmaps
            (``{"images": ..., "masks": ..., "heatmaps": {name: (n, 1, h, w)}}``), for
            `plot_attribution_examples`; not part of `to_dict`.
        forward: optional forward-pass timing (see `forward_speed`).
    """

    rows: dict[str, dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)
    forward: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (rows, meta, forward)."""
        return {"meta": dict(self.meta), "methods": {k: dict(v) for k, v in self.rows.items()}, "forward": self.forward}

    def to_markdown(self) -> str:
        """The results table (and the forward-pass ratio) as Markdown."""
        ref = self.meta.get("reference", "salfcbm")
        clock = " (CPU time)" if self.meta.get("speed_clock") == "cpu" else ""
        head = (
            "| method | explains | pixel acc. ↑ | mIoU ↑ | mAP ↑ | deletion AUC ↓ | insertion AUC ↑ "
            f"| s / image | × {ref}{clock} |"
        )
        lines = [head, "|" + "---|" * 9]

        def num(r: dict[str, Any], k: str, fmt: str, scale: float = 1.0) -> str:
            v = r.get(k)
            return "–" if v is None else format(scale * v, fmt)

        for name, r in self.rows.items():
            if "error" in r:
                lines.append(f"| {name} | {r.get('explains', '')} | n/a: {r['error'][:80]} |" + " |" * 6)
                continue
            lines.append(
                f"| {name} | {r.get('explains', '')} | {num(r, 'pixel_accuracy', '.1f', 100)} "
                f"| {num(r, 'miou', '.1f', 100)} | {num(r, 'map', '.1f', 100)} "
                f"| {num(r, 'deletion_auc', '.3f')} | {num(r, 'insertion_auc', '.3f')} "
                f"| {num(r, 'seconds_per_image', '.2e')} | {num(r, 'speed_ratio', '.2f')} |"
            )
        lines += self._field_markdown()
        if self.forward:
            f = self.forward
            lines += [
                "",
                (
                    f"Forward pass, batch {f['batch_size']}: wrapped SALF-CBM {f['wrapped_seconds']:.2e} s, "
                    f"bare backbone {f['bare_seconds']:.2e} s (wall); ratio **{f['ratio']:.2f}×**"
                    + (" (CPU time)." if f.get("clock") == "cpu" else ".")
                ),
            ]
        ex = self.meta.get("explanation_masks")
        if ex and ex.get("shown"):
            def pct(v: float | None) -> str:
                return "–" if v is None else f"{100 * v:.1f} %"

            lines += [
                "",
                (
                    f"SALF-CBM's top-{ex['top_k']} concepts on {ex['images']} images: {pct(ex['shown_mask_empty'])} "
                    f"have an empty ground-truth mask (top-1: {ex['top1_mask_empty']} images); "
                    f"{pct(ex['present']['mask_empty'])} of those shown as present, "
                    f"{pct(ex['absent']['mask_empty'])} of those shown as absent."
                ),
            ]
        if self.meta.get("interventions"):  # optional: intervention_curve(...).to_dict() on the same data
            from salfcbm.evaluation.interventions import intervention_markdown

            lines += ["", intervention_markdown(self.meta["interventions"]).rstrip("\n")]
        return "\n".join(lines) + "\n"

    def _field_markdown(self) -> list[str]:
        """The field's localisation / confidence metrics, signed map next to rectified map."""
        rows = {n: r for n, r in self.rows.items() if "error" not in r and "pointing_game" in r}
        if not rows:
            return []

        def f(r: dict[str, Any], k: str, scale: float = 1.0) -> str:
            v = r.get(k)
            return "–" if v is None else f"{scale * v:.3f}" if scale == 1.0 else f"{scale * v:.1f}"

        lines = [
            "",
            "Localisation (signed map as given / rectified `max(h, 0)`) and confidence:",
            "",
            "| method | pointing game ↑ | relevance mass ↑ | mass ∉ [0, 1] % | relevance rank ↑ | top-k ∩ ↑ "
            "| avg. drop % ↓ | incr. conf. % ↑ | faithfulness corr. ↑ |",
            "|" + "---|" * 9,
        ]
        for name, r in rows.items():
            lines.append(
                f"| {name} | {f(r, 'pointing_game')} / {f(r, 'pointing_game_relu')} "
                f"| {f(r, 'relevance_mass')} / {f(r, 'relevance_mass_relu')} "
                f"| {f(r, 'relevance_mass_out_of_range', 100)} "
                f"| {f(r, 'relevance_rank')} / {f(r, 'relevance_rank_relu')} "
                f"| {f(r, 'top_k_intersection')} / {f(r, 'top_k_intersection_relu')} "
                f"| {f(r, 'average_drop', 100)} | {f(r, 'increase_in_confidence', 100)} "
                f"| {f(r, 'faithfulness_correlation')} |"
            )
        return lines

    def save(self, json_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> None:
        """Write `to_dict` as JSON (and `to_markdown`), atomically."""
        import json

        from salfcbm._utils.io import atomic_write_text

        atomic_write_text(json_path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        if markdown_path is not None:
            atomic_write_text(markdown_path, self.to_markdown())


# --------------------------------------------------------------------------- runner


def _iter_batches(
    images: torch.Tensor | Iterable[Any], masks: torch.Tensor | None, labels: torch.Tensor | None, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    if isinstance(images, torch.Tensor):
        for a in range(0, images.shape[0], batch_size):
            sl = slice(a, a + batch_size)
            yield images[sl], masks[sl], (labels[sl] if labels is not None else None)  # type: ignore[index]
        return
    for batch in images:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise InputError(
                "With `masks=None`, `images` must yield (images, masks) or (images, masks, labels) batches, "
                f"got {type(batch).__name__}."
            )
        yield batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _check_tensor_inputs(images: torch.Tensor, masks: Any) -> torch.Tensor:
    if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
        raise InputError(f"`images` must be a non-empty float (N, C, H, W) tensor, got shape {tuple(images.shape)}.")
    if not isinstance(masks, torch.Tensor):
        raise InputError(
            f"`masks` must be a (N, H, W) tensor when `images` is a tensor, got {type(masks).__name__}."
        )
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[0] != images.shape[0]:
        raise InputError(
            f"`masks` must be (N, H, W) with N={images.shape[0]} (one per image), got shape {tuple(masks.shape)}."
        )
    return masks


def _check_benchmark_options(
    methods: Any,
    batch_size: Any,
    n_steps: Any,
    perturbation_batch_size: Any,
    timing_repeats: Any,
    n_examples: Any,
    timing_batch: Any,
    max_images: Any,
    on_error: Any,
    deletion_substrate: Any,
    insertion_substrate: Any,
) -> None:
    """Validate the benchmark's methods and scalar options, raising `InputError`."""
    if not isinstance(methods, Mapping) or not methods:
        raise InputError(f"`methods` must be a non-empty mapping name -> BenchmarkMethod, got {methods!r}.")
    for name, m in methods.items():
        if not isinstance(m, BenchmarkMethod):
            raise InputError(
                f"methods[{name!r}] must be a BenchmarkMethod(attributor, model, preprocess), got {type(m).__name__}."
            )
    for nm, v, lo in (
        ("batch_size", batch_size, 1),
        ("n_steps", n_steps, 1),
        ("perturbation_batch_size", perturbation_batch_size, 1),
        ("timing_repeats", timing_repeats, 1),
        ("n_examples", n_examples, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"`{nm}` must be an int >= {lo}, got {v!r}.")
    for nm, v in (("timing_batch", timing_batch), ("max_images", max_images)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if nm == "timing_batch" else 1)):
            raise InputError(f"`{nm}` must be a positive int or None, got {v!r}.")
    if on_error not in ("raise", "record"):
        raise InputError(f"`on_error` must be 'raise' or 'record', got {on_error!r}.")
    for nm, fn in (("deletion_substrate", deletion_substrate), ("insertion_substrate", insertion_substrate)):
        if fn is not None and not callable(fn):
            raise InputError(f"`{nm}` must be a callable images -> images or None, got {type(fn).__name__}.")


def _check_benchmark_data(
    images: torch.Tensor | Iterable[Any], masks: Any, labels: Any, targets: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate ``targets`` and the images / masks / labels; return the normalised ``(masks, labels)``."""
    if not isinstance(targets, str) or targets not in _TARGET_MODES:
        raise InputError(f"`targets` must be one of {_TARGET_MODES}, got {targets!r}.")
    if isinstance(images, torch.Tensor):
        masks = _check_tensor_inputs(images, masks)
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],) or labels.is_floating_point():
                raise InputError(
                    f"`labels` must be an (N,) integer tensor with N={images.shape[0]}, got "
                    f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}."
                )
            labels = labels.long()
        elif targets == "labels":
            raise InputError("targets='labels' needs `labels`, an (N,) tensor of class indices.")
    elif masks is not None or labels is not None:
        raise InputError(
            "`masks` and `labels` are only accepted with tensor `images`; an iterable must yield "
            "(images, masks) or (images, masks, labels) batches."
        )
    return masks, labels


def _check_faithfulness_runs(runs: Any) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs == 1 or runs < 0:
        raise InputError(f"`faithfulness_runs` must be 0 (skip) or an int >= 2 (a correlation), got {runs!r}.")


@dataclass
class _ScoringState:
    """Accumulators of one benchmark run's scoring pass (metrics, errors, examples, timing batch)."""

    seg: dict[str, Any]
    faith: dict[str, Any]
    loc: dict[str, Any] = field(default_factory=dict)  # LocalisationMetrics per method
    conf: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)  # ADrop / IIC / faithfulness corr.
    faithfulness_runs: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    agree: dict[str, list[int]] = field(default_factory=dict)  # [explained == label, images] when labels known
    ex_images: list[torch.Tensor] = field(default_factory=list)
    ex_masks: list[torch.Tensor] = field(default_factory=list)
    ex_heat: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    timing_set: tuple[torch.Tensor, torch.Tensor | None] | None = None
    n_seen: int = 0


def _make_scoring_state(
    methods: Mapping[str, BenchmarkMethod],
    ap_backend: str,
    n_steps: int,
    perturbation_batch_size: int,
    deletion_substrate: Callable[[torch.Tensor], torch.Tensor] | None,
    insertion_substrate: Callable[[torch.Tensor], torch.Tensor] | None,
) -> _ScoringState:
    """Build the per-method segmentation and deletion / insertion scorers and empty accumulators."""
    from salfcbm.evaluation.metrics import (
        DeletionInsertion,
        SegmentationMetrics,
        blur_substrate,
        zeros_substrate,
    )

    seg = {n: SegmentationMetrics(ap_backend=ap_backend) for n in methods}
    faith = {
        n: DeletionInsertion(
            _Pipeline(m),
            n_steps=n_steps,
            batch_size=perturbation_batch_size,
            deletion_substrate_fn=deletion_substrate or zeros_substrate,
            insertion_substrate_fn=insertion_substrate or blur_substrate,
            progress=False,
        )
        for n, m in methods.items()
    }
    from salfcbm.evaluation.localisation import LocalisationMetrics

    return _ScoringState(
        seg=seg, faith=faith, agree={n: [0, 0] for n in methods}, ex_heat={n: [] for n in methods},
        loc={n: LocalisationMetrics() for n in methods}, conf={n: {} for n in methods},
    )


def _prepare_batch(
    x01: torch.Tensor, g: Any, y: Any, n_seen: int, max_images: int | None, dev: torch.device | None, targets: str
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    """Trim a batch to ``max_images``, move it to ``dev`` as float, and check / convert its labels."""
    if max_images is not None and n_seen + x01.shape[0] > max_images:
        keep = max_images - n_seen
        x01, g, y = x01[:keep], g[:keep], (y[:keep] if y is not None else None)
    if dev is not None:
        x01 = x01.to(dev)
    x01 = x01.float()
    if targets == "labels" and y is None:
        raise InputError("targets='labels' needs labels: pass `labels=` or yield (images, masks, labels) batches.")
    if y is not None:
        y = torch.as_tensor(y).long().to(x01.device)
    return x01, g, y


def _method_heatmaps(
    name: str, m: BenchmarkMethod, x01: torch.Tensor, y: torch.Tensor | None, targets: str, agree: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose a method's explained classes on a batch, compute and check its heatmaps; return ``(heat, t)``."""
    inp = m.inputs(x01)
    if targets == "predicted":
        with torch.no_grad():
            t = m.logits(inp).argmax(1)
    else:
        t = y  # type: ignore[assignment]
    if y is not None:
        agree[0] += int((t == y).sum())
        agree[1] += int(y.numel())
    heat = m.attribute(inp, t)
    if not isinstance(heat, torch.Tensor) or heat.dim() not in (3, 4) or heat.shape[0] != x01.shape[0]:
        got = tuple(heat.shape) if isinstance(heat, torch.Tensor) else type(heat).__name__
        raise SalfCBMError(f"{name!r} returned {got}; expected (B, 1, h, w) heatmaps.")
    heat = heat.detach().float()
    if heat.dim() == 3:
        heat = heat[:, None]
    heat = torch.nan_to_num(heat, nan=0.0, posinf=0.0, neginf=0.0)
    return heat, t


def _confidence_update(
    state: _ScoringState, name: str, m: BenchmarkMethod, x01: torch.Tensor, heat: torch.Tensor, t: torch.Tensor
) -> None:
    """Average Drop / Increase in Confidence and faithfulness correlation of one batch, on the method's model."""
    from salfcbm.evaluation.confidence import average_drop_increase, faithfulness_correlation

    pipe = state.faith[name].model  # the method's images -> logits pipeline
    acc = state.conf[name]
    adi = average_drop_increase(pipe, x01, heat, t)
    acc.setdefault("average_drop", []).append(adi["drop"])
    acc.setdefault("increase_in_confidence", []).append(adi["increase"])
    if state.faithfulness_runs:
        seed = state.n_seen  # reproducible, different subsets per batch
        fc = faithfulness_correlation(pipe, x01, heat, t, n_runs=state.faithfulness_runs, seed=seed)
        acc.setdefault("faithfulness_correlation", []).append(fc)


def _score_batch(
    state: _ScoringState,
    methods: Mapping[str, BenchmarkMethod],
    x01: torch.Tensor,
    g: Any,
    y: torch.Tensor | None,
    targets: str,
    n_examples: int,
    on_error: str,
) -> None:
    """Score every (not yet failed) method on one batch and keep the example images and heatmaps."""
    if state.timing_set is None:
        state.timing_set = (x01, y)
    keep_ex = max(0, n_examples - len(state.ex_images))
    if keep_ex:
        state.ex_images.extend(x01[:keep_ex].cpu())
        state.ex_masks.extend(torch.as_tensor(g)[:keep_ex].cpu())
    for name, m in methods.items():
        if name in state.errors:
            continue
        try:
            heat, t = _method_heatmaps(name, m, x01, y, targets, state.agree[name])
            state.seg[name].update(heat, torch.as_tensor(g))
            state.faith[name].update(x01, heat, t)
            state.loc[name].update(heat, torch.as_tensor(g))
            _confidence_update(state, name, m, x01, heat, t)
            if keep_ex:
                state.ex_heat[name].extend(heat[:keep_ex].cpu())
        except Exception as e:
            if on_error == "raise":
                raise
            state.errors[name] = f"{type(e).__name__}: {e}"


def _score_all_batches(
    state: _ScoringState,
    methods: Mapping[str, BenchmarkMethod],
    images: torch.Tensor | Iterable[Any],
    masks: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    batch_size: int,
    max_images: int | None,
    dev: torch.device | None,
    targets: str,
    n_examples: int,
    on_error: str,
    progress: bool,
) -> None:
    """Run the scoring pass over all batches (up to ``max_images``), with an optional progress bar."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None
        if isinstance(images, torch.Tensor):
            total = min(images.shape[0], max_images or images.shape[0])
        bar = tqdm(total=total, desc="attribution benchmark", unit="img")
    try:
        for x01, g, y in _iter_batches(images, masks, labels, batch_size):
            if max_images is not None and state.n_seen >= max_images:
                break
            x01, g, y = _prepare_batch(x01, g, y, state.n_seen, max_images, dev, targets)
            _score_batch(state, methods, x01, g, y, targets, n_examples, on_error)
            state.n_seen += x01.shape[0]
            if bar is not None:
                bar.update(x01.shape[0])
    finally:
        if bar is not None:
            bar.close()
    if state.n_seen == 0:
        raise InputError("No images were given (the image iterable was empty).")


def _result_rows(methods: Mapping[str, BenchmarkMethod], state: _ScoringState) -> dict[str, dict[str, Any]]:
    """One row per method: its segmentation and faithfulness scores, or its error."""
    rows: dict[str, dict[str, Any]] = {}
    for name, m in methods.items():
        row: dict[str, Any] = {"explains": m.explains}
        if name in state.errors:
            row["error"] = state.errors[name]
            rows[name] = row
            continue
        s = state.seg[name].compute()
        d = state.faith[name].compute()
        row.update(state.loc[name].compute())
        for key, vs in state.conf[name].items():
            v = torch.cat(vs)
            v = v[~torch.isnan(v)]
            row[key] = float(v.mean()) if v.numel() else None
        row.update(
            pixel_accuracy=s["pixel_accuracy"],
            miou=s["miou"],
            map=s["map"],
            iou_foreground=s["iou_foreground"],
            iou_background=s["iou_background"],
            deletion_auc=d["deletion_auc"],
            insertion_auc=d["insertion_auc"],
            n_images=s["n_images"],
        )
        if state.agree[name][1]:
            row["explained_is_label"] = state.agree[name][0] / state.agree[name][1]
        rows[name] = row
    return rows


def _prepare_timing(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    errors: Mapping[str, str],
    x01: torch.Tensor,
    y: torch.Tensor | None,
    targets: str,
    on_error: str,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each surviving method's inputs and explained classes on the timing batch (failures recorded in rows)."""
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, m in methods.items():
        if name in errors:
            continue
        try:
            inp = m.inputs(x01)
            with torch.no_grad():
                t = m.logits(inp).argmax(1) if targets == "predicted" or y is None else y
            prepared[name] = (inp, t)
        except Exception as e:
            if on_error == "raise":
                raise
            rows[name]["timing_error"] = f"{type(e).__name__}: {e}"
    return prepared


def _timing_rounds(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]],
    timing_repeats: int,
    on_error: str,
) -> None:
    """Time the prepared methods in interleaved rounds and store the median seconds per image in rows."""
    from salfcbm.evaluation.baselines import time_attribution

    # Rounds over all methods (round 0 warms up), so a change in the machine's load hits
    # every method alike; the median round is kept.
    wall: dict[str, list[float]] = {n: [] for n in prepared}
    cpu: dict[str, list[float]] = {n: [] for n in prepared}
    for rnd in range(timing_repeats + 1):
        for name, (inp, t) in list(prepared.items()):
            m = methods[name]
            try:
                c0 = time.process_time()
                w = time_attribution(lambda a, b, m=m: m.attribute(a, b), inp, t, repeats=1, warmup=0)
                c = (time.process_time() - c0) / inp.shape[0]
            except Exception as e:
                if on_error == "raise":
                    raise
                rows[name]["timing_error"] = f"{type(e).__name__}: {e}"
                del prepared[name]
                continue
            if rnd:
                wall[name].append(w)
                cpu[name].append(c)
    for name in prepared:
        rows[name]["seconds_per_image"] = statistics.median(wall[name])
        rows[name]["cpu_seconds_per_image"] = statistics.median(cpu[name])


def _time_methods(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    state: _ScoringState,
    n_time: int,
    *,
    targets: str,
    timing_repeats: int,
    reference: str | None,
    on_error: str,
) -> str:
    """Time every surviving method on the first ``n_time`` images, add speed ratios; return the clock used."""
    clock = "wall"
    if n_time and state.timing_set is not None:
        x01, y = state.timing_set
        x01, y = x01[:n_time], (y[:n_time] if y is not None else None)
        clock = "wall" if x01.is_cuda else "cpu"
        prepared = _prepare_timing(methods, rows, state.errors, x01, y, targets, on_error)
        _timing_rounds(methods, rows, prepared, timing_repeats, on_error)
        key = "seconds_per_image" if clock == "wall" else "cpu_seconds_per_image"
        ref_s = rows.get(reference, {}).get(key) if reference is not None else None
        if ref_s:
            for r in rows.values():
                if r.get(key) is not None:
                    r["speed_ratio"] = r[key] / ref_s
    return clock


def _collect_examples(state: _ScoringState) -> dict[str, Any]:
    """Stack the kept example images, masks and (complete) per-method heatmaps."""
    examples: dict[str, Any] = {}
    if state.ex_images:
        examples = {
            "images": torch.stack(state.ex_images),
            "masks": torch.stack([torch.as_tensor(mk).bool() for mk in state.ex_masks]),
            "heatmaps": {n: torch.stack(h) for n, h in state.ex_heat.items() if len(h) == len(state.ex_images)},
        }
    return examples


def run_attribution_benchmark(
    methods: Mapping[str, BenchmarkMethod],
    images: torch.Tensor | Iterable[Any],
    masks: torch.Tensor | None = None,
    *,
    targets: str = "predicted",
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
    n_steps: int = 100,
    perturbation_batch_size: int = 128,
    deletion_substrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    insertion_substrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timing_batch: int | None = None,
    timing_repeats: int = 3,
    reference: str | None = "salfcbm",
    n_examples: int = 4,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    ap_backend: str = "sklearn",
    on_error: str = "raise",
    progress: bool = True,
    faithfulness_runs: int = 20,
) -> BenchmarkResult:
    """Score heatmap methods on images with ground-truth masks (paper 4.2, Table 2).

    For every batch and every method: the explained class is chosen (the method's model's
    prediction, or the given label), the method's heatmaps are computed on the model's
    inputs, and they are scored

    * against ``masks`` with `SegmentationMetrics` (heatmaps
      resized bilinearly to the masks; pixel accuracy, mIoU, mAP as in Chefer et al.);
    * by deletion / insertion (`DeletionInsertion`) on the
      method's own model: pixels of the ``[0, 1]`` benchmark image are replaced in order
      of decreasing saliency and the softmax probability of the explained class is
      followed (AUC over the fraction of pixels changed);
    * with the field's localisation metrics (`salfcbm.evaluation.localisation`): pointing game
      (Zhang et al. 2016), relevance mass accuracy (Kohlbrenner et al. 2020), relevance rank
      accuracy (Arras et al. 2022) and top-k intersection (Theiner et al. 2022, k = 1000 / 224² of
      the pixels), on the map as given and (``*_relu``) on the rectified map ``max(h, 0)``;
    * with Average Drop / Increase in Confidence (Chattopadhyay et al. 2018) and, when
      ``faithfulness_runs`` > 0, faithfulness correlation (Bhatt et al. 2020) on the method's model
      (`salfcbm.evaluation.confidence`).

    Then each method is timed on the first ``timing_batch`` images
    (`time_attribution`, median of ``timing_repeats`` rounds), and
    ``speed_ratio`` is its time per image divided by the ``reference`` method's.

    Args:
        methods: name -> `BenchmarkMethod` (see `build_methods`).
        images: ``(N, 3, H, W)`` float images in the benchmark space (``[0, 1]``), or,
            with ``masks=None``, an iterable of ``(images, masks)`` or
            ``(images, masks, labels)`` batches (e.g. a ``DataLoader`` over
            `ImagenetSegmentation`).
        masks: ``(N, H, W)`` bool foreground masks (with tensor ``images``).
        targets: ``"predicted"`` (each method explains its model's top-1 class; Chefer et
            al.'s protocol) or ``"labels"`` (the ground-truth class).
        labels: ``(N,)`` class indices (with tensor ``images``; batches give them as their
            third element). Needed for ``targets="labels"``; otherwise only used to report
            how often each method's explained class is the true one
            (``explained_is_label``).
        batch_size: images per batch (with tensor ``images``).
        n_steps: deletion / insertion steps (RISE uses ``H * W / 224``; 100 samples the
            curve every 1 %).
        perturbation_batch_size: perturbed images per forward pass in deletion / insertion.
        deletion_substrate: what deleted pixels become, ``images -> images`` (default
            zeros; see `constant_substrate`).
        insertion_substrate: the canvas insertion starts from (default: RISE's blur).
        timing_batch: images in the timing batch (default ``batch_size``); ``0`` skips timing.
        timing_repeats: timed calls per method, in rounds over all methods after one
            warm-up round; the median is kept. ``seconds_per_image`` is wall time and
            ``cpu_seconds_per_image`` the process's CPU time; ``speed_ratio`` uses CPU time
            on the CPU (robust to other processes on a shared machine) and wall time on CUDA
            (``meta["speed_clock"]``).
        reference: method the speed ratios divide by (``None`` or absent: no ratios).
        n_examples: images whose heatmaps are kept in `BenchmarkResult.examples`.
        max_images: stop after this many images (useful with an iterable).
        device: move models' inputs here (the models must already be there).
        ap_backend: ``"sklearn"`` or ``"torch"`` for the mAP (see ``SegmentationMetrics``).
        on_error: ``"raise"``, or ``"record"`` to keep going when a method fails (its
            row gets ``error`` and it is left out of the rest of the run).
        progress: tqdm progress bar.
        faithfulness_runs: random pixel subsets per image for faithfulness correlation (one
            forward pass each); ``0`` skips it.

    Returns:
        A `BenchmarkResult`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> methods = {m: BenchmarkMethod(make_baseline(m, net, layer="0"), net) for m in ("gradcam", "random")}
        >>> images, masks = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16) > 0.5
        >>> res = run_attribution_benchmark(methods, images, masks, n_steps=4, progress=False, reference="random")
        >>> [k for k in METRIC_COLUMNS if k in res.rows["gradcam"]] == list(METRIC_COLUMNS)
        True
    """
    _check_benchmark_options(
        methods,
        batch_size,
        n_steps,
        perturbation_batch_size,
        timing_repeats,
        n_examples,
        timing_batch,
        max_images,
        on_error,
        deletion_substrate,
        insertion_substrate,
    )
    masks, labels = _check_benchmark_data(images, masks, labels, targets)
    _check_faithfulness_runs(faithfulness_runs)
    dev = torch.device(device) if device is not None else None

    state = _make_scoring_state(
        methods, ap_backend, n_steps, perturbation_batch_size, deletion_substrate, insertion_substrate
    )
    state.faithfulness_runs = faithfulness_runs
    t_start = time.perf_counter()
    _score_all_batches(
        state,
        methods,
        images,
        masks,
        labels,
        batch_size=batch_size,
        max_images=max_images,
        dev=dev,
        targets=targets,
        n_examples=n_examples,
        on_error=on_error,
        progress=progress,
    )
    seconds_scoring = time.perf_counter() - t_start

    rows = _result_rows(methods, state)
    n_time = batch_size if timing_batch is None else timing_batch
    clock = _time_methods(
        methods,
        rows,
        state,
        n_time,
        targets=targets,
        timing_repeats=timing_repeats,
        reference=reference,
        on_error=on_error,
    )
    meta = {
        "n_images": state.n_seen,
        "targets": targets,
        "batch_size": batch_size,
        "n_steps": n_steps,
        "timing_batch": n_time,
        "timing_repeats": timing_repeats,
        "speed_clock": clock,
        "reference": reference,
        "ap_backend": ap_backend,
        "faithfulness_runs": faithfulness_runs,
        "device": str(state.timing_set[0].device) if state.timing_set is not None else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds_scoring": seconds_scoring,
    }
    return BenchmarkResult(rows=rows, meta=meta, examples=_collect_examples(state))


# --------------------------------------------------------------------------- forward speed


def forward_speed(
    wrapped: Callable[[torch.Tensor], Any],
    bare: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    *,
    wrapped_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bare_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Forward-pass time of the wrapped SALF-CBM against the bare backbone, same batch and device.

    Both run under ``torch.no_grad()`` on their own inputs (preprocessing is done once,
    outside the timing); the calls are interleaved and the median of ``repeats`` is kept.
    On the CPU the ratio uses the process's CPU time (all threads), which other processes
    on a shared machine disturb far less than wall time; on CUDA, wall time.

    Returns:
        ``wrapped_seconds``, ``bare_seconds`` (wall, per batch), ``wrapped_cpu_seconds``,
        ``bare_cpu_seconds``, ``ratio`` (wrapped ÷ bare, on ``clock``), ``clock``
        (``"cpu"`` or ``"wall"``), ``batch_size``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> out = forward_speed(net, net, torch.rand(2, 3, 8, 8), repeats=2)
        >>> sorted(out)[:4]
        ['bare_cpu_seconds', 'bare_seconds', 'batch_size', 'clock']
    """
    if not callable(wrapped) or not callable(bare):
        raise InputError("`wrapped` and `bare` must be callable models.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise InputError(f"`images` must be a non-empty (B, C, H, W) tensor, got {getattr(images, 'shape', images)!r}.")
    for nm, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"`{nm}` must be an int >= {lo}, got {v!r}.")
    xw = images if wrapped_preprocess is None else wrapped_preprocess(images)
    xb = images if bare_preprocess is None else bare_preprocess(images)
    cuda = images.is_cuda

    def once(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize(images.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            fn(x)
        if cuda:
            torch.cuda.synchronize(images.device)
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(warmup):
        once(wrapped, xw)
        once(bare, xb)
    tw, tb = [], []
    for _ in range(repeats):
        tw.append(once(wrapped, xw))
        tb.append(once(bare, xb))
    out: dict[str, Any] = {
        "wrapped_seconds": statistics.median(t[0] for t in tw),
        "bare_seconds": statistics.median(t[0] for t in tb),
        "wrapped_cpu_seconds": statistics.median(t[1] for t in tw),
        "bare_cpu_seconds": statistics.median(t[1] for t in tb),
        "batch_size": int(images.shape[0]),
        "clock": "wall" if cuda else "cpu",
    }
    w, b = (out["wrapped_seconds"], out["bare_seconds"]) if cuda else (out["wrapped_cpu_seconds"], out["bare_cpu_seconds"])
    out["ratio"] = w / b if b > 0 else float("inf")
    return out


# --------------------------------------------------------------------------- figure


def plot_attribution_examples(
    result: BenchmarkResult | Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] | None = None,
    alpha: float = 0.55,
    cmap: str = "jet",
    dpi: int = 80,
) -> Any:
    """Paper figure 4: the same images explained by each method.

    Rows are images; the columns are the image, the ground-truth mask, then each
    method's heatmap (min-max scaled per image) over the image.

    Args:
        result: a `BenchmarkResult` (its ``examples``) or the ``examples`` dict.
        path: where to save the figure (atomically; format from the suffix); ``None``
            only returns it.
        methods: columns to show, in order (default: every method with heatmaps).

    Returns:
        The matplotlib ``Figure``.

    Examples:
        >>> import torch
        >>> ex = {"images": torch.rand(2, 3, 8, 8), "masks": torch.rand(2, 8, 8) > 0.5,
        ...       "heatmaps": {"a": torch.rand(2, 1, 4, 4)}}
        >>> len(plot_attribution_examples(ex).axes)
        6
    """
    from salfcbm.viz.figures import _new_figure, overlay_heatmap, save_figure

    ex = result.examples if isinstance(result, BenchmarkResult) else result
    if not ex or "images" not in ex or "heatmaps" not in ex:
        raise InputError("No examples to plot: run the benchmark with n_examples > 0.")
    images, masks, heat = ex["images"], ex.get("masks"), ex["heatmaps"]
    names = list(heat) if methods is None else list(methods)
    missing = [n for n in names if n not in heat]
    if missing:
        raise InputError(f"No heatmaps for {missing}; available: {list(heat)}.")
    n = images.shape[0]
    cols = 1 + (masks is not None) + len(names)
    fig = _new_figure((1.6 * cols, 1.7 * n + 0.3))
    axes = fig.subplots(n, cols, squeeze=False)
    for i in range(n):
        img = images[i].detach().float().cpu().clamp(0, 1)
        c = 0
        axes[i, c].imshow(img.permute(1, 2, 0).numpy())
        c += 1
        if masks is not None:
            axes[i, c].imshow(masks[i].float().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            c += 1
        for name in names:
            h = heat[name][i].detach().float().cpu().squeeze(0)
            h = upsample_bilinear(h, img.shape[-2:])
            axes[i, c].imshow(overlay_heatmap(img, h, alpha=alpha, cmap=cmap))
            c += 1
    titles = ["image"] + (["target mask"] if masks is not None else []) + names
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_figure(fig, path, dpi=dpi)
    return fig
