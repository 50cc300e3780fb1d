"""torchrun: join the process group when launched with WORLD_SIZE > 1 (one process per GPU), and the one
home of this process's rank, the world size and the barrier (no-ops outside a process group)."""

from __future__ import annotations

import os

import torch

__all__ = ["barrier", "init_distributed", "rank_and_world"]


def init_distributed(device: str | None) -> str | None:
    """Initialise ``torch.distributed`` under torchrun; returns the device this rank should use.

    NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``), gloo otherwise. A no-op outside torchrun
    or when the group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl")
        return f"cuda:{local}"
    torch.distributed.init_process_group("gloo")
    return device


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``torch.distributed``; ``(0, 1)`` outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank of the process group (a no-op outside one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
