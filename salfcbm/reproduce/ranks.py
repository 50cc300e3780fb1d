"""``salfcbm reproduce`` under torchrun: every rank computes its share of the stores and trains, rank 0
reports, a rerun resumes.

The stages and what a rerun after an interruption (of any rank) does on each rank:

1. ``recipe.json``: rank 0 writes it, every rank checks that the run directory holds this recipe's
   run (each refuses another version alike, so no rank waits for one that stopped);
2. the similarity and feature stores: the ranks deal the missing shards round
   (`salfcbm._utils.shard_compute.missing_shards_of_this_rank`; a rerun: only the shards that an
   interrupted rank had not finished, balanced over the ranks; a shard is written atomically, so a
   half-written one does not exist), and the ranks meet at a barrier;
3. `salfcbm.fit` on every rank, for every run of the recipe (every point of a Table 3 sweep): the
   ranks train each bottleneck together with ``DistributedDataParallel`` (each on its share of the
   shards, gradients averaged), rank 0 writes the bottleneck, the model and ``metrics.json``; a
   rerun loads a finished bottleneck on every rank instead of training it
   (`salfcbm.reproduce.run.train_recipe`);
4. the ranks meet a last time and the process group is closed on every rank; rank 0 alone then
   writes the reports (baselines, non-sparse rows, reload-and-explain checks, Table 2,
   ``results.json``, ``table.md``: `salfcbm.reproduce.run.finish_recipe`) from the trained models
   in memory, and the other ranks return ``None``.

The process-group timeout (``torch.distributed``'s default: 10 minutes under NCCL, 30 under gloo) bounds
how long a rank may wait at a collective for another. Every rank does the same work between two
collectives (its shards, its share of the training steps, the same head), so the waits are short; the
one long stage that only rank 0 does (the reports, hours with Table 2's benchmark at ImageNet scale)
runs after the group is closed, so no rank waits for it. A rerun whose missing shards all belong to one
rank makes the others wait at the store's barrier for that rank's shards: give such a run a longer
timeout (``init_process_group(timeout=...)`` before calling `run_on_ranks`) or fewer shards per rank.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["run_on_ranks"]


def run_on_ranks(recipe: Any, data_root: str | os.PathLike, run_dir: str | os.PathLike,
                 **kwargs: Any) -> dict[str, Any] | None:
    """`run_recipe` on every rank of an initialised process group (outside one: `run_recipe` itself).

    Every rank computes its shards of the stores (a rerun: the missing ones) and runs `salfcbm.fit`
    (the bottleneck trained with ``DistributedDataParallel`` over the ranks; a rerun resumes it);
    then the group is closed and rank 0 writes the reports. Takes `run_recipe`'s arguments; returns
    rank 0's result and ``None`` on the other ranks.
    """
    import torch.distributed as dist

    from salfcbm._utils.distributed import rank_and_world
    from salfcbm.reproduce.run import finish_recipe, run_recipe, train_recipe

    rank, world = rank_and_world()
    if world == 1:
        return run_recipe(recipe, data_root, run_dir, **kwargs)
    stores_only = kwargs.pop("stores_only", False)
    trained = train_recipe(recipe, data_root, run_dir, stores_only=stores_only, **kwargs)  # every rank
    dist.barrier()  # the last collective: rank 0's reports below make no rank wait
    dist.destroy_process_group()
    if rank != 0:
        return None
    if stores_only:
        return {"recipe": recipe.to_dict(), "runs": {name: {} for name in trained.runs}, "table": ""}
    return finish_recipe(trained)
