"""Tell what, show where (paper 3.5): `explain`, the top-k concept contributions and their heatmaps.

The contribution of concept ``m`` to class ``l`` on image ``x`` is
``S(x, m, l) = W[l, m] * c*_norm(x)[m]``, with ``c*_norm`` the pooled concept activations
standardised by the training mean/std; contributions plus the head's bias sum to the logit.
Concepts are ranked by ``|S|``; the concept maps ``c(x)[m]`` of the top-k are upsampled
bilinearly to the input size, and each is labelled with its evidence kind
(`salfcbm.explain.evidence`). One forward pass of the model (pass ``output=`` to reuse yours).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import DegenerateResultWarning
from salfcbm.explain.evidence import evidence_kinds, is_present_calibrated
from salfcbm.explain.inputs import Target, as_batch, check_heatmap_size, check_top_k, model_output, resolve_targets
from salfcbm.explain.regions import upsample_maps
from salfcbm.explain.results import ClassExplanation, Explanation, ExplanationBatch

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM, SALFCBMOutput

__all__ = ["explain"]


def explain(
    model: SALFCBM,
    images: torch.Tensor,
    target: Target = None,
    top_k: int = 5,
    *,
    heatmaps: bool = True,
    heatmap_size: Sequence[int] | None = None,
    skip_zero: bool = True,
    output: SALFCBMOutput | None = None,
) -> ExplanationBatch:
    """Top-k concept contributions and their heatmaps, per image and class (paper 3.5).

    One forward pass of the model gives the logits, the pooled activations and the concept maps;
    contributions are ``S(x, m, l) = W[l, m] * c*_norm(x)[m]`` (so ``sum_m S + b[l] = logit[l]``),
    ranked by ``|S|``; only the top-k maps are upsampled (bilinear) to the input size.

    Args:
        model: a `SALFCBM`.
        images: ``(B, 3, H, W)`` (or one ``(3, H, W)``) backbone-ready float images (the output of
            ``model.preprocess``), or raw images of any other kind (``uint8`` tensors, arrays, PIL images,
            file paths, lists), which are passed through ``model.preprocess`` first. An empty batch or
            NaN/inf values raise `ImageInputError`.
        target: the classes to explain: ``None`` (the prediction), an int or a class name for every
            image, a ``(B,)`` tensor or a list with one entry per image, or a list of lists (several
            classes per image, e.g. for multi-class images, appendix D.2).
        top_k: concepts per class.
        heatmaps: compute the top-k heatmaps (``False`` skips the upsampling).
        heatmap_size: ``(H, W)`` of the heatmaps; default the input size.
        skip_zero: drop concepts whose contribution is exactly 0 (a sparse head gives few non-zeros),
            so fewer than ``top_k`` may be returned.
        output: a `SALFCBMOutput` of ``model(images)`` to reuse instead of running the model.

    Returns:
        An `ExplanationBatch`; ``result[i].top`` explains image ``i``'s first target.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> e = m.explain(torch.randn(2, 3, 64, 64), top_k=2)
        >>> e[0].heatmaps.shape
        torch.Size([2, 64, 64])
    """
    images = as_batch(images, model=model)
    top_k = check_top_k(top_k, model.num_concepts)
    size = check_heatmap_size(heatmap_size, images.shape[0] * top_k) if heatmap_size is not None \
        else (int(images.shape[-2]), int(images.shape[-1]))
    out = model_output(model, images, output)
    with torch.no_grad():
        logits = out.logits.detach()
        act = out.concept_activations.detach()
        norm = model.standardize(act)
        probs = logits.float().softmax(-1)
        preds = logits.argmax(-1)
        targets = resolve_targets(model, target, preds)
        W = model.head.weight.detach()
        b = model.head.bias.detach() if model.head.bias is not None else torch.zeros(W.shape[0], device=W.device)
        # flatten (image, target) pairs so top-k and upsampling run once for the batch
        img_idx = torch.tensor([i for i, ts in enumerate(targets) for _ in ts], device=W.device)
        cls_idx = torch.tensor([t for ts in targets for t in ts], device=W.device)
        contrib = W[cls_idx] * norm[img_idx]  # (P, M)
        scores, idx = contrib.abs().topk(top_k, dim=-1)
        signed = contrib.gather(1, idx)
        maps = None
        if heatmaps:
            sel = out.concept_maps_at(idx, img_idx).detach()  # (P, k, Hg, Wg): the top-k maps only
            maps = upsample_maps(sel, size)
        peaks = _standardized_peaks(model, out, idx, img_idx)
    names, cnames = model.concepts, model.class_names
    results: list[Explanation] = []
    p = 0
    for i, ts in enumerate(targets):
        classes = []
        for t in ts:
            keep = slice(None)
            if skip_zero:
                nz = (signed[p] != 0).nonzero().flatten()
                keep = nz if len(nz) < top_k else slice(None)
            ci = idx[p][keep]
            classes.append(
                ClassExplanation(
                    target=t,
                    class_name=cnames[t],
                    logit=float(logits[i, t]),
                    probability=float(probs[i, t]),
                    bias=float(b[t]),
                    contributions=contrib[p],
                    concept_indices=ci,
                    concepts=[names[j] for j in ci.tolist()],
                    scores=signed[p][keep],
                    heatmaps=maps[p][keep] if maps is not None else None,
                    **_evidence_fields(model, W[t, ci], norm[i, ci], ci,
                                       peaks[p][keep] if peaks is not None else None),
                )
            )
            p += 1
        results.append(
            Explanation(
                index=i,
                logits=logits[i],
                probabilities=probs[i],
                prediction=int(preds[i]),
                predicted_class=cnames[int(preds[i])],
                activations=act[i],
                normalized_activations=norm[i],
                classes=classes,
                concept_names=names,
            )
        )
    _warn_if_empty(results)
    return ExplanationBatch(results, concept_names=names, class_names=cnames)


def _standardized_peaks(model: SALFCBM, out: Any, idx: torch.Tensor, img_idx: torch.Tensor) -> torch.Tensor | None:
    """``(P, k)`` peaks of the shown concepts' standardised maps, for a model with calibrated presence."""
    if model.presence_threshold is None:
        return None
    return model.map_peaks(out.concept_maps_at(idx, img_idx), idx)  # (P, k)


