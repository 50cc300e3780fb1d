"""Concept scorers by name: `register_scorer`, `scorer_from_name`, `list_scorers` (as timm's ``register_model``).

A scorer class or factory registered under a name is built by `scorer_from_name` from the same
strings the CLI's ``--scorer`` takes: ``"NAME"`` or ``"NAME:SPEC"`` for a registered scorer, and any
other string is a CLIP model (``"ViT-B-16"``, ``"hf-hub:ORG/REPO"``, ``"local-dir:PATH"``), built by
the ``"clip"`` entry (`salfcbm.supervision.scorers.clip_scorer`, imported on first use, so this
module and `list_scorers` import no torch of their own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.supervision.scorers import ConceptScorer

__all__ = ["CLIP_PREFIXES", "list_scorers", "register_scorer", "scorer_from_name", "unregister_scorer"]

#: Prefixes open_clip itself gives a model name (``hf-hub:ORG/REPO``, ``local-dir:PATH``): not scorer names.
CLIP_PREFIXES = ("hf-hub", "local-dir")
_SCORERS: dict[str, Callable[..., Any]] = {}
F_ = TypeVar("F_", bound=Callable[..., Any])


def register_scorer(name: str) -> Callable[[F_], F_]:
    """Decorator: register a scorer class or factory under ``name``, for `scorer_from_name`.

    The factory is called as ``factory(**kwargs)`` for the name alone and ``factory(spec, **kwargs)``
    for ``"name:spec"`` (``spec`` is the text after the first colon, e.g. a model name), and must
    return a `ConceptScorer`. Works from user code, as timm's ``register_model``.

    Raises:
        InputError: ``name`` is empty, holds a colon, is one of open_clip's prefixes
            (``hf-hub``, ``local-dir``) or is taken (`unregister_scorer` first to replace one).

    Examples:
        >>> import torch
        >>> @register_scorer("constant_example")
        ... class Constant:
        ...     def __init__(self, dim="4"):
        ...         self.dim = int(dim)
        ...     def fingerprint(self): return {"type": "constant", "dim": self.dim}
        ...     def embed(self, images, indices, prompts): return torch.ones(len(images), *prompts.grid, self.dim)
        ...     def similarity(self, embeddings, concepts): return embeddings[..., :1].expand(*embeddings.shape[:-1], len(concepts))
        ...     def text_embeddings(self, texts): raise NotImplementedError
        >>> scorer_from_name("constant_example:8").dim
        8
        >>> unregister_scorer("constant_example")
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise InputError(f"A scorer name is a non-empty string without ':' (the spec follows it), got {name!r}.")
    if name in CLIP_PREFIXES:
        raise InputError(f"{name!r} is an open_clip model prefix ({name}:...), not a scorer name; choose another.")

    def decorate(factory: F_) -> F_:
        if not callable(factory):
            raise InputError(f"register_scorer({name!r}) decorates a class or a function, got {type(factory).__name__}.")
        if name in _SCORERS and _SCORERS[name] is not factory:
            raise InputError(f"A scorer named {name!r} is already registered; choose another name, or call "
                             f"unregister_scorer({name!r}) first to replace it.")
        _SCORERS[name] = factory
        return factory

    return decorate


def unregister_scorer(name: str) -> None:
    """Remove the scorer ``name`` from the registry (to replace it, or after a test)."""
    if name not in _SCORERS:
        raise InputError(f"No scorer named {name!r} is registered; registered: {list_scorers()}.")
    del _SCORERS[name]


def list_scorers() -> list[str]:
    """Registered scorer names, in registration order.

    Examples:
        >>> list_scorers()
        ['clip']
    """
    return list(_SCORERS)


def scorer_from_name(name: str, **kwargs: Any) -> ConceptScorer:
    """The concept scorer a name stands for, with the CLI's syntax (``--scorer``).

    * ``"NAME"`` or ``"NAME:SPEC"`` where ``NAME`` is registered (`register_scorer`): that factory,
      called with ``SPEC`` (when given) and ``kwargs``. ``"clip:ViT-B-16"`` is CLIP ViT-B/16 and
      ``"clip:ViT-B-16/openai"`` names the pretrained tag too (``"clip:ViT-B-16/none"``: random init).
    * anything else is a CLIP model as ``salfcbm train --scorer`` takes it: an open_clip model name
      (``"ViT-B-16"``), ``"hf-hub:ORG/REPO"`` or ``"local-dir:PATH"``; ``kwargs`` go to `CLIPScorer`
      (``pretrained="openai"``, ``device``, ``precision``, ...).

    Raises:
        InputError: ``name`` is not a non-empty string, or the factory did not return a `ConceptScorer`.

    Examples:
        >>> scorer_from_name("clip:ViT-B-16/openai", device="cpu")  # doctest: +SKIP
        CLIPScorer(...)
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"A scorer name must be a non-empty string (e.g. 'ViT-B-16' or 'clip:ViT-B-16'), got {name!r}.")
    from salfcbm.supervision.scorers import ConceptScorer

    key, sep, spec = name.partition(":")
    if key in _SCORERS:
        factory = _SCORERS[key]
        scorer = factory(spec, **kwargs) if sep else factory(**kwargs)
    else:
        scorer = _SCORERS["clip"](name, **kwargs)
    if not isinstance(scorer, ConceptScorer):
        raise InputError(
            f"The scorer {name!r} built a {type(scorer).__name__}, which lacks the ConceptScorer methods (fingerprint, "
            "embed, similarity, text_embeddings); make its registered factory return a ConceptScorer."
        )
    return scorer


@register_scorer("clip")
def _clip(spec: str | None = None, **kwargs: Any) -> ConceptScorer:
    """CLIP, imported on first use: see `salfcbm.supervision.scorers.clip_scorer`."""
    from salfcbm.supervision.scorers import clip_scorer

    return clip_scorer(spec, **kwargs)
