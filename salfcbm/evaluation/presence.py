"""How well "present" matches the truth: precision and recall of a presence rule against ground truth.

An explanation labels each concept it shows present or absent (`salfcbm.explain.evidence`). Where a
ground-truth mask per concept exists a label can be checked: a concept is really in the image when its
mask is not empty. `presence_scores` scores one rule's labels; `salfcbm.demo.checks.presence_check`
scores the two rules side by side on the demo world's scenes:

* ``"training_mean"``: the standardised pooled activation is above 0 (uncalibrated models);
* ``"calibrated"``: the peak of the standardised concept map is above the concept's threshold
  (`SALFCBM.presence_threshold`, set by `salfcbm.fit`; `salfcbm.training.presence`).
"""

from __future__ import annotations

from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["presence_scores"]


def presence_scores(present: torch.Tensor, truth: torch.Tensor, shown: torch.Tensor) -> dict[str, Any]:
    """Precision and recall of ``present`` against ``truth``, on the shown concepts and on every pair.

    Args:
        present: ``(N, M)`` bool, the rule's labels for every image and concept.
        truth: ``(N, M)`` bool, the concept is in the image (its mask is not empty).
        shown: ``(N, k)`` long, the concepts an explanation shows per image, in rank order.

    Returns:
        ``shown_present`` (count), ``shown_present_absent`` (share of shown concepts labelled present
        whose mask is empty: 1 - precision), ``shown_recall`` (share of shown concepts in the image
        that are labelled present), ``top1_present_absent`` (images whose first shown concept is
        labelled present but is not there), ``pairs_precision`` and ``pairs_recall`` (over every
        image-concept pair). Shares are ``None`` when undefined.

    Examples:
        >>> present = torch.tensor([[True, False, True]]); truth = torch.tensor([[True, True, False]])
        >>> r = presence_scores(present, truth, torch.tensor([[0, 2]]))
        >>> r["shown_present"], r["shown_present_absent"], r["shown_recall"]
        (2, 0.5, 1.0)
    """
    if present.shape != truth.shape or shown.dim() != 2 or shown.shape[0] != present.shape[0]:
        raise InputError(f"presence_scores: `present` {tuple(present.shape)} and `truth` {tuple(truth.shape)} must "
                         f"be (N, M) and `shown` (N, k); got shown {tuple(shown.shape)}.")
    sp, st = present.gather(1, shown), truth.gather(1, shown)

    def share(a: torch.Tensor, b: torch.Tensor) -> float | None:
        n = int(b.sum())
        return int(a.sum()) / n if n else None

    return {
        "shown_present": int(sp.sum()),
        "shown_present_absent": share(sp & ~st, sp),
        "shown_recall": share(sp & st, st),
        "top1_present_absent": int((sp[:, 0] & ~st[:, 0]).sum()),
        "pairs_precision": share(present & truth, present),
        "pairs_recall": share(present & truth, truth),
    }
