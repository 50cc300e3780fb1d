"""ImageFolderDataset: a user's own class folders in, [0, 1] images and labels out."""

import numpy as np
import pytest
import torch
from PIL import Image

from salfcbm.datasets import ImageFolderDataset
from salfcbm.errors import InputError, SalfCBMError


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture()
def folder(tmp_path):
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[..., 2] = 255  # blue sides
    wide[:, 32:64] = (255, 0, 0)  # a red centre third
    _write(tmp_path / "cat" / "a.png", wide)
    _write(tmp_path / "cat" / "b.png", np.full((40, 40, 3), 128, np.uint8))
    _write(tmp_path / "dog" / "c.png", np.full((50, 30, 3), 255, np.uint8))
    return tmp_path


def test_classes_labels_and_image_format(folder):
    ds = ImageFolderDataset(folder, size=16)
    assert ds.classes == ["cat", "dog"]
    assert ds.targets == [0, 0, 1]
    assert len(ds) == 3
    for i in range(3):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert y == ds.targets[i]


def test_non_square_images_are_centre_cropped_not_squashed(folder):
    x, _ = ImageFolderDataset(folder, size=16)[0]
    # the crop keeps the middle of the 96 px wide image: the red third fills it
    assert float(x[0].mean()) > 0.9 and float(x[2].mean()) < 0.1


def test_bad_folders_raise_salfcbm_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SalfCBMError, match="class sub-folders"):
        ImageFolderDataset(tmp_path / "empty")


def test_fingerprint_follows_the_files(folder):
    before = ImageFolderDataset(folder, size=16).fingerprint()
    assert before == ImageFolderDataset(folder, size=16).fingerprint()
    _write(folder / "dog" / "d.png", np.zeros((20, 20, 3), np.uint8))
    after = ImageFolderDataset(folder, size=16).fingerprint()
    assert after["length"] == before["length"] + 1 and after != before
