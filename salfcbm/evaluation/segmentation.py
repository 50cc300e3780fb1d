"""Zero-shot segmentation of heatmaps against foreground masks: `SegmentationMetrics` (paper 4.2, Table 2).

The protocol of Chefer et al. (CVPR 2021, ``imagenet_seg_eval.py``) that the SALF-CBM paper uses for
its Table 2: every heatmap is min-max normalised per image, binarised at its own mean, and scored
against the ground-truth mask with pixel accuracy and mIoU (both accumulated over the whole dataset)
and mAP (average precision per image, then the mean over images).
"""

from __future__ import annotations

import numpy as np
import torch

from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError
from salfcbm.evaluation.inputs import as_heatmaps, as_masks, normalise_heatmaps

__all__ = ["SegmentationMetrics", "average_precision_rows"]

_EPS = float(np.spacing(1, dtype=np.float64))  # the epsilon of Chefer's pixAcc / IoU denominators


def average_precision_rows(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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
        h = as_heatmaps(heatmaps)
        g = as_masks(masks)
        if h.shape[0] != g.shape[0]:
            raise InputError(
                f"`heatmaps` has {h.shape[0]} images but `masks` has {g.shape[0]}; pass one mask per heatmap."
            )
        if h.shape[0] == 0:
            raise InputError("`heatmaps` and `masks` are empty (batch size 0).")
        g = g.to(h.device)
        if h.shape[-2:] != g.shape[-2:]:
            h = upsample_bilinear(h, tuple(g.shape[-2:]))

        r, constant = normalise_heatmaps(h)
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
            aps = average_precision_rows(scores.flatten(1), targets.flatten(1)).cpu().tolist()
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
