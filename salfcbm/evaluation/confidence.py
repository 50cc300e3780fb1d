"""Model-based faithfulness metrics: Average Drop / Increase in Confidence and faithfulness correlation.

* `average_drop_increase`: Average Drop and Increase in Confidence (Chattopadhyay et al.,
  "Grad-CAM++: generalized gradient-based visual explanations for deep convolutional networks",
  WACV 2018; torchcam's ``ClassificationMetric``). Quantus 0.6 has no implementation.
* `faithfulness_correlation` (Bhatt, Weller and Moura, "Evaluating and aggregating
  feature-based model explanations", IJCAI 2020; Quantus ``FaithfulnessCorrelation``).

Both run the explained model (``images -> (B, num_classes)`` logits) under ``torch.no_grad()`` in
``eval()`` mode, restoring every module's mode afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError
from salfcbm.evaluation.inputs import as_heatmaps, model_logits, normalise_heatmaps, resolve_target

__all__ = ["average_drop_increase", "faithfulness_correlation"]


def _eval(model: Any) -> contextlib.AbstractContextManager:
    return preserved_modes(model, False) if isinstance(model, nn.Module) else contextlib.nullcontext()


def _checked(images: Any, saliency: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise InputError(
            f"`images` must be a float (B, C, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    sal = as_heatmaps(saliency, "saliency").to(images.device)
    if sal.shape[0] != images.shape[0]:
        raise InputError(f"`saliency` has {sal.shape[0]} maps for {images.shape[0]} images; pass one map per image.")
    if sal.shape[-2:] != images.shape[-2:]:
        sal = upsample_bilinear(sal, tuple(images.shape[-2:]))
    return images.detach(), sal


def average_drop_increase(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: Any = None,
) -> dict[str, torch.Tensor]:
    """Average Drop and Increase in Confidence of a batch (Chattopadhyay et al., WACV 2018).

    The map ``E`` is min-max normalised per image to ``[0, 1]`` (a constant map becomes 0) and
    the image is multiplied by it, ``O = p(E * x)``, ``Y = p(x)`` the softmax probability of the
    target class. Per image: ``drop = max(0, Y - O) / Y`` and ``increase = [O > Y]``. Average Drop
    is the mean drop (lower is better) and Increase in Confidence the mean increase (higher is
    better), both ×100 in the paper. The map is scored as given: a signed map's most negative
    pixel becomes 0 and its zero some grey level.

    Args:
        model: ``images -> (B, num_classes)`` logits.
        images: ``(B, C, H, W)`` model inputs; multiplying them by ``E`` must mean "keep only
            the explained part" (true of ``[0, 1]`` images and of zero-mean normalised ones).
        saliency: ``(B, 1, h, w)`` or ``(B, h, w)``, resized bilinearly to the images.
        target: class per image; ``None`` is the model's prediction on ``images``.

    Returns:
        ``drop`` and ``increase`` ``(B,)`` (per image, in ``[0, 1]``), ``p_full`` and
        ``p_masked`` ``(B,)``, on the CPU.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> out = average_drop_increase(net, torch.rand(2, 3, 2, 2), torch.ones(2, 1, 2, 2), target=0)
        >>> sorted(out), out["drop"].shape
        (['drop', 'increase', 'p_full', 'p_masked'], torch.Size([2]))
    """
    x, sal = _checked(images, saliency)
    e, _ = normalise_heatmaps(sal)
    e = e.to(x.dtype)[:, None]
    with _eval(model), torch.no_grad():
        logits = model_logits(model, x)
        t = resolve_target(target, x.shape[0], x.device)
        t = logits.argmax(1) if t is None else t
        y = logits.double().softmax(1).gather(1, t[:, None])[:, 0]
        o = model_logits(model, x * e).double().softmax(1).gather(1, t[:, None])[:, 0]
    drop = (y - o).clamp(min=0) / y
    return {"drop": drop.cpu(), "increase": (o > y).double().cpu(), "p_full": y.cpu(), "p_masked": o.cpu()}


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation (``NaN`` where a row is constant)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def faithfulness_correlation(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor,
    target: Any = None,
    *,
    n_runs: int = 100,
    subset_size: int | None = None,
    baseline: str | float = "black",
    softmax: bool = False,
    subsets: np.ndarray | torch.Tensor | None = None,
    seed: int | None = 0,
) -> torch.Tensor:
    """Faithfulness correlation per image (Bhatt, Weller and Moura, IJCAI 2020).

    ``n_runs`` times, a random subset ``S`` of ``subset_size`` pixels is replaced by a baseline
    (every channel of each chosen pixel) and the drop of the target's score ``f(x) - f(x_S)``
    is recorded next to the relevance ``sum(E[S])``; the result is the Pearson correlation of the
    two over the runs (higher is better; 0 is unrelated). As Quantus's ``FaithfulnessCorrelation``
    (``nr_runs=100``, ``subset_size=224``, ``perturb_baseline="black"``: the image's minimum over
    all its values; raw logits), except that Quantus draws subsets of the
    ``C * H * W`` values of a map it broadcasts over the channels, and salfcbm of the pixels.
    The two coincide on one-channel images.

    Args:
        model: ``images -> (B, num_classes)`` logits.
        images: ``(B, C, H, W)`` model inputs.
        saliency: ``(B, 1, h, w)`` or ``(B, h, w)``, resized bilinearly to the images.
        target: class per image; ``None`` is the model's prediction.
        n_runs: random subsets per image (>= 2).
        subset_size: pixels per subset; default ``round(H * W / 224)`` (224 at 224 x 224).
        baseline: ``"black"`` (each image's minimum), ``"mean"`` (its mean) or a number.
        softmax: correlate probabilities instead of logits.
        subsets: ``(n_runs, B, subset_size)`` flat pixel indices to use instead of random ones.
        seed: seed of the subsets' generator (``None``: fresh randomness).

    Returns:
        ``(B,)`` correlations on the CPU (``NaN`` where either series is constant).
    """
    x, sal = _checked(images, saliency)
    B, C, H, W = x.shape
    HW = H * W
    if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 2:
        raise InputError(f"`n_runs` must be an int >= 2 (a correlation needs two points), got {n_runs!r}.")
    k = max(1, round(HW / 224)) if subset_size is None else subset_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < HW:
        raise InputError(f"`subset_size` must be an int in [1, {HW - 1}] (pixels of one image), got {subset_size!r}.")
    if subsets is None:
        rng = np.random.default_rng(seed)
        subsets = np.stack([np.stack([rng.choice(HW, k, replace=False) for _ in range(B)]) for _ in range(n_runs)])
    idx = torch.as_tensor(np.asarray(subsets), dtype=torch.long, device=x.device)
    if idx.dim() != 3 or idx.shape[:2] != (n_runs, B) or idx.numel() == 0 or idx.min() < 0 or idx.max() >= HW:
        raise InputError(f"`subsets` must be ({n_runs}, {B}, subset_size) pixel indices in [0, {HW}), got "
                         f"shape {tuple(idx.shape)}.")
    if baseline == "black":
        fill = x.flatten(1).min(1).values
    elif baseline == "mean":
        fill = x.flatten(1).mean(1)
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        fill = torch.full((B,), float(baseline), dtype=x.dtype, device=x.device)
    else:
        raise InputError(f"`baseline` must be 'black', 'mean' or a number, got {baseline!r}.")
    score = (lambda z: z.double().softmax(1)) if softmax else (lambda z: z.double())
    flat_sal = sal.flatten(1)
    drops, sums = [], []
    with _eval(model), torch.no_grad():
        logits = model_logits(model, x)
        t = resolve_target(target, B, x.device)
        t = logits.argmax(1) if t is None else t
        full = score(logits).gather(1, t[:, None])[:, 0]
        for r in range(idx.shape[0]):
            keep = torch.ones(B, HW, dtype=torch.bool, device=x.device)
            keep.scatter_(1, idx[r], False)
            xp = torch.where(keep.view(B, 1, H, W), x, fill.view(B, 1, 1, 1))
            drops.append(full - score(model_logits(model, xp)).gather(1, t[:, None])[:, 0])
            sums.append(flat_sal.gather(1, idx[r]).sum(1))
    return _pearson(torch.stack(sums, 1), torch.stack(drops, 1)).cpu()
