"""What kind of evidence a concept contribution is: present or absent, supporting or opposing.

A contribution ``S(x, m, l) = W[l, m] * c*_norm(x)[m]`` (paper 3.5) is positive in two very
different situations: the concept is *present* and its weight is positive ("fur is here, so:
cat"), or the concept is *absent* and its weight is negative ("no wings here, so: not a bird,
so: cat"). Ranking by ``|S|`` mixes both, and drawing the concept map of an absent concept
next to a detected one tells the user something the model did not see. This module names
the four cases, so explanations, pictures and reports can keep them apart.

**Presence.** Two rules, by what the model carries:

* **calibrated** (models trained by `salfcbm.fit`, which stores ``model.presence_threshold``):
  a concept is present when the *peak* of its standardised concept map,
  ``(max_{h,w} c(x)[m, h, w] - mean[m]) / std[m]``, is above the concept's own threshold. The
  thresholds are chosen on the validation split, label-free, against the targets that
  supervised the bottleneck (`salfcbm.training.presence`): the prompted similarities say where
  each concept is, their per-concept two-way split (Otsu) says in which validation images it
  is, and each threshold is the one whose "present" agrees best (F1) with that.
* **training mean** (uncalibrated models, and models saved before calibration existed): the
  standardised *pooled* activation is positive, ``c*_norm(x)[m] > 0`` (`PRESENCE_THRESHOLD`):
  the image holds more of the concept than the average training image.

Why the calibrated rule: "above the training mean" is relative, so a concept that most
training images show is called absent in images that show it a little, and a rare one is
called present on noise; and a pooled mean dilutes a small object. On the demo's scenes, where
every concept has a ground-truth mask, the calibrated rule labels fewer absent concepts present
at no lower recall (``docs/explain.md`` reports the numbers, `benchmarks/bench_presence.py`
measures them). Raw map values of two concepts are not comparable (the bottleneck loss, Eq. 1,
is invariant to a per-concept scale and shift), which is why both rules work on the
standardised scale and the calibrated one has a threshold per concept.

The evidence kinds are the four patterns of presence and the sign of the contribution ``S``
("supports": ``S > 0``; at ``S = 0`` the weight's sign decides). With the training-mean rule
they are exactly the sign patterns of ``S = W * c*_norm``; with the calibrated rule a concept
can also be present with a below-average pooled activation (a small object: "present,
opposes" under a positive weight). ``Explanation.normalized_activations`` and
``ClassExplanation.peaks`` hold the numbers for finer judgements.
"""

from __future__ import annotations

import torch

__all__ = [
    "PRESENCE_THRESHOLD",
    "PRESENT_SUPPORTS",
    "PRESENT_OPPOSES",
    "ABSENT_SUPPORTS",
    "ABSENT_OPPOSES",
    "NO_WEIGHT",
    "EVIDENCE_KINDS",
    "PRESENT_KINDS",
    "EVIDENCE_LABELS",
    "is_present",
    "is_present_calibrated",
    "evidence_kinds",
]

#: Uncalibrated models: a concept is present when its standardised pooled activation is above this (0: the training mean).
PRESENCE_THRESHOLD = 0.0

PRESENT_SUPPORTS = "present_supports"  #: present, positive weight: S > 0
PRESENT_OPPOSES = "present_opposes"  #: present, negative weight: S < 0
ABSENT_SUPPORTS = "absent_supports"  #: absent, negative weight: its absence raises the logit (S >= 0)
ABSENT_OPPOSES = "absent_opposes"  #: absent, positive weight: its absence lowers the logit (S <= 0)
NO_WEIGHT = "no_weight"  #: a zero weight: the concept does not take part in this class (S = 0)

EVIDENCE_KINDS = (PRESENT_SUPPORTS, PRESENT_OPPOSES, ABSENT_SUPPORTS, ABSENT_OPPOSES, NO_WEIGHT)
PRESENT_KINDS = (PRESENT_SUPPORTS, PRESENT_OPPOSES)

#: Short human labels, used by the pictures, the HTML reports and the CLI.
EVIDENCE_LABELS = {
    PRESENT_SUPPORTS: "present, supports",
    PRESENT_OPPOSES: "present, opposes",
    ABSENT_SUPPORTS: "absent; its absence supports",
    ABSENT_OPPOSES: "absent; its absence opposes",
    NO_WEIGHT: "not used by this class",
}


def is_present(normalized_activations: torch.Tensor) -> torch.Tensor:
    """``c*_norm > PRESENCE_THRESHOLD``: which concepts an image shows more than the average training image.

    Examples:
        >>> is_present(torch.tensor([0.7, 0.0, -1.2])).tolist()
        [True, False, False]
    """
    return normalized_activations > PRESENCE_THRESHOLD


def is_present_calibrated(peaks: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``peaks > thresholds``: the calibrated rule, on standardised concept-map peaks.

    Examples:
        >>> is_present_calibrated(torch.tensor([0.7, 2.0]), torch.tensor([1.0, 1.5])).tolist()
        [False, True]
    """
    return peaks > thresholds.to(peaks.device, peaks.dtype)


def evidence_kinds(weights: torch.Tensor, normalized_activations: torch.Tensor,
                   present: torch.Tensor | None = None) -> list[str]:
    """The evidence kind of each contribution ``weights * normalized_activations`` (same shape, 1-D).

    Args:
        weights: ``(k,)`` head weights ``W[l, m]`` of the concepts.
        normalized_activations: ``(k,)`` their standardised pooled activations ``c*_norm(x)[m]``.
        present: ``(k,)`` bool, which concepts are present (e.g. `is_present_calibrated`);
            default: the training-mean rule, `is_present` of ``normalized_activations``.

    Returns:
        One of `EVIDENCE_KINDS` per concept.

    Examples:
        >>> evidence_kinds(torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0]), torch.tensor([0.5, 0.5, -0.5, -0.5, 2.0]))
        ['present_supports', 'present_opposes', 'absent_supports', 'absent_opposes', 'no_weight']
    """
    w = weights.detach().flatten().cpu()
    if present is None:
        present = is_present(normalized_activations.detach().flatten().cpu())
    present = present.detach().flatten().cpu()
    z = normalized_activations.detach().flatten().cpu()
    kinds = []
    for wi, zi, pi in zip(w.tolist(), z.tolist(), present.tolist()):
        si = wi * zi
        if wi == 0:
            kinds.append(NO_WEIGHT)
        elif pi:
            kinds.append(PRESENT_SUPPORTS if si > 0 or (si == 0 and wi > 0) else PRESENT_OPPOSES)
        else:
            kinds.append(ABSENT_SUPPORTS if si > 0 or (si == 0 and wi < 0) else ABSENT_OPPOSES)
    return kinds
