"""``salfcbm reproduce`` under torchrun (issue 21.3): every rank trains the bottleneck, rank 0 alone reports.

Two gloo CPU ranks (forked) run `run_on_ranks` on a tiny sweep recipe (two training runs: random
ResNet-18 at 64 px, a tiny CLIP, 2 classes, 4 concepts, a 2x2 prompt grid, a few images). Both ranks
train both bottlenecks before rank 0 writes any report. The first run is interrupted on rank 0 in its
reports; the rerun resumes on both ranks: the stores and the bottlenecks are not computed again, and
rank 0 writes the results.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from salfcbm.reproduce.recipes import get_recipe

pytestmark = [pytest.mark.filterwarnings("ignore"),
              pytest.mark.skipif(not hasattr(os, "fork") or not torch.distributed.is_available(),
                                 reason="needs fork and torch.distributed (gloo)")]


def _recipe():
    r = get_recipe("table1-cub")
    return replace(r, name="tiny-every-rank", table="table3", sweep=((2, 20), (2, 30)), backbone={"source": "torchvision", "name": "resnet18", "weights": None},
                   layer="layer4", grid=2, scorer=("ViT-B-16", "none"), num_classes=2, expected_concepts=4, dense=False,
                   standard_dense="refit", batch_size=4, image_size=64, resize=64, activation_cutoff=0.0,
                   interpretability_cutoff=-1.0, concept_filters="none", val_fraction=0.25,
                   bottleneck=replace(r.bottleneck, max_steps=4, batch_size=2, val_every=2))


def _worker(rank: int, world: int, tmp: str, interrupt: bool) -> None:
    import importlib

    import salfcbm.reproduce.reports as reports_mod
    import salfcbm.reproduce.run as run_mod
    from salfcbm.reproduce.ranks import run_on_ranks
    from salfcbm.supervision.store import ShardedStore

    fit_mod = importlib.import_module("salfcbm.training.fit")  # the module (the package exports the function)
    torch.set_num_threads(1)
    log: dict[str, list] = {"trained": [], "shards": [], "files": []}
    train, write_shard, write_file = fit_mod.train_bottleneck, ShardedStore.write_shard, run_mod.atomic_write_bytes

    def trained(*a, **k):  # this rank took bottleneck steps: its report's steps and ranks
        report = train(*a, **k)
        log["trained"].append([report.steps, report.ranks])
        return report

    def shard(self, i, *a, **k):
        log["shards"].append(f"{self.root.parent.name}/{self.root.name}/{i}")
        return write_shard(self, i, *a, **k)

    def file(path, *a, **k):
        log["files"].append(Path(path).name)
        return write_file(path, *a, **k)

    def stop(*a, **k):
        raise KeyboardInterrupt("interrupted in the reports")

    fit_mod.train_bottleneck, ShardedStore.write_shard, run_mod.atomic_write_bytes = trained, shard, file
    if interrupt:
        reports_mod._check_reload_and_explain = stop
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous-{int(interrupt)}", rank=rank,
                                         world_size=world)
    recipe = _recipe()
    try:
        out = run_on_ranks(recipe, Path(tmp) / "data", Path(tmp) / "run",
                           scorer=run_mod.dry_run_scorer(recipe, "tiny", "cpu"), pretrained=False,
                           concepts=[f"concept {i}" for i in range(4)], device="cpu", progress=False, force=True,
                           shard_size=2)
    except KeyboardInterrupt:
        out = "interrupted"
    log["group_open"] = torch.distributed.is_initialized()
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps({"out": out, **log}, default=str))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _spawn(tmp: Path, interrupt: bool) -> dict[int, dict]:
    torch.multiprocessing.start_processes(_worker, args=(2, str(tmp), interrupt), nprocs=2, join=True,
                                          start_method="fork")
    return {r: json.loads((tmp / f"rank{r}.json").read_text()) for r in (0, 1)}


def test_every_rank_trains_rank_zero_reports_and_a_rerun_resumes_on_every_rank(tmp_path):
    from salfcbm.datasets.paper import write_fake_layout

    write_fake_layout("cub", tmp_path / "data", num_classes=2, image_size=(64, 80), per_split={"train": 8, "test": 4})
    first = _spawn(tmp_path, interrupt=True)
    assert first[0]["out"] == "interrupted" and first[1]["out"] is None
    # both ranks trained both bottlenecks together, before rank 0's first report: each report says 2 ranks
    assert first[0]["trained"] == first[1]["trained"] == [[4, 2], [4, 2]]
    assert first[0]["shards"] and first[1]["shards"]  # both ranks computed shards of the stores
    assert not first[0]["group_open"] and not first[1]["group_open"]  # closed before rank 0's reports
    assert first[1]["files"] == []  # rank 1 writes no file of the run (only its shards)
    run, names = tmp_path / "run", ["tiny-every-rank-g2-r20", "tiny-every-rank-g2-r30"]
    assert not (run / "results.json").exists()
    for name in names:
        assert (run / name / "bottleneck.safetensors").is_file()
        assert json.loads((run / name / "bottleneck.json").read_text())["report"]["ranks"] == 2

    second = _spawn(tmp_path, interrupt=False)
    assert second[1]["out"] is None and second[0]["out"]["table"]
    assert second[0]["trained"] == second[1]["trained"] == []  # the bottleneck resumed on every rank
    assert not [s for s in second[0]["shards"] + second[1]["shards"] if s.startswith("similarities/")]
    assert second[1]["files"] == [] and {"results.json", "table.md"} <= set(second[0]["files"])
    results = json.loads((run / "results.json").read_text())
    assert [results["runs"][name]["bottleneck_ranks"] for name in names] == [2, 2]
    assert results == json.loads(json.dumps(second[0]["out"], default=str))
