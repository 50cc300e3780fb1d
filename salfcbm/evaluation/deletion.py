"""Deletion and insertion AUC of saliency maps (RISE, Petsiuk et al., BMVC 2018).

Pixels are removed from (or inserted into) the image in order of decreasing saliency and the area
under the curve of the target class probability is reported: `DeletionInsertion` (an accumulator)
and `deletion_insertion` (one call), with RISE's substrates `zeros_substrate` and `blur_substrate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.errors import InputError
from salfcbm.evaluation.inputs import as_heatmaps, model_logits, resolve_target

__all__ = ["DeletionInsertion", "blur_substrate", "constant_substrate", "deletion_insertion", "zeros_substrate"]


def zeros_substrate(images: torch.Tensor) -> torch.Tensor:
    """Deletion substrate of RISE: zeros (the mean colour for mean-normalised inputs)."""
    return torch.zeros_like(images)


def constant_substrate(colour: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A deletion substrate: every deleted pixel becomes ``colour`` (one value per channel).

    With the backbone's normalisation mean this is RISE's "zeros" substrate of a
    mean-normalised model, applied before the normalisation.

    Examples:
        >>> import torch
        >>> constant_substrate([0.5, 0.5, 0.5])(torch.zeros(1, 3, 2, 2)).unique().tolist()
        [0.5]
    """
    values = [float(c) for c in colour]
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"`colour` must be finite numbers, one per channel, got {colour!r}.")

    def substrate(images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != len(values):
            raise InputError(
                f"The substrate colour has {len(values)} channels but the images have shape {tuple(images.shape)}."
            )
        c = torch.tensor(values, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return c.expand_as(images).clone()

    return substrate


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
        sal = as_heatmaps(saliency, "saliency").to(images.device)
        if sal.shape[0] != B:
            raise InputError(f"`saliency` has {sal.shape[0]} maps for {B} images; pass one map per image.")
        if sal.shape[-2:] != (H, W):
            sal = upsample_bilinear(sal, (H, W))
        tgt = resolve_target(target, B, images.device)

        images = images.detach()
        with preserved_modes(self.model, False if self.eval_mode else None), torch.no_grad():
            if tgt is None:
                tgt = model_logits(self.model, images).argmax(1)
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
            out = model_logits(self.model, x)
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
