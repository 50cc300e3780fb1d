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
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salfcbm.errors import InputError, LLMError, MissingExtraError, TextFileError

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

#: LF-CBM's three concept-generation prompts (paper 3.1); ``{class}`` is replaced by the class name.
LF_CBM_PROMPTS: dict[str, str] = {
    "important": 'List the most important features for recognizing something as a "{class}":',
    "around": 'List the things most commonly seen around a "{class}":',
    "superclass": 'Give superclasses for the word "{class}":',
}

_SYSTEM_PROMPT = (
    "You answer with a plain list: one short visual concept per line (at most a few words each), "
    "no numbering, no explanations, no sentences."
)


# -- plain lists ------------------------------------------------------------------------
def format_concept(text: str) -> str:
    """Normalise one LLM answer line: lower case, no bullet or numbering, punctuation to spaces.

    Articles are kept, as in LF-CBM's concept lists ("a long tail"): CLIP embeds "a long tail"
    and "long tail" differently, and LF-CBM's own cleaning only strips the ``-`` bullet and
    whitespace. Lower-casing and turning punctuation into spaces are salfcbm's additions (they
    merge case and punctuation variants that LF-CBM keeps as separate concepts).

    Examples:
        >>> format_concept("  - A Long-Tail, (striped). ")
        'a long tail striped'
    """
    s = text.strip().lower()
    s = re.sub(r"^\s*(?:[-*\u2022]+|\d+[.)]|[a-z][.)](?=\s))\s*", "", s)  # bullets, "1.", "a)"
    s = re.sub(r"[-,.;:()\[\]\"'`_/]", " ", s)
    return " ".join(s.split())


_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


def _bare(text: str) -> str:
    """Lower case without a leading article: LF-CBM drops "a cat" and "The cat" for class "cat"."""
    return _ARTICLE.sub("", text.strip()).lower()


def unique_concepts(concepts: Iterable[str] | Mapping[str, Iterable[str]]) -> list[str]:
    """Strip, drop blanks and duplicates (case-insensitive), keep first-seen order.

    Accepts a list, or the ``{class: [concepts]}`` dict of `generate_concepts`.

    Examples:
        >>> unique_concepts(["fur", " Fur ", "", "whiskers", "fur"])
        ['fur', 'whiskers']
    """
    if isinstance(concepts, Mapping):
        concepts = [c for v in concepts.values() for c in v]
    if isinstance(concepts, str):
        raise InputError("concepts must be a list of strings, not a single string.")
    seen: set[str] = set()
    out = []
    for c in concepts:
        if not isinstance(c, str):
            raise InputError(f"concepts must be strings; got {type(c).__name__} ({c!r}).")
        c = " ".join(c.split())
        if c and c.lower() not in seen:
            seen.add(c.lower())
            out.append(c)
    return out


def load_concepts(path: str | os.PathLike) -> list[str]:
    """Read one concept per line; blank lines, ``#`` comment lines and duplicates are dropped.

    ``"lf-cbm:NAME"`` (``cifar10``, ``cifar100``, ``cub``, ``places365``, ``imagenet``) loads
    LF-CBM's published concept set instead, downloaded once into the user cache
    (`salfcbm.concept_sets.lf_cbm_concepts`).

    Examples:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "c.txt")
        >>> _ = open(p, "w").write("fur\\n\\n# animals\\nwhiskers\\nfur\\n")
        >>> load_concepts(p)
        ['fur', 'whiskers']
    """
    if isinstance(path, str) and path.startswith("lf-cbm:") and not os.path.exists(path):
        from salfcbm.supervision.concept_sets import lf_cbm_concepts

        return unique_concepts(lf_cbm_concepts(path.split(":", 1)[1]))
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Concept file {str(path)!r} does not exist; expected a text file with one concept per line.")
    lines = read_text_lines(path, "concept file")
    return unique_concepts(line for line in lines if not line.lstrip().startswith("#"))


