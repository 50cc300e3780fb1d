"""Concept filtering as LF-CBM (paper 3.1): too long, too close to a class name or to another
concept, or never active on the training images; every dropped concept is reported with its reason.

* `filter_concepts` runs the filters and returns a `ConceptFilterReport`;
* `near_duplicates` is LF-CBM's ``filter_too_similar`` pair walk;
* `unprompted_activity` measures "does it appear in the data" on unprompted images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from salfcbm._utils.shard_compute import collate_images
from salfcbm.errors import InputError
from salfcbm.supervision.concept_lists import bare_concept
from salfcbm.supervision.scorers import UnpromptedScorer

__all__ = ["ConceptFilterReport", "filter_concepts", "near_duplicates", "unprompted_activity"]


@dataclass
class ConceptFilterReport:
    """The outcome of `filter_concepts`: what was kept, and every dropped concept with why.

    Attributes:
        kept: surviving concepts, in input order.
        dropped: ``(concept, reason)`` for every removed concept, in the order removed.
        settings: the filter settings used.
    """

    kept: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> dict[str, int]:
        """How many concepts each filter removed (keyed by the reason's first word group)."""
        out: dict[str, int] = {}
        for _, r in self.dropped:
            k = r.split(":")[0]
            out[k] = out.get(k, 0) + 1
        return out

    def reason(self, concept: str) -> str | None:
        """Why ``concept`` was dropped, or ``None`` if it was kept or never given."""
        for c, r in self.dropped:
            if c == concept:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"kept": list(self.kept), "dropped": [list(d) for d in self.dropped], "settings": dict(self.settings)}

    def __str__(self) -> str:
        lines = [f"kept {len(self.kept)} concepts, dropped {len(self.dropped)}"]
        lines += [f"  {k}: {v}" for k, v in self.reasons.items()]
        return "\n".join(lines)


def _text_embeddings(scorer: Any, texts: Sequence[str]) -> torch.Tensor | None:
    if scorer is None or not texts:
        return None
    try:
        emb = scorer.text_embeddings(list(texts))
    except (NotImplementedError, KeyError):  # no text side, or only a closed vocabulary (GroundTruthScorer)
        return None
    return torch.nn.functional.normalize(emb.detach().float().cpu(), dim=-1)


