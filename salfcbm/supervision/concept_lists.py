"""Plain concept lists: format, deduplicate, load, save, and build from class-name templates (paper 3.1).

* `load_concepts` / `save_concepts`: one concept per line (`read_text_lines` reads any bounded,
  UTF-8 text file line by line).
* `concepts_from_templates`: ``"an image of a {class}"`` for every class;
  `unique_class_names` first gives repeated class names their class index.

Generation with an LLM is `salfcbm.supervision.concept_generation`, filtering
`salfcbm.supervision.concept_filter`; `salfcbm.supervision.concepts` gathers all three.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from salfcbm._utils.io import atomic_write_bytes
from salfcbm.errors import InputError, TextFileError

__all__ = [
    "MAX_TEXT_BYTES",
    "bare_concept",
    "check_classes",
    "concepts_from_templates",
    "format_concept",
    "load_concepts",
    "read_text_lines",
    "save_concepts",
    "unique_class_names",
    "unique_concepts",
]


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


def bare_concept(text: str) -> str:
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
    classes = check_classes(classes)
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
    classes = check_classes(classes)
    keys = [" ".join(c.split()).lower() for c in classes]
    count: dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    out = [f"{c} (class {i})" if count[k] > 1 else c for i, (c, k) in enumerate(zip(classes, keys))]
    if len({" ".join(c.split()).lower() for c in out}) != len(out):  # "a (class 1)" was already a name
        raise InputError(f"Class names stay repeated after adding the class index to repeated ones: {classes[:10]}...; "
                         "rename the classes so that each is unique.")
    return out


def check_classes(classes: Any) -> list[str]:
    if isinstance(classes, str) or not isinstance(classes, Iterable):
        raise InputError(f"classes must be a list of class names; got {type(classes).__name__}.")
    classes = list(classes)
    if not all(isinstance(c, str) and c.strip() for c in classes):
        raise InputError("classes must be non-empty strings.")
    return classes

