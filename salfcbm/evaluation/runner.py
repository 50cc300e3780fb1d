"""Benchmark SALF-CBM heatmaps against attribution baselines (paper section 4.2, Table 2 and figure 4).

One runner, `run_attribution_benchmark`, scores any set of heatmap methods on
the same images with the same protocol:

* **zero-shot segmentation** against ground-truth foreground masks, with the protocol of
  Chefer et al. (CVPR 2021, ``imagenet_seg_eval.py``) that the paper's Table 2 uses
  (`SegmentationMetrics`: pixel accuracy, mIoU, mAP);
* **faithfulness**: the deletion and insertion AUC of RISE
  (`DeletionInsertion`), each method measured on *the model it
  explains* (SALF-CBM's own logits for SALF-CBM, the standard backbone's for the
  baselines);
* **speed**: seconds per explained image (`time_attribution`,
  same device and batch for every method) and its ratio to SALF-CBM's.

A method is a `BenchmarkMethod`: an attributor (anything with
``attribute(inputs, target) -> (B, 1, h, w)``), the model it explains, and the function
that turns the benchmark's images (``[0, 1]``, as datasets give them) into that model's
inputs. `build_methods` builds SALF-CBM's entry and every baseline of
`salfcbm.evaluation.baselines` for a trained `SALFCBM`: the baselines explain
the wrapped backbone with its own classifier (the "standard model" of Table 2), and the
layer methods use the layer SALF-CBM taps.

Protocol choices (documented in ``docs/benchmarks.md``):

* **Target class**: by default every method explains *its own model's predicted class*,
  as Chefer et al. do (``generate_LRP(..., index=None)`` takes the arg-max; the
  ImageNet-segmentation file has no class labels). Pass ``targets="labels"`` (with
  ``labels=``) to explain the ground-truth class instead.
* **Deletion substrate**: pixels are deleted and inserted in the benchmark's ``[0, 1]``
  image space, before each model's own preprocessing, so every method is perturbed the
  same way; `constant_substrate` with the backbone's normalisation mean is RISE's
  "zeros" of a mean-normalised model.
* **Floors**: ``random`` and ``center`` are scored on the backbone's logits.

The command-line front end is ``benchmarks/bench_attribution.py``. The methods come from
`salfcbm.evaluation.methods`, the scoring pass from `salfcbm.evaluation.scoring`, the timing from
`salfcbm.evaluation.timing`, the result type from `salfcbm.evaluation.result`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from salfcbm.errors import InputError
from salfcbm.evaluation.methods import BenchmarkMethod
from salfcbm.evaluation.result import METRIC_COLUMNS, BenchmarkResult  # noqa: F401  (METRIC_COLUMNS: the doctest)
from salfcbm.evaluation.scoring import collect_examples, make_scoring_state, result_rows, score_all_batches
from salfcbm.evaluation.timing import time_methods

__all__ = ["run_attribution_benchmark"]

_TARGET_MODES = ("predicted", "labels")


def _check_tensor_inputs(images: torch.Tensor, masks: Any) -> torch.Tensor:
    if images.dim() != 4 or not images.is_floating_point() or images.shape[0] == 0:
        raise InputError(f"`images` must be a non-empty float (N, C, H, W) tensor, got shape {tuple(images.shape)}.")
    if not isinstance(masks, torch.Tensor):
        raise InputError(
            f"`masks` must be a (N, H, W) tensor when `images` is a tensor, got {type(masks).__name__}."
        )
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[0] != images.shape[0]:
        raise InputError(
            f"`masks` must be (N, H, W) with N={images.shape[0]} (one per image), got shape {tuple(masks.shape)}."
        )
    return masks


def _check_benchmark_options(
    methods: Any,
    batch_size: Any,
    n_steps: Any,
    perturbation_batch_size: Any,
    timing_repeats: Any,
    n_examples: Any,
    timing_batch: Any,
    max_images: Any,
    on_error: Any,
    deletion_substrate: Any,
    insertion_substrate: Any,
) -> None:
    """Validate the benchmark's methods and scalar options, raising `InputError`."""
    if not isinstance(methods, Mapping) or not methods:
        raise InputError(f"`methods` must be a non-empty mapping name -> BenchmarkMethod, got {methods!r}.")
    for name, m in methods.items():
        if not isinstance(m, BenchmarkMethod):
            raise InputError(
                f"methods[{name!r}] must be a BenchmarkMethod(attributor, model, preprocess), got {type(m).__name__}."
            )
    for nm, v, lo in (
        ("batch_size", batch_size, 1),
        ("n_steps", n_steps, 1),
        ("perturbation_batch_size", perturbation_batch_size, 1),
        ("timing_repeats", timing_repeats, 1),
        ("n_examples", n_examples, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"`{nm}` must be an int >= {lo}, got {v!r}.")
    for nm, v in (("timing_batch", timing_batch), ("max_images", max_images)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if nm == "timing_batch" else 1)):
            raise InputError(f"`{nm}` must be a positive int or None, got {v!r}.")
    if on_error not in ("raise", "record"):
        raise InputError(f"`on_error` must be 'raise' or 'record', got {on_error!r}.")
    for nm, fn in (("deletion_substrate", deletion_substrate), ("insertion_substrate", insertion_substrate)):
        if fn is not None and not callable(fn):
            raise InputError(f"`{nm}` must be a callable images -> images or None, got {type(fn).__name__}.")


