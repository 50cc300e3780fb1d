"""Concept sets: load, template, generate with an LLM, and filter (paper 3.1).

The paper follows LF-CBM [19]: an initial list comes from prompting a language
model with three questions per class, then concepts that are too long, too
similar to a class name or to another concept, or that never appear in the
training data are discarded. This module does each step, and
`filter_concepts` reports every dropped concept with its reason.

* `load_concepts` / `save_concepts`: one concept per line.
* `concepts_from_templates`: ``"an image of a {class}"`` for every class;
  `unique_class_names` first gives repeated class names their class index.
* `generate_concepts`: any OpenAI-compatible chat endpoint (OpenAI, vLLM,
  Ollama, llama.cpp server, ...), with LF-CBM's three prompts
  (`LF_CBM_PROMPTS`). Needs ``pip install 'salfcbm[llm]'``.
* `filter_concepts`: length cap, class / concept near-duplicates (text
  embeddings from the scorer) and activation on training images.

One idea per module: the plain lists live in `salfcbm.supervision.concept_lists`, the LLM
generation in `salfcbm.supervision.concept_generation`, the filter in
`salfcbm.supervision.concept_filter`; this module gathers their public names.
"""


from salfcbm.supervision.concept_filter import (
    ConceptFilterReport,
    filter_concepts,
    near_duplicates,
    unprompted_activity,
)
from salfcbm.supervision.concept_generation import (
    LF_CBM_PROMPTS,
    LLMError,
    generate_concepts,
)
from salfcbm.supervision.concept_lists import (
    MAX_TEXT_BYTES,  # noqa: F401 - importable from here as before the split
    concepts_from_templates,
    format_concept,
    load_concepts,
    read_text_lines,
    save_concepts,
    unique_class_names,
    unique_concepts,
)

__all__ = [
    "LF_CBM_PROMPTS",
    "ConceptFilterReport",
    "LLMError",
    "concepts_from_templates",
    "filter_concepts",
    "format_concept",
    "generate_concepts",
    "load_concepts",
    "near_duplicates",
    "read_text_lines",
    "save_concepts",
    "unique_class_names",
    "unique_concepts",
    "unprompted_activity",
]
