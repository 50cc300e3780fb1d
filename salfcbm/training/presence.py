"""Calibrated presence: when does an image show a concept? (label-free, on the validation split)

An explanation labels every concept it shows *present* or *absent* (`salfcbm.explain.evidence`).
"Above the training mean" is a poor presence test: it is relative (a concept most training
images show is "absent" where an image shows it a little; a rare one is "present" on noise),
and a mean over the grid dilutes a small object. This module chooses one threshold per concept
instead, without labels, from what supervised the bottleneck:

1. the *target* presence: the prompted similarities ``P[n, m, h, w]`` (CLIP's, or any
   scorer's) say where the concept is; their peak over the grid, split in two per concept by
   Otsu's method (the split that maximises the between-group variance), says in which
   validation images the concept is;
2. the model's statistic: the peak of the standardised concept map,
   ``(max_{h,w} c(x)[m, h, w] - mean[m]) / std[m]``;
3. the threshold: per concept, the one at which "peak above it" agrees best with the target
   presence (F1) on the validation images.

`salfcbm.fit` runs it after the head and stores the thresholds in the model
(`SALFCBM.presence_threshold`, saved in ``config.json``).
"""

from __future__ import annotations

from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["otsu_split", "target_presence", "f1_thresholds", "calibrate_presence", "concept_peaks",
           "target_peaks"]


def _check_2d(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] < 1:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"`{name}` must be an (images, concepts) tensor with at least one image, got {got}.")
    if not torch.isfinite(t.float()).all():
        raise InputError(f"`{name}` holds NaN or inf values; presence cannot be calibrated on them.")
    return t.float()


def otsu_split(values: torch.Tensor) -> torch.Tensor:
    """Per column of ``(N, M)`` values, Otsu's threshold: ``(M,)``, the midpoint of the best split.

    The split between two sorted neighbours that maximises the between-group variance
    ``w0 * w1 * (mu0 - mu1)^2``. A constant column has no split: its threshold is its value
    (so nothing is above it).

    Examples:
        >>> otsu_split(torch.tensor([[0.0], [0.0], [0.1], [0.9], [1.0]])).tolist()
        [0.5]
    """
    v = _check_2d("values", values)
    n, m = v.shape
    out = torch.empty(m)
    for a in range(0, m, 256):  # bounded memory for many concepts and images
        s = v[:, a : a + 256].sort(0).values  # (N, m')
        if n == 1:
            out[a : a + 256] = s[0]
            continue
        k = torch.arange(1, n, dtype=torch.float64)[:, None]  # size of the lower group
        c = s.double().cumsum(0)[:-1]
        total = c[-1:] + s[-1:].double()
        mu0, mu1 = c / k, (total - c) / (n - k)
        var = (k / n) * (1 - k / n) * (mu0 - mu1) ** 2
        var[s[1:] <= s[:-1]] = -1  # no split between equal values
        best = var.argmax(0)
        cols = torch.arange(s.shape[1])
        split = ((s[best, cols] + s[best + 1, cols]) / 2).float()
        out[a : a + 256] = torch.where(var[best, cols] >= 0, split, s[-1])
    return out


def target_presence(target_peak: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` bool: the images where the targets show each concept (peak above its Otsu split).

    Examples:
        >>> target_presence(torch.tensor([[0.0, 0.3], [0.8, 0.3], [0.9, 0.3]])).tolist()
        [[False, False], [True, False], [True, False]]
    """
    t = _check_2d("target_peak", target_peak)
    return t > otsu_split(t)


def f1_thresholds(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the threshold on ``scores`` whose ``scores > threshold`` best matches ``labels`` (F1).

    Returns ``(thresholds, f1)``, both ``(M,)``. A column without a positive label gets a threshold
    at its highest score (nothing above it) and F1 0.

    Examples:
        >>> th, f1 = f1_thresholds(torch.tensor([[0.1], [0.4], [0.5], [0.9]]), torch.tensor([[0], [0], [1], [1]]).bool())
        >>> round(float(th[0]), 2), float(f1[0])
        (0.45, 1.0)
    """
    s = _check_2d("scores", scores)
    y = labels.bool()
    if y.shape != s.shape:
        raise InputError(f"`labels` must have the shape of `scores` {tuple(s.shape)}, got {tuple(y.shape)}.")
    n = s.shape[0]
    order = s.sort(0, descending=True)
    ys = y.gather(0, order.indices).float()
    tp = ys.cumsum(0)  # (N, M): calling the top i+1 present
    positives = ys.sum(0)  # (M,)
    f1 = 2 * tp / (torch.arange(1, n + 1, dtype=torch.float32)[:, None] + positives)
    srt = order.values
    tie = torch.zeros_like(srt, dtype=torch.bool)
    tie[:-1] = srt[1:] >= srt[:-1]  # the next score equals this one: no threshold between them
    f1 = torch.where(tie, torch.full_like(f1, -1.0), f1)
    best = f1.argmax(0)
    cols = torch.arange(s.shape[1])
    below = torch.cat([srt[1:], srt[-1:] - 1.0])  # the next lower score (below the minimum: min - 1)
    th = (srt[best, cols] + below[best, cols]) / 2
    none = positives == 0
    th = torch.where(none, srt[0], th)
    return th, torch.where(none, torch.zeros_like(th), f1[best, cols].clamp_min(0))


def calibrate_presence(peaks: torch.Tensor, target_peak: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-concept presence thresholds on the standardised map peaks of validation images.

    Args:
        peaks: ``(N, M)`` standardised concept-map peaks of the validation images (`concept_peaks`).
        target_peak: ``(N, M)`` the targets' peaks over the grid for the same images and concepts
            (`target_peaks`).

    Returns:
        ``(thresholds (M,), report)``; the report has the validation F1 against the target presence
        and the share of validation images the targets show each concept in.
    """
    p = _check_2d("peaks", peaks)
    t = _check_2d("target_peak", target_peak)
    if p.shape != t.shape:
        raise InputError(f"`peaks` {tuple(p.shape)} and `target_peak` {tuple(t.shape)} must have the same shape "
                         "(the same validation images and concepts).")
    y = target_presence(t)
    th, f1 = f1_thresholds(p, y)
    report = {"rule": "peak of the standardised concept map > per-concept threshold (F1 against the targets' "
                      "Otsu split on the validation split)",
              "images": int(p.shape[0]), "val_f1": [round(float(v), 4) for v in f1],
              "target_present_share": [round(float(v), 4) for v in y.float().mean(0)],
              "mean_val_f1": round(float(f1.mean()), 4)}
    return th, report


@torch.no_grad()
def concept_peaks(model: Any, features: Any, batch: int = 1024) -> torch.Tensor:
    """``(N, M)`` peaks of the standardised concept maps, ``(max c(x)[m] - mean[m]) / std[m]``, from cached features."""
    from salfcbm.training.batches import map_features

    return map_features(model, features, model.map_peaks, batch)


@torch.no_grad()
def target_peaks(similarities: Any, concepts: list[str], batch: int = 512) -> torch.Tensor:
    """``(N, M)`` peaks over the grid of a similarity store's targets ``P[n, m, h, w]``."""
    n = similarities.length
    out = [similarities.targets(list(range(a, min(a + batch, n))), concepts).float().flatten(2).amax(-1)
           for a in range(0, n, batch)]
    return torch.cat(out)
