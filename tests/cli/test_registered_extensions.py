"""``salfcbm similarities`` and ``salfcbm train`` take a scorer and a pooling registered by the code that calls
`salfcbm.cli.main` (``--scorer NAME:SPEC``, ``--pooling NAME``), checked against the registries when the
command runs, not against names fixed when the parser was built (issue 20.7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from salfcbm import SALFCBM
from salfcbm.cli import main
from salfcbm.cli.common import image_folder
from salfcbm.core.pooling import POOLINGS, register_pooling
from salfcbm.supervision.prompts import PromptGrid
from salfcbm.supervision.scorers import register_scorer, unregister_scorer
from salfcbm.supervision.store import PromptedEmbeddingStore

SCORER, POOLING = "cli_test_mean_colour", "cli_test_top2"


class MeanColour:
    """A user's scorer: the mean colour of each prompt cell, ``dim`` channels of it (``"cli_test_mean_colour:DIM"``)."""

    built: list[MeanColour] = []

    def __init__(self, dim: str | int = 3) -> None:
        self.dim = int(dim)
        MeanColour.built.append(self)

    def fingerprint(self) -> dict:
        return {"type": SCORER, "dim": self.dim}

    def embed(self, images: torch.Tensor, indices: torch.Tensor, prompts: PromptGrid) -> torch.Tensor:
        cells = nn.functional.adaptive_avg_pool2d(images.float(), prompts.grid)  # (B, 3, Hg, Wg)
        return cells.permute(0, 2, 3, 1)[..., : self.dim]

    def similarity(self, embeddings: torch.Tensor, concepts) -> torch.Tensor:
        return embeddings[..., [i % embeddings.shape[-1] for i in range(len(concepts))]]

    def text_embeddings(self, texts) -> torch.Tensor:
        raise NotImplementedError


def _top2(maps: torch.Tensor, config) -> torch.Tensor:
    """A user's pooling: the mean of each map's two largest cells."""
    return maps.flatten(2).topk(2, dim=-1).values.mean(-1)


@pytest.fixture
def registered():
    MeanColour.built.clear()
    register_scorer(SCORER)(MeanColour)
    register_pooling(POOLING, replace=True)(_top2)
    yield
    unregister_scorer(SCORER)
    POOLINGS.pop(POOLING, None)


def _folder(root: Path, n: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_similarities_builds_the_scorer_registered_in_the_calling_process(registered, tmp_path):
    data = _folder(tmp_path / "data")
    rc = main(["similarities", "--data", str(data), "--out", str(tmp_path / "sims"), "--scorer", f"{SCORER}:2",
               "--grid", "2", "--image-size", "32", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
               "--quiet"])
    assert rc == 0
    assert [s.dim for s in MeanColour.built] == [2]  # built once, from NAME:SPEC, with its own options
    store = PromptedEmbeddingStore.open(tmp_path / "sims", MeanColour(2))  # refuses another scorer's store
    images = torch.stack([image_folder(str(data), 32)[i][0] for i in range(6)])
    want = MeanColour(2).embed(images, torch.arange(6), PromptGrid(grid=(2, 2), radius=32))
    torch.testing.assert_close(store.embeddings(list(range(6))).float(), want, atol=1e-2, rtol=1e-2)


@pytest.mark.filterwarnings("ignore::salfcbm.errors.DegenerateResultWarning")  # 3 steps on 6 random images
def test_train_uses_the_registered_scorer_and_pooling(registered, tmp_path, capsys):
    for split, seed in (("train", 0), ("val", 1)):
        _folder(tmp_path / split, seed=seed)
    (tmp_path / "concepts.txt").write_text("fur\nwhiskers\ngrass\n")
    run = tmp_path / "run"
    rc = main(["train", "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", str(tmp_path / "train"),
               "--val", str(tmp_path / "val"), "--concepts", str(tmp_path / "concepts.txt"), "--run-dir", str(run),
               "--scorer", SCORER, "--pooling", POOLING, "--image-size", "32", "--grid", "2", "--radius", "4",
               "--steps", "3", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--threads", "1",
               "--cutoff", "0", "--path-points", "2", "--no-filter", "--quick", "--quiet"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert MeanColour.built and all(s.dim == 3 for s in MeanColour.built)  # the name alone: the factory's default
    model = SALFCBM.from_pretrained(run / "model")  # loads: the pooling is registered in this process
    assert model.config.pooling == POOLING
    PromptedEmbeddingStore.open(run / "similarities" / "train", MeanColour())  # the run's store is the user scorer's


def test_an_unregistered_pooling_is_one_line_naming_the_registered_ones(registered, tmp_path, capsys):
    (tmp_path / "concepts.txt").write_text("fur\n")
    rc = main(["train", "--backbone", "timm:test_resnet", "--train", str(tmp_path), "--val", str(tmp_path),
               "--concepts", str(tmp_path / "concepts.txt"), "--run-dir", str(tmp_path / "run"), "--pooling", "nope"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("salfcbm: error:")
    assert "'nope' is not a registered pooling" in err and POOLING in err and "mean" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written
