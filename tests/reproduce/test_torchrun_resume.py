"""``salfcbm reproduce`` under torchrun, two gloo CPU ranks: interrupted after the stores, a rerun resumes every stage.

A tiny recipe (random ResNet-18, a tiny CLIP, 2 classes, 4 concepts, a 2x2 prompt grid, one image per
similarity shard). The first run computes the similarity stores on both ranks (each its shards) and is
interrupted in training (`fit`, on both ranks); one shard is then deleted, as if a rank had died while computing it.
The rerun recomputes exactly that shard (the missing shards are dealt round the ranks: the first to rank 0),
rewrites no other shard, both ranks train and rank 0 finishes the recipe; a third run on one process resumes to the same numbers.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from salfcbm.reproduce.recipes import get_recipe

pytestmark = pytest.mark.filterwarnings("ignore")


def _recipe():
    r = get_recipe("table1-cub")
    return replace(r, name="tiny-ranks", backbone={"source": "torchvision", "name": "resnet18", "weights": None},
                   layer="layer4", grid=2, scorer=("ViT-B-16", "none"), num_classes=2, expected_concepts=4, dense=False,
                   standard_dense="refit", batch_size=4, activation_cutoff=0.0, interpretability_cutoff=-1.0,
                   concept_filters="none", val_fraction=0.25, bottleneck=replace(r.bottleneck, max_steps=3, batch_size=6,
                                                                                 val_every=1))


def _run(run_dir: Path, root: Path, **kw):
    from salfcbm.reproduce.ranks import run_on_ranks
    from salfcbm.reproduce.run import dry_run_scorer

    recipe = _recipe()
    return run_on_ranks(recipe, root, run_dir, scorer=dry_run_scorer(recipe, "tiny", "cpu"), pretrained=False,
                        concepts=[f"concept {i}" for i in range(4)], device="cpu", progress=False, force=True,
                        shard_size=1, **kw)


def _worker(rank: int, world: int, port: int, tmp: str, interrupt: bool) -> None:
    import torch.distributed as dist

    import salfcbm.training
    from salfcbm.supervision.store import ShardedStore

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    written = Path(tmp) / f"written-{rank}.txt"
    write = ShardedStore.write_shard

    def logged(self, i, *a, **k):
        with open(written, "a") as f:
            f.write(f"{self.root.parent.name}/{self.root.name}/{i}\n")
        return write(self, i, *a, **k)

    ShardedStore.write_shard = logged
    if interrupt:
        def stop(*a, **k):
            raise KeyboardInterrupt("interrupted in training")

        salfcbm.training.fit = stop
    try:
        out = _run(Path(tmp) / "run", Path(tmp) / "data")
    except KeyboardInterrupt:
        out = "interrupted"
    (Path(tmp) / f"out-{rank}.json").write_text(json.dumps(out, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()


def _spawn(tmp: Path, interrupt: bool) -> dict[int, object]:
    for f in tmp.glob("written-*.txt"):
        f.unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp), interrupt), nprocs=2, join=True)
    return {r: json.loads((tmp / f"out-{r}.json").read_text()) for r in (0, 1)}


def _written(tmp: Path) -> dict[int, list[str]]:
    out = {}
    for r in (0, 1):
        f = tmp / f"written-{r}.txt"
        out[r] = sorted(f.read_text().split()) if f.exists() else []
    return out


@pytest.mark.slow
def test_an_interrupted_torchrun_reproduce_resumes_every_stage_on_every_rank(tmp_path):
    from salfcbm.datasets.paper import write_fake_layout

    write_fake_layout("cub", tmp_path / "data", num_classes=2, image_size=(64, 80), per_split={"train": 8, "test": 4})
    first = _spawn(tmp_path, interrupt=True)
    assert first == {0: "interrupted", 1: "interrupted"}  # every rank runs fit
    done = _written(tmp_path)
    sims = [w for w in done[0] + done[1] if w.startswith("similarities/")]
    assert done[1] and all(int(w.rsplit("/", 1)[1]) % 2 == 1 for w in done[1] if w.startswith("similarities/"))
    assert len(sims) == len(set(sims)) == 8  # 6 training + 2 validation images, one shard each, each once

    lost = tmp_path / "run" / "similarities" / "train" / "shard_000003.safetensors"
    assert lost.is_file()
    lost.unlink()  # rank 1 died while writing it
    second = _spawn(tmp_path, interrupt=False)
    redone = _written(tmp_path)
    assert [w for w in redone[0] if w.startswith("similarities/")] == ["similarities/train/3"]  # dealt to rank 0
    assert not [w for w in redone[1] if w.startswith("similarities/")]  # nothing else recomputed
    assert second[1] is None and second[0]["table"] and (tmp_path / "run" / "results.json").is_file()

    again = _run(tmp_path / "run", tmp_path / "data")  # one process: everything resumes, same numbers
    numbers = {k: {kk: vv for kk, vv in v.items() if kk != "checks"} for k, v in again["runs"].items()}
    assert json.loads(json.dumps(numbers, default=str)) == {
        k: {kk: vv for kk, vv in v.items() if kk != "checks"} for k, v in second[0]["runs"].items()}
