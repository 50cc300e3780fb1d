"""How many DataLoader worker processes this machine can usefully run."""

from __future__ import annotations

import logging
import os

from salfcbm.errors import InputError

__all__ = ["available_cpus", "resolve_num_workers", "DEFAULT_MAX_WORKERS"]

#: The most workers chosen automatically (more rarely helps image decoding, and each costs memory).
DEFAULT_MAX_WORKERS = 4

logger = logging.getLogger("salfcbm")


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_num_workers(requested: int | None, cpus: int | None = None) -> int:
    """The DataLoader workers to use: ``requested`` capped at the available cores, or a default from them.

    ``None`` (automatic) gives ``min(4, cores - 1)``: one core stays with the main process, which
    runs the models; on one core, 0 (load in the main process). An explicit request above the
    number of cores (torch warns that it "might get DataLoader running slow or even freeze") is
    lowered to the number of cores, with a log line.

    Examples:
        >>> resolve_num_workers(None, cpus=2), resolve_num_workers(None, cpus=16), resolve_num_workers(8, cpus=2)
        (1, 4, 2)
        >>> resolve_num_workers(0, cpus=2)
        0
    """
    n = available_cpus() if cpus is None else max(1, int(cpus))
    if requested is None:
        return max(0, min(DEFAULT_MAX_WORKERS, n - 1))
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
        raise InputError(f"num_workers must be an int >= 0 or None (automatic), got {requested!r}.")
    if requested > n:
        logger.info("num_workers=%d lowered to %d, the CPU cores available to this process.", requested, n)
        return n
    return requested
