"""What kind of evidence a concept contribution is: present or absent, supporting or opposing.

A contribution ``S(x, m, l) = W[l, m] * c*_norm(x)[m]`` (paper 3.5) is positive in two very
different situations: the concept is *present* and its weight is positive ("fur is here, so:
cat"), or the concept is *absent* and its weight is negative ("no wings here, so: not a bird,
so: cat"). Ranking by ``|S|`` mixes both, and drawing the concept map of an absent concept
next to a detected one tells the user something the model did not see. This module names
the four cases, so explanations, pictures and reports can keep them apart.

**Presence.** A concept is *present* in an image when its standardised pooled activation is
positive, ``c*_norm(x)[m] > 0``: the image holds more of the concept than the average
training image (`PRESENCE_THRESHOLD`). Why this definition:

* it is the quantity the head reads, so the four kinds are exactly the four sign patterns of
  ``S = W * c*_norm``: ``sign(S) = sign(W) * sign(c*_norm)``; no extra hyper-parameter, and an
  "absent, supporting" concept is exactly a negative weight times a below-average activation;
* a threshold on the raw concept map (e.g. its maximum) has no meaning across concepts: the
  bottleneck's loss (the cubic cosine, Eq. 1) is invariant to a per-concept scale and shift,
  so raw map values of two concepts are not comparable; the training mean and standard
  deviation are the only per-concept calibration a SALF-CBM carries;
* it is checkable: on the demo's procedural scenes, where every concept has a ground-truth
  mask, the concepts shown as present are far more often really there than the concepts
  shown by ``|S|`` alone (``docs/explain.md`` reports the numbers).

It is relative, not absolute: a concept that every training image shows to a similar degree
is "absent" in the images that show it less than average. ``c*_norm`` itself is in
``Explanation.normalized_activations`` for finer judgements.
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
    "evidence_kinds",
]

#: A concept is present when its standardised pooled activation is above this (0: the training mean).
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


def evidence_kinds(weights: torch.Tensor, normalized_activations: torch.Tensor) -> list[str]:
    """The evidence kind of each contribution ``weights * normalized_activations`` (same shape, 1-D).

    Args:
        weights: ``(k,)`` head weights ``W[l, m]`` of the concepts.
        normalized_activations: ``(k,)`` their standardised pooled activations ``c*_norm(x)[m]``.

    Returns:
        One of `EVIDENCE_KINDS` per concept.

    Examples:
        >>> evidence_kinds(torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0]), torch.tensor([0.5, 0.5, -0.5, -0.5, 2.0]))
        ['present_supports', 'present_opposes', 'absent_supports', 'absent_opposes', 'no_weight']
    """
    w = weights.detach().flatten().cpu()
    present = is_present(normalized_activations.detach().flatten().cpu())
    kinds = []
    for wi, pi in zip(w.tolist(), present.tolist()):
        if wi == 0:
            kinds.append(NO_WEIGHT)
        elif pi:
            kinds.append(PRESENT_SUPPORTS if wi > 0 else PRESENT_OPPOSES)
        else:
            kinds.append(ABSENT_SUPPORTS if wi < 0 else ABSENT_OPPOSES)
    return kinds