def filter_concepts(
    concepts: Sequence[str],
    *,
    classes: Sequence[str] = (),
    scorer: Any = None,
    max_length: int = 30,
    class_similarity: float = 0.85,
    concept_similarity: float = 0.9,
    activations: Any = None,
    activation_cutoff: float = 0.25,
    top_k: int = 5,
    text_filters: bool = True,
) -> ConceptFilterReport:
    """LF-CBM's concept filters (paper 3.1), each dropped concept reported with its reason.

    In order:

    1. blanks and case-insensitive duplicates (``"duplicate of ..."``);
    2. longer than ``max_length`` characters (``"too long: ..."``);
    3. equal to a class name, or cosine similarity of text embeddings
       ``>= class_similarity`` to a class name (``"too similar to class: ..."``);
    4. cosine similarity ``>= concept_similarity`` to another concept
       (``"too similar to concept: ..."``). As in LF-CBM's ``filter_too_similar``, pairs
       are visited in the order of the *sorted* concept list (LF-CBM's
       ``filter_too_similar_to_cls`` sorts it first) and, of two near-duplicates not yet
       removed, the one with the *lower* total similarity to all concepts is removed (on a
       tie the second of the pair): the more general one is kept;
    5. never fires on the training images: the mean of its ``top_k`` highest
       image similarities is ``<= activation_cutoff`` (``"never fires: ..."``).
       LF-CBM measures it on the unprompted images (cutoff 0.25; 0.26 for CUB,
       0.28 for ImageNet and Places365); `salfcbm.fit` does the same with a
       scorer's ``embed_images`` (see `unprompted_activity`).

    Steps 3-4 need ``scorer.text_embeddings`` (skipped, except exact class
    matches, when ``scorer`` is ``None`` or raises ``NotImplementedError``, or a
    ``KeyError`` for text outside a closed vocabulary);
    step 5 needs ``activations``. ``text_filters=False`` skips steps 2-4: what LF-CBM's
    ``train_cbm.py`` does with its published lists, which these steps made once. Differences
    from LF-CBM: its class filter compares a class's index with a concept's (``i != j``), so
    concept ``j`` escapes class ``j``'s test, an index slip not reproduced here; its similarities in steps
    3-4 average CLIP ViT-B/16 and all-mpnet-base-v2 text embeddings
    (``(mpnet + 3 * clip) / 4``); salfcbm uses the scorer's text embeddings only, so as
    not to depend on sentence-transformers.

    Args:
        concepts: candidate concepts.
        classes: class names.
        scorer: a `ConceptScorer` providing text embeddings.
        max_length: length cap in characters (LF-CBM: 30).
        class_similarity: class-name similarity cutoff (LF-CBM: 0.85).
        concept_similarity: concept-concept similarity cutoff (LF-CBM: 0.9).
        activations: a `PromptedEmbeddingStore` (image similarity =
            max over the prompt grid), an ``(N, M)`` tensor of image-concept
            similarities for the given concepts, an ``(M,)`` tensor of precomputed
            top-k means, or a callable ``concepts -> (M,)``.
        activation_cutoff: a concept is dropped if its top-k mean is ``<=`` this
            (LF-CBM: 0.25 for CLIP ViT-B/16).
        top_k: ``k`` of the top-k mean.
        text_filters: run steps 2-4 (length, class and concept near-duplicates).

    Returns:
        A `ConceptFilterReport`.

    Examples:
        >>> r = filter_concepts(["fur", "Fur", "a very long concept that goes on and on", "cat"], classes=["cat"])
        >>> r.kept
        ['fur']
        >>> r.reasons
        {'duplicate': 1, 'too long': 1, 'too similar to class': 1}
    """
    classes = _check_filter_options(concepts, classes, max_length, class_similarity, concept_similarity)
    report = ConceptFilterReport(
        settings=dict(
            max_length=max_length,
            class_similarity=class_similarity,
            concept_similarity=concept_similarity,
            activation_cutoff=activation_cutoff,
            top_k=top_k,
            text_embeddings=scorer is not None,
            activations=activations is not None,
            text_filters=bool(text_filters),
        )
    )
    kept = _drop_duplicates(concepts, report)  # 1
    if text_filters:
        kept = _drop_text_matches(kept, classes, scorer, max_length, class_similarity, concept_similarity, report)
    if activations is not None and kept:  # 5. activation on training images
        act = dict(zip(kept, _activations(activations, kept, concepts, top_k)))
        kept = _drop_where(kept, report, lambda c: act[c] <= activation_cutoff,
                           lambda c: f"never fires: mean top-{top_k} similarity {float(act[c]):.3f} <= {activation_cutoff}")
    report.kept = kept
    return report


def _drop_text_matches(kept: list[str], classes: list[str], scorer: Any, max_length: int, class_similarity: float,
                       concept_similarity: float, report: ConceptFilterReport) -> list[str]:
    """Filters 2-4: too long, too similar to a class, too similar to another concept."""
    kept = _drop_where(kept, report, lambda c: len(c) > max_length,  # 2
                       lambda c: f"too long: {len(c)} > {max_length} characters")
    kept, cemb = _drop_class_names(kept, classes, scorer, class_similarity, report)  # 3
    if cemb is not None and len(kept) > 1:  # 4. of a near-duplicate pair, the lower total similarity goes
        gone = near_duplicates(kept, cemb @ cemb.T, concept_similarity)
        for j, (k, sim) in gone.items():
            report.dropped.append((kept[j], f"too similar to concept: {kept[k]!r} (cosine {sim:.3f} >= {concept_similarity})"))
        kept = [c for j, c in enumerate(kept) if j not in gone]
    return kept


