"""The concept filters follow LF-CBM's rules: length, class and concept near-duplicates, activation (issue 15, item 5)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salfcbm.supervision.concept_filter import _near_duplicates
from salfcbm.supervision.concepts import filter_concepts, format_concept


def _lfcbm_rule(sims: torch.Tensor, cutoff: float) -> set[int]:
    """LF-CBM's filter_too_similar, restated: visit (i, j) row by row; of a close pair not yet
    removed, remove the one with the lower row sum (i on a strict '<', else j)."""
    removed: list[int] = []
    n = sims.shape[0]
    for i in range(n):
        for j in range(n):
            if i != j and sims[i, j] >= cutoff and i not in removed and j not in removed:
                removed.append(i if sims[i].sum() < sims[j].sum() else j)
    return set(removed)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12), cutoff=st.floats(0.5, 0.95))
def test_near_duplicates_match_lfcbm(seed, n, cutoff):
    g = torch.Generator().manual_seed(seed)
    e = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)  # 3-D: many close pairs
    sims = e @ e.T
    assert set(_near_duplicates(sims, cutoff)) == _lfcbm_rule(sims, cutoff)


def test_the_more_general_concept_is_kept():
    class Vec:
        table = {"tail": [1.0, 0.2, 0.2], "a long tail": [1.0, 0.0, 0.0], "fur": [0.3, 1.0, 0.0], "legs": [0.3, 0, 1.0]}

        def text_embeddings(self, texts):
            return torch.nn.functional.normalize(torch.tensor([self.table[t] for t in texts]), dim=-1)

    r = filter_concepts(["a long tail", "tail", "fur", "legs"], scorer=Vec(), concept_similarity=0.9)
    assert r.reason("a long tail") == "too similar to concept: 'tail' (cosine 0.962 >= 0.9)"
    assert r.kept == ["tail", "fur", "legs"]


def test_format_concept_keeps_articles_and_class_match_ignores_them():
    assert format_concept("- A long tail") == "a long tail"
    assert format_concept("2) the ability to fly.") == "the ability to fly"
    r = filter_concepts(["a Cat", "The dog", "cat fur"], classes=["cat", "dog"])
    assert r.kept == ["cat fur"] and r.reason("a Cat").startswith("too similar to class: equals class 'cat'")


def test_a_closed_vocabulary_scorer_skips_the_class_similarity_filter():
    from salfcbm.demo.scenes import GroundTruthScorer, SyntheticScenes

    ds = SyntheticScenes(n=4, image_size=32, num_classes=8)
    r = filter_concepts(ds.concepts, classes=ds.classes, scorer=GroundTruthScorer(ds))  # class names: free text
    assert r.kept == ds.concepts
