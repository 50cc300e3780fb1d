"""Evaluation metrics for heatmaps: zero-shot segmentation and deletion / insertion.

Two protocols live here.

* `SegmentationMetrics`, the zero-shot segmentation protocol of Chefer et
  al. (CVPR 2021, ``imagenet_seg_eval.py``) that the SALF-CBM paper uses for its
  Table 2 (section 4.2): every heatmap is min-max normalised per image,
  binarised at its own mean, and scored against the ground-truth mask with
  pixel accuracy and mIoU (both accumulated over the whole dataset) and mAP
  (average precision per image, then the mean over images).
* `deletion_insertion` / `DeletionInsertion`, the causal
  deletion and insertion metrics of RISE (Petsiuk et al., BMVC 2018): pixels are
  removed from (or inserted into) the image in order of decreasing saliency and
  the area under the curve of the target class probability is reported.

Both take heatmaps from any method (SALF-CBM concept maps, the baselines in
`salfcbm.evaluation.baselines`, or your own) as plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError

__all__ = [
    "SegmentationMetrics",
    "DeletionInsertion",
    "deletion_insertion",
    "blur_substrate",
    "zeros_substrate",
]

_EPS = float(np.spacing(1, dtype=np.float64))  # the epsilon of Chefer's pixAcc / IoU denominators



# --------------------------------------------------------------------------- helpers


def _as_heatmaps(heatmaps: Any, name: str = "heatmaps") -> torch.Tensor:
    """``(B, 1, H, W)`` or ``(B, H, W)`` -> ``(B, H, W)`` float64, finite."""
    if not isinstance(heatmaps, torch.Tensor):
        raise InputError(
            f"`{name}` must be a torch.Tensor of shape (B, 1, H, W) or (B, H, W), got {type(heatmaps).__name__}."
        )
    if heatmaps.dim() == 4:
        if heatmaps.shape[1] != 1:
            raise InputError(
                f"`{name}` must have one channel, got shape {tuple(heatmaps.shape)}. "
                "Reduce the channels first (e.g. `.sum(1, keepdim=True)`)."
            )
        heatmaps = heatmaps[:, 0]
    elif heatmaps.dim() != 3:
        raise InputError(f"`{name}` must have shape (B, 1, H, W) or (B, H, W), got {tuple(heatmaps.shape)}.")
    if heatmaps.is_complex() or heatmaps.dtype == torch.bool:
        raise InputError(f"`{name}` must be a real-valued tensor, got dtype {heatmaps.dtype}.")
    heatmaps = heatmaps.detach().to(torch.float64)
    if not torch.isfinite(heatmaps).all():
        bad = int((~torch.isfinite(heatmaps)).sum())
        raise InputError(
            f"`{name}` holds {bad} NaN/inf values. Heatmaps must be finite; "
            "replace them first, e.g. `torch.nan_to_num(heatmaps)`."
        )
    return heatmaps


def _as_masks(masks: Any) -> torch.Tensor:
    """``(B, H, W)`` (or ``(B, 1, H, W)``) bool / {0, 1} -> bool ``(B, H, W)``."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"`masks` must be a torch.Tensor of shape (B, H, W), got {type(masks).__name__}.")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise InputError(f"`masks` must have shape (B, H, W), got {tuple(masks.shape)}.")
    if masks.dtype != torch.bool:
        if masks.is_complex() or not ((masks == 0) | (masks == 1)).all():
            vals = torch.unique(masks.detach().cpu())[:8].tolist()
            raise InputError(
                f"`masks` must be boolean or hold only 0 and 1 (background / foreground), got values {vals}. "
                "Binarise it first, e.g. `masks > 0`."
            )
        masks = masks != 0
    return masks.detach()