def _check_filter_options(
    concepts: Any, classes: Sequence[str], max_length: Any, class_similarity: Any, concept_similarity: Any
) -> list[str]:
    """Validate `filter_concepts`' arguments eagerly; return the class names as a list."""
    if isinstance(concepts, str):
        raise InputError("concepts must be a list of strings, not a single string.")
    classes = list(classes)
    if not all(isinstance(c, str) for c in classes):
        raise InputError("classes must be strings.")
    if not isinstance(max_length, int) or max_length < 1:
        raise InputError(f"max_length must be a positive int; got {max_length!r}.")
    for name, v in (("class_similarity", class_similarity), ("concept_similarity", concept_similarity)):
        if not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0:
            raise InputError(f"{name} must be a cosine similarity cutoff in [-1, 1]; got {v!r}.")
    return classes


def _drop_duplicates(concepts: Sequence[Any], report: ConceptFilterReport) -> list[str]:
    """Filter 1: blanks and case-insensitive duplicates (white space folded)."""
    seen: dict[str, str] = {}
    kept: list[str] = []
    for c in concepts:
        if not isinstance(c, str):
            raise InputError(f"concepts must be strings; got {type(c).__name__} ({c!r}).")
        norm = " ".join(c.split())
        if not norm:
            report.dropped.append((c, "empty: blank concept"))
        elif norm.lower() in seen:
            report.dropped.append((c, f"duplicate: of {seen[norm.lower()]!r}"))
        else:
            seen[norm.lower()] = norm
            kept.append(norm)
    return kept


def _drop_where(kept: list[str], report: ConceptFilterReport, drop: Any, reason: Any) -> list[str]:
    """Keep the concepts for which ``drop(c)`` is false; report the others with ``reason(c)``."""
    survivors = []
    for c in kept:
        if drop(c):
            report.dropped.append((c, reason(c)))
        else:
            survivors.append(c)
    return survivors


def _drop_class_names(
    kept: list[str], classes: list[str], scorer: Any, class_similarity: float, report: ConceptFilterReport
) -> tuple[list[str], torch.Tensor | None]:
    """Filter 3: equal to a class name (as LF-CBM: also "a {class}", "the {class}", any case), or
    text-embedding similarity to one at or above ``class_similarity``. Returns the survivors and
    their text embeddings (``None`` without a text scorer)."""
    class_lower = {bare_concept(c): c for c in classes}
    kept = _drop_where(kept, report, lambda c: bare_concept(c) in class_lower,
                       lambda c: f"too similar to class: equals class {class_lower[bare_concept(c)]!r}")
    cemb = _text_embeddings(scorer, kept)
    clemb = _text_embeddings(scorer, classes) if cemb is not None and classes else None
    if clemb is None:
        return kept, cemb
    best, which = (cemb @ clemb.T).max(dim=1)  # (M,) against the L classes
    survivors, rows = [], []
    for j, c in enumerate(kept):
        if best[j] >= class_similarity:
            report.dropped.append((c, f"too similar to class: {classes[int(which[j])]!r} (cosine {best[j]:.3f} >= {class_similarity})"))
        else:
            survivors.append(c)
            rows.append(j)
    return survivors, cemb[rows]


