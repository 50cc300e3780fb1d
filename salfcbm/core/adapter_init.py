"""Building the adapter's layers (the bottleneck and the head) without their random init when a load will
overwrite every value: `from_pretrained` builds the model under `adapter_init_skipped`, then loads the saved
tensors, checked to be exactly the adapter's (`salfcbm.core.load_checks.check_state_matches`).

At ImageNet's 4,741 concepts the skipped init is about 14 M random numbers (~0.08 s of a load on one CPU thread).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["adapter_init_skipped", "new_adapter_layer"]

_SKIP = contextvars.ContextVar("salfcbm_skip_adapter_init", default=False)


@contextmanager
def adapter_init_skipped() -> Iterator[None]:
    """Within the block, `new_adapter_layer` leaves the layers' values uninitialised (to be loaded)."""
    token = _SKIP.set(True)
    try:
        yield
    finally:
        _SKIP.reset(token)


def new_adapter_layer(cls: type[nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """``cls(*args, **kwargs)``, or the same layer with uninitialised values inside `adapter_init_skipped`.

    Examples:
        >>> with adapter_init_skipped():
        ...     layer = new_adapter_layer(nn.Linear, 3, 2)
        >>> layer.weight.shape, layer.weight.device.type
        (torch.Size([2, 3]), 'cpu')
    """
    if _SKIP.get():
        return torch.nn.utils.skip_init(cls, *args, **kwargs)
    return cls(*args, **kwargs)
