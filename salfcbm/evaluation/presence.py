"""How well "present" matches the truth: both presence rules against ground-truth concept masks.

An explanation labels each concept it shows present or absent (`salfcbm.explain.evidence`). On
scenes with a ground-truth mask per concept (`salfcbm.demo.SyntheticScenes`) a label can be
checked: a concept is really in the image when its mask is not empty. `presence_check` scores
the two rules side by side on the same explanations:

* ``"training_mean"``: the standardised pooled activation is above 0 (uncalibrated models);
* ``"calibrated"``: the peak of the standardised concept map is above the concept's threshold
  (`SALFCBM.presence_threshold`, set by `salfcbm.fit`; `salfcbm.training.presence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["presence_check", "presence_scores"]


def presence_scores(present: torch.Tensor, truth: torch.Tensor, shown: torch.Tensor) -> dict[str, Any]:
    """Precision and recall of ``present`` against ``truth``, on the shown concepts and on every pair.

    Args:
        present: ``(N, M)`` bool, the rule's labels for every image and concept.
        truth: ``(N, M)`` bool, the concept is in the image (its mask is not empty).
        shown: ``(N, k)`` long, the concepts an explanation shows per image, in rank order.

    Returns:
        ``shown_present`` (count), ``shown_present_absent`` (share of shown concepts labelled present
        whose mask is empty: 1 - precision), ``shown_recall`` (share of shown concepts in the image
        that are labelled present), ``top1_present_absent`` (images whose first shown concept is
        labelled present but is not there), ``pairs_precision`` and ``pairs_recall`` (over every
        image-concept pair). Shares are ``None`` when undefined.

    Examples:
        >>> present = torch.tensor([[True, False, True]]); truth = torch.tensor([[True, True, False]])
        >>> r = presence_scores(present, truth, torch.tensor([[0, 2]]))
        >>> r["shown_present"], r["shown_present_absent"], r["shown_recall"]
        (2, 0.5, 1.0)
    """
    if present.shape != truth.shape or shown.dim() != 2 or shown.shape[0] != present.shape[0]:
        raise InputError(f"presence_scores: `present` {tuple(present.shape)} and `truth` {tuple(truth.shape)} must "
                         f"be (N, M) and `shown` (N, k); got shown {tuple(shown.shape)}.")
    sp, st = present.gather(1, shown), truth.gather(1, shown)

    def share(a: torch.Tensor, b: torch.Tensor) -> float | None:
        n = int(b.sum())
        return int(a.sum()) / n if n else None

    return {
        "shown_present": int(sp.sum()),
        "shown_present_absent": share(sp & ~st, sp),
        "shown_recall": share(sp & st, st),
        "top1_present_absent": int((sp[:, 0] & ~st[:, 0]).sum()),
        "pairs_precision": share(present & truth, present),
        "pairs_recall": share(present & truth, truth),
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

    Each image is explained as `salfcbm.evaluation.benchmark.explanation_mask_check` does (its
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
