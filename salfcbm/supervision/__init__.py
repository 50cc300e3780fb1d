"""Supervision: concept sets, visual prompts, concept scorers and the the store of prompted embeddings (paper 3.1, 3.2)."""

from salfcbm.supervision.concepts import (
    ConceptFilterReport,
    concepts_from_templates,
    filter_concepts,
    format_concept,
    generate_concepts,
    load_concepts,
    save_concepts,
    unique_class_names,
    unique_concepts,
    unprompted_activity,
)
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorers import CLIPScorer, ConceptScorer
from salfcbm.supervision.store import (
    PromptedEmbeddingStore,
    ShardedStore,
    SimilarityStore,
    bind_scorer,
    compute_similarity_store,
    compute_store,
)

__all__ = [
    "CLIPScorer",
    "ConceptFilterReport",
    "ConceptScorer",
    "PromptGrid",
    "PromptedEmbeddingStore",
    "ShardedStore",
    "SimilarityStore",
    "bind_scorer",
    "compute_similarity_store",
    "compute_store",
    "concepts_from_templates",
    "filter_concepts",
    "format_concept",
    "generate_concepts",
    "load_concepts",
    "save_concepts",
    "unique_class_names",
    "unique_concepts",
    "unprompted_activity",
]
