"""Degenerate training results, said out loud: an empty or constant head, chance accuracy, a
bottleneck that did not learn, every concept cut.

Each finding is a plain dict ``{"kind", "message", ...numbers}``. `report` logs it on the
``"salfcbm"`` logger and emits a `DegenerateResultWarning`; ``fit``
stores the list under ``metrics["degenerate"]`` (an empty list when nothing is wrong), so a run
directory's ``metrics.json`` tells the story even when nobody watched the console.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch

from salfcbm.errors import DegenerateResultWarning

__all__ = [
    "EMPTY_HEAD",
    "CONSTANT_HEAD",
    "CHANCE_ACCURACY",
    "BOTTLENECK_NOT_IMPROVED",
    "ALL_CONCEPTS_CUT",
    "head_findings",
    "bottleneck_findings",
    "chance_level",
    "report",
]

logger = logging.getLogger("salfcbm")

EMPTY_HEAD = "empty_head"
CONSTANT_HEAD = "constant_head"
CHANCE_ACCURACY = "chance_accuracy"
BOTTLENECK_NOT_IMPROVED = "bottleneck_not_improved"
ALL_CONCEPTS_CUT = "all_concepts_cut"


def chance_level(y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """``(chance, threshold)``: the majority-class rate of ``y`` (the best constant guess) and the
    accuracy a classifier must exceed to be told apart from it: chance plus two binomial standard
    errors, ``p + 2 * sqrt(p * (1 - p) / n)``.

    Examples:
        >>> chance_level(torch.tensor([0, 0, 0, 1]), 2)
        (0.75, 1.1830127018922192)
    """
    y = torch.as_tensor(y).long().flatten()
    n = max(int(y.numel()), 1)
    p = float(torch.bincount(y, minlength=num_classes).max()) / n if y.numel() else 1.0 / max(num_classes, 1)
    return p, p + 2 * math.sqrt(p * (1 - p) / n)


def head_findings(
    weight: torch.Tensor, logits_val: torch.Tensor, y_val: torch.Tensor, *, head: str = "salfcbm"
) -> list[dict[str, Any]]:
    """An empty head (no non-zero weight), a constant one (one class for every validation
    image), and validation accuracy no better than the majority class (see `chance_level`)."""
    out: list[dict[str, Any]] = []
    num_classes = int(weight.shape[0])
    nnz = int((weight != 0).sum())
    if nnz == 0:
        out.append({
            "kind": EMPTY_HEAD, "head": head, "nnz": 0,
            "message": f"The {head} head has 0 non-zero weights: every prediction is the bias alone, so no input "
                       "feature (no concept) moves any prediction. The selected regularisation was too strong for this data; use a smaller "
                       "lambda (HeadConfig(val_tolerance=0), more path points) or more training images.",
        })
    preds = logits_val.argmax(1)
    y_val = torch.as_tensor(y_val).long().to(preds.device)
    if preds.numel() > 1 and y_val.unique().numel() > 1 and preds.unique().numel() == 1:
        out.append({
            "kind": CONSTANT_HEAD, "head": head, "predicted_class": int(preds[0]),
            "message": f"The {head} head predicts class {int(preds[0])} for every one of the {preds.numel()} "
                       "validation images: it is constant.",
        })
    if preds.numel():
        acc = float((preds == y_val).float().mean())
        chance, threshold = chance_level(y_val.cpu(), num_classes)
        if acc <= threshold:
            out.append({
                "kind": CHANCE_ACCURACY, "head": head, "val_accuracy": acc, "chance": chance,
                "threshold": threshold, "n_val": int(preds.numel()),
                "message": f"The {head} head's validation accuracy {acc:.3f} is not distinguishable from chance "
                           f"(the majority class alone scores {chance:.3f}; above {threshold:.3f} would be, with "
                           f"{preds.numel()} validation images). Check the labels, the concepts and the backbone.",
            })
    return out


def bottleneck_findings(initial: float, best: float, steps: int) -> list[dict[str, Any]]:
    """A bottleneck whose best validation similarity is no better than at initialisation."""
    if not (math.isfinite(initial) and math.isfinite(best)) or best > initial + 1e-6:
        return []
    return [{
        "kind": BOTTLENECK_NOT_IMPROVED, "initial_val_similarity": initial, "best_val_similarity": best,
        "steps": steps,
        "message": f"The concept bottleneck did not improve on its initial validation similarity ({initial:.4f}; "
                   f"best after {steps} steps {best:.4f}): the concept maps are the random initialisation. Raise "
                   "the learning rate or max_steps, or check that the similarities belong to these images.",
    }]


def report(findings: list[dict[str, Any]], *, stacklevel: int = 3) -> None:
    """Log every finding on the ``"salfcbm"`` logger and warn with `DegenerateResultWarning`."""
    for f in findings:
        logger.warning("Degenerate result (%s): %s", f["kind"], f["message"])
        warnings.warn(f"Degenerate result ({f['kind']}): {f['message']}", DegenerateResultWarning,
                      stacklevel=stacklevel)
