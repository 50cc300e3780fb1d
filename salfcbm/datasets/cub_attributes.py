"""CUB-200-2011's attribute annotations as concept labels: read them, match them to concept names."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from salfcbm.datasets.layouts import layout_error
from salfcbm.errors import InputError

__all__ = ["CUBAttributes", "ConceptLabels", "match_cub_attributes", "read_cub_attributes"]


#: Words that name the kind of a CUB attribute part (``has_bill_shape`` -> part "bill", kind "shape").
_CUB_KIND_WORDS = ("shape", "color", "pattern", "length", "colour", "size")
_CUB_FILLER = {"a", "an", "the", "has", "with", "its", "having"}


def _cub_words(text: str) -> list[str]:
    """Lowercase words of ``text``: parentheses dropped, other punctuation a space, articles removed."""
    text = re.sub(r"\([^)]*\)", " ", text.lower())
    return [w for w in re.sub(r"[^a-z0-9]+", " ", text).split() if w not in _CUB_FILLER]


def _cub_phrasings(attribute: str) -> set[str]:
    """The concept phrasings that name CUB attribute ``attribute`` (see `match_cub_attributes`)."""
    part_raw, _, value_raw = attribute.partition("::")
    part = [w for w in _cub_words(part_raw.replace("_", " ")) if w != "has"]
    value = _cub_words(value_raw.replace("_", " "))
    bare = [w for w in part if w not in _CUB_KIND_WORDS]
    out = {" ".join(_cub_words(attribute.replace("_", " ").replace("::", " "))), " ".join(value + part)}
    if bare:
        out.add(" ".join(value + bare))
        out.add(" ".join(value + bare[:-1] + [bare[-1] + "s"]))  # plural: "blue wings"
    else:  # has_size::small, has_shape::duck-like: the bird itself
        out.add(" ".join(value + ["bird"]))
    return {p for p in out if p}


def match_cub_attributes(attributes: Sequence[str], concepts: Sequence[str]) -> dict[str, str]:
    """``{concept: attribute}`` for the concepts that name a CUB attribute.

    The matching rule: a concept and an attribute ``has_<part>::<value>`` match when the
    concept's words (lowercased, punctuation and parentheses dropped, the fillers "a", "an",
    "the", "has", "with" removed) equal one of the attribute's phrasings:

    * its own name (``"has bill shape dagger"``), or ``"<value> <part>"`` (``"dagger bill shape"``,
      ``"blue wing color"``);
    * ``"<value> <part without shape/color/pattern/length/size>"`` (``"dagger bill"``, ``"blue wing"``)
      and its plural (``"blue wings"``);
    * for the part-less attributes (``has_size``, ``has_shape``), ``"<value> bird"`` (``"small bird"``,
      ``"duck like bird"``; a size's inches in parentheses are dropped).

    Nothing looser (no synonyms, no embedding similarity): an unmatched concept is left out
    rather than scored against the wrong annotation. When two attributes share a phrasing,
    the first in ``attributes.txt`` order wins.

    Examples:
        >>> m = match_cub_attributes(["has_bill_shape::dagger", "has_wing_color::blue", "has_size::small_(5_-_9_in)"],
        ...                          ["a dagger-shaped bill", "Blue wings", "a small bird", "a dagger bill"])
        >>> m["Blue wings"], m["a small bird"], m["a dagger bill"], "a dagger-shaped bill" in m
        ('has_wing_color::blue', 'has_size::small_(5_-_9_in)', 'has_bill_shape::dagger', False)
    """
    table: dict[str, str] = {}
    for a in attributes:
        for p in _cub_phrasings(a):
            table.setdefault(p, a)
    out = {}
    for c in concepts:
        hit = table.get(" ".join(_cub_words(str(c).replace("_", " ").replace("::", " "))))
        if hit is not None:
            out[str(c)] = hit
    return out


@dataclass
class ConceptLabels:
    """Per-image concept labels: ``labels[i, k]`` is 1 (present), 0 (absent) or NaN (unknown).

    What `concept_metrics` takes as ``annotations``. ``matched`` maps each concept to the
    annotation it was read from (for CUB, the attribute name).
    """

    concepts: list[str]
    labels: torch.Tensor
    matched: dict[str, str] = field(default_factory=dict)


@dataclass
class CUBAttributes:
    """CUB-200-2011's per-image attribute annotations (``attributes/image_attribute_labels.txt``).

    Attributes:
        names: the 312 attribute names in id order (``"has_bill_shape::dagger"``).
        image_ids: the annotated ``images.txt`` ids, sorted (rows of the tensors).
        present: ``(N, A)`` bool, the annotator's ``is_present``.
        certainty: ``(N, A)`` int8, ``certainty_id``: 1 not visible, 2 guessing, 3 probably, 4 definitely
            (0: no line for this pair).
    """

    names: list[str]
    image_ids: list[int]
    present: torch.Tensor
    certainty: torch.Tensor

    def labels(self, min_certainty: int = 1) -> torch.Tensor:
        """``(N, A)`` float: 1 / 0 where the certainty is at least ``min_certainty``, NaN elsewhere.

        ``min_certainty=1`` keeps every annotation (CUB's own convention: "not visible" counts as
        absent); 2 drops the "not visible" ones; 3 keeps only "probably" and "definitely".
        """
        if isinstance(min_certainty, bool) or min_certainty not in (1, 2, 3, 4):
            raise InputError(f"`min_certainty` must be 1, 2, 3 or 4 (CUB's certainty ids), got {min_certainty!r}.")
        out = self.present.double()
        out[self.certainty < min_certainty] = float("nan")
        return out

    def for_concepts(self, concepts: Sequence[str], image_ids: Sequence[int] | None = None, *,
                     min_certainty: int = 1) -> ConceptLabels:
        """Labels of the ``concepts`` that match an attribute (`match_cub_attributes`), rows in ``image_ids`` order."""
        matched = match_cub_attributes(self.names, concepts)
        if not matched:
            raise InputError(
                f"None of the concepts {list(concepts)[:5]} ... names a CUB attribute (e.g. 'blue wings' for "
                "has_wing_color::blue, 'a dagger bill' for has_bill_shape::dagger). See match_cub_attributes "
                "for the rule, or build a ConceptLabels yourself."
            )
        rows = {i: r for r, i in enumerate(self.image_ids)}
        ids = self.image_ids if image_ids is None else list(image_ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise InputError(f"Images {missing[:5]} have no attribute annotation in image_attribute_labels.txt.")
        cols = [self.names.index(a) for a in matched.values()]
        lab = self.labels(min_certainty)[[rows[i] for i in ids]][:, cols]
        return ConceptLabels(list(matched), lab, matched)


def _cub_attribute_names(root: Path) -> list[str]:
    for p in (root / "attributes" / "attributes.txt", root / "attributes.txt", root.parent / "attributes.txt"):
        if p.is_file():
            pairs = [ln.split(maxsplit=1) for ln in p.read_text().splitlines() if ln.strip()]
            try:
                return [n.strip() for _, n in sorted(((int(k), n) for k, n in pairs), key=lambda t: t[0])]
            except ValueError:
                raise layout_error("cub", f"{p} is not '<attribute_id> <name>' lines") from None
    raise layout_error("cub", f"No attributes.txt in {root / 'attributes'}, {root} or {root.parent}")


def read_cub_attributes(root: str | os.PathLike) -> CUBAttributes:
    """Read CUB-200-2011's attribute annotations in the published layout.

    ``ROOT/attributes/image_attribute_labels.txt``: one line ``<image_id> <attribute_id> <is_present>
    <certainty_id> <time>`` per (image, attribute); only the first four fields are read, so the few
    lines of the published file that carry an extra field are read correctly. Names come from
    ``ROOT/attributes/attributes.txt``, ``ROOT/attributes.txt`` or the ``attributes.txt`` next to
    ``ROOT`` (where ``CUB_200_2011.tgz`` puts it): ``<attribute_id> <name>``.

    Args:
        root: the ``CUB_200_2011`` folder (or the folder holding it).
    """
    root = Path(root)
    if not (root / "attributes").is_dir() and (root / "CUB_200_2011" / "attributes").is_dir():
        root = root / "CUB_200_2011"
    path = root / "attributes" / "image_attribute_labels.txt"
    if not path.is_file():
        raise layout_error("cub", f"No {path}")
    names = _cub_attribute_names(root)
    data = path.read_bytes()
    rows = _cub_rows_fast(data, len(names))
    if rows is None:  # something is off: the line-by-line reader names the line
        rows = _cub_rows_checked(path, data, len(names))
    ids_np, row_of = np.unique(rows[:, 0], return_inverse=True)
    present = np.zeros((len(ids_np), len(names)), dtype=bool)
    certainty = np.zeros((len(ids_np), len(names)), dtype=np.int8)
    present[row_of, rows[:, 1] - 1] = rows[:, 2] == 1
    certainty[row_of, rows[:, 1] - 1] = rows[:, 3]
    return CUBAttributes(names, [int(i) for i in ids_np], torch.from_numpy(present), torch.from_numpy(certainty))


def _cub_rows_fast(data: bytes, n_attributes: int) -> np.ndarray | None:
    """``(L, 4)`` int64 of the first four fields of every line (numpy's C reader), or None if any is off."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns
            rows = np.loadtxt(io.BytesIO(data), dtype=np.int64, usecols=(0, 1, 2, 3), ndmin=2)
    except ValueError:  # a short or non-numeric line (a longer one is read: only four columns are used)
        return None
    if rows.shape[1:] != (4,) or len(rows) == 0:
        return None
    ok = ((rows[:, 1] >= 1) & (rows[:, 1] <= n_attributes) & ((rows[:, 2] == 0) | (rows[:, 2] == 1))
          & (rows[:, 3] >= 1) & (rows[:, 3] <= 4))
    return rows if bool(ok.all()) else None


def _cub_rows_checked(path: Path, data: bytes, n_attributes: int) -> np.ndarray:
    """The slow reader: every line checked, the first bad one named."""
    out = []
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        f = line.split()
        if not f:
            continue
        try:
            img, att, pres, cert = (int(v) for v in f[:4])
        except ValueError:
            raise InputError(f"{path}, line {n}: expected '<image_id> <attribute_id> <is_present> <certainty_id> "
                             f"<time>', got {line.strip()!r}.") from None
        if not 1 <= att <= n_attributes or pres not in (0, 1) or not 1 <= cert <= 4:
            raise InputError(f"{path}, line {n}: attribute id in 1..{n_attributes}, is_present 0/1 and certainty "
                             f"1..4 expected, got {line.strip()!r}.")
        out.append((img, att, pres, cert))
    if not out:
        raise InputError(f"{path} holds no annotation line.")
    return np.asarray(out, dtype=np.int64)
