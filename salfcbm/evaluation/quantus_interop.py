"""Evaluate SALF-CBM with Quantus (0.6): ``a_batch`` conversion and an ``explain_func``.

Quantus metrics take the model, numpy inputs ``x_batch`` ``(B, C, H, W)``, labels ``y_batch``,
and either precomputed attributions ``a_batch`` ``(B, 1, H, W)`` at input resolution or an
``explain_func(model, inputs, targets, **kwargs) -> np.ndarray``. Two functions give both:

* `a_batch` turns any salfcbm heatmaps (a ``SALFCBMAttribution`` result, grid-size concept
  maps, an `Explanation` or `ExplanationBatch`) into that numpy array, upsampled bilinearly;
* `explain_func` is a Quantus explain function for a SALF-CBM (or its ``as_classifier()``
  view, the model you hand to Quantus), so SALF-CBM is evaluated like any other method.

Quantus is not a dependency of salfcbm; nothing here imports it. See ``docs/evaluation.md``
for the metrics where Quantus 0.6 is wrong and salfcbm's own implementation to use instead.

Example (needs ``pip install --no-deps quantus==0.6.0``; see ``scripts/setup.sh``)::

    import quantus
    clf = model.as_classifier().eval()
    metric = quantus.RelevanceRankAccuracy(disable_warnings=True)
    scores = metric(model=clf, x_batch=x, y_batch=y, s_batch=masks, explain_func=explain_func)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from salfcbm._utils.modes import module_device, preserved_modes
from salfcbm._utils.tensors import upsample_bilinear
from salfcbm.errors import InputError

__all__ = ["a_batch", "explain_func"]


def _explanation_maps(obj: Any, concept: int) -> torch.Tensor | None:
    """``(B, H, W)`` heatmaps of an Explanation / ExplanationBatch / ClassExplanation, else None."""
    items = getattr(obj, "explanations", None)
    if items is None and hasattr(obj, "classes") and hasattr(obj, "top"):
        items = [obj]
    if items is not None:
        return torch.stack([_explanation_maps(e.top, concept) for e in items])  # type: ignore[misc]
    if hasattr(obj, "heatmaps") and hasattr(obj, "concept_indices"):
        maps = obj.heatmaps
        if maps is None:
            raise InputError("This explanation holds no heatmaps; explain with heatmaps=True (the default).")
        if not 0 <= concept < maps.shape[0]:
            raise InputError(f"`concept` must index the explanation's top-{maps.shape[0]} concepts, got {concept}.")
        return maps[concept]
    return None


def a_batch(maps: Any, size: tuple[int, int] | int | None = None, *, concept: int = 0, relu: bool = False) -> np.ndarray:
    """Quantus's ``a_batch``: salfcbm heatmaps as a float32 numpy array ``(B, 1, H, W)``.

    Args:
        maps: ``(B, 1, h, w)`` / ``(B, h, w)`` tensor or array (e.g. ``SALFCBMAttribution(...)
            .attribute(x)``, or concept maps at grid size), or an `Explanation` /
            `ExplanationBatch` / ``ClassExplanation`` (its top concept's heatmap, or the
            ``concept``-th of its top-k).
        size: the input resolution ``(H, W)`` (or one int); maps of another size are upsampled
            bilinearly, as salfcbm does everywhere. ``None`` keeps their size.
        concept: which of an explanation's top-k concept heatmaps to take.
        relu: clamp negative values to 0 (the rectified map).

    Examples:
        >>> import torch
        >>> a_batch(torch.rand(2, 7, 7), size=32).shape
        (2, 1, 32, 32)
    """
    t = _explanation_maps(maps, concept)
    if t is None:
        t = torch.as_tensor(maps) if isinstance(maps, (np.ndarray, torch.Tensor)) else None
    if t is None or t.is_complex() or t.dtype == torch.bool:
        raise InputError(
            f"`maps` must be heatmaps (a real tensor or array (B, 1, h, w) / (B, h, w)) or a salfcbm "
            f"explanation, got {type(maps).__name__}."
        )
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3:
        raise InputError(f"`maps` must have shape (B, 1, h, w) or (B, h, w), got {tuple(t.shape)}.")
    t = t.detach().float()
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in hw):
            raise InputError(f"`size` must be an int or (H, W) of positive ints, got {size!r}.")
        if tuple(t.shape[-2:]) != hw:
            t = upsample_bilinear(t, hw)
    if relu:
        t = t.clamp(min=0)
    return t[:, None].cpu().numpy().astype(np.float32)


def explain_func(model: Any, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    """A Quantus ``explain_func`` for SALF-CBM: ``(model, inputs, targets) -> (B, 1, H, W)`` numpy.

    Args:
        model: a `SALFCBM` or its ``as_classifier()`` view (what Quantus's metrics call).
        inputs: ``(B, C, H, W)`` model-ready images (numpy or tensor; Quantus passes numpy).
        targets: one class index per image (or one int).
        **kwargs: ``mode`` (``"class"``, the logit's spatial decomposition, default;
            ``"class_concept"`` for the paper's Table 2 map), ``relu`` (default ``False``),
            ``template``; anything else Quantus passes (``device``, ``channel_first``, ...) is
            ignored.

    The model runs in eval mode for the call (every module's mode is restored afterwards).
    """
    from salfcbm.explain.attribution import SALFCBMAttribution

    salf = getattr(model, "model", model)
    if not hasattr(salf, "head_from_maps"):
        raise InputError(
            f"`model` must be a salfcbm.SALFCBM or its as_classifier() view, got {type(model).__name__}. "
            "Hand Quantus `model.as_classifier()`."
        )
    opts = {k: kwargs[k] for k in ("mode", "relu", "template") if k in kwargs}
    attr = SALFCBMAttribution(salf, **opts)
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    x = x.to(module_device(salf), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets).long()
    t = t.reshape(-1).to(x.device)
    if t.numel() == 1 and x.shape[0] > 1:
        t = t.expand(x.shape[0])
    with preserved_modes(salf, False):
        maps = attr.attribute(x, t)
    return a_batch(maps, tuple(x.shape[-2:]))
