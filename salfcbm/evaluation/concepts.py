"""Concept accuracy where annotations exist: does a concept's activation say it is there, and does its map say where?

`concept_metrics` scores every annotated concept of a SALF-CBM on annotated images:

* **detection** (per-image labels): the concept's standardised pooled activation
  ``c*_norm(x)[m]`` (what the head reads, `SALFCBM.standardize`) as a score for "the concept
  is annotated present": AUROC and average precision (scikit-learn's ``roc_auc_score`` and
  ``average_precision_score``, threshold-free), and the accuracy of salfcbm's own
  "present" decision (`salfcbm.explain.evidence.is_present`, read through `present_decision`),
  with the rate at which it says "present" and the annotated prevalence next to it;
* **localisation** (masks): on every image where the concept's mask is not empty, its concept
  map upsampled bilinearly to the mask: *pointing* (the map's maximum lies in the mask;
  Zhang et al., ECCV 2016), *top-region IoU* (IoU of the mask with the map's top pixels, as
  many as the mask has: a threshold-free IoU), and *pixel AUROC* (the map as a pixel
  classifier of the mask; images whose mask covers every pixel are left out of it). Next to
  them, *mask fraction*: the mean share of the image the mask covers, which is the pointing
  score of a random map (and its top-region IoU is about ``f / (2 - f)``): a large mask, such as
  a background, is easy to point at.

Tables: `ConceptMetrics.per_concept` (one row per annotated concept) and
`ConceptMetrics.macro` (the unweighted mean over concepts of each column, ignoring concepts
where it is undefined, e.g. AUROC of a concept annotated present in every image).

Annotations, ``annotations=``:

* a `ConceptAnnotations` (concept names, per-image labels ``(N, K)`` with 1 present, 0 absent,
  NaN unknown, and/or masks);
* the demo world (`salfcbm.demo.SyntheticScenes`) or any object with ``concepts`` and
  ``masks_batch(indices) -> (B, K, H, W)``: masks, and labels "mask not empty";
* any object with ``concepts`` and ``labels`` ``(N, K)``, such as
  `salfcbm.datasets.CUB200Dataset.concept_labels` (CUB-200's attribute annotations matched to the
  concept set by name);
* a mapping ``{concept: [label per image]}`` (a user's per-image labels; NaN or None unknown);
* a tensor ``(N, K)`` of labels or ``(N, K, H, W)`` of masks in the order of ``model.concepts``.

Concepts are matched to the model's by name (case and surrounding spaces ignored); model
concepts without an annotation are listed in `ConceptMetrics.unannotated`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.shard_compute import collate_images
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = [
    "DETECTION_COLUMNS",
    "LOCALISATION_COLUMNS",
    "ConceptAnnotations",
    "ConceptMetrics",
    "concept_metrics",
    "present_decision",
]

DETECTION_COLUMNS = ("auroc", "average_precision", "accuracy", "predicted_present_rate", "prevalence")
LOCALISATION_COLUMNS = ("pointing", "top_region_iou", "pixel_auroc", "mask_fraction")


def present_decision(model: Any, normalized_activations: torch.Tensor, peaks: torch.Tensor | None = None,
                     concept_idx: list[int] | None = None) -> torch.Tensor:
    """salfcbm's "present" decision for ``(N, K)`` standardised activations of ``model``'s concepts.

    The one place `concept_metrics` reads the presence rule, the same one explanations use: a
    model with calibrated presence (``model.presence_threshold``, set by `salfcbm.fit`) says
    *present* when the peak of the standardised concept map is above the concept's threshold
    (`salfcbm.explain.evidence.is_present_calibrated`, ``peaks`` ``(N, K)`` of the concepts
    ``concept_idx``); otherwise the training-mean rule `salfcbm.explain.evidence.is_present`
    (``c*_norm > PRESENCE_THRESHOLD``).

    Examples:
        >>> present_decision(None, torch.tensor([[0.5, -0.1]])).tolist()
        [[True, False]]
    """
    from salfcbm.explain.evidence import is_present, is_present_calibrated

    thresholds = getattr(model, "presence_threshold", None)
    if thresholds is not None and peaks is not None:
        t = thresholds.detach().float().cpu()
        return is_present_calibrated(peaks, t[concept_idx] if concept_idx is not None else t)
    return is_present(normalized_activations)


def _peaks(model: Any, maps: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """``(N, K)`` peaks of the standardised concept maps ``maps`` (``(N, K, h, w)``) of concepts ``idx``."""
    return model.map_peaks(maps, idx).cpu()


def _threshold_label(model: Any = None) -> str:
    from salfcbm.explain import evidence

    if getattr(model, "presence_threshold", None) is not None:
        return "peak of the standardised map > the concept's calibrated threshold (model.presence_threshold)"
    return f"c*_norm > {getattr(evidence, 'PRESENCE_THRESHOLD', 0.0)} (salfcbm.explain.evidence.is_present)"


@dataclass
class ConceptAnnotations:
    """Ground truth for some concepts: per-image labels and/or masks.

    Args:
        concepts: the annotated concepts' names, in column order.
        labels: ``(N, K)`` float: 1 present, 0 absent, NaN unknown (``None``: from the masks).
        masks: ``(N, K, H, W)`` bool, or a function ``indices -> (B, K, H, W)`` bool; ``None`` for
            detection only.
    """

    concepts: list[str]
    labels: torch.Tensor | None = None
    masks: torch.Tensor | Callable[[Sequence[int]], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.concepts = [str(c) for c in self.concepts]
        if not self.concepts:
            raise InputError("ConceptAnnotations needs at least one concept name.")
        if self.labels is None and self.masks is None:
            raise InputError("ConceptAnnotations needs `labels` (N, K), `masks` (N, K, H, W), or both.")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.float64)
            if self.labels.dim() != 2 or self.labels.shape[1] != len(self.concepts):
                raise InputError(f"`labels` must be (N, {len(self.concepts)}) (one column per concept), "
                                 f"got {tuple(self.labels.shape)}.")
            bad = ~(self.labels.isnan() | (self.labels == 0) | (self.labels == 1))
            if bad.any():
                raise InputError("`labels` must hold 1 (present), 0 (absent) or NaN (unknown); found "
                                 f"{sorted(set(self.labels[bad].tolist()))[:5]}.")
        m = self.masks
        if isinstance(m, torch.Tensor) and (m.dim() != 4 or m.shape[1] != len(self.concepts)):
            raise InputError(f"`masks` must be (N, {len(self.concepts)}, H, W), got {tuple(self.masks.shape)}.")

    def masks_for(self, indices: Sequence[int]) -> torch.Tensor | None:
        if self.masks is None:
            return None
        m = self.masks[list(indices)] if isinstance(self.masks, torch.Tensor) else self.masks(list(indices))
        return torch.as_tensor(m).bool()

    def labels_for(self, indices: Sequence[int], masks: torch.Tensor | None = None) -> torch.Tensor:
        if self.labels is not None:
            if max(indices) >= self.labels.shape[0]:
                raise InputError(f"The data has more images than the annotations ({self.labels.shape[0]} rows).")
            return self.labels[list(indices)]
        masks = self.masks_for(indices) if masks is None else masks
        return masks.flatten(2).any(-1).double()


def as_annotations(annotations: Any, model: Any) -> ConceptAnnotations:
    """Normalise the accepted forms of ``annotations`` (see the module docstring) to `ConceptAnnotations`."""
    if isinstance(annotations, ConceptAnnotations):
        return annotations
    if hasattr(annotations, "concepts") and callable(getattr(annotations, "masks_batch", None)):
        return ConceptAnnotations(list(annotations.concepts), masks=annotations.masks_batch)
    if hasattr(annotations, "concepts") and getattr(annotations, "labels", None) is not None:
        return ConceptAnnotations(list(annotations.concepts), labels=annotations.labels)
    if isinstance(annotations, Mapping):
        names = list(annotations)
        cols = [[math.nan if v is None else float(v) for v in annotations[c]] for c in names]
        if len({len(c) for c in cols}) > 1:
            raise InputError("Every concept in `annotations` must have one label per image (lists of equal length).")
        return ConceptAnnotations(names, labels=torch.tensor(cols, dtype=torch.float64).T)
    if isinstance(annotations, torch.Tensor):
        if annotations.dim() == 2:
            return ConceptAnnotations(list(model.concepts), labels=annotations)
        if annotations.dim() == 4:
            return ConceptAnnotations(list(model.concepts), masks=annotations.bool())
    raise InputError(
        "`annotations` must be a ConceptAnnotations, the demo's SyntheticScenes (concepts + masks_batch), an "
        "object with `concepts` and `labels` (e.g. CUBAttributes.for_concepts(...)), a {concept: labels} "
        f"mapping, or a (N, K) / (N, K, H, W) tensor in model.concepts order; got {type(annotations).__name__}."
    )


# --------------------------------------------------------------------------- result


@dataclass
class ConceptMetrics:
    """What `concept_metrics` measured.

    Attributes:
        per_concept: one row per annotated concept: ``concept``, ``n_images``, ``n_present``,
            the `DETECTION_COLUMNS`, ``n_localised`` and the `LOCALISATION_COLUMNS` (NaN where undefined).
        macro: the mean of each metric column over the concepts where it is defined, with
            ``n_concepts`` and ``above_chance`` (concepts whose AUROC is above 0.5).
        threshold: how "present" is decided (for the ``accuracy`` column).
        unannotated: model concepts without annotation (not scored).
    """

    per_concept: list[dict[str, Any]]
    macro: dict[str, float]
    threshold: str
    unannotated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes ``None``)."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "per_concept": [{k: clean(v) for k, v in r.items()} for r in self.per_concept],
            "macro": {k: clean(v) for k, v in self.macro.items()},
            "threshold": self.threshold,
            "unannotated": list(self.unannotated),
        }

    def table(self, columns: Sequence[str] = ("auroc", "average_precision", "accuracy", *LOCALISATION_COLUMNS)) -> str:
        """A Markdown table, one row per concept and a final ``macro`` row."""
        cols = [c for c in columns if any(c in r for r in self.per_concept)]
        lines = ["| concept | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for r in [*self.per_concept, {"concept": "**macro**", "n_images": "", **self.macro}]:
            cells = ["-" if not isinstance(r.get(c), float) or math.isnan(r[c]) else f"{r[c]:.3f}" for c in cols]
            lines.append(f"| {r['concept']} | {r['n_images']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


# --------------------------------------------------------------------------- metrics


def _mann_whitney_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC of ``scores`` for boolean ``positive`` (ties count one half), NaN with one class only."""
    from salfcbm.evaluation.sanity import average_ranks

    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(scores.flatten().double()) + 1
    return float((ranks[positive.flatten()].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _localise(maps: torch.Tensor, masks: torch.Tensor) -> list[tuple[int, float, float, float]]:
    """Per (image, concept) pair with a non-empty mask: (concept, pointing hit, top-region IoU, pixel AUROC, area)."""
    out = []
    up = upsample_bilinear(maps.float(), masks.shape[-2:])
    for b, k in masks.flatten(2).any(-1).nonzero().tolist():
        heat, mask = up[b, k].flatten(), masks[b, k].flatten()
        area = int(mask.sum())
        hit = float(mask[int(heat.argmax())])
        top = torch.zeros_like(mask)
        top[heat.topk(area).indices] = True
        iou = float((top & mask).sum() / (top | mask).sum())
        out.append((k, hit, iou, _mann_whitney_auroc(heat, mask), area / mask.numel()))
    return out


def _iter_images(data: Any, n: int, batch_size: int):
    for a in range(0, n, batch_size):
        idx = list(range(a, min(a + batch_size, n)))
        if isinstance(data, torch.Tensor):
            yield idx, data[idx]
        else:
            items = [data[i] for i in idx]
            yield idx, collate_images(items)


def _detection_row(z: torch.Tensor, y: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    known = ~y.isnan()
    z, y, present = z[known], y[known] > 0.5, present[known]
    both = 0 < int(y.sum()) < len(y)
    return {
        "n_images": int(known.sum()),
        "n_present": int(y.sum()),
        "auroc": float(roc_auc_score(y.numpy(), z.numpy())) if both else math.nan,
        "average_precision": float(average_precision_score(y.numpy(), z.numpy())) if both else math.nan,
        "accuracy": float((present == y).double().mean()) if len(y) else math.nan,
        "predicted_present_rate": float(present.double().mean()) if len(y) else math.nan,
        "prevalence": float(y.double().mean()) if len(y) else math.nan,
    }


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _columns(model: Any, ann: ConceptAnnotations) -> tuple[list[int], list[int], list[str]]:
    """(annotation columns, model concept indices) of the concepts both name, and the model's unannotated."""
    mine = {c.strip().lower(): i for i, c in enumerate(model.concepts)}
    cols, idx = [], []
    for j, c in enumerate(ann.concepts):
        i = mine.get(c.strip().lower())
        if i is not None and i not in idx:
            cols.append(j)
            idx.append(i)
    if not cols:
        raise InputError(
            f"None of the annotated concepts {ann.concepts[:5]}{' ...' if len(ann.concepts) > 5 else ''} is a concept "
            f"of the model ({list(model.concepts)[:5]} ...). Match the names (case is ignored), or map them first."
        )
    return cols, idx, [c for i, c in enumerate(model.concepts) if i not in idx]


def concept_metrics(
    model: SALFCBM,
    data: Any,
    annotations: Any,
    *,
    n: int | None = None,
    batch_size: int = 64,
    localisation: bool = True,
) -> ConceptMetrics:
    """Per annotated concept: detection (AUROC, AP, accuracy of "present") and localisation of its map.

    Args:
        model: a SALF-CBM (with its backbone).
        data: the annotated images, in annotation order: a dataset of ``(image, ...)`` items or a
            ``(N, 3, H, W)`` tensor, ``[0, 1]`` images as datasets give them (fed through
            ``model.preprocess(..., crop=False)``, so maps stay aligned with the masks).
        annotations: see the module docstring (demo scenes, labels, masks, a mapping, CUB attributes).
        n: score the first ``n`` images only (default: all).
        batch_size: images per forward pass.
        localisation: also score the maps against masks (when the annotations have masks).

    Returns:
        A `ConceptMetrics` with per-concept and macro tables.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.demo.scenes import SmallConvNet
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["a", "b"], num_classes=2,
        ...                  grid=4, input_size=(32, 32), backbone_weights=None).eval()
        >>> r = concept_metrics(m, torch.rand(6, 3, 32, 32), {"a": [1, 0, 1, 0, 1, None]})
        >>> r.per_concept[0]["concept"], r.per_concept[0]["n_images"], r.unannotated
        ('a', 5, ['b'])
    """
    ann = as_annotations(annotations, model)
    cols, idx, unannotated = _columns(model, ann)
    total = data.shape[0] if isinstance(data, torch.Tensor) else len(data)
    if isinstance(n, bool) or (n is not None and (not isinstance(n, int) or n < 1)):
        raise InputError(f"`n` must be a positive int or None, got {n!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    n = total if n is None else min(n, total)
    if n == 0:
        raise InputError("`data` holds no image.")
    zs, ys, local, pk = [], [], [], []
    calibrated = getattr(model, "presence_threshold", None) is not None
    dev = next(model.parameters()).device
    for ids, images in _iter_images(data, n, batch_size):
        with torch.no_grad():
            out = model(model.preprocess(images.to(dev), crop=False))
        zs.append(model.standardize(out.concept_activations.float())[:, idx].detach().cpu())
        if calibrated:
            pk.append(_peaks(model, out.concept_maps[:, idx], idx))
        masks = ann.masks_for(ids)
        ys.append(ann.labels_for(ids, masks)[:, cols])
        if masks is not None and localisation:
            local += _localise(out.concept_maps[:, idx].detach().cpu(), masks[:, cols].cpu())
    z, y = torch.cat(zs), torch.cat(ys)
    present = present_decision(model, z, torch.cat(pk) if pk else None, idx)
    rows = []
    for k, i in enumerate(idx):
        row = {"concept": model.concepts[i], **_detection_row(z[:, k], y[:, k], present[:, k])}
        if ann.masks is not None and localisation:
            mine = [t for t in local if t[0] == k]
            row["n_localised"] = len(mine)
            for c, col in enumerate(LOCALISATION_COLUMNS, start=1):
                row[col] = _nanmean([t[c] for t in mine])
        rows.append(row)
    metric_cols = [c for c in (*DETECTION_COLUMNS, *LOCALISATION_COLUMNS) if c in rows[0]]
    macro = {c: _nanmean([r[c] for r in rows]) for c in metric_cols}
    macro["n_concepts"] = len(rows)
    macro["above_chance"] = sum(1 for r in rows if not math.isnan(r["auroc"]) and r["auroc"] > 0.5)
    return ConceptMetrics(per_concept=rows, macro=macro, threshold=_threshold_label(model), unannotated=unannotated)