@torch.no_grad()
def unprompted_activity(
    scorer: Any, dataset: Any, concepts: Sequence[str], *, top_k: int = 5, batch_size: int = 64, num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """LF-CBM's "does it appear in the data" statistic: per concept, the mean of its ``top_k``
    highest similarities to the *unprompted* training images, ``(M,)``.

    Needs ``scorer.embed_images`` (one scorer pass per image, 1/49 of the prompted cost) and
    streams: memory holds ``top_k x M`` similarities. Pass the result as ``activations`` to
    `filter_concepts` (LF-CBM's ``clip_cutoff``: 0.25, 0.26 for CUB, 0.28 for ImageNet
    and Places365).
    """
    from tqdm.auto import tqdm

    if not isinstance(scorer, UnpromptedScorer):
        raise InputError(f"{type(scorer).__name__} has no embed_images(); it cannot embed unprompted images.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate_images)
    best, start = None, 0
    for images in tqdm(loader, desc="Unprompted embeddings", disable=not progress, leave=False):
        idx = torch.arange(start, start + images.shape[0])
        start += images.shape[0]
        sims = scorer.similarity(scorer.embed_images(images, idx), list(concepts)).float().cpu()  # (B, M)
        pool = sims if best is None else torch.cat([best, sims])
        best = pool.topk(min(top_k, pool.shape[0]), dim=0).values
    return best.mean(0) if best is not None else torch.zeros(len(concepts))


def near_duplicates(concepts: Sequence[str], sims: torch.Tensor, cutoff: float) -> dict[int, tuple[int, float]]:
    """LF-CBM's ``filter_too_similar`` on ``concepts``: ``{removed index: (the index it duplicates, cosine)}``.

    As LF-CBM, the pairs are visited in the order of ``sorted(concepts)`` (its
    ``filter_too_similar_to_cls`` returns the list sorted, and ``filter_too_similar`` walks it
    row by row); when neither concept of a pair is removed yet and their similarity is
    ``>= cutoff``, the one whose row sum (total similarity to every concept, itself
    included) is lower is removed, on a tie the pair's second. Indices refer to ``concepts``.
    """
    if len(concepts) != sims.shape[0] or sims.shape[0] != sims.shape[-1]:
        raise InputError(f"near_duplicates needs an (M, M) similarity matrix for M={len(concepts)} concepts; got "
                         f"{tuple(sims.shape)}.")
    order = sorted(range(len(concepts)), key=lambda i: concepts[i])
    gone = _near_duplicates(sims[order][:, order], cutoff)
    return {order[j]: (order[k], sim) for j, (k, sim) in gone.items()}


def _near_duplicates(sims: torch.Tensor, cutoff: float) -> dict[int, tuple[int, float]]:
    """The pair walk of `near_duplicates` in row order of ``sims``."""
    totals = sims.sum(1)
    gone: dict[int, tuple[int, float]] = {}
    rows, cols = torch.nonzero(sims >= cutoff, as_tuple=True)
    for i, j in zip(rows.tolist(), cols.tolist()):
        if i == j or i in gone or j in gone:
            continue
        lose, win = (i, j) if totals[i] < totals[j] else (j, i)
        gone[lose] = (win, float(sims[i, j]))
    return gone


def _activations(activations: Any, kept: list[str], original: Sequence[str], top_k: int) -> torch.Tensor:
    if hasattr(activations, "concept_activity"):
        return activations.concept_activity(kept, top_k=top_k)
    if callable(activations):
        out = torch.as_tensor(activations(kept)).float().cpu()
        if out.shape != (len(kept),):
            raise InputError(f"The activations callable must return ({len(kept)},) values; got {tuple(out.shape)}.")
        return out
    t = torch.as_tensor(activations).float().cpu()
    # tensors are given for the *original* concept list; pick the kept columns
    index = {" ".join(c.split()): i for i, c in reversed(list(enumerate(original)))}
    cols = [index[c] for c in kept]
    if t.ndim == 1 and t.shape[0] == len(original):
        return t[cols]
    if t.ndim == 2 and t.shape[1] == len(original):
        k = min(top_k, t.shape[0])
        return t[:, cols].topk(k, dim=0).values.mean(dim=0)
    raise InputError(
        f"activations must be a PromptedEmbeddingStore, a callable, an (N, {len(original)}) tensor of image-concept "
        f"similarities or a ({len(original)},) tensor of top-k means; got shape {tuple(t.shape)}."
    )

