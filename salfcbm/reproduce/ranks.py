"""``salfcbm reproduce`` under torchrun: every rank computes its share of the stores, rank 0 trains, a rerun resumes.

The stages and what a rerun after an interruption (of any rank) does on each rank:

1. ``recipe.json``: every rank checks that the run directory holds this recipe's run (each refuses
   another version alike, so no rank waits for one that stopped);
2. the similarity and feature stores: rank ``r`` of ``w`` computes the missing shards ``i`` with
   ``i % w == r`` (a rerun: only the shards that an interrupted rank had not finished; a shard is
   written atomically, so a half-written one does not exist), and the ranks meet at a barrier;
3. then the process group is closed on every rank (a rank that waited at a barrier for the hours
   of training would time out) and rank 0 trains: the bottleneck, the head and every later stage
   resume from their artefacts in the run directory (`salfcbm.fit`'s run state); the other ranks
   return ``None``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["run_on_ranks"]


def run_on_ranks(recipe: Any, data_root: str | os.PathLike, run_dir: str | os.PathLike,
                 **kwargs: Any) -> dict[str, Any] | None:
    """`run_recipe` on every rank of an initialised process group (outside one: `run_recipe` itself).

    Every rank computes its shards of the stores (a rerun: the missing ones), then the group is
    closed and rank 0 runs the rest of the recipe, resuming from the run directory. Returns rank 0's
    result and ``None`` on the other ranks.
    """
    import torch.distributed as dist

    from salfcbm._utils.distributed import rank_and_world
    from salfcbm.reproduce.run import run_recipe

    rank, world = rank_and_world()
    if world == 1:
        return run_recipe(recipe, data_root, run_dir, **kwargs)
    run_recipe(recipe, data_root, run_dir, stores_only=True, **kwargs)
    dist.barrier()
    dist.destroy_process_group()  # rank 0 alone from here: no collective waits for hours of training
    if rank != 0:
        return None
    return run_recipe(recipe, data_root, run_dir, **kwargs)
