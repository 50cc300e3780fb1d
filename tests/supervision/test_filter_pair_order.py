"""LF-CBM's near-duplicate filter visits the pairs of the *sorted* concept list (issue 18, item 3).

``filter_too_similar_to_cls`` in LF-CBM's ``conceptset_utils.py`` returns the concepts sorted,
and ``filter_too_similar`` then walks that list pair by pair: which concept of a chain of
near-duplicates survives depends on that order. ``_lfcbm_filter_too_similar`` below is a
transcription of that walk on a given similarity matrix.
"""

import random

import torch

from salfcbm.supervision.concepts import filter_concepts, near_duplicates


def _lfcbm_filter_too_similar(concepts: list[str], sims: dict[tuple[str, str], float], cutoff: float) -> list[str]:
    """LF-CBM: ``concepts = sorted(concepts)``, then ``filter_too_similar`` (numbers in, survivors out)."""
    concepts = sorted(concepts)
    dot = [[sims[a, b] for b in concepts] for a in concepts]
    to_delete = []
    for i in range(len(concepts)):
        for j in range(len(concepts)):
            if dot[i][j] >= cutoff and i != j and i not in to_delete and j not in to_delete:
                to_delete.append(i if sum(dot[i]) < sum(dot[j]) else j)
    for item in sorted(to_delete)[::-1]:
        concepts.pop(item)
    return concepts


class _Embeddings:
    """A text scorer whose embeddings are given (their Gram matrix is the similarity matrix)."""

    def __init__(self, names, emb):
        self.rows = dict(zip(names, torch.nn.functional.normalize(emb, dim=-1)))

    def text_embeddings(self, texts):
        return torch.stack([self.rows[t] for t in texts])


def _world(seed: int, n: int = 7):
    g = torch.Generator().manual_seed(seed)
    names = random.Random(seed).sample([f"{c} thing" for c in "abcdefghijklmnop"], n)  # not sorted
    base = torch.randn(3, 3, generator=g)  # few directions: chains of near-duplicates
    emb = base[torch.randint(0, 3, (n,), generator=g)] + 0.25 * torch.randn(n, 3, generator=g)
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    gram = e @ e.T
    sims = {(a, b): float(gram[i, j]) for i, a in enumerate(names) for j, b in enumerate(names)}
    return names, emb.double(), gram, sims


def test_near_duplicate_pairs_are_visited_in_lf_cbm_sorted_order():
    differs = 0
    for seed in range(60):
        names, emb, gram, sims = _world(seed)
        expected = _lfcbm_filter_too_similar(names, sims, 0.9)
        r = filter_concepts(names, scorer=_Embeddings(names, emb), concept_similarity=0.9, class_similarity=1.0,
                            max_length=100)
        assert sorted(r.kept) == expected, seed
        assert r.kept == [c for c in names if c in expected]  # input order is kept in the report
        gone = near_duplicates(names, gram, 0.9)
        assert sorted(c for i, c in enumerate(names) if i not in gone) == expected
        unsorted_walk = _lfcbm_walk_in_given_order(names, sims, 0.9)
        differs += unsorted_walk != expected
    assert differs >= 3  # the order matters on these worlds: walking the input order would fail above


def _lfcbm_walk_in_given_order(names, sims, cutoff):
    """The same walk in the given (unsorted) order: what salfcbm did before."""
    gone = set()
    for a in names:
        for b in names:
            if a != b and sims[a, b] >= cutoff and a not in gone and b not in gone:
                ta, tb = sum(sims[a, c] for c in names), sum(sims[b, c] for c in names)
                gone.add(a if ta < tb else b)
    return sorted(c for c in names if c not in gone)


def test_ties_remove_the_second_of_the_sorted_pair():
    names = ["b thing", "a thing"]
    gram = torch.tensor([[1.0, 0.95], [0.95, 1.0]])
    gone = near_duplicates(names, gram, 0.9)
    assert list(gone) == [0] and gone[0][0] == 1  # equal totals: LF-CBM removes the second of ('a ...', 'b ...')
