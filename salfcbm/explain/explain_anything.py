"""Explain Anything (paper 3.6): `explain_region`, the concepts the model sees inside a region.

For a region ``I`` at input resolution, ``a(x, m | I) = sum(I * c_up[m])`` with ``c_up`` the
concept maps upsampled bilinearly to the input size; the top-k concepts by ``a`` are reported,
computed at grid resolution without upsampling the ``M`` maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from salfcbm._utils.tensors import interp_matrix
from salfcbm.explain.inputs import check_top_k, model_output, single_image
from salfcbm.explain.regions import region_masks
from salfcbm.explain.results import RegionExplanation, RegionReport

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM, SALFCBMOutput

__all__ = ["explain_region"]


def explain_region(
    model: SALFCBM,
    image: torch.Tensor,
    *,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    top_k: int = 5,
    standardize: bool = False,
    output: SALFCBMOutput | None = None,
) -> RegionReport:
    """Which concepts the model sees inside one or several regions (Explain Anything, paper 3.6).

    For a region ``I`` at input resolution, ``a(x, m | I) = sum(I * c_up[m])`` with ``c_up`` the
    concept maps upsampled bilinearly to the input size; the top-k concepts by ``a`` are reported.
    Computed exactly but without upsampling all ``M`` maps: bilinear upsampling is separable and
    linear, ``c_up = A_h c A_w^T``, so ``a = sum((A_h^T I A_w) * c)`` at grid resolution.

    Args:
        model: a `SALFCBM`.
        image: one backbone-ready image ``(3, H, W)`` or ``(1, 3, H, W)``.
        mask: ``(H, W)`` or ``(R, H, W)`` region(s) (bool or non-negative weights), e.g. SAM masks.
        box: ``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive) or a list of boxes.
        points: ``[(x, y), ...]`` (one region: the union of disks) or a list of such lists.
        radius: disk radius for ``points`` in pixels (default: half a grid cell).
        top_k: concepts per region.
        standardize: aggregate ``(c_up[m] - mean[m]) / std[m]`` instead of the raw maps, which makes
            concepts with different scales comparable (the paper uses raw maps, the default).
        output: a `SALFCBMOutput` of ``model(image)`` to reuse.

    Returns:
        A `RegionReport` (``report[r]`` is region ``r``).

    Raises:
        InputError: no region, several kinds of region, an empty mask or a box/point outside the image.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> r = m.explain_region(torch.randn(3, 64, 64), box=[(0, 0, 32, 64), (32, 0, 64, 64)], top_k=1)
        >>> len(r), len(r[0].concepts)
        (2, 1)
    """
    x = single_image(image, model)
    top_k = check_top_k(top_k, model.num_concepts)
    H, W = int(x.shape[-2]), int(x.shape[-1])
    out = model_output(model, x, output)
    Hg, Wg = model.grid
    device = out.logits.device
    masks = region_masks((H, W), mask=mask, box=box, points=points, radius=radius, grid=(Hg, Wg), device=device)
    with torch.no_grad():
        A_h = interp_matrix(Hg, H, device, torch.float32)  # (H, Hg)
        A_w = interp_matrix(Wg, W, device, torch.float32)  # (W, Wg)
        weights = A_h.T @ (masks @ A_w)  # (R, Hg, Wg): the region pulled back to the grid
        agg = out.region_sums(weights, row=0).detach().float()  # (R, M), from the features when maps are lazy
        areas = masks.sum((-2, -1))
        if standardize:
            agg = (agg - areas[:, None] * model.concept_mean.float()) / model.concept_std.float()
        scores, idx = agg.topk(top_k, dim=-1)
        logits = out.logits.detach()[0]
        probs = logits.float().softmax(-1)
    pred = int(logits.argmax())
    names = model.concepts
    regions = [
        RegionExplanation(
            region=r,
            area=float(areas[r]),
            area_fraction=float(areas[r]) / (H * W),
            activations=agg[r],
            concept_indices=idx[r],
            concepts=[names[j] for j in idx[r].tolist()],
            scores=scores[r],
        )
        for r in range(masks.shape[0])
    ]
    return RegionReport(
        regions=regions,
        masks=masks,
        logits=logits,
        probabilities=probs,
        prediction=pred,
        predicted_class=model.class_names[pred],
        standardized=bool(standardize),
    )
