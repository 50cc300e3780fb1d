"""Run-time helpers the commands share: threads, workers, the scorer, image folders, ``args.json``, torchrun.

Each imports what it needs when called (the parser is built without torch).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["check_pooling", "cuda_available", "image_folder", "init_distributed", "make_scorer", "set_threads",
           "workers", "write_args"]


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
    """The concept scorer ``--scorer`` names, built by `salfcbm.supervision.scorers.scorer_from_name` from the
    scorer registry as it is when the command runs (a scorer registered by code that calls `salfcbm.cli.main`
    counts).

    A registered scorer (``NAME`` or ``NAME:SPEC``) is built with its factory's own options; any other name
    is CLIP, with ``--pretrained`` (unless ``clip:MODEL/TAG`` names the tag), ``--device`` and
    ``--precision``. The build is seeded with ``--seed``: a random init (``--pretrained none``, a
    local-dir: without weights) is the same on a rerun, which then resumes its stores.
    """
    import torch

    from salfcbm.supervision.scorer_registry import CLIP_PREFIXES, list_scorers, scorer_from_name

    key, _, spec = args.scorer.partition(":")
    kwargs = {"device": args.device, "precision": args.precision}
    if key != "clip" and key in list_scorers():
        kwargs = {}
    elif not (key == "clip" and "/" in spec and not spec.startswith(tuple(p + ":" for p in CLIP_PREFIXES))):
        kwargs["pretrained"] = None if args.pretrained in (None, "", "none") else args.pretrained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return scorer_from_name(args.scorer, **kwargs)


def check_pooling(name: str) -> str:
    """``--pooling``, checked against the pooling registry as it is when the command runs (a pooling
    registered by code that calls `salfcbm.cli.main` counts); `BadUsage` lists the registered ones."""
    from salfcbm.cli.args import BadUsage
    from salfcbm.cli.choices import poolings

    names = poolings()
    if name not in names:
        raise BadUsage("salfcbm train", f"argument --pooling: {name!r} is not a registered pooling (choose from "
                                        f"{', '.join(names)}, or register it with salfcbm.core.pooling.register_pooling "
                                        "in the process that calls salfcbm.cli.main)")
    return name


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
