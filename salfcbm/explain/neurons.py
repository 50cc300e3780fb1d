"""What a concept neuron responds to: its top-activating images and their maps (paper appendix C, Figure 9).

`top_activating_images` streams a dataset through a trained model once and keeps, for
each requested concept neuron of the bottleneck, the ``k`` images with the highest global
activation ``c*(x)[m]`` and their concept maps upsampled to the image;
`salfcbm.viz.plot_top_images` draws them, one row per neuron.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["NeuronTopImages", "top_activating_images"]


@dataclass
class NeuronTopImages:
    """The top images of one concept neuron.

    Attributes:
        concept: the concept's name.
        index: its bottleneck channel.
        indices: dataset indices of the top images, highest activation first.
        activations: ``(k,)`` global activations ``c*(x)[m]`` (pooled, before standardisation).
        images: ``(k, 3, H, W)`` the images as the model sees them (``[0, 1]``).
        maps: ``(k, H, W)`` the concept maps upsampled (bilinear) to the images.
    """

    concept: str
    index: int
    indices: list[int]
    activations: torch.Tensor
    images: torch.Tensor
    maps: torch.Tensor


@torch.no_grad()
def top_activating_images(
    model: SALFCBM,
    dataset: Any,
    concepts: int | str | Sequence[int | str],
    k: int = 3,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list[NeuronTopImages]:
    """The ``k`` images of ``dataset`` that activate each concept neuron most (paper appendix C).

    Args:
        model: a trained `SALFCBM`.
        dataset: ``(image, label)`` items with ``[0, 1]`` images ``(3, H, W)``; each is taken as the
            model sees it (`salfcbm.core.images.align_dataset`).
        concepts: one or several concepts, by name or index.
        k: images per concept.
        batch_size: images per forward pass.
        device: where to run (default: where the model is).

    Returns:
        One `NeuronTopImages` per concept, in the order given.

    Examples:
        >>> tops = top_activating_images(model, val_set, ["striped", "red"], k=3)  # doctest: +SKIP
        >>> fig = salfcbm.viz.plot_top_images(tops)  # doctest: +SKIP
    """
    from salfcbm.core.images import align_dataset
    from salfcbm.explain.regions import upsample_maps

    names = [concepts] if isinstance(concepts, (int, str)) else list(concepts)
    if not names:
        raise InputError("Pass at least one concept (a name or an index).")
    idx = torch.tensor([model.concept_index(c) for c in names])
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(dataset):
        raise InputError(f"`k` must be an int in [1, {len(dataset)}] (the dataset's size), got {k!r}.")
    device = torch.device(device) if device is not None else next(model.bottleneck.parameters()).device
    dataset = align_dataset(dataset, model.image_transform)  # the model's view of every image
    norm = model.image_transform.normalize
    best_v = torch.full((len(names), 0), float("-inf"))
    best_i = torch.zeros((len(names), 0), dtype=torch.long)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = 0
    for batch in loader:
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        act = model(norm(x)).concept_activations[:, idx.to(device)].float().cpu().T  # (C, B)
        ids = torch.arange(start, start + x.shape[0]).expand(len(names), -1)
        v, i = torch.cat([best_v, act], 1), torch.cat([best_i, ids], 1)
        top = v.topk(min(k, v.shape[1]), dim=1)
        best_v, best_i = top.values, i.gather(1, top.indices)
        start += x.shape[0]
    out = []
    for row, name in enumerate(names):
        chosen = best_i[row].tolist()
        images = torch.stack([torch.as_tensor(dataset[j][0]) for j in chosen])
        maps = model(norm(images.to(device))).concept_maps[:, int(idx[row])]
        out.append(NeuronTopImages(model.concepts[int(idx[row])], int(idx[row]), chosen, best_v[row].clone(),
                                   images.cpu(), upsample_maps(maps, images.shape[-2:]).cpu()))
    return out