def _evidence_fields(model: SALFCBM, weights: torch.Tensor, z: torch.Tensor, ci: torch.Tensor,
                     peaks: torch.Tensor | None = None) -> dict[str, Any]:
    """The evidence kind of each shown concept (calibrated presence when the model has thresholds),
    and what puts its heatmap on the common scale."""
    thresholds = model.presence_threshold
    present = None
    if thresholds is not None and peaks is not None:
        thresholds = thresholds.to(peaks.device)[ci.to(peaks.device)]
        present = is_present_calibrated(peaks, thresholds)
    return {
        "evidence": evidence_kinds(weights, z, present),
        "activations": z,
        "concept_mean": model.concept_mean.detach()[ci],
        "concept_std": model.concept_std.detach()[ci],
        "peaks": peaks if present is not None else None,
        "presence_threshold": thresholds if present is not None else None,
    }


def _warn_if_empty(results: list[Explanation]) -> None:
    """An explanation without a single contributing concept is a degenerate head: say so, loudly."""
    empty = sorted({(c.target, c.class_name) for e in results for c in e.classes if not c.concepts})
    if not empty:
        return
    msg = (
        f"No concept contributes to class(es) {[n for _, n in empty]}: every weight of the head for them "
        "is zero (or every activation sits exactly at its training mean), so the explanation is empty. "
        "The head is empty or constant for these classes; check metrics.json['degenerate'] of the fit "
        "and refit the head (a smaller lambda, HeadConfig(val_tolerance=0), or more data)."
    )
    logging.getLogger("salfcbm").warning(msg)
    warnings.warn(msg, DegenerateResultWarning, stacklevel=3)
