"""Explanations and interaction: tell what, show where, explain anything, intervene.

Implements paper sections 3.5-3.6 (Benou & Riklin-Raviv, "Show and Tell", CVPR 2025):

* **Concept-based explanations** ("tell what", 3.5): the contribution of concept ``m`` to
  class ``l`` on image ``x`` is ``S(x, m, l) = W[l, m] * c*_norm(x)[m]``, with ``c*_norm`` the
  pooled concept activations standardised by the training mean/std. Contributions plus the
  head's bias sum to the logit. `explain` ranks concepts by ``|S|``.
* **Spatial explanations** ("show where", 3.5): the concept maps ``c(x)[m]`` of the top-k
  concepts, upsampled bilinearly to the input size.
* **Global decision rules** (3.5): the non-zero weights of a class (`decision_rules`).
* **Explain Anything** (3.6): ``a(x, m | I) = sum(I * c_up[m])`` for a region ``I`` given as a
  mask, a box or points (`explain_region`).
* **Local intervention** (3.6): ``c(x)[m] += beta * I``, then pooling, standardisation and the
  head run again (`intervene`).

Everything here reuses one forward pass of the model (pass ``output=`` to reuse your own) and
never runs the backbone a second time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
import torch.nn.functional as F

from salfcbm._utils.io import atomic_write_text
from salfcbm._utils.tensors import interp_matrix, upsample_bilinear
from salfcbm.errors import ClassNotFoundError, DegenerateResultWarning, InputError
from salfcbm.explain.evidence import PRESENT_KINDS, evidence_kinds, is_present_calibrated

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM, SALFCBMOutput

__all__ = [
    "ClassNotFoundError",
    "ClassExplanation",
    "Explanation",
    "ExplanationBatch",
    "RegionExplanation",
    "RegionReport",
    "InterventionResult",
    "DecisionRule",
    "explain",
    "explain_region",
    "intervene",
    "decision_rules",
    "box_mask",
    "points_mask",
    "region_masks",
    "mask_to_grid",
    "upsample_maps",
]

HEATMAP_MODES = ("summary", "drop", "full")
Target = Union[None, int, str, Sequence, torch.Tensor]


# ---------------------------------------------------------------------- small helpers
def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().flatten().tolist()]


def _heatmap_summary(h: torch.Tensor) -> dict[str, Any]:
    h = h.detach().float().cpu()
    flat = int(h.argmax())
    return {
        "shape": list(h.shape),
        "min": float(h.min()),
        "max": float(h.max()),
        "mean": float(h.mean()),
        "argmax_yx": [flat // h.shape[-1], flat % h.shape[-1]],
    }


def _heatmaps_to_json(h: torch.Tensor | None, mode: str) -> Any:
    if mode not in HEATMAP_MODES:
        raise InputError(f"`heatmaps` must be one of {HEATMAP_MODES}, got {mode!r}.")
    if h is None or mode == "drop":
        return None
    if mode == "summary":
        return [_heatmap_summary(x) for x in h]
    return [[[round(float(v), 6) for v in row] for row in x.detach().float().cpu().tolist()] for x in h]


class _JSONMixin:
    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike | None = None, *, heatmaps: str = "summary", indent: int | None = 2) -> str:
        """Serialise `to_dict` to JSON; with ``path``, also write it there atomically.

        Args:
            path: optional file to write.
            heatmaps: ``"summary"`` (shape, min, max, mean, argmax per map), ``"drop"`` or ``"full"``.
            indent: JSON indentation.
        """
        text = json.dumps(self.to_dict(heatmaps=heatmaps), indent=indent)
        if path is not None:
            atomic_write_text(path, text)
        return text


def _as_batch(images: Any, name: str = "images", model: SALFCBM | None = None) -> torch.Tensor:
    if model is not None:  # backbone-ready float tensors (checked) or raw images (preprocessed)
        return model._as_input(images, name)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"`{name}` must be a torch.Tensor of backbone-ready images, got {type(images).__name__}.")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise InputError(
            f"`{name}` must be (B, C, H, W) or (C, H, W) backbone-ready images, got shape {tuple(images.shape)}."
        )
    return images


def _single_image(image: Any, model: SALFCBM | None = None) -> torch.Tensor:
    x = _as_batch(image, "image", model)
    if x.shape[0] != 1:
        raise InputError(
            f"`image` must be one image, (C, H, W) or (1, C, H, W), got a batch of {x.shape[0]}. "
            "Call once per image (pass `output=` to reuse a forward pass)."
        )
    return x


def _forward(model: SALFCBM, images: torch.Tensor, output: SALFCBMOutput | None) -> SALFCBMOutput:
    if output is None:
        with torch.no_grad():
            return model(images)
    act = getattr(output, "concept_activations", None)
    if not hasattr(output, "concept_maps_at") or act is None or tuple(act.shape) != (images.shape[0], model.num_concepts):
        raise InputError(
            f"`output` must be the SALFCBMOutput of `model(images)` for these {images.shape[0]} image(s) "
            f"and {model.num_concepts} concepts; got concept activations of shape "
            f"{None if act is None else tuple(act.shape)}. Leave `output=None` to run the model."
        )
    return output


def class_index(model: SALFCBM, target: Any) -> int:
    """Index of a class given by index or name (unknown names list the closest ones)."""
    L = model.num_classes
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target)
    if isinstance(target, bool):
        raise InputError(f"A class is an int index or a name, got {target!r}.")
    if isinstance(target, int):
        if not -L <= target < L:
            raise InputError(f"Class index {target} is out of range for {L} classes (valid: 0..{L - 1}).")
        return target % L
    if isinstance(target, str):
        names = model.class_names
        if target in names:
            return names.index(target)
        raise ClassNotFoundError(target, names)
    raise InputError(f"A class is an int index or a name, got {type(target).__name__} {target!r}.")


def _resolve_targets(model: SALFCBM, target: Target, preds: torch.Tensor) -> list[list[int]]:
    B = preds.shape[0]
    if target is None:
        return [[int(p)] for p in preds]
    if isinstance(target, torch.Tensor):
        if target.is_floating_point():
            raise InputError(f"`target` must hold integer class indices, got dtype {target.dtype}.")
        if target.dim() == 0:
            return [[class_index(model, int(target))] for _ in range(B)]
        if target.dim() == 1 and target.shape[0] == B:
            return [[class_index(model, int(t))] for t in target]
        if target.dim() == 2 and target.shape[0] == B:
            return [[class_index(model, int(t)) for t in row] for row in target]
        raise InputError(
            f"A `target` tensor must be a scalar, (B,) or (B, T) with B={B}, got shape {tuple(target.shape)}."
        )
    if isinstance(target, (int, str)):
        return [[class_index(model, target)] for _ in range(B)]
    if isinstance(target, Sequence):
        if len(target) != B:
            raise InputError(
                f"`target` lists {len(target)} entries for {B} image(s); give one entry per image. For several "
                f"classes of one image, nest them: target=[[3, 5]] (a list of lists, one inner list per image)."
            )
        out = []
        for t in target:
            if isinstance(t, (int, str)) or (isinstance(t, torch.Tensor) and t.dim() == 0):
                out.append([class_index(model, t)])
            elif isinstance(t, (Sequence, torch.Tensor)) and len(t) > 0:
                out.append([class_index(model, c) for c in t])
            else:
                raise InputError(f"Each per-image target must be a class index/name or a non-empty list, got {t!r}.")
        return out
    raise InputError(
        f"`target` must be None, an int, a class name, a (B,) tensor, a list per image or a list of lists, "
        f"got {type(target).__name__}."
    )


def _check_top_k(top_k: Any, limit: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"`top_k` must be a positive int, got {top_k!r}.")
    return min(top_k, limit)


def upsample_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling of ``(..., Hg, Wg)`` maps to ``size`` (paper 3.5), ``align_corners=False``."""
    return upsample_bilinear(maps.float(), (int(size[0]), int(size[1])))


