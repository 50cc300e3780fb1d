"""LF-CBM concept sets: fetched once into the cache, checksum-checked, from a local fixture (never the network)."""

import dataclasses
import hashlib

import pytest

import salfcbm
from salfcbm.supervision import concept_sets
from salfcbm.supervision.concept_sets import LF_CBM_CLASS_NAMES, LF_CBM_CONCEPT_SETS, lf_cbm_class_names, lf_cbm_concepts
from salfcbm.errors import ChecksumError, DownloadError

#: The counts LF-CBM publishes (and the SALF-CBM paper cites): before the training-time filters.
EXPECTED = {"cifar10": 143, "cifar100": 892, "cub": 370, "places365": 2544, "imagenet": 4751}


@pytest.fixture()
def mirror(tmp_path, monkeypatch):
    """A generated copy of LF-CBM's tree with the right line counts; the registry points at its checksums."""
    root = tmp_path / "mirror"
    for table in (LF_CBM_CONCEPT_SETS, LF_CBM_CLASS_NAMES):
        for name, entry in list(table.items()):
            path = root / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            sep = "\r" if name == "imagenet" and table is LF_CBM_CLASS_NAMES else "\n"  # as published
            data = sep.join(f"{name} item {i}" for i in range(entry.count)).encode()
            path.write_bytes(data)
            monkeypatch.setitem(table, name, dataclasses.replace(entry, sha256=hashlib.sha256(data).hexdigest()))
    monkeypatch.setenv("SALFCBM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SALFCBM_LF_CBM_URL", root.as_uri())
    return root


def test_recorded_counts():
    assert {k: v.count for k, v in LF_CBM_CONCEPT_SETS.items()} == EXPECTED
    assert LF_CBM_CLASS_NAMES["imagenet"].count == 1000 and LF_CBM_CLASS_NAMES["places365"].count == 365


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_concepts_prefix_gives_the_published_counts(mirror, name):
    concepts = salfcbm.load_concepts(f"lf-cbm:{name}")
    assert len(concepts) == EXPECTED[name]
    assert concepts[0] == f"{name} item 0"


def test_fetched_once_then_offline(mirror, tmp_path, monkeypatch):
    first = lf_cbm_concepts("cub")
    cached = list((tmp_path / "cache" / "lf-cbm").rglob("cub_filtered.txt"))
    assert len(cached) == 1
    monkeypatch.setenv("SALFCBM_LF_CBM_URL", (tmp_path / "gone").as_uri())  # the source disappears
    monkeypatch.setenv("SALFCBM_OFFLINE", "1")
    assert lf_cbm_concepts("cub") == first


def test_imagenet_class_names_with_cr_lines(mirror):
    names = lf_cbm_class_names("imagenet")
    assert len(names) == 1000 and names[1] == "imagenet item 1"


def test_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SALFCBM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SALFCBM_LF_CBM_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"imagenet_filtered\.txt.*downloads are off.*sha256") as e:
        salfcbm.load_concepts("lf-cbm:imagenet")
    assert isinstance(e.value, OSError)


def test_unreachable_source(tmp_path, monkeypatch):
    monkeypatch.setenv("SALFCBM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DownloadError, match="Could not download"):
        lf_cbm_concepts("cub", base_url=(tmp_path / "nowhere").as_uri())


def test_checksum_mismatch_caches_nothing(mirror, tmp_path, monkeypatch):
    entry = LF_CBM_CONCEPT_SETS["cub"]
    monkeypatch.setitem(LF_CBM_CONCEPT_SETS, "cub", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(ChecksumError, match="nothing was cached"):
        lf_cbm_concepts("cub")
    assert not list((tmp_path / "cache").rglob("cub_filtered.txt"))


def test_corrupt_cache_is_refused(mirror, tmp_path):
    lf_cbm_concepts("cub")
    (cached,) = (tmp_path / "cache").rglob("cub_filtered.txt")
    cached.write_text("tampered\n")
    with pytest.raises(ChecksumError, match="Delete it"):
        lf_cbm_concepts("cub")


def test_unknown_name_suggests(mirror):
    with pytest.raises(concept_sets.UnknownConceptSetError, match="'imagenet'"):
        salfcbm.load_concepts("lf-cbm:imagenett")


def test_a_real_file_named_like_the_prefix_still_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lf-cbm:mine").write_text("fur\nwhiskers\n")
    assert salfcbm.load_concepts("lf-cbm:mine") == ["fur", "whiskers"]