def _check_benchmark_data(
    images: torch.Tensor | Iterable[Any], masks: Any, labels: Any, targets: Any
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Validate ``targets`` and the images / masks / labels; return the normalised ``(masks, labels)``."""
    if not isinstance(targets, str) or targets not in _TARGET_MODES:
        raise InputError(f"`targets` must be one of {_TARGET_MODES}, got {targets!r}.")
    if isinstance(images, torch.Tensor):
        masks = _check_tensor_inputs(images, masks)
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],) or labels.is_floating_point():
                raise InputError(
                    f"`labels` must be an (N,) integer tensor with N={images.shape[0]}, got "
                    f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}."
                )
            labels = labels.long()
        elif targets == "labels":
            raise InputError("targets='labels' needs `labels`, an (N,) tensor of class indices.")
    elif masks is not None or labels is not None:
        raise InputError(
            "`masks` and `labels` are only accepted with tensor `images`; an iterable must yield "
            "(images, masks) or (images, masks, labels) batches."
        )
    return masks, labels


def _check_faithfulness_runs(runs: Any) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs == 1 or runs < 0:
        raise InputError(f"`faithfulness_runs` must be 0 (skip) or an int >= 2 (a correlation), got {runs!r}.")



def run_attribution_benchmark(
    methods: Mapping[str, BenchmarkMethod],
    images: torch.Tensor | Iterable[Any],
    masks: torch.Tensor | None = None,
    *,
    targets: str = "predicted",
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
    n_steps: int = 100,
    perturbation_batch_size: int = 128,
    deletion_substrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    insertion_substrate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    timing_batch: int | None = None,
    timing_repeats: int = 3,
    reference: str | None = "salfcbm",
    n_examples: int = 4,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    ap_backend: str = "sklearn",
    on_error: str = "raise",
    progress: bool = True,
    faithfulness_runs: int = 20,
) -> BenchmarkResult:
    """Score heatmap methods on images with ground-truth masks (paper 4.2, Table 2).

    For every batch and every method: the explained class is chosen (the method's model's
    prediction, or the given label), the method's heatmaps are computed on the model's
    inputs, and they are scored

    * against ``masks`` with `SegmentationMetrics` (heatmaps
      resized bilinearly to the masks; pixel accuracy, mIoU, mAP as in Chefer et al.);
    * by deletion / insertion (`DeletionInsertion`) on the
      method's own model: pixels of the ``[0, 1]`` benchmark image are replaced in order
      of decreasing saliency and the softmax probability of the explained class is
      followed (AUC over the fraction of pixels changed);
    * with the field's localisation metrics (`salfcbm.evaluation.localisation`): pointing game
      (Zhang et al. 2016), relevance mass accuracy (Kohlbrenner et al. 2020), relevance rank
      accuracy (Arras et al. 2022) and top-k intersection (Theiner et al. 2022, k = 1000 / 224² of
      the pixels), on the map as given and (``*_relu``) on the rectified map ``max(h, 0)``;
    * with Average Drop / Increase in Confidence (Chattopadhyay et al. 2018) and, when
      ``faithfulness_runs`` > 0, faithfulness correlation (Bhatt et al. 2020) on the method's model
      (`salfcbm.evaluation.confidence`).

    Then each method is timed on the first ``timing_batch`` images
    (`time_attribution`, median of ``timing_repeats`` rounds), and
    ``speed_ratio`` is its time per image divided by the ``reference`` method's.

    Args:
        methods: name -> `BenchmarkMethod` (see `build_methods`).
        images: ``(N, 3, H, W)`` float images in the benchmark space (``[0, 1]``), or,
            with ``masks=None``, an iterable of ``(images, masks)`` or
            ``(images, masks, labels)`` batches (e.g. a ``DataLoader`` over
            `ImagenetSegmentation`).
        masks: ``(N, H, W)`` bool foreground masks (with tensor ``images``).
        targets: ``"predicted"`` (each method explains its model's top-1 class; Chefer et
            al.'s protocol) or ``"labels"`` (the ground-truth class).
        labels: ``(N,)`` class indices (with tensor ``images``; batches give them as their
            third element). Needed for ``targets="labels"``; otherwise only used to report
            how often each method's explained class is the true one
            (``explained_is_label``).
        batch_size: images per batch (with tensor ``images``).
        n_steps: deletion / insertion steps (RISE uses ``H * W / 224``; 100 samples the
            curve every 1 %).
        perturbation_batch_size: perturbed images per forward pass in deletion / insertion.
        deletion_substrate: what deleted pixels become, ``images -> images`` (default
            zeros; see `constant_substrate`).
        insertion_substrate: the canvas insertion starts from (default: RISE's blur).
        timing_batch: images in the timing batch (default ``batch_size``); ``0`` skips timing.
        timing_repeats: timed calls per method, in rounds over all methods after one
            warm-up round; the median is kept. ``seconds_per_image`` is wall time and
            ``cpu_seconds_per_image`` the process's CPU time; ``speed_ratio`` uses CPU time
            on the CPU (robust to other processes on a shared machine) and wall time on CUDA
            (``meta["speed_clock"]``).
        reference: method the speed ratios divide by (``None`` or absent: no ratios).
        n_examples: images whose heatmaps are kept in `BenchmarkResult.examples`.
        max_images: stop after this many images (useful with an iterable).
        device: move models' inputs here (the models must already be there).
        ap_backend: ``"sklearn"`` or ``"torch"`` for the mAP (see ``SegmentationMetrics``).
        on_error: ``"raise"``, or ``"record"`` to keep going when a method fails (its
            row gets ``error`` and it is left out of the rest of the run).
        progress: tqdm progress bar.
        faithfulness_runs: random pixel subsets per image for faithfulness correlation (one
            forward pass each); ``0`` skips it.

    Returns:
        A `BenchmarkResult`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> methods = {m: BenchmarkMethod(make_baseline(m, net, layer="0"), net) for m in ("gradcam", "random")}
        >>> images, masks = torch.rand(4, 3, 16, 16), torch.rand(4, 16, 16) > 0.5
        >>> res = run_attribution_benchmark(methods, images, masks, n_steps=4, progress=False, reference="random")
        >>> [k for k in METRIC_COLUMNS if k in res.rows["gradcam"]] == list(METRIC_COLUMNS)
        True
    """
    _check_benchmark_options(
        methods,
        batch_size,
        n_steps,
        perturbation_batch_size,
        timing_repeats,
        n_examples,
        timing_batch,
        max_images,
        on_error,
        deletion_substrate,
        insertion_substrate,
    )
    masks, labels = _check_benchmark_data(images, masks, labels, targets)
    _check_faithfulness_runs(faithfulness_runs)
    dev = torch.device(device) if device is not None else None

    state = make_scoring_state(
        methods, ap_backend, n_steps, perturbation_batch_size, deletion_substrate, insertion_substrate
    )
    state.faithfulness_runs = faithfulness_runs
    t_start = time.perf_counter()
    score_all_batches(
        state,
        methods,
        images,
        masks,
        labels,
        batch_size=batch_size,
        max_images=max_images,
        dev=dev,
        targets=targets,
        n_examples=n_examples,
        on_error=on_error,
        progress=progress,
    )
    seconds_scoring = time.perf_counter() - t_start

    rows = result_rows(methods, state)
    n_time = batch_size if timing_batch is None else timing_batch
    clock = time_methods(
        methods,
        rows,
        state.timing_set,
        state.errors,
        n_time,
        targets=targets,
        timing_repeats=timing_repeats,
        reference=reference,
        on_error=on_error,
    )
    meta = {
        "n_images": state.n_seen,
        "targets": targets,
        "batch_size": batch_size,
        "n_steps": n_steps,
        "timing_batch": n_time,
        "timing_repeats": timing_repeats,
        "speed_clock": clock,
        "reference": reference,
        "ap_backend": ap_backend,
        "faithfulness_runs": faithfulness_runs,
        "device": str(state.timing_set[0].device) if state.timing_set is not None else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "seconds_scoring": seconds_scoring,
    }
    return BenchmarkResult(rows=rows, meta=meta, examples=collect_examples(state))
