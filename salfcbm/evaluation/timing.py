"""Timing of heatmap methods and forward passes: `time_attribution` (seconds per explained image),
`forward_speed` (the wrapped SALF-CBM against its bare backbone) and `time_methods` (the benchmark's
interleaved timing rounds over every method, with speed ratios to a reference).

On the CPU the ratios use the process's CPU time (other processes on a shared machine disturb it far
less than wall time); on CUDA, wall time, synchronising around each call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from salfcbm.errors import InputError
from salfcbm.evaluation.inputs import check_images

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.evaluation.methods import BenchmarkMethod


__all__ = ["forward_speed", "time_attribution", "time_methods"]


def time_attribution(
    attributor: Any,
    images: torch.Tensor,
    target: Any = None,
    repeats: int = 3,
    warmup: int = 1,
) -> float:
    """Median wall-clock seconds per image of ``attributor.attribute(images, target)``.

    ``attributor`` is anything with an ``attribute(images, target)`` method (an
    `Attributor`, `salfcbm.explain.attribution.SALFCBMAttribution`) or a
    callable ``f(images, target)``. Runs ``warmup`` untimed calls, then ``repeats`` timed calls (synchronising
    CUDA around each), and divides the median by the batch size.

    Examples:
        >>> import torch
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> t = time_attribution(make_baseline("center", None), torch.zeros(4, 3, 8, 8), repeats=2)
        >>> t >= 0
        True
    """
    fn = getattr(attributor, "attribute", attributor)  # Attributor, SALFCBMAttribution, Captum-like, or a function
    if not callable(fn):
        raise InputError(
            "`attributor` must have an `attribute(images, target)` method or be callable, "
            f"got {type(attributor).__name__}."
        )
    images = check_images(images)
    for nm, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"`{nm}` must be an int >= {lo}, got {v!r}.")
    cuda = images.is_cuda

    def once() -> float:
        if cuda:
            torch.cuda.synchronize(images.device)
        t0 = time.perf_counter()
        fn(images, target)
        if cuda:
            torch.cuda.synchronize(images.device)
        return time.perf_counter() - t0

    for _ in range(warmup):
        once()
    times = [once() for _ in range(repeats)]
    return statistics.median(times) / images.shape[0]


def forward_speed(
    wrapped: Callable[[torch.Tensor], Any],
    bare: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    *,
    wrapped_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bare_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Forward-pass time of the wrapped SALF-CBM against the bare backbone, same batch and device.

    Both run under ``torch.no_grad()`` on their own inputs (preprocessing is done once,
    outside the timing); the calls are interleaved and the median of ``repeats`` is kept.
    On the CPU the ratio uses the process's CPU time (all threads), which other processes
    on a shared machine disturb far less than wall time; on CUDA, wall time.

    Returns:
        ``wrapped_seconds``, ``bare_seconds`` (wall, per batch), ``wrapped_cpu_seconds``,
        ``bare_cpu_seconds``, ``ratio`` (wrapped ÷ bare, on ``clock``), ``clock``
        (``"cpu"`` or ``"wall"``), ``batch_size``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> out = forward_speed(net, net, torch.rand(2, 3, 8, 8), repeats=2)
        >>> sorted(out)[:4]
        ['bare_cpu_seconds', 'bare_seconds', 'batch_size', 'clock']
    """
    if not callable(wrapped) or not callable(bare):
        raise InputError("`wrapped` and `bare` must be callable models.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        raise InputError(f"`images` must be a non-empty (B, C, H, W) tensor, got {getattr(images, 'shape', images)!r}.")
    for nm, v, lo in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"`{nm}` must be an int >= {lo}, got {v!r}.")
    xw = images if wrapped_preprocess is None else wrapped_preprocess(images)
    xb = images if bare_preprocess is None else bare_preprocess(images)
    cuda = images.is_cuda

    def once(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize(images.device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            fn(x)
        if cuda:
            torch.cuda.synchronize(images.device)
        return time.perf_counter() - t0, time.process_time() - c0

    for _ in range(warmup):
        once(wrapped, xw)
        once(bare, xb)
    tw, tb = [], []
    for _ in range(repeats):
        tw.append(once(wrapped, xw))
        tb.append(once(bare, xb))
    out: dict[str, Any] = {
        "wrapped_seconds": statistics.median(t[0] for t in tw),
        "bare_seconds": statistics.median(t[0] for t in tb),
        "wrapped_cpu_seconds": statistics.median(t[1] for t in tw),
        "bare_cpu_seconds": statistics.median(t[1] for t in tb),
        "batch_size": int(images.shape[0]),
        "clock": "wall" if cuda else "cpu",
    }
    w, b = (out["wrapped_seconds"], out["bare_seconds"]) if cuda else (out["wrapped_cpu_seconds"], out["bare_cpu_seconds"])
    out["ratio"] = w / b if b > 0 else float("inf")
    return out


def _prepare_timing(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    errors: Mapping[str, str],
    x01: torch.Tensor,
    y: torch.Tensor | None,
    targets: str,
    on_error: str,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each surviving method's inputs and explained classes on the timing batch (failures recorded in rows)."""
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, m in methods.items():
        if name in errors:
            continue
        try:
            inp = m.inputs(x01)
            with torch.no_grad():
                t = m.logits(inp).argmax(1) if targets == "predicted" or y is None else y
            prepared[name] = (inp, t)
        except Exception as e:
            if on_error == "raise":
                raise
            rows[name]["timing_error"] = f"{type(e).__name__}: {e}"
    return prepared


def _timing_rounds(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]],
    timing_repeats: int,
    on_error: str,
) -> None:
    """Time the prepared methods in interleaved rounds and store the median seconds per image in rows."""
    # Rounds over all methods (round 0 warms up), so a change in the machine's load hits
    # every method alike; the median round is kept.
    wall: dict[str, list[float]] = {n: [] for n in prepared}
    cpu: dict[str, list[float]] = {n: [] for n in prepared}
    for rnd in range(timing_repeats + 1):
        for name, (inp, t) in list(prepared.items()):
            m = methods[name]
            try:
                c0 = time.process_time()
                w = time_attribution(lambda a, b, m=m: m.attribute(a, b), inp, t, repeats=1, warmup=0)
                c = (time.process_time() - c0) / inp.shape[0]
            except Exception as e:
                if on_error == "raise":
                    raise
                rows[name]["timing_error"] = f"{type(e).__name__}: {e}"
                del prepared[name]
                continue
            if rnd:
                wall[name].append(w)
                cpu[name].append(c)
    for name in prepared:
        rows[name]["seconds_per_image"] = statistics.median(wall[name])
        rows[name]["cpu_seconds_per_image"] = statistics.median(cpu[name])


def time_methods(
    methods: Mapping[str, BenchmarkMethod],
    rows: dict[str, dict[str, Any]],
    timing_set: tuple[torch.Tensor, torch.Tensor | None] | None,
    errors: Mapping[str, str],
    n_time: int,
    *,
    targets: str,
    timing_repeats: int,
    reference: str | None,
    on_error: str,
) -> str:
    """Time every surviving method on the first ``n_time`` images, add speed ratios; return the clock used."""
    clock = "wall"
    if n_time and timing_set is not None:
        x01, y = timing_set
        x01, y = x01[:n_time], (y[:n_time] if y is not None else None)
        clock = "wall" if x01.is_cuda else "cpu"
        prepared = _prepare_timing(methods, rows, errors, x01, y, targets, on_error)
        _timing_rounds(methods, rows, prepared, timing_repeats, on_error)
        key = "seconds_per_image" if clock == "wall" else "cpu_seconds_per_image"
        ref_s = rows.get(reference, {}).get(key) if reference is not None else None
        if ref_s:
            for r in rows.values():
                if r.get(key) is not None:
                    r["speed_ratio"] = r[key] / ref_s
    return clock
