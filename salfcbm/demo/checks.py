"""Checks that need the demo world's ground truth: where a procedural scene's class evidence is
(`class_evidence_masks`), how often an explanation shows a concept that is not in the image
(`explanation_mask_check`), and both presence rules against the concept masks (`presence_check`).

They live in the demo layer because they read `SyntheticScenes`' masks and class rules; the
evaluation layer below stays free of the demo world (it scores any masks it is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import InputError
from salfcbm.evaluation.presence import presence_scores

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM
    from salfcbm.demo.scenes import SyntheticScenes


__all__ = ["class_evidence_masks", "explanation_mask_check", "presence_check"]


def class_evidence_masks(
    dataset: SyntheticScenes,
    indices: Sequence[int],
    *,
    mode: str = "objects",
    include_background: bool = False,
) -> torch.Tensor:
    """The ground-truth segmentation target of procedural scenes: where the class evidence is.

    A `SyntheticScenes` class is a rule over concepts (``"an
    orange triangle and a blue square"``); the target mask of an image is the part of
    the image its rule talks about:

    * ``mode="objects"`` (default): the objects that satisfy one of the rule's object
      requirements, i.e. for each requirement the intersection of its concept masks
      (``"a triangle"`` and ``"something orange"``), then the union over requirements.
      Distractor objects that share only part of a requirement (a green triangle) are
      left out.
    * ``mode="concepts"``: the union of the masks of every concept in
      ``dataset.class_concepts[class]`` (a distractor sharing one attribute is included).

    Background concepts ("a sky background") are left out unless ``include_background``:
    a background covers most of the image, and the ImageNet-segmentation masks the
    protocol comes from are foreground objects only.

    Returns:
        ``(B, H, W)`` bool masks.

    Examples:
        >>> from salfcbm.demo.scenes import SyntheticScenes
        >>> ds = SyntheticScenes(n=4, image_size=32)
        >>> m = class_evidence_masks(ds, [0, 1])
        >>> m.shape, bool(m.any())
        (torch.Size([2, 32, 32]), True)
    """
    if mode not in ("objects", "concepts"):
        raise InputError(f"`mode` must be 'objects' or 'concepts', got {mode!r}.")
    if not hasattr(dataset, "class_concepts") or not hasattr(dataset, "masks"):
        raise InputError(
            f"`dataset` must be a salfcbm.demo.scenes.SyntheticScenes (it needs masks and class rules), "
            f"got {type(dataset).__name__}."
        )
    background = set(getattr(dataset, "concept_groups", {}).get("background", []))
    # The rules' object requirements (which phrases must hold on the *same* object): SyntheticScenes.rules;
    # a dataset without them falls back, for "objects", to the concept union.
    rules = getattr(dataset, "rules", None)
    idx = {c: k for k, c in enumerate(dataset.concepts)}
    out = []
    for i in indices:
        sample = dataset.sample(int(i))
        masks, name = sample.masks, dataset.classes[sample.label]
        m = torch.zeros(masks.shape[-2:], dtype=torch.bool)
        if mode == "objects" and rules is not None:
            for req in rules[sample.label].objects:
                phrases = req.phrases()
                if phrases:
                    m |= torch.stack([masks[idx[p]] for p in phrases]).all(0)
            if include_background:
                for p in dataset.class_concepts[name]:
                    if p in background:
                        m |= masks[idx[p]]
        else:
            for p in dataset.class_concepts[name]:
                if include_background or p not in background:
                    m |= masks[idx[p]]
        out.append(m)
    if not out:
        raise InputError("`indices` is empty; pass at least one image index.")
    return torch.stack(out)


def explanation_mask_check(
    model: SALFCBM,
    dataset: SyntheticScenes,
    indices: Sequence[int] | None = None,
    *,
    top_k: int = 4,
    batch_size: int = 64,
) -> dict[str, Any]:
    """How often a concept an explanation shows is not in the image at all (its ground-truth mask is empty).

    Each image of a `SyntheticScenes` is explained
    (``model.explain``, its predicted class, ``top_k`` concepts by ``|S|``), and every shown
    concept is looked up in the image's concept masks. A report that draws all top-k concepts
    alike presents each of them as found in the image, so ``shown_mask_empty`` is the share of
    shown concepts it misrepresents; the evidence kinds (`salfcbm.evidence`) should put the
    empty-mask concepts on the absent side: ``present.mask_empty`` is the share of concepts
    *shown as present* that are not there, ``absent.mask_empty`` the share of concepts shown as
    absent that are indeed not there.

    Args:
        model: a SALF-CBM whose concepts are concepts of ``dataset``.
        dataset: procedural scenes with ground-truth masks.
        indices: the images (default: all of them).
        top_k: concepts shown per image.
        batch_size: images per forward pass.

    Returns:
        ``{"images", "top_k", "shown", "shown_mask_empty", "top1_mask_empty",
        "top1_present_mask_empty", "present": {"shown", "mask_empty"}, "absent": {...},
        "by_evidence": {kind: {"shown", "mask_empty"}}}``; shares are fractions (``None`` when
        nothing was shown), ``top1_*`` are image counts.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.demo import SmallConvNet, SyntheticScenes
        >>> ds = SyntheticScenes(n=4, image_size=32)
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=ds.num_classes, width=4), concepts=ds.concepts,
        ...                  num_classes=ds.num_classes, grid=4, input_size=(32, 32), backbone_weights=None)
        >>> r = explanation_mask_check(m, ds, top_k=2)
        >>> r["images"], r["shown"] <= 8
        (4, True)
    """
    from salfcbm.explain.evidence import ABSENT_OPPOSES, ABSENT_SUPPORTS, EVIDENCE_KINDS, PRESENT_KINDS

    if not hasattr(dataset, "masks_batch") or not hasattr(dataset, "concepts"):
        raise InputError(
            f"`dataset` must be a salfcbm.demo.SyntheticScenes (it needs concept masks), got {type(dataset).__name__}."
        )
    missing = [c for c in model.concepts if c not in dataset.concepts]
    if missing:
        raise InputError(
            f"The model's concepts {missing[:5]} are not concepts of the dataset, so they have no masks; "
            "use the scenes the model was trained on."
        )
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise InputError("`indices` is empty; pass at least one image index.")
    col = torch.tensor([dataset.concepts.index(c) for c in model.concepts])
    counts = {k: [0, 0] for k in EVIDENCE_KINDS}  # kind -> [shown, mask empty]
    top1 = top1_present = 0
    for a in range(0, len(idx), batch_size):
        part = idx[a : a + batch_size]
        images = torch.stack([dataset[i][0] for i in part])
        empty = ~dataset.masks_batch(part).flatten(2).any(-1)[:, col]  # (B, M): concept absent from the image
        with torch.no_grad():
            expl = model.explain(model.preprocess(images), top_k=top_k, heatmaps=False)
        for b, e in enumerate(expl):
            ce = e.top
            flags = empty[b, ce.concept_indices.cpu()].tolist()
            for j, (kind, gone) in enumerate(zip(ce.evidence, flags)):
                counts[kind][0] += 1
                counts[kind][1] += int(gone)
                if j == 0 and gone:
                    top1 += 1
                    top1_present += int(kind in PRESENT_KINDS)

    def share(kinds) -> dict[str, Any]:
        n = sum(counts[k][0] for k in kinds)
        return {"shown": n, "mask_empty": (sum(counts[k][1] for k in kinds) / n) if n else None}

    everything = share(EVIDENCE_KINDS)
    return {
        "images": len(idx),
        "top_k": top_k,
        "shown": everything["shown"],
        "shown_mask_empty": everything["mask_empty"],
        "top1_mask_empty": top1,
        "top1_present_mask_empty": top1_present,
        "present": share(PRESENT_KINDS),
        "absent": share([ABSENT_SUPPORTS, ABSENT_OPPOSES]),
        "by_evidence": {k: share([k]) for k in EVIDENCE_KINDS if counts[k][0]},
    }


@torch.no_grad()
def presence_check(
    model: Any,
    dataset: Any,
    indices: Sequence[int] | None = None,
    *,
    top_k: int = 4,
    batch_size: int = 64,
    thresholds: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Score the training-mean and the calibrated presence rules against a dataset's concept masks.

    Each image is explained as `explanation_mask_check` does (its
    predicted class, ``top_k`` concepts by ``|S|``); both rules label the same concepts.

    Args:
        model: a SALF-CBM whose concepts are concepts of ``dataset``.
        dataset: procedural scenes with ground-truth masks (`salfcbm.demo.SyntheticScenes`).
        indices: the images (default: all).
        top_k: concepts shown per image.
        batch_size: images per forward pass.
        thresholds: ``(M,)`` calibrated thresholds to score (default: ``model.presence_threshold``);
            without either, only the training-mean rule is scored.

    Returns:
        ``{"images", "top_k", "rules": {"training_mean": scores, "calibrated": scores}}`` with the
        scores of `presence_scores`.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.demo import SmallConvNet, SyntheticScenes
        >>> ds = SyntheticScenes(n=4, image_size=32)
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=ds.num_classes, width=4), concepts=ds.concepts,
        ...                  num_classes=ds.num_classes, grid=4, input_size=(32, 32), backbone_weights=None)
        >>> sorted(presence_check(m, ds, top_k=2, thresholds=torch.zeros(len(ds.concepts)))["rules"])
        ['calibrated', 'training_mean']
    """
    if not hasattr(dataset, "masks_batch") or not hasattr(dataset, "concepts"):
        raise InputError(f"`dataset` must be a salfcbm.demo.SyntheticScenes (it needs concept masks), got "
                         f"{type(dataset).__name__}.")
    missing = [c for c in model.concepts if c not in dataset.concepts]
    if missing:
        raise InputError(f"The model's concepts {missing[:5]} are not concepts of the dataset, so they have no masks; "
                         "use the scenes the model was trained on.")
    thr = model.presence_threshold if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float32)
    if thr is not None and thr.shape != (model.num_concepts,):
        raise InputError(f"`thresholds` must have one value per concept ({model.num_concepts}), got {tuple(thr.shape)}.")
    idx = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise InputError("`indices` is empty; pass at least one image index.")
    col = torch.tensor([dataset.concepts.index(c) for c in model.concepts])
    z, peak, truth, shown = [], [], [], []
    for a in range(0, len(idx), batch_size):
        part = idx[a : a + batch_size]
        x = model.preprocess(torch.stack([dataset[i][0] for i in part]))
        out = model(x)
        z.append(model.standardize(out.concept_activations).float().cpu())
        peak.append(model.map_peaks(out.concept_maps).cpu())
        truth.append(dataset.masks_batch(part).flatten(2).any(-1)[:, col])
        expl = model.explain(x, top_k=top_k, heatmaps=False, skip_zero=False, output=out)
        shown.append(torch.stack([e.top.concept_indices.cpu() for e in expl]))
    z, peak, truth, shown = torch.cat(z), torch.cat(peak), torch.cat(truth), torch.cat(shown)
    rules = {"training_mean": presence_scores(z > 0, truth, shown)}
    if thr is not None:
        rules["calibrated"] = presence_scores(peak > thr, truth, shown)
    return {"images": len(idx), "top_k": top_k, "rules": rules}
