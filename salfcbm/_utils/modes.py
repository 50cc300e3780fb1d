"""Module state that salfcbm borrows and must hand back: train/eval flags, device and dtype.

The one home for these mechanisms: every layer that switches a user's module to eval mode for
a call, or needs to know where a module lives, uses these helpers, so the promise "your model
comes back exactly as it was" is kept in one place.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


_BORROW_LOCK = threading.RLock()  # re-entrant: a module's own train() may borrow again
_BORROWS: dict[nn.Module, list] = {}  # module -> [mode, borrowers, recorded flags]


def _borrow(module: nn.Module, mode: bool) -> list | None:
    """Join (or open) the borrow of ``module`` in ``mode``; ``None`` if it is borrowed in the other mode.

    Threads that call one model at once all need it in the same mode (eval, for a frozen
    backbone): the first records the flags and sets the mode, the last puts the flags back.
    Recording per call would let a second thread record the first's eval flags, and the first
    thread's restore would switch the module back to train mode under the second's forward pass.
    """
    with _BORROW_LOCK:
        b = _BORROWS.get(module)
        if b is None:
            b = _BORROWS[module] = [mode, 0, [(m, m.training) for m in module.modules()]]
            module.train(mode)
        elif b[0] != mode:
            return None
        b[1] += 1
        return b


def _hand_back(module: nn.Module) -> None:
    with _BORROW_LOCK:
        b = _BORROWS[module]
        b[1] -= 1
        if b[1] == 0:
            del _BORROWS[module]
            for m, flag in b[2]:
                m.training = flag


@contextlib.contextmanager
def preserved_modes(module: Any, mode: bool | None = None) -> Iterator[None]:
    """Run a block with every submodule's own ``training`` flag restored afterwards.

    Args:
        module: the module whose flags are borrowed; anything that is not an ``nn.Module``
            (a plain callable) is left alone.
        mode: ``False`` puts the whole module in eval mode for the block, ``True`` in train
            mode, ``None`` leaves the flags as they are (the block may change them).

    Each submodule's flag is recorded and put back one by one, so a model whose root is in
    train mode with one submodule in eval mode (``net.train(); net.bn1.eval()``) comes back
    exactly so, also when the block raises. ``module.train(was_training)`` would flip that
    submodule. Thread-safe: concurrent blocks asking for the same ``mode`` share one borrow
    (the flags are recorded by the first and put back by the last), so a model served from
    several threads is never switched back under a running call.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)); _ = net.train(); _ = net[1].eval()
        >>> with preserved_modes(net, mode=False):
        ...     net.training, net[1].training
        (False, False)
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    if not isinstance(module, nn.Module):
        yield
        return
    borrow = None if mode is None or torch.compiler.is_compiling() else _borrow(module, mode)
    if borrow is not None:  # shared with the other threads that borrow the module in the same mode
        try:
            yield
        finally:
            _hand_back(module)
        return
    flags = [(m, m.training) for m in module.modules()]
    try:
        if mode is not None:
            module.train(mode)
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module: its first parameter, else its first floating buffer,
    else CPU and float32 (a module with no state)."""
    for p in module.parameters():
        return p.device, p.dtype
    for b in module.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.float32


def module_device(module: nn.Module) -> torch.device:
    """Device of a module (see `module_device_dtype`)."""
    return module_device_dtype(module)[0]
