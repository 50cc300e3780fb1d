"""The one home of each shared mechanism in `salfcbm._utils`: rank and barrier, the logits check, the
dataset file digest, the argument types; each gives what its former copies gave (issue 20.5)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from salfcbm._utils import argtypes
from salfcbm._utils.distributed import barrier, rank_and_world
from salfcbm._utils.provenance import files_digest
from salfcbm._utils.tensors import accuracy, check_logits
from salfcbm.errors import InputError


def test_rank_and_world_outside_a_process_group():
    assert not torch.distributed.is_initialized()
    assert rank_and_world() == (0, 1)
    barrier()  # a no-op, not an error


def test_rank_and_world_inside_a_one_process_group(tmp_path):
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert rank_and_world() == (0, 1)
        barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_check_logits_accepts_2d_and_names_what_it_got():
    z = torch.randn(3, 4)
    assert check_logits(z) is z
    with pytest.raises(InputError, match=r"The explained model must return a \(B, num_classes\).*got \(3,\)\. Wrap it"):
        check_logits(torch.zeros(3), who="The explained model", fix="Wrap it.")
    with pytest.raises(InputError, match="got dict"):
        check_logits({"logits": z})


def test_accuracy_is_top1_and_zero_for_no_labels():
    z = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    assert accuracy(z, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert accuracy(z[:0], torch.zeros(0, dtype=torch.long)) == 0.0


def _old_paper_digest(samples, root):  # the copy that datasets/paper.py carried before issue 20
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
    return h.hexdigest()[:24]


def _old_folder_digest(samples, root):  # the copy that datasets/folder.py carried before issue 20
    h = hashlib.sha256()
    for path, label in samples:
        h.update(f"{os.path.relpath(path, root)}\t{label}\t{os.path.getsize(path)}\n".encode())
    return h.hexdigest()[:24]


def test_dataset_fingerprints_are_unchanged_by_the_one_file_digest(tmp_path):
    """Store manifests record these digests: the one home must give the former copies' values."""
    from salfcbm.datasets import CUB200Dataset, ImageFolderDataset
    from salfcbm.datasets.paper import write_fake_layout

    for cls, n in (("cat", 2), ("dog", 1)):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((20 + i, 24, 3), 40 * i, np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    folder = ImageFolderDataset(tmp_path / "f", size=16)
    assert folder.fingerprint()["files_sha"] == _old_folder_digest(folder.folder.samples, folder.root)
    cub = CUB200Dataset(write_fake_layout("cub", tmp_path / "cub"), size=16)
    assert cub.fingerprint()["files_sha"] == _old_paper_digest(cub.samples, cub.root)
    assert files_digest(cub.samples, cub.root) != files_digest(cub.samples, cub.root, sizes=True)


def test_the_command_lines_argument_types_are_public():
    """salfcbm/cli.py imports these by their public names (no private name crosses modules)."""
    assert argtypes.positive_int("3") == 3 and argtypes.seed("0") == 0 and argtypes.lr("0.5") == 0.5
    for name in argtypes.__all__:
        assert not name.startswith("_") and callable(getattr(argtypes, name)), name
