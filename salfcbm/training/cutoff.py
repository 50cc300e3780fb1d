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

`apply_cutoff` applies the cutoff (any of the statistics) to a trained bottleneck.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import AllConceptsCutError, InputError

if TYPE_CHECKING:
    from salfcbm.core.model import SALFCBM
    from salfcbm.training.config import BottleneckConfig, BottleneckReport

__all__ = ["lfcbm_similarity", "unprompted_similarities", "LFCBM_STATISTIC", "apply_cutoff", "cutoff_similarities",
           "passes_cutoff"]

logger = logging.getLogger("salfcbm")

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


def cutoff_similarities(report: BottleneckReport, statistic: str) -> dict[str, float]:
    """The per-concept validation statistic the cutoff compares with (``cell``, ``pooled`` or ``lfcbm``)."""
    if statistic == LFCBM_STATISTIC:
        if not report.lfcbm_similarity:
            raise InputError(
                "cutoff_statistic='lfcbm' needs the unprompted similarities of the validation images, which "
                "train_bottleneck does not have: use salfcbm.fit (it computes them with the scorer's embed_images), "
                "or set report.lfcbm_similarity from salfcbm.training.cutoff.lfcbm_similarity first."
            )
        return dict(report.lfcbm_similarity)
    return dict(report.pooled_similarity if statistic == "pooled" else report.cell_similarity)


def passes_cutoff(sim: float, config: BottleneckConfig) -> bool:
    """Whether a concept with validation similarity ``sim`` passes ``config``'s cutoff."""
    # LF-CBM keeps ``sim > cutoff`` (a NaN similarity fails); salfcbm's own statistics keep ``>=``.
    # Similarities lie in [-1, 1]: a cutoff below -1 is no cutoff, and keeps every concept (NaN too).
    if config.cutoff < -1:
        return True
    return sim > config.cutoff if config.cutoff_statistic == LFCBM_STATISTIC else sim >= config.cutoff


def apply_cutoff(model: SALFCBM, report: BottleneckReport, config: BottleneckConfig, *, prune: bool = True,
                 keep_also: Sequence[str] = ()) -> BottleneckReport:
    """The interpretability cutoff (LF-CBM's, 0.45 by default) on a trained bottleneck.

    Concepts whose validation similarity (``config.cutoff_statistic``: per cell, pooled, or
    LF-CBM's) is below ``config.cutoff`` are listed in ``report.dropped`` and, with ``prune``,
    removed from ``model`` (bottleneck rows, head columns, statistics). Concepts in
    ``keep_also`` stay whatever their similarity (``report.kept_for_head``). The model must
    still hold every concept of ``report.cell_similarity``.
    """
    stat = config.cutoff_statistic
    sims = cutoff_similarities(report, stat)
    concepts = [c for c in model.concepts if c in sims]
    extra = set(keep_also)
    keep = [c for c in concepts if passes_cutoff(sims[c], config) or c in extra]
    dropped = [(c, sims[c]) for c in concepts if not (passes_cutoff(sims[c], config) or c in extra)]
    kept_for_head = [c for c in concepts if c in extra and not passes_cutoff(sims[c], config)]
    if prune:
        if not keep:
            best = max((v for v in sims.values() if v == v), default=float("nan"))
            raise AllConceptsCutError(
                f"Every concept fell below the interpretability cutoff {config.cutoff} ({stat} validation similarity, "
                f"best {best:.3f}). Lower `cutoff`, use another cutoff_statistic, train longer, or check that the "
                "similarities match the images.",
                sims,
            )
        if dropped:
            model.select_concepts(keep)
            logger.info("Interpretability cutoff removed %d concepts: %s", len(dropped), [d[0] for d in dropped])
    return replace(report, concept_similarity=sims, statistic=stat, kept=keep if prune else concepts,
                   dropped=dropped if prune else [], kept_for_head=kept_for_head if prune else [])

