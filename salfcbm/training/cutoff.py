"""LF-CBM's interpretability-cutoff statistic, transcribed from its ``train_cbm.py`` / ``similarity.py``.

LF-CBM (Oikarinen et al., pinned commit ``fa2869d``) removes a concept after training its
projection layer when::

    outs = proj_layer(val_target_features)                        # pooled backbone features -> concepts
    sim = cos_similarity_cubed_single(val_clip_features, outs)    # per concept, across validation images
    interpretable = sim > args.interpretability_cutoff            # 0.45, strictly greater

where ``val_clip_features`` are CLIP's similarities of the *whole, unprompted* validation images
to the concept texts (normalised image embedding @ normalised text embedding). For SALF-CBM the
projection's output is the pooled concept map ``c*(x)`` of every validation image (with mean
pooling and a bias-free 1x1 conv this is exactly LF-CBM's linear projection of the pooled features).

`lfcbm_similarity` is ``cos_similarity_cubed_single`` line for line (a column that is constant
across the images divides 0 by 0 and gives NaN, which LF-CBM's ``>`` then drops, as here);
`unprompted_similarities` computes ``val_clip_features`` with the scorer's ``embed_images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from salfcbm.errors import InputError

__all__ = ["lfcbm_similarity", "unprompted_similarities", "LFCBM_STATISTIC"]

#: The name of LF-CBM's statistic in `BottleneckConfig.cutoff_statistic`.
LFCBM_STATISTIC = "lfcbm"


def lfcbm_similarity(clip_feats: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """LF-CBM's ``cos_similarity_cubed_single(clip_feats, target_feats)``: ``(N, M), (N, M) -> (M,)``.

    Each column is mean-centred across the ``N`` images, cubed, divided by its L2 norm, and the
    two are summed elementwise: the cosine of the cubed, centred vectors, concept by concept.

    Args:
        clip_feats: the unprompted CLIP similarities of the validation images ``(N, M)``.
        target_feats: the pooled concept activations of the same images ``(N, M)``.

    Examples:
        >>> x = torch.randn(32, 3)
        >>> torch.allclose(lfcbm_similarity(x, 2 * x + 1), torch.ones(3), atol=1e-5)
        True
    """
    if not isinstance(clip_feats, torch.Tensor) or not isinstance(target_feats, torch.Tensor):
        raise InputError(f"lfcbm_similarity takes two tensors; got {type(clip_feats).__name__} and "
                         f"{type(target_feats).__name__}.")
    if clip_feats.ndim != 2 or clip_feats.shape != target_feats.shape:
        raise InputError(f"lfcbm_similarity needs two (N, M) tensors of one shape (images x concepts); got "
                         f"{tuple(clip_feats.shape)} and {tuple(target_feats.shape)}.")
    if clip_feats.shape[0] < 2:
        raise InputError("LF-CBM's statistic is taken across the validation images; give at least 2 images.")
    clip_feats = clip_feats.float()
    target_feats = target_feats.float()  # LF-CBM's outs are fp32 already
    clip_feats = clip_feats - torch.mean(clip_feats, dim=0, keepdim=True)
    target_feats = target_feats - torch.mean(target_feats, dim=0, keepdim=True)
    clip_feats = clip_feats**3
    target_feats = target_feats**3
    clip_feats = clip_feats / torch.norm(clip_feats, p=2, dim=0, keepdim=True)
    target_feats = target_feats / torch.norm(target_feats, p=2, dim=0, keepdim=True)
    return torch.sum(target_feats * clip_feats, dim=0)


@torch.no_grad()
def unprompted_similarities(
    scorer: Any, dataset: Any, concepts: Sequence[str], *, batch_size: int = 64, num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """The scorer's similarities of every *unprompted* image of ``dataset`` to ``concepts``: ``(N, M)``.

    LF-CBM's ``val_clip_features``: one ``scorer.embed_images`` per image (no red circle), then
    ``scorer.similarity`` (cosine to the concept texts). Images are read in order, so row ``i``
    is ``dataset[i]``.
    """
    from tqdm.auto import tqdm

    from salfcbm.supervision.store import _collate_images

    if not callable(getattr(scorer, "embed_images", None)):
        raise InputError(
            f"cutoff_statistic='lfcbm' compares the bottleneck with the scorer's similarities of the unprompted "
            f"images, and {type(scorer).__name__} has no embed_images(). Use a scorer that has it (CLIPScorer, "
            "GroundTruthScorer), or BottleneckConfig(cutoff_statistic='cell')."
        )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_collate_images)
    out, start = [], 0
    for images in tqdm(loader, desc="Unprompted embeddings (val, cutoff)", disable=not progress, leave=False):
        idx = torch.arange(start, start + images.shape[0])
        start += images.shape[0]
        out.append(scorer.similarity(scorer.embed_images(images, idx), list(concepts)).float().cpu())
    if not out:
        raise InputError("The validation set is empty: LF-CBM's cutoff statistic needs validation images.")
    return torch.cat(out)
