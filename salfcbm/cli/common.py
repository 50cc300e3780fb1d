"""Run-time helpers the commands share: threads, workers, the scorer, image folders, ``args.json``, torchrun.

Each imports what it needs when called (the parser is built without torch).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["cuda_available", "image_folder", "init_distributed", "make_scorer", "set_threads", "workers",
           "write_args"]


def set_threads(args) -> None:
    """``--threads``: torch's intra-op CPU threads (0 leaves torch's default)."""
    n = getattr(args, "threads", 0)
    if n:
        import torch

        torch.set_num_threads(n)


def workers(args) -> int:
    """``--num-workers``, capped at this process's CPU cores; by default ``min(4, cores - 1)``."""
    from salfcbm._utils.workers import resolve_num_workers

    return resolve_num_workers(args.num_workers)


def make_scorer(args):
    """The CLIP scorer; a random init (``--pretrained none``) is seeded so a rerun resumes its stores."""
    import torch

    from salfcbm.supervision.scorers import CLIPScorer

    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    with torch.random.fork_rng(devices=[]):  # a random init (`none`, a local-dir: without weights) is seeded
        torch.manual_seed(args.seed)
        return CLIPScorer(args.scorer, pretrained=pretrained, device=args.device, precision=args.precision)


def image_folder(root: str, size: int, skip_corrupt: bool = False):
    """An image folder (one sub-folder per class) at ``size`` px."""
    from salfcbm.datasets.folder import ImageFolderDataset

    return ImageFolderDataset(root, size=size, skip_corrupt=skip_corrupt)


def write_args(run: Path, args) -> None:
    """``RUN/args.json``: the parsed command line."""
    from salfcbm._utils.io import atomic_write_bytes

    plain = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_bytes(run / "args.json", (json.dumps(plain, indent=2, default=str) + "\n").encode())


def init_distributed(args) -> None:
    """Under torchrun (WORLD_SIZE > 1): one process per GPU, ranks split the shards."""
    from salfcbm._utils.distributed import init_distributed as init

    args.device = init(args.device)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (``False`` when torch cannot tell)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