def _normalise(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image min-max normalisation of ``(B, H, W)``; also returns which images are constant."""
    flat = h.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1)
    hi = flat.max(1).values.view(-1, 1, 1)
    rng = hi - lo
    constant = (rng == 0).view(-1)
    r = (h - lo) / torch.where(rng == 0, torch.ones_like(rng), rng)
    return r, constant


def _average_precision_torch(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Row-wise ``sklearn.metrics.average_precision_score`` for ``(B, L)`` scores and bool targets.

    AP = sum over distinct thresholds of (recall step) x precision. Each positive
    contributes ``precision / P`` where the precision is taken at the *end* of its
    group of tied scores, which is sklearn's treatment of ties.
    """
    B, L = scores.shape
    s, order = torch.sort(scores, dim=1, descending=True, stable=True)
    t = targets.gather(1, order).to(torch.float64)
    tp = t.cumsum(1)
    pos = torch.arange(1, L + 1, device=scores.device, dtype=torch.float64)
    precision = tp / pos
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:, :-1] = s[:, 1:] != s[:, :-1]
    idx = torch.where(is_end, torch.arange(L, device=scores.device).expand(B, L), torch.full_like(order, L - 1))
    next_end = torch.flip(torch.cummin(torch.flip(idx, [1]), dim=1).values, [1])
    n_pos = tp[:, -1]
    ap = (t * precision.gather(1, next_end)).sum(1) / n_pos
    return torch.where(n_pos > 0, ap, torch.zeros_like(ap))  # sklearn warns and gives 0 without positives


# --------------------------------------------------------------------------- segmentation


