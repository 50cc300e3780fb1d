"""Module state that salfcbm borrows and must hand back: train/eval flags, device and dtype.

The one home for these mechanisms: every layer that switches a user's module to eval mode for
a call, or needs to know where a module lives, uses these helpers, so the promise "your model
comes back exactly as it was" is kept in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


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
    submodule.

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
