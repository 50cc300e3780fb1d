"""Concept generation with a language model, LF-CBM's three questions per class (paper 3.1).

`generate_concepts` asks any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp
server, ...) LF-CBM's three prompts (`LF_CBM_PROMPTS`) for every class, concurrently and with an
optional answer cache. Needs ``pip install 'salfcbm[llm]'``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from salfcbm._utils.io import atomic_write_bytes
from salfcbm.errors import InputError, LLMError, MissingExtraError
from salfcbm.supervision.concept_lists import (
    check_classes,
    format_concept,
    unique_concepts,
)

__all__ = ["LF_CBM_PROMPTS", "LLMError", "generate_concepts"]

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

    classes = check_classes(classes)
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