class SegmentationMetrics:
    """Zero-shot segmentation scores of heatmaps against foreground masks (paper section 4.2, Table 2).

    Implements the protocol of Chefer et al. (CVPR 2021, ``imagenet_seg_eval.py``
    with ``utils/metrices.py``), which the SALF-CBM paper follows:

    1. the heatmap ``h`` of each image is min-max normalised,
       ``R = (h - min h) / (max h - min h)``;
    2. it is binarised at its own mean: foreground where ``R > mean(R)``;
    3. **pixel accuracy** = correct pixels / labelled pixels, both summed over
       every image seen (not a mean of per-image accuracies);
    4. **IoU** per class (background, foreground) = intersections / unions,
       both summed over every image; **mIoU** is the mean of the two;
    5. **AP** per image is ``sklearn.metrics.average_precision_score`` on the
       concatenated targets ``(1 - G, G)`` and scores ``(1 - R, R)``
       (``G`` the mask); **mAP** is the mean over images.

    As in the reference, a constant heatmap (``max == min``, where the reference
    divides 0 by 0 and zeroes the NaNs) predicts background everywhere and
    scores 0 for both AP channels, which gives AP = 0.5. Heatmaps whose size
    differs from the masks' are resized to the mask size bilinearly (as the
    reference upsamples its 14x14 maps), before normalisation. Images and masks
    themselves are expected at the evaluation resolution already (224x224 in
    the paper; `salfcbm.datasets.imagenet_seg.ImagenetSegmentation` does that).

    Deviation: the normalisation runs in float64 rather than float32, so
    pixels exactly at the mean can differ from the reference in the last ulp.

    Accumulator in the torchmetrics style: `update` per batch,
    `compute` at the end, `reset` to start over.

    Args:
        ap_backend: ``"sklearn"`` (default, the reference's
            ``average_precision_score``, on the CPU, image by image) or ``"torch"``
            (the same formula, tie handling included, batched on the heatmaps'
            device with no copy to the CPU; equal to sklearn up to float rounding).

    Examples:
        >>> import torch
        >>> metric = SegmentationMetrics()
        >>> masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        >>> masks[:, 2:6, 2:6] = True
        >>> per_image = metric.update(masks.float(), masks)
        >>> scores = metric.compute()
        >>> scores["pixel_accuracy"], scores["miou"], scores["map"]
        (1.0, 1.0, 1.0)
    """

    def __init__(self, *, ap_backend: str = "sklearn") -> None:
        if ap_backend not in ("sklearn", "torch"):
            raise InputError(f"`ap_backend` must be 'sklearn' or 'torch', got {ap_backend!r}.")
        self.ap_backend = ap_backend
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._correct = 0
        self._labelled = 0
        self._inter = np.zeros(2, dtype=np.int64)
        self._union = np.zeros(2, dtype=np.int64)
        self._ap: list[float] = []

    @property
    def n_images(self) -> int:
        """Number of images accumulated so far."""
        return len(self._ap)

    def update(self, heatmaps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Score one batch and add it to the running totals.

        Args:
            heatmaps: ``(B, 1, H, W)`` or ``(B, H, W)`` real-valued heatmaps (any
                scale: only their order within an image matters, up to the mean
                threshold). Resized bilinearly to the masks' size if they differ.
            masks: ``(B, H, W)`` ground truth, ``True`` (or 1) on the object.

        Returns:
            Per-image values of this batch, as CPU tensors: ``"pixel_accuracy"``,
            ``"iou_background"``, ``"iou_foreground"`` and ``"ap"`` (each ``(B,)``),
            for inspection; the dataset-level scores come from `compute`.
        """
        h = _as_heatmaps(heatmaps)
        g = _as_masks(masks)
        if h.shape[0] != g.shape[0]:
            raise InputError(
                f"`heatmaps` has {h.shape[0]} images but `masks` has {g.shape[0]}; pass one mask per heatmap."
            )
        if h.shape[0] == 0:
            raise InputError("`heatmaps` and `masks` are empty (batch size 0).")
        g = g.to(h.device)
        if h.shape[-2:] != g.shape[-2:]:
            h = upsample_bilinear(h, tuple(g.shape[-2:]))

        r, constant = _normalise(h)
        pred = r > r.flatten(1).mean(1).view(-1, 1, 1)
        pred[constant] = False  # reference: NaN -> 0 in both one-hot channels -> argmax picks background

        n_pix = g[0].numel()
        correct = (pred == g).flatten(1).sum(1)
        inter_fg = (pred & g).flatten(1).sum(1)
        inter_bg = (~pred & ~g).flatten(1).sum(1)
        union_fg = (pred | g).flatten(1).sum(1)
        union_bg = (~pred | ~g).flatten(1).sum(1)

        self._correct += int(correct.sum())
        self._labelled += n_pix * g.shape[0]
        self._inter += np.array([int(inter_bg.sum()), int(inter_fg.sum())], dtype=np.int64)
        self._union += np.array([int(union_bg.sum()), int(union_fg.sum())], dtype=np.int64)

        scores = torch.cat([1.0 - r, r], dim=1)  # (B, 2H, W): channel 0 background, 1 foreground
        scores[constant] = 0.0
        targets = torch.cat([~g, g], dim=1)
        if self.ap_backend == "torch":
            aps = _average_precision_torch(scores.flatten(1), targets.flatten(1)).cpu().tolist()
        else:
            from sklearn.metrics import average_precision_score

            scores_np = scores.flatten(1).cpu().numpy()
            targets_np = targets.flatten(1).cpu().numpy()
            aps = [float(np.nan_to_num(average_precision_score(t, s))) for t, s in zip(targets_np, scores_np)]
        self._ap.extend(aps)

        def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a.double().cpu() / (b.double().cpu() + _EPS)

        return {
            "pixel_accuracy": _ratio(correct, torch.full_like(correct, n_pix)),
            "iou_background": _ratio(inter_bg, union_bg),
            "iou_foreground": _ratio(inter_fg, union_fg),
            "ap": torch.tensor(aps, dtype=torch.float64),
        }

    def compute(self) -> dict[str, float]:
        """Dataset-level scores over every image passed to `update`.

        Returns:
            ``pixel_accuracy``, ``miou``, ``map``, ``iou_background``,
            ``iou_foreground`` (fractions in ``[0, 1]``, multiply by 100 for the
            paper's percentages) and ``n_images``.

        Raises:
            InputError: nothing was accumulated yet.
        """
        if not self._ap:
            raise InputError(
                "SegmentationMetrics.compute() was called before any update(); pass heatmaps and masks first."
            )
        iou = self._inter.astype(np.float64) / (self._union.astype(np.float64) + _EPS)
        return {
            "pixel_accuracy": float(self._correct / (self._labelled + _EPS)),
            "miou": float(iou.mean()),
            "map": float(np.mean(self._ap)),
            "iou_background": float(iou[0]),
            "iou_foreground": float(iou[1]),
            "n_images": self.n_images,
        }

    def __repr__(self) -> str:
        return f"SegmentationMetrics(n_images={self.n_images})"


# --------------------------------------------------------------------------- deletion / insertion


def zeros_substrate(images: torch.Tensor) -> torch.Tensor:
    """Deletion substrate of RISE: zeros (the mean colour for mean-normalised inputs)."""
    return torch.zeros_like(images)


def blur_substrate(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Insertion substrate of RISE: a Gaussian-blurred copy of ``images`` (kernel 11, sigma 5).

    RISE convolves with zero padding and a kernel made by ``scipy.ndimage.gaussian_filter``
    on an 11x11 delta; here the kernel is a normalised, truncated Gaussian and borders
    are reflected (replicated for images smaller than half the kernel), which avoids
    darkening the image edges.

    Examples:
        >>> import torch
        >>> blur_substrate(torch.ones(1, 3, 16, 16)).allclose(torch.ones(1, 3, 16, 16))
        True
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InputError(f"`kernel_size` must be a positive odd int, got {kernel_size!r}.")
    if not sigma > 0:
        raise InputError(f"`sigma` must be positive, got {sigma!r}.")
    if images.dim() != 4:
        raise InputError(f"`images` must be (B, C, H, W), got shape {tuple(images.shape)}.")
    C, (H, W), r = images.shape[1], images.shape[-2:], kernel_size // 2
    dtype = images.dtype if images.is_floating_point() else torch.float32
    x = torch.arange(kernel_size, device=images.device, dtype=dtype) - r
    k1 = torch.exp(-0.5 * (x / sigma) ** 2)
    k1 = k1 / k1.sum()
    mode = "reflect" if min(H, W) > r else "replicate"
    out = F.pad(images.to(dtype), (r, r, r, r), mode=mode)
    out = F.conv2d(out, k1.view(1, 1, 1, -1).expand(C, 1, 1, kernel_size), groups=C)
    out = F.conv2d(out, k1.view(1, 1, -1, 1).expand(C, 1, kernel_size, 1), groups=C)
    return out


def _resolve_target(target: Any, batch: int, device: torch.device) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, bool):
        raise InputError(f"`target` must be an int, a sequence of ints or a tensor, got {target!r}.")
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"`target` must hold integer class indices, got dtype {t.dtype}.")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise InputError(
            f"`target` must be an int or hold one class index per image ({batch}), got shape {tuple(t.shape)}."
        )
    return t.long()


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(
            f"The model must return a (B, num_classes) tensor of logits, got "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}. "
            "Wrap it, e.g. `lambda x: model(x).logits`, in an nn.Module that returns the logits "
            "(for a SALF-CBM: `model.as_classifier()`)."
        )
    return out


class DeletionInsertion:
    """Deletion and insertion AUC of saliency maps (RISE, Petsiuk et al. 2018).

    For each image, pixels are ranked by saliency (highest first; ties keep
    raster order) and, in ``n_steps`` equal steps, replaced:

    * **deletion**: from the image by a substrate (default zeros, RISE);
      a faithful map makes the class probability fall fast, so *lower* AUC is better;
    * **insertion**: into a blurred copy of the image (Gaussian, kernel 11,
      sigma 5, RISE) from the image; *higher* AUC is better.

    The score at each step is the softmax probability of the target class (the
    model's top-1 class on the unmodified image unless ``target`` is given).
    The AUC is the trapezoid rule over the fraction of pixels changed, in
    ``[0, 1]``; with ``n_steps = H * W / 224`` (224 at 224x224) the steps are
    exactly RISE's 224 pixels each. The default of 100 steps is a cheaper
    approximation (the curve is sampled every 1 % of the pixels).

    Every step of every image is a separate forward pass; they are batched
    ``batch_size`` at a time, so one 224x224 image costs
    ``2 * (n_steps + 1) / batch_size`` batched forward passes. The model runs
    under ``torch.no_grad()``; with ``eval_mode=True`` (default) it is switched
    to ``eval()`` for the call and every module's train/eval flag is restored
    afterwards.

    Args:
        model: classifier returning ``(B, num_classes)`` logits (probabilities if
            ``softmax=False``).
        n_steps: number of removal / insertion steps (>= 1).
        batch_size: perturbed images per forward pass.
        softmax: apply a softmax to the outputs before reading the target score.
        deletion_substrate_fn: ``images -> images`` giving what deleted pixels become.
        insertion_substrate_fn: ``images -> images`` giving the starting canvas for insertion.
        modes: which of ``"deletion"`` and ``"insertion"`` to compute.
        eval_mode: run the model in ``eval()`` mode during the call (restored after).
        progress: show a tqdm progress bar.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        >>> metric = DeletionInsertion(model, n_steps=8, progress=False)
        >>> images, saliency = torch.randn(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
        >>> out = metric(images, saliency)
        >>> out["deletion_auc"].shape, out["insertion_curve"].shape
        (torch.Size([2]), torch.Size([2, 9]))
    """

    def __init__(
        self,
        model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
        *,
        n_steps: int = 100,
        batch_size: int = 64,
        softmax: bool = True,
        deletion_substrate_fn: Callable[[torch.Tensor], torch.Tensor] = zeros_substrate,
        insertion_substrate_fn: Callable[[torch.Tensor], torch.Tensor] = blur_substrate,
        modes: Sequence[str] = ("deletion", "insertion"),
        eval_mode: bool = True,
        progress: bool = True,
    ) -> None:
        if not callable(model):
            raise InputError(f"`model` must be callable (an nn.Module), got {type(model).__name__}.")
        for nm, v in (("n_steps", n_steps), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"`{nm}` must be a positive int, got {v!r}.")
        substrates = (
            ("deletion_substrate_fn", deletion_substrate_fn),
            ("insertion_substrate_fn", insertion_substrate_fn),
        )
        for nm, fn in substrates:
            if not callable(fn):
                raise InputError(f"`{nm}` must be a callable images -> images, got {type(fn).__name__}.")
        if isinstance(modes, str):
            modes = (modes,)
        modes = tuple(modes)
        bad = [m for m in modes if m not in ("deletion", "insertion")]
        if bad or not modes:
            raise InputError(f"`modes` must be a non-empty subset of ('deletion', 'insertion'), got {modes!r}.")
        self.model = model
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.softmax = bool(softmax)
        self.deletion_substrate_fn = deletion_substrate_fn
        self.insertion_substrate_fn = insertion_substrate_fn
        self.modes = modes
        self.eval_mode = bool(eval_mode)
        self.progress = bool(progress)
        self.reset()

    # -- accumulator interface
    def reset(self) -> None:
        """Forget the AUCs accumulated by `update`."""
        self._aucs: dict[str, list[torch.Tensor]] = {m: [] for m in self.modes}

    def update(self, images: torch.Tensor, saliency: torch.Tensor, target: Any = None) -> dict[str, torch.Tensor]:
        """Evaluate one batch (like `__call__`) and keep its AUCs for `compute`."""
        out = self(images, saliency, target)
        for m in self.modes:
            self._aucs[m].append(out[f"{m}_auc"])
        return out

    def compute(self) -> dict[str, float]:
        """Mean AUCs over every image passed to `update`, plus ``n_images``."""
        first = self._aucs[self.modes[0]]
        if not first:
            raise InputError(
                "DeletionInsertion.compute() was called before any update(); pass images and saliency first."
            )
        res: dict[str, float] = {f"{m}_auc": float(torch.cat(v).mean()) for m, v in self._aucs.items()}
        res["n_images"] = int(sum(len(v) for v in first))
        return res

    # -- evaluation
    def __call__(self, images: torch.Tensor, saliency: torch.Tensor, target: Any = None) -> dict[str, torch.Tensor]:
        """Deletion / insertion curves and AUCs for a batch.

        Args:
            images: ``(B, C, H, W)`` model inputs (already normalised as the model expects).
            saliency: ``(B, 1, h, w)`` or ``(B, h, w)``; resized bilinearly to ``H x W`` if needed.
            target: class per image (int, sequence or ``(B,)`` tensor); ``None`` uses
                the model's top-1 class on ``images``.

        Returns:
            ``deletion_auc`` / ``insertion_auc`` ``(B,)``, ``deletion_curve`` /
            ``insertion_curve`` ``(B, n_steps + 1)`` (scores after 0, 1, ... steps),
            ``fractions`` ``(n_steps + 1,)`` (fraction of pixels changed at each point)
            and ``target`` ``(B,)``; all on the CPU. Only the requested ``modes`` appear.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise InputError(
                f"`images` must be a float (B, C, H, W) tensor, got "
                f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
            )
        B, _, H, W = images.shape
        HW = H * W
        if self.n_steps > HW:
            raise InputError(
                f"`n_steps`={self.n_steps} exceeds the {HW} pixels of a {H}x{W} image; use n_steps <= {HW}."
            )
        sal = _as_heatmaps(saliency, "saliency").to(images.device)
        if sal.shape[0] != B:
            raise InputError(f"`saliency` has {sal.shape[0]} maps for {B} images; pass one map per image.")
        if sal.shape[-2:] != (H, W):
            sal = upsample_bilinear(sal, (H, W))
        tgt = _resolve_target(target, B, images.device)

        images = images.detach()
        with preserved_modes(self.model, False if self.eval_mode else None), torch.no_grad():
            if tgt is None:
                tgt = _logits(self.model, images).argmax(1)
            # rank[b, p] = position of pixel p in decreasing-saliency order (stable: ties in raster order)
            order = torch.argsort(sal.flatten(1), dim=1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank.scatter_(1, order, torch.arange(HW, device=order.device).expand(B, HW))
            counts = torch.tensor(
                [math.ceil(i * HW / self.n_steps) for i in range(self.n_steps + 1)], device=images.device
            )
            result: dict[str, torch.Tensor] = {"fractions": counts.double().cpu() / HW, "target": tgt.cpu()}
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                total = len(self.modes) * math.ceil(B * (self.n_steps + 1) / self.batch_size)
                bar = tqdm(total=total, desc="deletion/insertion", leave=False)
            try:
                for mode in self.modes:
                    if mode == "deletion":
                        start, finish = images, self.deletion_substrate_fn(images)
                    else:
                        start, finish = self.insertion_substrate_fn(images), images
                    if finish.shape != images.shape or start.shape != images.shape:
                        raise InputError(f"The {mode} substrate function must return a tensor shaped like `images`.")
                    curve = self._curve(start, finish, rank, counts, tgt, bar)
                    result[f"{mode}_curve"] = curve
                    result[f"{mode}_auc"] = torch.trapezoid(curve, result["fractions"].to(curve.dtype), dim=1)
            finally:
                if bar is not None:
                    bar.close()
        return result

    def _curve(
        self,
        start: torch.Tensor,
        finish: torch.Tensor,
        rank: torch.Tensor,
        counts: torch.Tensor,
        tgt: torch.Tensor,
        bar: Any,
    ) -> torch.Tensor:
        B, C, H, W = start.shape
        S = counts.numel()
        flat_b = torch.arange(B, device=start.device).repeat_interleave(S)
        flat_s = torch.arange(S, device=start.device).repeat(B)
        scores = torch.empty(B * S, dtype=torch.float64)
        for lo in range(0, B * S, self.batch_size):
            b = flat_b[lo : lo + self.batch_size]
            s = flat_s[lo : lo + self.batch_size]
            replaced = (rank[b] < counts[s, None]).view(-1, 1, H, W)
            x = torch.where(replaced, finish[b], start[b])
            out = _logits(self.model, x)
            if self.softmax:
                out = out.float().softmax(1)
            scores[lo : lo + b.numel()] = out.gather(1, tgt[b, None])[:, 0].double().cpu()
            if bar is not None:
                bar.update(1)
        return scores.view(B, S).float()


def deletion_insertion(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    saliency: torch.Tensor,
    *,
    target: Any = None,
    n_steps: int = 100,
    batch_size: int = 64,
    softmax: bool = True,
    deletion_substrate_fn: Callable[[torch.Tensor], torch.Tensor] = zeros_substrate,
    insertion_substrate_fn: Callable[[torch.Tensor], torch.Tensor] = blur_substrate,
    modes: Sequence[str] = ("deletion", "insertion"),
    eval_mode: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Deletion and insertion AUC of ``saliency`` for ``images`` (RISE); see `DeletionInsertion`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        >>> out = deletion_insertion(model, torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16), n_steps=4, progress=False)
        >>> sorted(k for k in out if k.endswith("auc"))
        ['deletion_auc', 'insertion_auc']
    """
    return DeletionInsertion(
        model,
        n_steps=n_steps,
        batch_size=batch_size,
        softmax=softmax,
        deletion_substrate_fn=deletion_substrate_fn,
        insertion_substrate_fn=insertion_substrate_fn,
        modes=modes,
        eval_mode=eval_mode,
        progress=progress,
    )(images, saliency, target)
