"""torchrun: join the process group when launched with WORLD_SIZE > 1 (one process per GPU)."""

from __future__ import annotations

import os

import torch

__all__ = ["init_distributed"]


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
