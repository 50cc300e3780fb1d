"""The result types of the four explanation operations (paper 3.5, 3.6), plain dataclasses.

* `ExplanationBatch` of `Explanation` of `ClassExplanation`: what `salfcbm.explain.explain`
  returns (tell what, show where);
* `RegionReport` of `RegionExplanation`: what `salfcbm.explain.explain_region` returns
  (Explain Anything);
* `InterventionResult`: what `salfcbm.explain.intervene` returns (local intervention);
* `DecisionRule`: what `salfcbm.explain.decision_rules` returns (global decision rules).

Each serialises to JSON (``to_json``; the image explanations read back with ``from_json``) and
prints a short repr (`salfcbm.explain.records`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salfcbm.explain.evidence import PRESENT_KINDS
from salfcbm.explain.records import JSONRecord, as_floats, heatmaps_to_json, short_repr

__all__ = [
    "ClassExplanation",
    "Explanation",
    "ExplanationBatch",
    "RegionExplanation",
    "RegionReport",
    "InterventionResult",
    "DecisionRule",
]


@dataclass
class ClassExplanation(JSONRecord):
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
        return list(zip(self.concepts, as_floats(self.scores)))

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
        act = as_floats(self.activations) if self.activations is not None else [None] * k
        mean = as_floats(self.concept_mean) if self.concept_mean is not None else [None] * k
        std = as_floats(self.concept_std) if self.concept_std is not None else [None] * k
        peak = as_floats(self.peaks) if self.peaks is not None else [None] * k
        thr = as_floats(self.presence_threshold) if self.presence_threshold is not None else [None] * k
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
                    self.concept_indices.tolist(), self.concepts, as_floats(self.scores), ev, act, mean, std, peak, thr
                )
            ],
            "presence_rule": self.presence_rule,
            "contributions": as_floats(self.contributions),
            "heatmaps": heatmaps_to_json(self.heatmaps, heatmaps),
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
class Explanation(JSONRecord):
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
            "logits": as_floats(self.logits),
            "probabilities": as_floats(self.probabilities),
            "activations": as_floats(self.activations),
            "normalized_activations": as_floats(self.normalized_activations),
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
class ExplanationBatch(JSONRecord):
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
class RegionExplanation(JSONRecord):
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
        return list(zip(self.concepts, as_floats(self.scores)))

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "region": self.region,
            "area": self.area,
            "area_fraction": self.area_fraction,
            "top_concepts": [
                {"index": int(i), "concept": c, "activation": s}
                for i, c, s in zip(self.concept_indices.tolist(), self.concepts, as_floats(self.scores))
            ],
        }


@dataclass
class RegionReport(JSONRecord):
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
class InterventionResult(JSONRecord):
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
            "region_grid": [as_floats(r) for r in self.region],
            "prediction_before": self.prediction_before,
            "prediction_after": self.prediction_after,
            "class_before": self.class_before,
            "class_after": self.class_after,
            "logits_before": as_floats(self.logits_before),
            "logits_after": as_floats(self.logits_after),
            "probabilities_before": as_floats(self.probabilities_before),
            "probabilities_after": as_floats(self.probabilities_after),
            "target": self.target,
            "contributions_before": as_floats(self.contributions_before),
            "contributions_after": as_floats(self.contributions_after),
        }


@dataclass
class DecisionRule(JSONRecord):
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
        return list(zip(self.concepts, as_floats(self.weights)))

    def __len__(self) -> int:
        return len(self.concepts)

    def to_dict(self, heatmaps: str = "summary") -> dict[str, Any]:
        return {
            "target": self.target,
            "class_name": self.class_name,
            "bias": self.bias,
            "rules": [
                {"index": int(i), "concept": c, "weight": w}
                for i, c, w in zip(self.concept_indices.tolist(), self.concepts, as_floats(self.weights))
            ],
        }


for _cls in (ClassExplanation, Explanation, ExplanationBatch, RegionExplanation, RegionReport, InterventionResult,
             DecisionRule):
    _cls.__repr__ = short_repr  # the dataclass repr prints every tensor (19,000 characters for one batch)
del _cls