MAX_TEXT_BYTES = 64 << 20
"""The largest text file `read_text_lines` reads (64 MiB; LF-CBM's ImageNet concept set is 60 KB)."""

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text_lines(path: str | os.PathLike, what: str = "text file") -> list[str]:
    """The lines of a UTF-8 text file, as salfcbm reads every text file it is given.

    A leading byte-order mark is dropped (``utf-8-sig``: Windows editors write one), and
    ``\\n``, ``\\r\\n`` and ``\\r`` all end a line (other Unicode separators stay inside
    the line). Only regular files are read (a FIFO would block).

    Raises:
        TextFileError: the file is not a regular file, is larger than `MAX_TEXT_BYTES`, is
            UTF-16, holds a NUL byte (a binary file) or is not valid UTF-8; the message names
            the file and the line.
    """
    import stat as _stat

    p = str(path)
    st = os.stat(p)
    if not _stat.S_ISREG(st.st_mode):
        kind = ("a folder" if _stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if _stat.S_ISFIFO(st.st_mode)
                else "a socket or a device")
        raise TextFileError(f"The {what} {p!r} is {kind}, not a text file (it was not opened); pass a text file "
                            "with one item per line.")
    if st.st_size > MAX_TEXT_BYTES:
        raise TextFileError(f"The {what} {p!r} is {st.st_size:,} bytes, more than the {MAX_TEXT_BYTES:,} bytes a "
                            "text list may have (salfcbm.supervision.concepts.MAX_TEXT_BYTES); is it the right file?")
    with open(p, "rb") as f:
        data = f.read(MAX_TEXT_BYTES + 1)
    if data.startswith(_UTF16_BOMS):
        raise TextFileError(f"The {what} {p!r} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it "
                            "as UTF-8 (one item per line) and pass it again.")
    nul = data.find(b"\0")
    if nul >= 0:
        line = _line_of(data, nul)
        raise TextFileError(f"The {what} {p!r} holds a NUL byte on line {line}: it is a binary file, not UTF-8 "
                            "text with one item per line. Pass the text file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = _line_of(data, e.start)
        raise TextFileError(f"The {what} {p!r} is not valid UTF-8 (byte {data[e.start]:#04x} on line {line}); "
                            "save it as UTF-8 and pass it again.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _line_of(data: bytes, pos: int) -> int:
    """The 1-based line of byte ``pos`` (lines end at ``\\n``, ``\\r\\n`` or ``\\r``, as they are read)."""
    return data[:pos].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1


def save_concepts(path: str | os.PathLike, concepts: Sequence[str]) -> None:
    """Write one concept per line, atomically."""
    from salfcbm.supervision.store import atomic_write_bytes

    concepts = unique_concepts(concepts)
    atomic_write_bytes(path, ("\n".join(concepts) + "\n").encode("utf-8"), fsync=False)


def concepts_from_templates(classes: Sequence[str], templates: Sequence[str] | str = ("an image of a {class}",)) -> list[str]:
    """One concept per (template, class): ``"{class}"`` in each template is replaced by the class name.

    Examples:
        >>> concepts_from_templates(["cat", "dog"], ["a photo of a {class}", "{class} fur"])
        ['a photo of a cat', 'a photo of a dog', 'cat fur', 'dog fur']
    """
    if isinstance(templates, str):
        templates = [templates]
    classes = _check_classes(classes)
    for t in templates:
        if not isinstance(t, str) or "{class}" not in t:
            raise InputError(f"Each template must be a string containing '{{class}}'; got {t!r}.")
    keys = [" ".join(c.split()).lower() for c in classes]
    if len(set(keys)) < len(keys):
        import warnings
        from collections import Counter

        from salfcbm.errors import SalfCBMWarning

        n = Counter(keys)
        rep = sorted({c for c, k in zip(classes, keys) if n[k] > 1})
        warnings.warn(f"Class names repeat ({rep[:5]}): their classes share one concept per template. Pass "
                      "unique_class_names(classes) to give each class its own concept.", SalfCBMWarning, stacklevel=2)
    return unique_concepts(t.replace("{class}", c) for t in templates for c in classes)


def unique_class_names(classes: Sequence[str]) -> list[str]:
    """The class names with every repeated name told apart by its class index: ``"missile (class 657)"``.

    A name that occurs once is kept as it is. Names are compared as `unique_concepts` compares
    concepts (case and runs of whitespace ignored), so each class then gets its own template
    concept (`concepts_from_templates`) and its own map. LF-CBM's ImageNet list
    (`salfcbm.supervision.concept_sets.lf_cbm_class_names`) names classes 657 and 744
    "missile" and 836 and 837 "sunglasses" (WordNet: "missile" / "projectile, missile",
    "sunglass" / "sunglasses, dark glasses, shades").

    Examples:
        >>> unique_class_names(["missile", "cat", "Missile"])
        ['missile (class 0)', 'cat', 'Missile (class 2)']
    """
    classes = _check_classes(classes)
    keys = [" ".join(c.split()).lower() for c in classes]
    count: dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    out = [f"{c} (class {i})" if count[k] > 1 else c for i, (c, k) in enumerate(zip(classes, keys))]
    if len({" ".join(c.split()).lower() for c in out}) != len(out):  # "a (class 1)" was already a name
        raise InputError(f"Class names stay repeated after adding the class index to repeated ones: {classes[:10]}...; "
                         "rename the classes so that each is unique.")
    return out


def _check_classes(classes: Any) -> list[str]:
    if isinstance(classes, str) or not isinstance(classes, Iterable):
        raise InputError(f"classes must be a list of class names; got {type(classes).__name__}.")
    classes = list(classes)
    if not all(isinstance(c, str) and c.strip() for c in classes):
        raise InputError("classes must be non-empty strings.")
    return classes


# -- LLM generation ------------------------------------------------------------------------
def _parse_answer(text: str) -> list[str]:
    items = []
    for line in (text or "").splitlines():
        # one line may hold a comma-separated list
        for part in line.split(",") if line.count(",") >= 2 else [line]:
            c = format_concept(part)
            if c:
                items.append(c)
    return items


def generate_concepts(
    classes: Sequence[str],
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    prompts: Mapping[str, str] | None = None,
    temperature: float = 0.7,
    max_tokens: int = 256,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 2,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Ask an OpenAI-compatible chat endpoint for concepts of every class (paper 3.1, LF-CBM prompts).

    For every class and every prompt of ``prompts`` (default `LF_CBM_PROMPTS`:
    important features, things seen around, superclasses) one chat completion is
    requested; answers are split into lines and normalised with
    `format_concept`. Pass the result to `unique_concepts` for a
    flat list, then to `filter_concepts`.

    The endpoint and key come from the arguments, else the environment:
    ``SALFCBM_BASE_URL`` / ``SALFCBM_API_KEY`` / ``SALFCBM_LLM_MODEL``, else
    ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``. A local server needs no key.

    Args:
        classes: class names.
        model: chat model name (default ``SALFCBM_LLM_MODEL`` or ``"gpt-4o-mini"``).
        base_url: endpoint, e.g. ``"http://localhost:8000/v1"``.
        api_key: API key.
        prompts: ``{name: template}`` with ``{class}`` placeholders.
        temperature: sampling temperature.
        max_tokens: answer length cap.
        max_concurrency: parallel requests.
        timeout: per-request timeout in seconds.
        max_retries: retries per request (openai client's backoff).
        cache: optional JSON file of answers; answered (class, prompt) pairs are
            not asked again, so an interrupted run resumes.
        progress: tqdm bar.

    Returns:
        ``{class: [concepts]}`` (per class, deduplicated, all prompts merged).

    Raises:
        MissingExtraError: if the ``openai`` package is not installed.
        LLMError: if a request fails after retries.

    Examples:
        >>> per_class = generate_concepts(["goldfish", "tench"], base_url="http://localhost:8000/v1")  # doctest: +SKIP
        >>> concepts = unique_concepts(per_class)  # doctest: +SKIP
    """
    try:
        import openai
    except ImportError:
        raise MissingExtraError("openai", "llm", "LLM concept generation") from None
    from tqdm.auto import tqdm

    classes = _check_classes(classes)
    prompts = dict(prompts if prompts is not None else LF_CBM_PROMPTS)
    for name, t in prompts.items():
        if not isinstance(t, str) or "{class}" not in t:
            raise InputError(f"Prompt {name!r} must be a string containing '{{class}}'; got {t!r}.")
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise InputError(f"max_concurrency must be a positive int; got {max_concurrency!r}.")
    base_url = base_url or os.environ.get("SALFCBM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    api_key = api_key or os.environ.get("SALFCBM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    model = model or os.environ.get("SALFCBM_LLM_MODEL") or "gpt-4o-mini"
    if not api_key:
        if not base_url:
            raise InputError(
                "No LLM endpoint configured: pass base_url= and/or api_key=, or set SALFCBM_BASE_URL / "
                "SALFCBM_API_KEY (or OPENAI_BASE_URL / OPENAI_API_KEY)."
            )
        api_key = "not-needed"  # local OpenAI-compatible servers ignore it, the client insists on one
    client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)

    cache_path = Path(cache) if cache is not None else None
    answers: dict[str, str] = {}
    if cache_path is not None and cache_path.is_file():
        try:
            answers = dict(json.loads(cache_path.read_text(encoding="utf-8")))
        except ValueError:
            raise InputError(f"The LLM cache {str(cache_path)!r} is not valid JSON; delete it to start over.") from None

    def key(c: str, p: str) -> str:
        return json.dumps([model, c, prompts[p]])

    todo = [(c, p) for c in classes for p in prompts if key(c, p) not in answers]

    def ask(item: tuple[str, str]) -> tuple[str, str]:
        cls, p = item
        try:
            resp = client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": _SYSTEM_PROMPT},
                    {"role": "user", "content": prompts[p].replace("{class}", cls)},
                ],
                temperature=temperature,
                max_tokens=max_tokens,
            )
            text = resp.choices[0].message.content or ""
        except openai.OpenAIError as e:
            raise LLMError(
                f"The chat endpoint {base_url or 'https://api.openai.com/v1'} failed for class {cls!r}, prompt {p!r}: {e}. "
                "Check base_url, api_key and model."
            ) from e
        except (IndexError, AttributeError) as e:
            raise LLMError(f"The chat endpoint returned no message for class {cls!r}, prompt {p!r}.") from e
        return key(cls, p), text

    if todo:
        from salfcbm.supervision.store import atomic_write_bytes

        with concurrent.futures.ThreadPoolExecutor(max_workers=max_concurrency) as pool, tqdm(
            total=len(todo), desc="LLM concepts", unit="req", disable=not progress
        ) as bar:
            futures = [pool.submit(ask, item) for item in todo]
            try:
                for f in concurrent.futures.as_completed(futures):
                    k, text = f.result()
                    answers[k] = text
                    bar.update(1)
            finally:
                for f in futures:
                    f.cancel()
                if cache_path is not None:
                    atomic_write_bytes(cache_path, json.dumps(answers, indent=1).encode("utf-8"), fsync=False)
    return {c: unique_concepts(x for p in prompts for x in _parse_answer(answers[key(c, p)])) for c in classes}


# -- filtering ------------------------------------------------------------------------
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
        activations: a `SimilarityStore` (image similarity =
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
    class_lower = {_bare(c): c for c in classes}
    kept = _drop_where(kept, report, lambda c: _bare(c) in class_lower,
                       lambda c: f"too similar to class: equals class {class_lower[_bare(c)]!r}")
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

    from salfcbm.supervision.store import _collate_images

    if not callable(getattr(scorer, "embed_images", None)):
        raise InputError(f"{type(scorer).__name__} has no embed_images(); it cannot embed unprompted images.")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_collate_images)
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
        f"activations must be a SimilarityStore, a callable, an (N, {len(original)}) tensor of image-concept "
        f"similarities or a ({len(original)},) tensor of top-k means; got shape {tuple(t.shape)}."
    )

