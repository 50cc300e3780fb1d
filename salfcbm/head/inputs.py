"""Input handling of the head solvers: features and labels as tensors, arrays or (x, y) batches, checked."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from salfcbm.errors import InputError

__all__ = ["to_tensor", "collect_xy", "check_xy", "check_labels", "resolve_device", "prepare_data", "check_positive"]


def to_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    raise InputError(
        f"{what} must be a torch.Tensor, a numpy array or an iterable of (x, y) batches; "
        f"received {type(a).__name__}."
    )


def collect_xy(x: Any, y: Any, what: str) -> tuple[Tensor, Tensor]:
    """Turn tensors/arrays or an iterable of ``(x, y, ...)`` batches into two tensors."""
    if y is not None:
        return to_tensor(x, f"x_{what}"), to_tensor(y, f"y_{what}")
    if isinstance(x, (Tensor, np.ndarray)):
        raise InputError(
            f"y_{what} is missing: received features x_{what} of shape {tuple(x.shape)} but y_{what}=None. "
            f"Pass the labels, or pass x_{what} as an iterable of (x, y) batches (e.g. a DataLoader)."
        )
    if not isinstance(x, Iterable):
        raise InputError(
            f"x_{what} must be a tensor, a numpy array or an iterable of (x, y) batches; "
            f"received {type(x).__name__}."
        )
    xs, ys = [], []
    for i, batch in enumerate(x):
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise InputError(
                f"Batch {i} of x_{what} is {type(batch).__name__}; expected a tuple (x, y) or (x, y, index)."
            )
        xs.append(to_tensor(batch[0], f"x_{what} batch {i}"))
        ys.append(to_tensor(batch[1], f"y_{what} batch {i}"))
    if not xs:
        raise InputError(f"x_{what} yielded no batches; expected at least one (x, y) batch.")
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as e:
        raise InputError(
            f"The batches of x_{what} do not stack: {e}. Every batch must be (B, M) features with (B,) labels."
        ) from e


def check_xy(x: Tensor, y: Tensor, what: str, m: int | None) -> None:
    if x.dim() != 2:
        raise InputError(
            f"x_{what} must be 2-D (N, M) pooled concept activations; received shape {tuple(x.shape)}. "
            "Pool the concept maps first (e.g. x.mean((2, 3)) or x.amax((2, 3)))."
        )
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise InputError(f"x_{what} must hold real numbers; received dtype {x.dtype}.")
    if y.dim() != 1:
        raise InputError(
            f"y_{what} must be 1-D integer class indices of shape (N,); received shape {tuple(y.shape)}. "
            "Convert one-hot labels with y.argmax(1)."
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if y.is_floating_point() and bool(torch.all(y == y.round())):
            pass  # integral floats are accepted
        else:
            raise InputError(f"y_{what} must hold integer class indices; received dtype {y.dtype}.")
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"x_{what} has {x.shape[0]} rows but y_{what} has {y.shape[0]} labels; they must match."
        )
    if x.shape[0] == 0:
        raise InputError(f"x_{what} is empty (0 rows); expected at least one example.")
    if m is not None and x.shape[1] != m:
        raise InputError(
            f"x_{what} has {x.shape[1]} features but x_train has {m}; both must use the same concepts."
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise InputError(
            f"x_{what} contains NaN or infinite values in {bad} row(s). Drop those rows or check the "
            "standardisation (a concept with zero training std divides by zero)."
        )


def check_labels(y: Tensor, what: str, num_classes: int) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise InputError(
            f"y_{what} holds labels in [{lo}, {hi}] but num_classes={num_classes}; labels must lie in "
            f"[0, {num_classes - 1}]. Pass num_classes= explicitly or remap the labels."
        )


def resolve_device(device: Any, x: Any) -> torch.device:
    if device is None:
        return x.device if isinstance(x, Tensor) else torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"device={device!r} is not a torch device; pass e.g. 'cpu' or 'cuda:0'.") from e


def prepare_data(
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    num_classes: int | None,
    device: Any,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, int, torch.device]:
    dev = resolve_device(device, x_train)
    xt, yt = collect_xy(x_train, y_train, "train")
    check_xy(xt, yt, "train", None)
    xv = yv = None
    if x_val is not None or y_val is not None:
        if x_val is None:
            raise InputError("y_val was given without x_val; pass both or neither.")
        xv, yv = collect_xy(x_val, y_val, "val")
        check_xy(xv, yv, "val", xt.shape[1])
    if num_classes is None:
        num_classes = int(yt.max()) + 1
        if yv is not None:
            num_classes = max(num_classes, int(yv.max()) + 1)
    elif not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputError(f"num_classes must be a positive int; received {num_classes!r}.")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise InputError(
            f"The labels name only {num_classes} class; a classifier needs at least 2. "
            "Pass num_classes= if some classes are absent from these labels."
        )
    check_labels(yt, "train", num_classes)
    present = int((torch.bincount(yt, minlength=num_classes) > 0).sum())
    if present < 2:
        raise InputError(
            f"y_train holds a single class ({int(yt[0])}); a classifier needs examples of at least 2 classes."
        )
    if yv is not None:
        check_labels(yv, "val", num_classes)
    xt = xt.to(device=dev, dtype=torch.float32)
    yt = yt.to(device=dev, dtype=torch.long)
    if xv is not None:
        xv = xv.to(device=dev, dtype=torch.float32)
        yv = yv.to(device=dev, dtype=torch.long)
    return xt, yt, xv, yv, num_classes, dev


def check_positive(name: str, v: Any, integer: bool = False) -> None:
    ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.floating, np.integer))
    if isinstance(v, bool) or not ok or not (v > 0) or (not integer and not math.isfinite(v)):
        kind = "a positive int" if integer else "a positive finite number"
        raise InputError(f"{name} must be {kind}; received {v!r}.")

