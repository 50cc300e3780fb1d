"""Argument types of the command lines (``salfcbm`` and ``salfcbm reproduce``): every value checked at parse time.

Numbers are finite and inside sane bounds, paths are of the right kind (folder or file), devices
exist on this machine; each refusal is an ``argparse.ArgumentTypeError`` naming what was expected.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = ["int_in", "float_in", "device", "in_dir", "in_file", "out_dir", "out_file", "concepts_file", "clip_name",
           "positive_int", "nonneg_int", "positive_float", "seed", "threads", "workers", "image_size", "grid_size",
           "similarity", "lr"]


def _int_in(lo: int, hi: int):
    """An argparse type: an integer from ``lo`` to ``hi``."""

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi:,}, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi:,}, got {s!r}")
        return v

    parse.__name__ = f"integer in [{lo}, {hi}]"
    return parse


def _float_in(lo: float, hi: float, *, open_low: bool = False):
    """An argparse type: a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``open_low``)."""
    span = f"{'(' if open_low else '['}{lo:g}, {hi:g}]"

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {s!r}") from None
        if not math.isfinite(v) or v > hi or v < lo or (open_low and v == lo):
            raise argparse.ArgumentTypeError(f"expected a finite number in {span}, got {s!r}")
        return v

    parse.__name__ = f"number in {span}"
    return parse


_positive_int = _int_in(1, 10**9)
_nonneg_int = _int_in(0, 10**9)
_positive_float = _float_in(0.0, 1e12, open_low=True)
_seed = _int_in(0, 2**32 - 1)  # numpy's legacy seeding takes 32 bits; torch's takes 64
_threads = _int_in(0, 4096)
_workers = _int_in(0, 512)
_image_size = _int_in(8, 8192)
_grid_size = _int_in(1, 64)
_similarity = _float_in(-1.0, 1.0)  # a cosine similarity
_lr = _float_in(0.0, 10.0, open_low=True)


def _device(s: str) -> str:
    """An argparse type: a torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        d = torch.device(s)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as 'cpu', 'cuda' or 'cuda:1', got {s!r}") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(f"{s!r}: CUDA is not available on this machine; pass --device cpu")
        if d.index is not None and d.index >= n:
            raise argparse.ArgumentTypeError(f"{s!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif d.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{s!r}: MPS is not available on this machine; pass --device cpu")
    elif d.type != "cpu":
        raise argparse.ArgumentTypeError(f"{s!r}: salfcbm runs on 'cpu', 'cuda[:N]' or 'mps', not {d.type!r}")
    return str(d)


def _blocking_file(p: Path) -> Path | None:
    """The first existing ancestor of ``p`` that is not a folder (so ``p`` cannot be created), if any."""
    for parent in p.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _in_dir(s: str) -> str:
    """An argparse type: an existing folder."""
    p = Path(s).expanduser()
    if not p.exists():
        raise argparse.ArgumentTypeError(f"no folder {s!r}; pass an existing folder")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a file, not a folder; pass a folder")
    return s


def _special_kind(p: Path) -> str:
    """What a path that is neither a folder nor a regular file is, in words."""
    import stat

    mode = p.stat().st_mode
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def _in_file(s: str) -> str:
    """An argparse type: an existing, readable regular file."""
    p = Path(s).expanduser()
    if not p.exists():
        what = " (a link to nothing)" if p.is_symlink() else ""
        raise argparse.ArgumentTypeError(f"{s!r} does not exist{what}; pass an existing file")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a folder, not a file; pass a file")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{s!r} is {_special_kind(p)}, not a regular file; pass a regular file")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"{s!r} is not readable (permission denied); fix its permissions")
    return s


def _out_dir(s: str) -> str:
    """An argparse type: a folder to write into (created if missing), never an existing file."""
    p = Path(s).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a file; pass a folder (it is created if missing)")
    blocker = _blocking_file(p)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{s!r} cannot be created: {str(blocker)!r} is a file; pass another folder")
    return s


def _out_file(s: str) -> str:
    """An argparse type: a file to write (its folders are created if missing), never an existing folder."""
    p = Path(s).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is a folder; pass a file name, e.g. {str(p / 'report.html')!r}")
    if p.exists() and not p.is_file():
        raise argparse.ArgumentTypeError(f"{s!r} is {_special_kind(p)}, not a regular file; pass a file name")
    blocker = _blocking_file(p)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{s!r} cannot be written: {str(blocker)!r} is a file, not a folder")
    return s


def _concepts_file(s: str) -> str:
    """An argparse type: a concept file, or ``lf-cbm:NAME`` (a published concept set)."""
    if s.startswith("lf-cbm:") and not os.path.exists(s):
        return s
    return _in_file(s)


# public names (the command lines import these, never the private ones)
int_in, float_in, device, in_dir, in_file, out_dir, out_file, concepts_file = (
    _int_in, _float_in, _device, _in_dir, _in_file, _out_dir, _out_file, _concepts_file)
positive_int, nonneg_int, positive_float, seed, threads, workers, image_size, grid_size, similarity, lr = (
    _positive_int, _nonneg_int, _positive_float, _seed, _threads, _workers, _image_size, _grid_size, _similarity, _lr)


def clip_name(s: str) -> str:
    """An argparse type: an open_clip model name, ``hf-hub:ORG/REPO``, or ``local-dir:PATH`` naming an existing folder."""
    if s.startswith("local-dir:"):
        folder = Path(s.split(":", 1)[1]).expanduser()
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise argparse.ArgumentTypeError(f"{s!r}: the folder {str(folder)!r} {what}; pass local-dir:FOLDER with "
                                             "the open_clip config and weights")
    return s
