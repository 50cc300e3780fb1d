"""Local user intervention (paper 3.6): `intervene`, edit concept maps in a region and re-run the head.

``c(x)[m] <- c(x)[m] + beta * I`` on the prompting grid, then pooling, standardisation and the
head run again on the edited maps; the backbone does not run a second time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import InputError
from salfcbm.explain.inputs import class_index, model_output, single_image
from salfcbm.explain.regions import mask_to_grid, region_masks
from salfcbm.explain.results import InterventionResult

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM, SALFCBMOutput

__all__ = ["intervene"]


def _grid_region(model: SALFCBM, size: tuple[int, int], region: Any, mask: Any, box: Any, points: Any, radius, device) -> torch.Tensor:
    given = [n for n, v in (("region", region), ("mask", mask), ("box", box), ("points", points)) if v is not None]
    if len(given) > 1:
        raise InputError(f"Give at most one of region=, mask=, box=, points=; got {given}.")
    grid = model.grid
    if not given:
        return torch.ones(grid, device=device)
    if region is not None:
        if isinstance(region, torch.Tensor) or hasattr(region, "__array__"):
            mask = region
        else:
            box = region
    if mask is not None:
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
        if m.dim() == 3 and m.shape[0] == 1:
            m = m[0]
        if m.dim() == 2 and tuple(m.shape) == tuple(grid) and tuple(m.shape) != size:
            m = m.to(device=device, dtype=torch.float32)
            if not torch.isfinite(m).all():
                raise InputError("A grid-resolution mask must hold finite values.")
            return m
        if m.dim() != 2 or tuple(m.shape) != size:
            raise InputError(
                f"An intervention mask must be (H, W) = {size} (the image) or (Hg, Wg) = {tuple(grid)} "
                f"(the prompting grid), got shape {tuple(m.shape)}."
            )
        masks = region_masks(size, mask=m, device=device)
    else:
        masks = region_masks(size, box=box, points=points, radius=radius, grid=grid, device=device)
        if masks.shape[0] != 1:
            raise InputError(f"An intervention takes one region, got {masks.shape[0]}; apply them one by one or merge them.")
    return mask_to_grid(masks[0], grid)


def intervene(
    model: SALFCBM,
    image: torch.Tensor,
    concept: int | str | Sequence[int | str],
    *,
    region: Any = None,
    mask: Any = None,
    box: Any = None,
    points: Any = None,
    radius: float | None = None,
    beta: float | Sequence[float] = 1.0,
    target: int | str | None = None,
    output: SALFCBMOutput | None = None,
) -> InterventionResult:
    """Edit concept maps locally and re-run the head (local user intervention, paper 3.6).

    ``c(x)[m] <- c(x)[m] + beta * I`` for every chosen concept ``m``, then pooling,
    standardisation and the head run again on the edited maps (the backbone does not). ``I`` lives
    on the prompting grid: a region given at input resolution is downsampled by area averaging
    (`mask_to_grid`: each cell gets the fraction of its pixels inside the region); a mask of
    grid size ``(Hg, Wg)`` is used as it is. With mean pooling, the logit of class ``l`` changes by
    exactly ``sum_m beta_m * W[l, m] * mean(I) / std[m]``.

    This is the paper's edit: one ``beta * I`` added once, with ``I`` the region's fractional
    coverage of each cell. The authors' released inference code differs: it dilates the region
    into a binary grid mask and adds ``beta`` times it twice (a ``2 * beta`` edit). To reproduce
    their numbers pass ``beta=2 * beta`` and a binary grid mask (``mask_to_grid(...) > 0``).

    Args:
        model: a `SALFCBM`.
        image: one backbone-ready image.
        concept: a concept name or index, or a list of them.
        region: a mask (input or grid resolution) or a box; ``None`` with no ``mask``/``box``/``points``
            edits the whole map.
        mask: the region as a mask, as `explain_region` takes it.
        box: the region as a box ``(x0, y0, x1, y1)``.
        points: the region as points (disks of ``radius`` pixels).
        radius: radius of the point disks.
        beta: correction factor (positive or negative), or one per concept.
        target: class whose contributions are reported (default: the prediction before the edit).
        output: a `SALFCBMOutput` of ``model(image)`` to reuse.

    Returns:
        An `InterventionResult` with logits, probabilities, predictions and contributions
        before and after.

    Raises:
        ConceptNotFoundError: an unknown concept name (the message lists the closest names).

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["fur", "grass", "sky"],
        ...                  num_classes=2, backbone_weights=None)
        >>> r = m.intervene(torch.randn(3, 64, 64), "grass", box=(0, 32, 64, 64), beta=2.0)
        >>> r.logits_after.shape
        torch.Size([2])
    """
    x = single_image(image, model)
    if not isinstance(concept, (int, str, Sequence, torch.Tensor)):
        raise InputError(f"`concept` must be a name (str) or an index (int), or a list of them; got {concept!r}. "
                         "Pass one of `model.concepts` or its position.")
    concepts = [concept] if isinstance(concept, (int, str)) else list(concept)
    if not concepts:
        raise InputError("`concept` must name at least one concept.")
    idx = [model.concept_index(c) for c in concepts]
    if isinstance(beta, (int, float)) and not isinstance(beta, bool):
        betas = [float(beta)] * len(idx)
    elif isinstance(beta, Sequence) and len(beta) == len(idx) and all(isinstance(b, (int, float)) for b in beta):
        betas = [float(b) for b in beta]
    else:
        raise InputError(f"`beta` must be a number or one number per concept ({len(idx)}), got {beta!r}.")
    if not all(math.isfinite(b) for b in betas):
        raise InputError(f"`beta` must be finite, got {betas}.")
    out = model_output(model, x, output)
    touched: dict[int, float] = {}  # the edited concepts (a concept named twice gets both betas)
    for m, b in zip(idx, betas):
        touched[m] = touched.get(m, 0.0) + b
    cols = torch.tensor(list(touched), device=out.logits.device)
    sel = out.concept_maps_at(cols).detach()  # (1, k, Hg, Wg): only the maps that change
    size = (int(x.shape[-2]), int(x.shape[-1]))
    I = _grid_region(model, size, region, mask, box, points, radius, sel.device).to(sel.dtype)
    with torch.no_grad():
        edited = sel + torch.tensor(list(touched.values()), device=sel.device, dtype=sel.dtype)[:, None, None] * I
        act_b = out.concept_activations.detach()
        act_a = act_b.clone()
        act_a[:, cols] = model.pool(edited).to(act_a.dtype)
        norm_b, norm_a = model.standardize(act_b), model.standardize(act_a)
        logits_b, logits_a = model.head(norm_b), model.head(norm_a)
        lb, la = logits_b[0].detach(), logits_a[0].detach()
        pb, pa = lb.float().softmax(-1), la.float().softmax(-1)
        pred_b, pred_a = int(lb.argmax()), int(la.argmax())
        t = pred_b if target is None else class_index(model, target)
        w = model.head.weight.detach()[t]
    names = model.class_names
    return InterventionResult(
        concepts=[model.concepts[m] for m in idx],
        concept_indices=idx,
        betas=betas,
        region=I,
        logits_before=lb,
        logits_after=la,
        probabilities_before=pb,
        probabilities_after=pa,
        prediction_before=pred_b,
        prediction_after=pred_a,
        class_before=names[pred_b],
        class_after=names[pred_a],
        target=t,
        contributions_before=w * norm_b[0],
        contributions_after=w * norm_a[0],
        activations_before=act_b[0],
        activations_after=act_a[0],
    )