_interp_matrix = interp_matrix  # one home: salfcbm._utils.tensors


# ---------------------------------------------------------------------- regions
def _hw(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2:
        raise InputError(f"A size is (H, W), got {size!r}.")
    return int(size[0]), int(size[1])


_MAX_HEATMAP_BYTES = 2**31  # 2 GiB of float32 heatmaps per call


def _heatmap_size(size: Any, maps: int) -> tuple[int, int]:
    ok = isinstance(size, Sequence) and len(size) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    if not ok:
        raise InputError(f"heatmap_size must be (H, W), two positive ints, got {size!r}.")
    if maps * size[0] * size[1] * 4 > _MAX_HEATMAP_BYTES:
        raise InputError(
            f"heatmap_size {tuple(size)} for {maps} heatmaps needs {maps * size[0] * size[1] * 4 / 2**30:.1f} GiB "
            "(limit 2 GiB per call). Pass the image's own size (the default), a smaller size, or fewer images/top_k."
        )
    return int(size[0]), int(size[1])


def box_mask(box: Sequence[float], size: Sequence[int], *, device=None) -> torch.Tensor:
    """Binary ``(H, W)`` mask of a box ``(x0, y0, x1, y1)`` in pixels.

    The box is half-open: it covers columns ``x0 .. x1 - 1`` and rows ``y0 .. y1 - 1``;
    fractional corners are widened to whole pixels (floor of ``x0, y0``, ceil of ``x1, y1``).

    Examples:
        >>> box_mask((1, 0, 3, 2), (3, 4)).int().tolist()
        [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    H, W = _hw(size)
    if isinstance(box, torch.Tensor):
        box = box.tolist()
    if not isinstance(box, Sequence) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise InputError(f"A box is four numbers (x0, y0, x1, y1) in pixels, got {box!r}.")
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"Box {tuple(box)} has NaN or infinite corners; pass finite pixel coordinates (x0, y0, x1, y1).")
    x0, y0 = math.floor(box[0]), math.floor(box[1])
    x1, y1 = math.ceil(box[2]), math.ceil(box[3])
    if not (0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H):
        raise InputError(
            f"Box {tuple(box)} is empty or outside the {W}x{H} (W x H) image; expected 0 <= x0 < x1 <= {W} "
            f"and 0 <= y0 < y1 <= {H} (pixels, x1/y1 exclusive)."
        )
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    m[y0:y1, x0:x1] = True
    return m


def points_mask(
    points: Sequence[Sequence[float]], size: Sequence[int], radius: float, *, device=None
) -> torch.Tensor:
    """Binary ``(H, W)`` mask: the union of disks of ``radius`` pixels around ``(x, y)`` points.

    A pixel ``(row i, column j)`` belongs to the disk of ``(x, y)`` when
    ``(j - x)**2 + (i - y)**2 <= radius**2``.

    Examples:
        >>> points_mask([(1, 1)], (3, 3), radius=1).int().tolist()
        [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    H, W = _hw(size)
    if isinstance(points, torch.Tensor):
        points = points.tolist()
    if not isinstance(points, Sequence) or not points:
        raise InputError(f"`points` must be a non-empty list of (x, y) pairs, got {points!r}.")
    if not isinstance(radius, (int, float)) or isinstance(radius, bool) or radius < 0:
        raise InputError(f"`radius` must be a non-negative number of pixels, got {radius!r}.")
    ys = torch.arange(H, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(W, device=device, dtype=torch.float32)[None, :]
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    for p in points:
        if not isinstance(p, Sequence) or len(p) != 2 or not all(isinstance(v, (int, float)) for v in p):
            raise InputError(f"A point is an (x, y) pair in pixels, got {p!r}.")
        x, y = float(p[0]), float(p[1])
        if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
            raise InputError(f"Point (x={x}, y={y}) is outside the {W}x{H} (W x H) image; expected 0 <= x <= {W - 1}, 0 <= y <= {H - 1}.")
        m |= (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
    return m


def _is_point(p: Any) -> bool:
    return isinstance(p, Sequence) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p)


def region_masks(
    size: Sequence[int],
    *,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    grid: Sequence[int] | None = None,
    device=None,
) -> torch.Tensor:
    """Turn exactly one of ``mask``, ``box`` or ``points`` into a float ``(R, H, W)`` stack of regions.

    Args:
        size: image size ``(H, W)``.
        mask: ``(H, W)`` or ``(R, H, W)`` tensor/array (bool, or weights >= 0), e.g. masks from SAM.
        box: ``(x0, y0, x1, y1)``, a list of boxes or an ``(R, 4)`` tensor (see `box_mask`).
        points: ``[(x, y), ...]`` (one region, union of disks) or a list of such lists (one region each).
        radius: disk radius for points, in pixels; default half a grid cell (at least 1 px).
        grid: the prompting grid, used for the default radius.

    Raises:
        InputError: none or several of mask/box/points, a wrong shape, or an empty region.

    Examples:
        >>> region_masks((8, 8), box=[(0, 0, 4, 4), (4, 4, 8, 8)]).shape
        torch.Size([2, 8, 8])
    """
    H, W = _hw(size)
    given = [n for n, v in (("mask", mask), ("box", box), ("points", points)) if v is not None]
    if len(given) != 1:
        raise InputError(
            f"Give exactly one region: mask=, box= or points=; got {given or 'none'}."
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            try:
                mask = torch.as_tensor(mask)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"`mask` must be a tensor or array of shape (H, W) or (R, H, W), got {type(mask).__name__}.") from e
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
        if mask.dim() != 3 or tuple(mask.shape[-2:]) != (H, W):
            raise InputError(
                f"`mask` must be (H, W) or (R, H, W) with (H, W) = ({H}, {W}), the image size; got shape "
                f"{tuple(mask.shape)}. Resize the mask to the image (nearest) first."
            )
        masks = mask.to(device=device, dtype=torch.float32)
        if not torch.isfinite(masks).all() or (masks < 0).any():
            raise InputError("`mask` values must be finite and >= 0 (a binary mask, or non-negative weights).")
    elif box is not None:
        if isinstance(box, torch.Tensor):
            box = box.tolist()
        boxes = [box] if (isinstance(box, Sequence) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)) else box
        if not isinstance(boxes, Sequence) or not boxes:
            raise InputError(f"`box` must be (x0, y0, x1, y1) or a non-empty list of boxes, got {box!r}.")
        masks = torch.stack([box_mask(b, (H, W), device=device) for b in boxes]).float()
    else:
        if isinstance(points, torch.Tensor):
            points = points.tolist()
        if not isinstance(points, Sequence) or not points:
            raise InputError(f"`points` must be a list of (x, y) pairs or a list of such lists, got {points!r}.")
        groups = [points] if _is_point(points[0]) else list(points)
        if radius is None:
            gh, gw = _hw(grid) if grid is not None else (H, W)
            radius = max(1.0, 0.5 * min(H / gh, W / gw))
        masks = torch.stack([points_mask(g, (H, W), radius, device=device) for g in groups]).float()
    empty = [i for i in range(masks.shape[0]) if float(masks[i].sum()) <= 0]
    if empty:
        raise InputError(f"Region(s) {empty} are empty (no pixel selected); every region needs at least one pixel.")
    return masks


def mask_to_grid(mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Downsample ``(..., H, W)`` region(s) to the prompting grid by area averaging.

    Each grid cell gets the fraction of its pixels inside the region
    (``F.adaptive_avg_pool2d``; with H, W multiples of the grid this is the exact block mean, so
    the grid mask's mean equals the region's area fraction). A mask already at grid size is
    returned as float unchanged.

    Examples:
        >>> mask_to_grid(torch.ones(4, 4).tril(), (2, 2)).tolist()
        [[0.75, 0.0], [1.0, 0.75]]
    """
    gh, gw = _hw(grid)
    m = mask.float()
    if tuple(m.shape[-2:]) == (gh, gw):
        return m
    lead = m.shape[:-2]
    out = F.adaptive_avg_pool2d(m.reshape(-1, 1, *m.shape[-2:]), (gh, gw))
    return out.reshape(*lead, gh, gw)


# ---------------------------------------------------------------------- results
@dataclass
class ClassExplanation(_JSONMixin):
    """Why one image got (or would get) one class: the top-k contributing concepts.

    Each top concept carries its evidence kind (`salfcbm.evidence`): ``"present_supports"``,
    ``"present_opposes"``, ``"absent_supports"`` (a negative weight times a below-average
    activation: the concept's *absence* raises the logit), ``"absent_opposes"`` or
    ``"no_weight"``. A concept is present when the peak of its standardised concept map is above
    the model's calibrated `SALFCBM.presence_threshold` (models from `salfcbm.fit`), else
    (uncalibrated models) when its standardised pooled activation is positive.

    Attributes:
        target: class index ``l``.
        class_name: its name.
        logit: the class logit.
        probability: its softmax probability.
        bias: the head's bias ``b[l]``; ``contributions.sum() + bias == logit``.
        contributions: ``(M,)`` all contributions ``S(x, m, l) = W[l, m] * c*_norm(x)[m]``.
        concept_indices: ``(k,)`` the top-k concepts by ``|S|``.
        concepts: their names.
        scores: ``(k,)`` their signed contributions.
        heatmaps: ``(k, H, W)`` their concept maps upsampled bilinearly to the input size (or ``None``).
        evidence: ``k`` evidence kinds, one per top concept (see above).
        activations: ``(k,)`` the top concepts' standardised pooled activations ``c*_norm(x)[m]``
            (``> 0``: present, for an uncalibrated model).
        concept_mean, concept_std: ``(k,)`` the training statistics that standardise them;
            `standardized_heatmaps` puts the heatmaps on that common scale.
        peaks: ``(k,)`` the peaks of the standardised concept maps,
            ``(max c(x)[m] - mean[m]) / std[m]`` (``None`` for an uncalibrated model).
        presence_threshold: ``(k,)`` the model's calibrated presence thresholds of these
            concepts (``peaks > presence_threshold``: present), or ``None`` when the model is not
            calibrated and presence means ``activations > 0``.
    """

    target: int
    class_name: str
    logit: float
    probability: float
    bias: float
    contributions: torch.Tensor
    concept_indices: torch.Tensor
    concepts: list[str]
    scores: torch.Tensor
    heatmaps: torch.Tensor | None = None
    evidence: list[str] = field(default_factory=list)
    activations: torch.Tensor | None = None
    concept_mean: torch.Tensor | None = field(default=None, repr=False)
    concept_std: torch.Tensor | None = field(default=None, repr=False)
    peaks: torch.Tensor | None = None
    presence_threshold: torch.Tensor | None = field(default=None, repr=False)

    def pairs(self) -> list[tuple[str, float]]:
        """``[(concept, contribution), ...]`` for the top-k concepts."""
        return list(zip(self.concepts, _floats(self.scores)))

    @property
    def present(self) -> list[bool]:
        """Per top concept, whether the image shows it (see `presence_rule`)."""
        return [e in PRESENT_KINDS for e in self.evidence]

    @property
    def presence_rule(self) -> str:
        """``"calibrated"`` (map peak above the concept's threshold) or ``"training_mean"`` (activation > 0)."""
        return "calibrated" if self.presence_threshold is not None else "training_mean"

    def by_evidence(self) -> dict[str, list[tuple[str, float]]]:
        """``{kind: [(concept, contribution), ...]}`` for the kinds that occur, in rank order."""
        out: dict[str, list[tuple[str, float]]] = {}
        for e, pair in zip(self.evidence, self.pairs()):
            out.setdefault(e, []).append(pair)
        return out

    def standardized_heatmaps(self) -> torch.Tensor | None:
        """The heatmaps as ``(c_up[m] - mean[m]) / std[m]``: one scale for every concept.

        In units of the concept's training standard deviation, 0 at its training mean; with mean
        pooling, a map's average is the concept's standardised activation. ``None`` without
        heatmaps or statistics.
        """
        if self.heatmaps is None or self.concept_mean is None or self.concept_std is None:
            return None
        h = self.heatmaps.float()
        mean = self.concept_mean.to(h.device, h.dtype).view(-1, 1, 1)
        std = self.concept_std.to(h.device, h.dtype).view(-1, 1, 1)
        return (h - mean) / std

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        k = len(self.concepts)
        act = _floats(self.activations) if self.activations is not None else [None] * k
        mean = _floats(self.concept_mean) if self.concept_mean is not None else [None] * k
        std = _floats(self.concept_std) if self.concept_std is not None else [None] * k
        peak = _floats(self.peaks) if self.peaks is not None else [None] * k
        thr = _floats(self.presence_threshold) if self.presence_threshold is not None else [None] * k
        ev = list(self.evidence) if len(self.evidence) == k else [None] * k
        return {
            "target": self.target,
            "class_name": self.class_name,
            "logit": self.logit,
            "probability": self.probability,
            "bias": self.bias,
            "top_concepts": [
                {"index": int(i), "concept": c, "contribution": s, "evidence": e, "activation": a,
                 "concept_mean": mu, "concept_std": sd, "peak": pk, "presence_threshold": th}
                for i, c, s, e, a, mu, sd, pk, th in zip(
                    self.concept_indices.tolist(), self.concepts, _floats(self.scores), ev, act, mean, std, peak, thr
                )
            ],
            "presence_rule": self.presence_rule,
            "contributions": _floats(self.contributions),
            "heatmaps": _heatmaps_to_json(self.heatmaps, heatmaps),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassExplanation:
        """Invert `to_dict` (heatmaps come back only from ``heatmaps="full"``)."""
        top = data["top_concepts"]

        def column(key: str) -> torch.Tensor | None:
            vals = [t.get(key) for t in top]
            return None if any(v is None for v in vals) else torch.tensor(vals, dtype=torch.float32)

        maps = data.get("heatmaps")
        full = isinstance(maps, list) and len(maps) > 0 and isinstance(maps[0], list)
        return cls(
            target=int(data["target"]),
            class_name=data["class_name"],
            logit=float(data["logit"]),
            probability=float(data["probability"]),
            bias=float(data["bias"]),
            contributions=torch.tensor(data["contributions"], dtype=torch.float32),
            concept_indices=torch.tensor([int(t["index"]) for t in top], dtype=torch.long),
            concepts=[t["concept"] for t in top],
            scores=torch.tensor([float(t["contribution"]) for t in top], dtype=torch.float32),
            heatmaps=torch.tensor(maps, dtype=torch.float32) if full else None,
            evidence=[t["evidence"] for t in top] if all(t.get("evidence") for t in top) else [],
            activations=column("activation"),
            concept_mean=column("concept_mean"),
            concept_std=column("concept_std"),
            peaks=column("peak"),
            presence_threshold=column("presence_threshold"),
        )


@dataclass
class Explanation(_JSONMixin):
    """The explanation of one image: its prediction and one `ClassExplanation` per target.

    The attributes ``concepts``, ``scores``, ``heatmaps`` and ``concept_indices`` are shortcuts to
    the first target (the prediction by default).

    Attributes:
        index: position of the image in the batch.
        logits: ``(L,)``.
        probabilities: ``(L,)`` softmax of the logits.
        prediction: predicted class index.
        predicted_class: its name.
        activations: ``(M,)`` pooled concept activations ``c*(x)``.
        normalized_activations: ``(M,)`` ``c*_norm(x)`` (standardised with the training statistics).
        classes: one `ClassExplanation` per requested class.
        concept_names: all concept names of the model (index -> name).
    """

    index: int
    logits: torch.Tensor
    probabilities: torch.Tensor
    prediction: int
    predicted_class: str
    activations: torch.Tensor
    normalized_activations: torch.Tensor
    classes: list[ClassExplanation]
    concept_names: list[str] = field(repr=False, default_factory=list)

    @property
    def top(self) -> ClassExplanation:
        """The first requested class (the prediction unless ``target`` said otherwise)."""
        return self.classes[0]

    @property
    def concepts(self) -> list[str]:
        return self.top.concepts

    @property
    def scores(self) -> torch.Tensor:
        return self.top.scores

    @property
    def heatmaps(self) -> torch.Tensor | None:
        return self.top.heatmaps

    @property
    def concept_indices(self) -> torch.Tensor:
        return self.top.concept_indices

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "index": self.index,
            "prediction": self.prediction,
            "predicted_class": self.predicted_class,
            "logits": _floats(self.logits),
            "probabilities": _floats(self.probabilities),
            "activations": _floats(self.activations),
            "normalized_activations": _floats(self.normalized_activations),
            "classes": [c.to_dict(heatmaps=heatmaps) for c in self.classes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], concept_names: Sequence[str] = ()) -> Explanation:
        """Invert `to_dict`."""
        return cls(
            index=int(data["index"]),
            logits=torch.tensor(data["logits"], dtype=torch.float32),
            probabilities=torch.tensor(data["probabilities"], dtype=torch.float32),
            prediction=int(data["prediction"]),
            predicted_class=data["predicted_class"],
            activations=torch.tensor(data.get("activations", []), dtype=torch.float32),
            normalized_activations=torch.tensor(data.get("normalized_activations", []), dtype=torch.float32),
            classes=[ClassExplanation.from_dict(c) for c in data["classes"]],
            concept_names=list(concept_names),
        )


@dataclass
class ExplanationBatch(_JSONMixin):
    """What `explain` returns: one `Explanation` per image (indexable, iterable)."""

    explanations: list[Explanation]
    concept_names: list[str] = field(repr=False, default_factory=list)
    class_names: list[str] = field(repr=False, default_factory=list)

    def __len__(self) -> int:
        return len(self.explanations)

    def __getitem__(self, i: int) -> Explanation:
        return self.explanations[i]

    def __iter__(self):
        return iter(self.explanations)

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "concept_names": list(self.concept_names),
            "class_names": list(self.class_names),
            "images": [e.to_dict(heatmaps=heatmaps) for e in self.explanations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplanationBatch:
        """Invert `to_dict` (heatmaps come back only from ``heatmaps="full"``).

        Examples:
            >>> import timm, torch, salfcbm
            >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass"],
            ...                  num_classes=2, backbone_weights=None)
            >>> e = m.explain(torch.randn(1, 3, 64, 64), top_k=2)
            >>> ExplanationBatch.from_json(e.to_json())[0].top.evidence == e[0].top.evidence
            True
        """
        names = list(data.get("concept_names", []))
        return cls(
            [Explanation.from_dict(e, names) for e in data["images"]],
            concept_names=names,
            class_names=list(data.get("class_names", [])),
        )

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> ExplanationBatch:
        """Read what `to_json` wrote: a JSON string or the path of a ``.json`` file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))


@dataclass
class RegionExplanation(_JSONMixin):
    """The concepts found inside one region (Explain Anything, paper 3.6).

    Attributes:
        region: index of the region.
        area: ``sum(I)`` in pixels (for binary masks, the pixel count).
        area_fraction: ``area / (H * W)``.
        activations: ``(M,)`` ``a(x, m | I) = sum(I * c_up[m])`` for every concept.
        concept_indices: ``(k,)`` concepts with the largest aggregated activation.
        concepts: their names.
        scores: ``(k,)`` their aggregated activations.
    """

    region: int
    area: float
    area_fraction: float
    activations: torch.Tensor
    concept_indices: torch.Tensor
    concepts: list[str]
    scores: torch.Tensor

    @property
    def mean_activations(self) -> torch.Tensor:
        """``a(x, m | I) / sum(I)``: the average concept map value inside the region."""
        return self.activations / self.area

    def pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.concepts, _floats(self.scores)))

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "region": self.region,
            "area": self.area,
            "area_fraction": self.area_fraction,
            "top_concepts": [
                {"index": int(i), "concept": c, "activation": s}
                for i, c, s in zip(self.concept_indices.tolist(), self.concepts, _floats(self.scores))
            ],
        }


@dataclass
class RegionReport(_JSONMixin):
    """What `explain_region` returns: the image's prediction and one entry per region.

    Attributes:
        regions: one `RegionExplanation` per region (also reachable by ``report[i]``).
        masks: ``(R, H, W)`` the regions as float masks at input resolution.
        logits, probabilities, prediction, predicted_class: the model's output for the image.
        standardized: whether concept maps were standardised before aggregation.
    """

    regions: list[RegionExplanation]
    masks: torch.Tensor
    logits: torch.Tensor
    probabilities: torch.Tensor
    prediction: int
    predicted_class: str
    standardized: bool = False

    def __len__(self) -> int:
        return len(self.regions)

    def __getitem__(self, i: int) -> RegionExplanation:
        return self.regions[i]

    def __iter__(self):
        return iter(self.regions)

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "prediction": self.prediction,
            "predicted_class": self.predicted_class,
            "standardized": self.standardized,
            "regions": [r.to_dict() for r in self.regions],
        }


@dataclass
class InterventionResult(_JSONMixin):
    """Before/after of a local intervention ``c(x)[m] += beta * I`` (paper 3.6).

    Attributes:
        concepts, concept_indices, betas: the edited concepts and their correction factors.
        region: ``(Hg, Wg)`` the mask ``I`` at grid resolution that was added.
        logits_before, logits_after: ``(L,)``.
        probabilities_before, probabilities_after: ``(L,)``.
        prediction_before, prediction_after: class indices; ``class_before``/``class_after`` their names.
        target: class whose contributions are reported (default: the prediction before).
        contributions_before, contributions_after: ``(M,)`` contributions to ``target``.
        activations_before, activations_after: ``(M,)`` pooled activations ``c*(x)``.
    """

    concepts: list[str]
    concept_indices: list[int]
    betas: list[float]
    region: torch.Tensor
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    probabilities_before: torch.Tensor
    probabilities_after: torch.Tensor
    prediction_before: int
    prediction_after: int
    class_before: str
    class_after: str
    target: int
    contributions_before: torch.Tensor
    contributions_after: torch.Tensor
    activations_before: torch.Tensor
    activations_after: torch.Tensor

    @property
    def delta_logits(self) -> torch.Tensor:
        """``logits_after - logits_before``."""
        return self.logits_after - self.logits_before

    @property
    def changed(self) -> bool:
        """Whether the predicted class changed."""
        return self.prediction_before != self.prediction_after

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "concepts": self.concepts,
            "concept_indices": self.concept_indices,
            "betas": self.betas,
            "region_grid": [_floats(r) for r in self.region],
            "prediction_before": self.prediction_before,
            "prediction_after": self.prediction_after,
            "class_before": self.class_before,
            "class_after": self.class_after,
            "logits_before": _floats(self.logits_before),
            "logits_after": _floats(self.logits_after),
            "probabilities_before": _floats(self.probabilities_before),
            "probabilities_after": _floats(self.probabilities_after),
            "target": self.target,
            "contributions_before": _floats(self.contributions_before),
            "contributions_after": _floats(self.contributions_after),
        }


@dataclass
class DecisionRule(_JSONMixin):
    """The global decision rule of a class: its non-zero head weights (paper 3.5).

    Attributes:
        target: class index; ``class_name`` its name.
        bias: the head's bias for the class.
        concept_indices: ``(n,)`` concepts with a non-zero weight, sorted by ``|weight|`` descending.
        concepts: their names.
        weights: ``(n,)`` their weights ``W[l, m]``.
    """

    target: int
    class_name: str
    bias: float
    concept_indices: torch.Tensor
    concepts: list[str]
    weights: torch.Tensor

    def pairs(self) -> list[tuple[str, float]]:
        """``[(concept, weight), ...]`` sorted by ``|weight|``."""
        return list(zip(self.concepts, _floats(self.weights)))

    def __len__(self) -> int:
        return len(self.concepts)

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "target": self.target,
            "class_name": self.class_name,
            "bias": self.bias,
            "rules": [
                {"index": int(i), "concept": c, "weight": w}
                for i, c, w in zip(self.concept_indices.tolist(), self.concepts, _floats(self.weights))
            ],
        }


# ---------------------------------------------------------------------- tell what, show where
def explain(
    model: SALFCBM,
    images: torch.Tensor,
    target: Target = None,
    top_k: int = 5,
    *,
    heatmaps: bool = True,
    heatmap_size: Sequence[int] | None = None,
    skip_zero: bool = True,
    output: SALFCBMOutput | None = None,
) -> ExplanationBatch:
    """Top-k concept contributions and their heatmaps, per image and class (paper 3.5).

    One forward pass of the model gives the logits, the pooled activations and the concept maps;
    contributions are ``S(x, m, l) = W[l, m] * c*_norm(x)[m]`` (so ``sum_m S + b[l] = logit[l]``),
    ranked by ``|S|``; only the top-k maps are upsampled (bilinear) to the input size.

    Args:
        model: a `SALFCBM`.
        images: ``(B, 3, H, W)`` (or one ``(3, H, W)``) backbone-ready float images (the output of
            ``model.preprocess``), or raw images of any other kind (``uint8`` tensors, arrays, PIL images,
            file paths, lists), which are passed through ``model.preprocess`` first. An empty batch or
            NaN/inf values raise `ImageInputError`.
        target: the classes to explain: ``None`` (the prediction), an int or a class name for every
            image, a ``(B,)`` tensor or a list with one entry per image, or a list of lists (several
            classes per image, e.g. for multi-class images, appendix D.2).
        top_k: concepts per class.
        heatmaps: compute the top-k heatmaps (``False`` skips the upsampling).
        heatmap_size: ``(H, W)`` of the heatmaps; default the input size.
        skip_zero: drop concepts whose contribution is exactly 0 (a sparse head gives few non-zeros),
            so fewer than ``top_k`` may be returned.
        output: a `SALFCBMOutput` of ``model(images)`` to reuse instead of running the model.

    Returns:
        An `ExplanationBatch`; ``result[i].top`` explains image ``i``'s first target.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> e = m.explain(torch.randn(2, 3, 64, 64), top_k=2)
        >>> e[0].heatmaps.shape
        torch.Size([2, 64, 64])
    """
    images = _as_batch(images, model=model)
    top_k = _check_top_k(top_k, model.num_concepts)
    size = _heatmap_size(heatmap_size, images.shape[0] * top_k) if heatmap_size is not None \
        else (int(images.shape[-2]), int(images.shape[-1]))
    out = _forward(model, images, output)
    with torch.no_grad():
        logits = out.logits.detach()
        act = out.concept_activations.detach()
        norm = model.standardize(act)
        probs = logits.float().softmax(-1)
        preds = logits.argmax(-1)
        targets = _resolve_targets(model, target, preds)
        W = model.head.weight.detach()
        b = model.head.bias.detach() if model.head.bias is not None else torch.zeros(W.shape[0], device=W.device)
        # flatten (image, target) pairs so top-k and upsampling run once for the batch
        img_idx = torch.tensor([i for i, ts in enumerate(targets) for _ in ts], device=W.device)
        cls_idx = torch.tensor([t for ts in targets for t in ts], device=W.device)
        contrib = W[cls_idx] * norm[img_idx]  # (P, M)
        scores, idx = contrib.abs().topk(top_k, dim=-1)
        signed = contrib.gather(1, idx)
        maps = None
        if heatmaps:
            sel = out.concept_maps_at(idx, img_idx).detach()  # (P, k, Hg, Wg): the top-k maps only
            maps = upsample_maps(sel, size)
        peaks = _standardized_peaks(model, out, idx, img_idx)
    names, cnames = model.concepts, model.class_names
    results: list[Explanation] = []
    p = 0
    for i, ts in enumerate(targets):
        classes = []
        for t in ts:
            keep = slice(None)
            if skip_zero:
                nz = (signed[p] != 0).nonzero().flatten()
                keep = nz if len(nz) < top_k else slice(None)
            ci = idx[p][keep]
            classes.append(
                ClassExplanation(
                    target=t,
                    class_name=cnames[t],
                    logit=float(logits[i, t]),
                    probability=float(probs[i, t]),
                    bias=float(b[t]),
                    contributions=contrib[p],
                    concept_indices=ci,
                    concepts=[names[j] for j in ci.tolist()],
                    scores=signed[p][keep],
                    heatmaps=maps[p][keep] if maps is not None else None,
                    **_evidence_fields(model, W[t, ci], norm[i, ci], ci,
                                       peaks[p][keep] if peaks is not None else None),
                )
            )
            p += 1
        results.append(
            Explanation(
                index=i,
                logits=logits[i],
                probabilities=probs[i],
                prediction=int(preds[i]),
                predicted_class=cnames[int(preds[i])],
                activations=act[i],
                normalized_activations=norm[i],
                classes=classes,
                concept_names=names,
            )
        )
    _warn_if_empty(results)
    return ExplanationBatch(results, concept_names=names, class_names=cnames)


def _standardized_peaks(model: SALFCBM, out: Any, idx: torch.Tensor, img_idx: torch.Tensor) -> torch.Tensor | None:
    """``(P, k)`` peaks of the shown concepts' standardised maps, for a model with calibrated presence."""
    if model.presence_threshold is None:
        return None
    return model.map_peaks(out.concept_maps_at(idx, img_idx), idx)  # (P, k)


def _evidence_fields(model: SALFCBM, weights: torch.Tensor, z: torch.Tensor, ci: torch.Tensor,
                     peaks: torch.Tensor | None = None) -> dict[str, Any]:
    """The evidence kind of each shown concept (calibrated presence when the model has thresholds),
    and what puts its heatmap on the common scale."""
    thresholds = model.presence_threshold
    present = None
    if thresholds is not None and peaks is not None:
        thresholds = thresholds.to(peaks.device)[ci.to(peaks.device)]
        present = is_present_calibrated(peaks, thresholds)
    return {
        "evidence": evidence_kinds(weights, z, present),
        "activations": z,
        "concept_mean": model.concept_mean.detach()[ci],
        "concept_std": model.concept_std.detach()[ci],
        "peaks": peaks if present is not None else None,
        "presence_threshold": thresholds if present is not None else None,
    }


def _warn_if_empty(results: list[Explanation]) -> None:
    """An explanation without a single contributing concept is a degenerate head: say so, loudly."""
    empty = sorted({(c.target, c.class_name) for e in results for c in e.classes if not c.concepts})
    if not empty:
        return
    msg = (
        f"No concept contributes to class(es) {[n for _, n in empty]}: every weight of the head for them "
        "is zero (or every activation sits exactly at its training mean), so the explanation is empty. "
        "The head is empty or constant for these classes; check metrics.json['degenerate'] of the fit "
        "and refit the head (a smaller lambda, HeadConfig(val_tolerance=0), or more data)."
    )
    logging.getLogger("salfcbm").warning(msg)
    warnings.warn(msg, DegenerateResultWarning, stacklevel=3)


# ---------------------------------------------------------------------- explain anything
def explain_region(
    model: SALFCBM,
    image: torch.Tensor,
    *,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    top_k: int = 5,
    standardize: bool = False,
    output: SALFCBMOutput | None = None,
) -> RegionReport:
    """Which concepts the model sees inside one or several regions (Explain Anything, paper 3.6).

    For a region ``I`` at input resolution, ``a(x, m | I) = sum(I * c_up[m])`` with ``c_up`` the
    concept maps upsampled bilinearly to the input size; the top-k concepts by ``a`` are reported.
    Computed exactly but without upsampling all ``M`` maps: bilinear upsampling is separable and
    linear, ``c_up = A_h c A_w^T``, so ``a = sum((A_h^T I A_w) * c)`` at grid resolution.

    Args:
        model: a `SALFCBM`.
        image: one backbone-ready image ``(3, H, W)`` or ``(1, 3, H, W)``.
        mask: ``(H, W)`` or ``(R, H, W)`` region(s) (bool or non-negative weights), e.g. SAM masks.
        box: ``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive) or a list of boxes.
        points: ``[(x, y), ...]`` (one region: the union of disks) or a list of such lists.
        radius: disk radius for ``points`` in pixels (default: half a grid cell).
        top_k: concepts per region.
        standardize: aggregate ``(c_up[m] - mean[m]) / std[m]`` instead of the raw maps, which makes
            concepts with different scales comparable (the paper uses raw maps, the default).
        output: a `SALFCBMOutput` of ``model(image)`` to reuse.

    Returns:
        A `RegionReport` (``report[r]`` is region ``r``).

    Raises:
        InputError: no region, several kinds of region, an empty mask or a box/point outside the image.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> r = m.explain_region(torch.randn(3, 64, 64), box=[(0, 0, 32, 64), (32, 0, 64, 64)], top_k=1)
        >>> len(r), len(r[0].concepts)
        (2, 1)
    """
    x = _single_image(image, model)
    top_k = _check_top_k(top_k, model.num_concepts)
    H, W = int(x.shape[-2]), int(x.shape[-1])
    out = _forward(model, x, output)
    Hg, Wg = model.grid
    device = out.logits.device
    masks = region_masks((H, W), mask=mask, box=box, points=points, radius=radius, grid=(Hg, Wg), device=device)
    with torch.no_grad():
        A_h = _interp_matrix(Hg, H, device, torch.float32)  # (H, Hg)
        A_w = _interp_matrix(Wg, W, device, torch.float32)  # (W, Wg)
        weights = A_h.T @ (masks @ A_w)  # (R, Hg, Wg): the region pulled back to the grid
        agg = out.region_sums(weights, row=0).detach().float()  # (R, M), from the features when maps are lazy
        areas = masks.sum((-2, -1))
        if standardize:
            agg = (agg - areas[:, None] * model.concept_mean.float()) / model.concept_std.float()
        scores, idx = agg.topk(top_k, dim=-1)
        logits = out.logits.detach()[0]
        probs = logits.float().softmax(-1)
    pred = int(logits.argmax())
    names = model.concepts
    regions = [
        RegionExplanation(
            region=r,
            area=float(areas[r]),
            area_fraction=float(areas[r]) / (H * W),
            activations=agg[r],
            concept_indices=idx[r],
            concepts=[names[j] for j in idx[r].tolist()],
            scores=scores[r],
        )
        for r in range(masks.shape[0])
    ]
    return RegionReport(
        regions=regions,
        masks=masks,
        logits=logits,
        probabilities=probs,
        prediction=pred,
        predicted_class=model.class_names[pred],
        standardized=bool(standardize),
    )


# ---------------------------------------------------------------------- local intervention
def _grid_region(model: SALFCBM, size: tuple[int, int], region: Any, mask: Any, box: Any, points: Any, radius, device) -> torch.Tensor:
    given = [n for n, v in (("region", region), ("mask", mask), ("box", box), ("points", points)) if v is not None]
    if len(given) > 1:
        raise InputError(f"Give at most one of region=, mask=, box=, points=; got {given}.")
    grid = model.grid
    if not given:
        return torch.ones(grid, device=device)
    if region is not None:
        if isinstance(region, torch.Tensor) or hasattr(region, "__array__"):
            mask = region
        else:
            box = region
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
        if m.dim() == 3 and m.shape[0] == 1:
            m = m[0]
        if m.dim() == 2 and tuple(m.shape) == tuple(grid) and tuple(m.shape) != size:
            m = m.to(device=device, dtype=torch.float32)
            if not torch.isfinite(m).all():
                raise InputError("A grid-resolution mask must hold finite values.")
            return m
        if m.dim() != 2 or tuple(m.shape) != size:
            raise InputError(
                f"An intervention mask must be (H, W) = {size} (the image) or (Hg, Wg) = {tuple(grid)} "
                f"(the prompting grid), got shape {tuple(m.shape)}."
            )
        masks = region_masks(size, mask=m, device=device)
    else:
        masks = region_masks(size, box=box, points=points, radius=radius, grid=grid, device=device)
        if masks.shape[0] != 1:
            raise InputError(f"An intervention takes one region, got {masks.shape[0]}; apply them one by one or merge them.")
    return mask_to_grid(masks[0], grid)


def intervene(
    model: SALFCBM,
    image: torch.Tensor,
    concept: int | str | Sequence[int | str],
    *,
    region: Any = None,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    beta: float | Sequence[float] = 1.0,
    target: int | str | None = None,
    output: SALFCBMOutput | None = None,
) -> InterventionResult:
    """Edit concept maps locally and re-run the head (local user intervention, paper 3.6).

    ``c(x)[m] <- c(x)[m] + beta * I`` for every chosen concept ``m``, then pooling,
    standardisation and the head run again on the edited maps (the backbone does not). ``I`` lives
    on the prompting grid: a region given at input resolution is downsampled by area averaging
    (`mask_to_grid`: each cell gets the fraction of its pixels inside the region); a mask of
    grid size ``(Hg, Wg)`` is used as it is. With mean pooling, the logit of class ``l`` changes by
    exactly ``sum_m beta_m * W[l, m] * mean(I) / std[m]``.

    This is the paper's edit: one ``beta * I`` added once, with ``I`` the region's fractional
    coverage of each cell. The authors' released inference code differs: it dilates the region
    into a binary grid mask and adds ``beta`` times it twice (a ``2 * beta`` edit). To reproduce
    their numbers pass ``beta=2 * beta`` and a binary grid mask (``mask_to_grid(...) > 0``).

    Args:
        model: a `SALFCBM`.
        image: one backbone-ready image.
        concept: a concept name or index, or a list of them.
        region: a mask (input or grid resolution) or a box; ``None`` with no ``mask``/``box``/``points``
            edits the whole map.
        mask: the region as a mask, as `explain_region` takes it.
        box: the region as a box ``(x0, y0, x1, y1)``.
        points: the region as points (disks of ``radius`` pixels).
        radius: radius of the point disks.
        beta: correction factor (positive or negative), or one per concept.
        target: class whose contributions are reported (default: the prediction before the edit).
        output: a `SALFCBMOutput` of ``model(image)`` to reuse.

    Returns:
        An `InterventionResult` with logits, probabilities, predictions and contributions
        before and after.

    Raises:
        ConceptNotFoundError: an unknown concept name (the message lists the closest names).

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> r = m.intervene(torch.randn(3, 64, 64), "grass", box=(0, 32, 64, 64), beta=2.0)
        >>> r.logits_after.shape
        torch.Size([2])
    """
    x = _single_image(image, model)
    if not isinstance(concept, (int, str, Sequence, torch.Tensor)):
        raise InputError(f"`concept` must be a name (str) or an index (int), or a list of them; got {concept!r}. "
                         "Pass one of `model.concepts` or its position.")
    concepts = [concept] if isinstance(concept, (int, str)) else list(concept)
    if not concepts:
        raise InputError("`concept` must name at least one concept.")
    idx = [model.concept_index(c) for c in concepts]
    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
        betas = [float(beta)] * len(idx)
    elif isinstance(beta, Sequence) and len(beta) == len(idx) and all(isinstance(b, (int, float)) for b in beta):
        betas = [float(b) for b in beta]
    else:
        raise InputError(f"`beta` must be a number or one number per concept ({len(idx)}), got {beta!r}.")
    if not all(math.isfinite(b) for b in betas):
        raise InputError(f"`beta` must be finite, got {betas}.")
    out = _forward(model, x, output)
    touched: dict[int, float] = {}  # the edited concepts (a concept named twice gets both betas)
    for m, b in zip(idx, betas):
        touched[m] = touched.get(m, 0.0) + b
    cols = torch.tensor(list(touched), device=out.logits.device)
    sel = out.concept_maps_at(cols).detach()  # (1, k, Hg, Wg): only the maps that change
    size = (int(x.shape[-2]), int(x.shape[-1]))
    I = _grid_region(model, size, region, mask, box, points, radius, sel.device).to(sel.dtype)
    with torch.no_grad():
        edited = sel + torch.tensor(list(touched.values()), device=sel.device, dtype=sel.dtype)[:, None, None] * I
        act_b = out.concept_activations.detach()
        act_a = act_b.clone()
        act_a[:, cols] = model.pool(edited).to(act_a.dtype)
        norm_b, norm_a = model.standardize(act_b), model.standardize(act_a)
        logits_b, logits_a = model.head(norm_b), model.head(norm_a)
        lb, la = logits_b[0].detach(), logits_a[0].detach()
        pb, pa = lb.float().softmax(-1), la.float().softmax(-1)
        pred_b, pred_a = int(lb.argmax()), int(la.argmax())
        t = pred_b if target is None else class_index(model, target)
        w = model.head.weight.detach()[t]
    names = model.class_names
    return InterventionResult(
        concepts=[model.concepts[m] for m in idx],
        concept_indices=idx,
        betas=betas,
        region=I,
        logits_before=lb,
        logits_after=la,
        probabilities_before=pb,
        probabilities_after=pa,
        prediction_before=pred_b,
        prediction_after=pred_a,
        class_before=names[pred_b],
        class_after=names[pred_a],
        target=t,
        contributions_before=w * norm_b[0],
        contributions_after=w * norm_a[0],
        activations_before=act_b[0],
        activations_after=act_a[0],
    )


# ---------------------------------------------------------------------- global decision rules
def decision_rules(
    model: SALFCBM,
    target: int | str | Sequence[int | str],
    *,
    threshold: float = 0.0,
    top_k: int | None = None,
) -> DecisionRule | list[DecisionRule]:
    """The concepts connected to a class by a non-zero weight, sorted by ``|weight|`` (paper 3.5).

    Args:
        model: a `SALFCBM`.
        target: a class index or name, or a list of them (then a list is returned).
        threshold: keep weights with ``|w| > threshold`` (default: every non-zero weight).
        top_k: keep at most this many concepts per class.

    Returns:
        A `DecisionRule`, or a list of them for a list of targets.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> with torch.no_grad():
        ...     _ = m.head.weight.copy_(torch.tensor([[0.0, 2.0, -3.0], [1.0, 0.0, 0.0]]))
        >>> m.decision_rules(0).pairs()
        [('sky', -3.0), ('grass', 2.0)]
    """
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise InputError(f"`threshold` must be a number >= 0, got {threshold!r}.")
    if top_k is not None:
        top_k = _check_top_k(top_k, model.num_concepts)
    if isinstance(target, (list, tuple)) or (isinstance(target, torch.Tensor) and target.dim() == 1):
        return [decision_rules(model, t, threshold=threshold, top_k=top_k) for t in target]
    t = class_index(model, target)
    w = model.head.weight.detach()[t]
    b = model.head.bias
    nz = (w.abs() > threshold).nonzero().flatten()
    order = w[nz].abs().argsort(descending=True, stable=True)
    nz = nz[order]
    if top_k is not None:
        nz = nz[:top_k]
    return DecisionRule(
        target=t,
        class_name=model.class_names[t],
        bias=float(b.detach()[t]) if b is not None else 0.0,
        concept_indices=nz,
        concepts=[model.concepts[i] for i in nz.tolist()],
        weights=w[nz],
    )


# ---------------------------------------------------------------------- short reprs
def _short(value: Any, depth: int = 0) -> str:
    """A value in a few characters: tensors by shape (or a few values), long lists cut."""
    if isinstance(value, torch.Tensor):
        if value.numel() <= 4:
            return repr([round(v, 4) for v in value.detach().float().flatten().tolist()])
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "__dataclass_fields__"):
        return _short_repr(value) if depth == 0 else f"{type(value).__name__}(...)"
    if isinstance(value, (list, tuple)):
        if value and hasattr(value[0], "__dataclass_fields__"):
            return f"[{len(value)} x {type(value[0]).__name__}]"
        items = [_short(v, depth + 1) for v in value[:4]]
        more = f", ... +{len(value) - 4}" if len(value) > 4 else ""
        return "[" + ", ".join(items) + more + "]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short_repr(self: Any) -> str:
    """``Name(field=value, ...)`` with tensors as shapes and long lists cut: a few hundred characters."""
    from dataclasses import fields as _fields

    parts = [f"{f.name}={_short(getattr(self, f.name), 1)}" for f in _fields(self) if f.repr]
    return f"{type(self).__name__}(" + ", ".join(parts) + ")"


for _cls in (ClassExplanation, Explanation, ExplanationBatch, RegionExplanation, RegionReport, InterventionResult,
             DecisionRule):
    _cls.__repr__ = _short_repr  # the dataclass repr prints every tensor (19,000 characters for one batch)
del _cls
