"""Hand-made explanation results for the picture tests (the `make` fixture): exact values, no model,
no forward pass, so each figure test runs in well under a second."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from salfcbm.explain import ClassExplanation, DecisionRule, Explanation, ExplanationBatch  # noqa: E402

SIZE = 8


def class_explanation(concepts, scores, *, maps=None, mean=None, std=None, evidence=None, target=0,
                      class_name="crate", logit=1.5, probability=0.7, bias=0.1) -> ClassExplanation:
    k = len(concepts)
    return ClassExplanation(
        target=target,
        class_name=class_name,
        logit=logit,
        probability=probability,
        bias=bias,
        contributions=torch.tensor(list(scores) + [0.0], dtype=torch.float32),
        concept_indices=torch.arange(k),
        concepts=list(concepts),
        scores=torch.tensor(list(scores), dtype=torch.float32),
        heatmaps=maps,
        evidence=list(evidence) if evidence is not None else [],
        activations=torch.linspace(-1.0, 1.0, k) if k else torch.zeros(0),
        concept_mean=None if mean is None else torch.tensor(mean, dtype=torch.float32),
        concept_std=None if std is None else torch.tensor(std, dtype=torch.float32),
    )


def explanation(classes, *, index=0, prediction=0, predicted_class="crate", num_classes=3) -> Explanation:
    logits = torch.linspace(1.0, -1.0, num_classes)
    return Explanation(
        index=index,
        logits=logits,
        probabilities=logits.softmax(-1),
        prediction=prediction,
        predicted_class=predicted_class,
        activations=torch.zeros(4),
        normalized_activations=torch.zeros(4),
        classes=list(classes),
    )


def batch(items) -> ExplanationBatch:
    return ExplanationBatch(list(items))


def peaked_maps(mean, std, peaks, size=SIZE) -> torch.Tensor:
    """``(k, size, size)`` raw maps at their training means, except one pixel per map: ``mean + peak * std``
    at pixel ``(j, j)`` of map ``j`` (so the standardised map is ``peak`` there and 0 elsewhere)."""
    maps = torch.tensor(mean, dtype=torch.float32)[:, None, None].repeat(1, size, size)
    for j, (m, s, p) in enumerate(zip(mean, std, peaks)):
        maps[j, j, j] = m + p * s
    return maps


def rule(class_name, concepts, weights, *, target=0, bias=0.0) -> DecisionRule:
    return DecisionRule(target, class_name, bias, torch.arange(len(concepts)), list(concepts),
                        torch.tensor(weights, dtype=torch.float32))


@pytest.fixture
def make():
    """Builders of results with chosen values: ``make.class_explanation(...)``, ``make.explanation(...)``, ..."""
    return SimpleNamespace(class_explanation=class_explanation, explanation=explanation, batch=batch,
                           peaked_maps=peaked_maps, rule=rule, size=SIZE)
