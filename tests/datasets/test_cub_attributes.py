"""CUB-200-2011's attribute annotations, read from a generated tree in the published layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from salfcbm.datasets.paper import (
    CUB200Dataset,
    match_cub_attributes,
    read_cub_attributes,
    write_fake_layout,
)
from salfcbm.errors import DatasetNotFoundError, InputError

# A slice of the real attributes.txt (ids renumbered 1..6), in its spelling.
NAMES = [
    "has_bill_shape::dagger",
    "has_bill_shape::hooked_seabird",
    "has_wing_color::blue",
    "has_wing_color::brown",
    "has_size::small_(5_-_9_in)",
    "has_primary_color::yellow",
]


def _write_tree(tmp_path: Path, *, names_at: str = "top") -> tuple[Path, dict[tuple[int, int], tuple[int, int]]]:
    """CUB_200_2011.tgz's layout: CUB_200_2011/{images.txt, ..., attributes/image_attribute_labels.txt},
    and attributes.txt next to CUB_200_2011 (or inside attributes/ with ``names_at="inside"``)."""
    root = write_fake_layout("cub", tmp_path, num_classes=2, labelled_classes=2, per_split={"train": 4, "test": 2},
                             image_size=(16, 16))
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir()
    names = "".join(f"{i + 1} {n}\n" for i, n in enumerate(NAMES))
    (tmp_path / "attributes.txt" if names_at == "top" else cub / "attributes" / "attributes.txt").write_text(names)
    n_images = len((cub / "images.txt").read_text().splitlines())
    truth = {}
    lines = []
    for img in range(1, n_images + 1):
        for att in range(1, len(NAMES) + 1):
            present, cert = (img + att) % 2, 1 + (img * att) % 4
            truth[img, att] = (present, cert)
            lines.append(f"{img} {att} {present} {cert} {img * 1.5:.3f}\n")
    lines[7] = lines[7].rstrip("\n") + " 0\n"  # the published file has a few lines with an extra field
    (cub / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    (cub / "attributes" / "certainties.txt").write_text("1 not visible\n2 guessing\n3 probably\n4 definitely\n")
    return root, truth


@pytest.mark.parametrize("names_at", ["top", "inside"])
def test_reader_loads_presence_and_certainty_in_the_published_layout(tmp_path, names_at):
    root, truth = _write_tree(tmp_path, names_at=names_at)
    att = read_cub_attributes(root)  # the folder holding CUB_200_2011, as for CUB200Dataset
    assert att.names == NAMES and att.image_ids == list(range(1, 7))
    assert att.present.shape == att.certainty.shape == (6, len(NAMES))
    for (img, a), (p, c) in truth.items():
        assert bool(att.present[img - 1, a - 1]) == bool(p) and int(att.certainty[img - 1, a - 1]) == c
    lab = att.labels(min_certainty=3)
    assert torch.isnan(lab[att.certainty < 3]).all()
    assert torch.equal(lab[att.certainty >= 3], att.present[att.certainty >= 3].double())
    assert not torch.isnan(att.labels()).any()


def test_dataset_gives_labels_of_matched_concepts_in_sample_order(tmp_path):
    root, truth = _write_tree(tmp_path)
    test = CUB200Dataset(root, split="test", size=16)
    concepts = ["Blue wings", "a dagger bill", "a small bird", "a yellow car"]
    cl = test.concept_labels(concepts, min_certainty=2)
    assert cl.concepts == ["Blue wings", "a dagger bill", "a small bird"]
    assert cl.matched == {"Blue wings": "has_wing_color::blue", "a dagger bill": "has_bill_shape::dagger",
                          "a small bird": "has_size::small_(5_-_9_in)"}
    assert cl.labels.shape == (len(test), 3) and len(test.image_ids) == len(test) == 2
    for r, img in enumerate(test.image_ids):
        for k, a in enumerate((3, 1, 5)):
            p, c = truth[img, a]
            want = p if c >= 2 else math.nan
            got = float(cl.labels[r, k])
            assert (math.isnan(got) and math.isnan(want)) or got == want


def test_concept_metrics_reads_cub_labels(tmp_path):
    import salfcbm
    from salfcbm.demo.scenes import SmallConvNet
    from salfcbm.evaluation import concept_metrics

    root, _ = _write_tree(tmp_path)
    train = CUB200Dataset(root, split="train", size=32)
    model = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["blue wings", "a dagger bill", "sky"],
                         num_classes=2, grid=4, input_size=(32, 32), backbone_weights=None).eval()
    r = concept_metrics(model, train, train.concept_labels(model.concepts))
    assert [row["concept"] for row in r.per_concept] == ["blue wings", "a dagger bill"] and r.unannotated == ["sky"]
    assert all(row["n_images"] == len(train) for row in r.per_concept)


def test_matching_rule():
    names = NAMES + ["has_shape::duck-like", "has_tail_pattern::striped"]
    m = match_cub_attributes(names, ["brown wing", "Hooked seabird bill", "duck-like bird", "striped tail",
                                     "has_primary_color::yellow", "yellow primary color", "a wing", "blue"])
    assert m == {"brown wing": "has_wing_color::brown", "Hooked seabird bill": "has_bill_shape::hooked_seabird",
                 "duck-like bird": "has_shape::duck-like", "striped tail": "has_tail_pattern::striped",
                 "has_primary_color::yellow": "has_primary_color::yellow",
                 "yellow primary color": "has_primary_color::yellow"}


def test_missing_or_malformed_files_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="image_attribute_labels.txt"):
        read_cub_attributes(tmp_path)
    root, _ = _write_tree(tmp_path)
    path = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    path.write_text("1 1 1 9 0.5\n")
    with pytest.raises(InputError, match="line 1"):
        read_cub_attributes(root)
    path.write_text("1 one 1 3 0.5\n")
    with pytest.raises(InputError, match="<image_id> <attribute_id>"):
        read_cub_attributes(root)
    (tmp_path / "attributes.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="attributes.txt"):
        read_cub_attributes(root)


def test_no_matching_concept_and_bad_certainty_are_refused(tmp_path):
    root, _ = _write_tree(tmp_path)
    att = read_cub_attributes(root)
    with pytest.raises(InputError, match="names a CUB attribute"):
        att.for_concepts(["a car"])
    with pytest.raises(InputError, match="min_certainty"):
        att.labels(min_certainty=5)
    with pytest.raises(InputError, match="no attribute annotation"):
        att.for_concepts(["blue wings"], image_ids=[99])


def test_fast_and_checked_readers_agree(tmp_path):
    import numpy as np

    from salfcbm.datasets.cub_attributes import _cub_rows_checked, _cub_rows_fast

    root, _ = _write_tree(tmp_path)
    path = root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    data = path.read_bytes() + b"\n"  # a trailing blank line, as editors leave
    fast = _cub_rows_fast(data, len(NAMES))
    assert fast is not None and np.array_equal(fast, _cub_rows_checked(path, data, len(NAMES)))
    assert _cub_rows_fast(b"1 1 1\n", len(NAMES)) is None  # a short line goes to the checked reader
