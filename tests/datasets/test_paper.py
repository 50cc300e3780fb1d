"""Readers of the paper's datasets, on tiny generated copies of each shipped layout."""

import shutil

import numpy as np
import pytest
import torch

from salfcbm.errors import DatasetNotFoundError, InputError
from salfcbm.datasets.imagenet_seg import ImagenetSegmentation
from salfcbm.datasets.paper import (
    CUB200Dataset,
    ImageNetDataset,
    Places365Dataset,
    holdout_split,
    write_fake_layout,
    write_imagenet_seg_mat,
)

READERS = {
    "imagenet": (ImageNetDataset, ("train", "val")),
    "places365": (Places365Dataset, ("train-standard", "val")),
    "cub": (CUB200Dataset, ("train", "test")),
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_reads_the_generated_layout(tmp_path, kind):
    reader, (train_split, test_split) = READERS[kind]
    root = write_fake_layout(kind, tmp_path / kind, num_classes=6, per_split={train_split: 8, test_split: 4})
    train, test = reader(root, train_split, size=32), reader(root, test_split, size=32)
    assert (len(train), len(test)) == (8, 4)
    assert len(train.classes) == len(test.classes) == 6  # empty classes keep their labels
    x, y = train[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y == train.targets[1] and set(train.targets) == {0, 1, 2, 3}
    assert train.fingerprint() != test.fingerprint()


def test_readable_class_names(tmp_path):
    cub = CUB200Dataset(write_fake_layout("cub", tmp_path / "cub", num_classes=2), "train", size=16)
    assert cub.classes[0] == "001.Bird_000" and cub.class_names[0] == "Bird 000"
    places = Places365Dataset(write_fake_layout("places365", tmp_path / "p", num_classes=2), "val", size=16)
    assert places.classes[0] == "/a/scene_000" and places.class_names[0] == "scene 000"


def test_cub_accepts_the_parent_folder_and_follows_the_split_file(tmp_path):
    root = write_fake_layout("cub", tmp_path / "cub", per_split={"train": 5, "test": 3})
    inner = CUB200Dataset(root / "CUB_200_2011", "test", size=16)
    outer = CUB200Dataset(root, "test", size=16)
    assert len(inner) == len(outer) == 3 and all("_test_" in p for p, _ in outer.samples)


@pytest.mark.parametrize("kind", sorted(READERS))
def test_wrong_path_shows_the_expected_layout(tmp_path, kind):
    reader, (split, _) = READERS[kind]
    with pytest.raises(DatasetNotFoundError, match="Expected the .* layout") as e:
        reader(tmp_path / "nothing", split)
    assert isinstance(e.value, FileNotFoundError)


def test_imagenet_val_must_be_sorted_into_class_folders(tmp_path):
    root = write_fake_layout("imagenet", tmp_path / "in", num_classes=3)
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="sorted into class folders"):
        ImageNetDataset(root, "val")


def test_places_list_pointing_at_missing_images(tmp_path):
    root = write_fake_layout("places365", tmp_path / "p")
    shutil.rmtree(root / "val_256")
    (root / "val_256").mkdir()
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        Places365Dataset(root, "val")


def test_bad_split_name(tmp_path):
    with pytest.raises(InputError, match="split must be one of"):
        CUB200Dataset(tmp_path, "validation")


def test_holdout_split_is_stratified_and_seeded(tmp_path):
    root = write_fake_layout("cub", tmp_path / "cub", per_split={"train": 12, "test": 2})
    ds = CUB200Dataset(root, "train", size=16)
    train, val = holdout_split(ds, 0.25, seed=1)
    assert sorted(train.indices + val.indices) == list(range(12))
    assert set(val.targets) == {0, 1, 2, 3}  # every class keeps images on both sides
    assert holdout_split(ds, 0.25, seed=1)[1].indices == val.indices
    assert train.fingerprint() != val.fingerprint() and train[0][1] == train.targets[0]


def test_generated_imagenet_seg_file_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)]
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    ds = ImagenetSegmentation(write_imagenet_seg_mat(tmp_path / "gtsegs_ijcv.mat", images, [mask]), size=None)
    img, gt = ds.read_raw(0)
    assert (img == images[0]).all() and (gt == mask).all()


def test_resize_then_crop_like_the_imagenet_evaluation_transform(tmp_path):
    root = write_fake_layout("cub", tmp_path / "cub", image_size=(40, 80))  # a wide image
    full, cropped = CUB200Dataset(root, "test", size=32), CUB200Dataset(root, "test", size=32, resize=64)
    assert full[0][0].shape == cropped[0][0].shape == (3, 32, 32)
    assert not torch.equal(full[0][0], cropped[0][0])  # the 256/224-style crop keeps less of the image
    assert full.fingerprint()["files_sha"] == cropped.fingerprint()["files_sha"] != None  # noqa: E711
    assert full.fingerprint() != cropped.fingerprint()
    with pytest.raises(InputError, match="resize"):
        CUB200Dataset(root, "test", size=32, resize=16)


def test_with_transform_recrops_from_the_files(tmp_path):
    from salfcbm.core.images import ImageTransform

    ds = ImageNetDataset(write_fake_layout("imagenet", tmp_path / "in"), "val", size=32)
    train, val = holdout_split(ImageNetDataset(tmp_path / "in", "train", size=32), 0.5)
    view = ImageTransform(size=(16, 16), crop_pct=0.5)
    for d in (ds, val):
        other = d.with_transform(view)
        assert other[0][0].shape == (3, 16, 16) and other.samples == d.samples and other.image_transform == view
        assert d[0][0].shape == (3, 32, 32)  # the original is untouched
