"""Sanity checks for saliency maps: the model-parameter randomisation test (Adebayo et al., NeurIPS 2018).

"Sanity Checks for Saliency Maps" (Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, 2018)
asks of an explanation that it *depend on the model*: re-initialise the weights, from the
top layer down ("cascading" randomisation), and the map must change. A method whose map
survives the randomisation of the weights that produce it is an edge detector, not an
explanation of the model.

`model_randomisation_test` runs the cascading test on a *copy* of a SALF-CBM (the user's
model is never changed) and scores, after each step, how similar every map is to the map of
the intact model:

* **steps**, in order, each on top of the previous ones: ``"head"`` (the sparse final
  layer), ``"bottleneck"`` (the 1x1 concept projection), then the backbone's top-level
  modules that hold parameters, last first (``"backbone.fc"``, ``"backbone.layer4"``, ...);
* **maps**: ``"class_map"`` (the spatial decomposition of the class logit,
  `SALFCBMAttribution` in ``"class"`` mode, for the intact model's predicted class),
  ``"concept_maps"`` (every concept's map), and each baseline named in ``baselines``
  (default Grad-CAM, built by `salfcbm.evaluation.benchmark.build_methods` on the copy's backbone
  with its own classifier, for the intact backbone's predicted class), plus any
  ``extra_methods`` of yours;
* **similarity**: the mean over images (and concepts) of the absolute Spearman rank
  correlation (Adebayo et al. report the absolute value: a sign flip is not a change of
  where the evidence is) and of SSIM (`ssim`, Wang et al. 2004, on maps min-max scaled to
  ``[0, 1]`` at input resolution).

**Which weights produce which map.** The class map depends on every step up to and
including the tapped backbone layer; the concept maps do not depend on the head; a
baseline on the backbone depends on the backbone only, including the modules after the
tapped layer (its classifier); SALF-CBM's maps do not depend on those. A pair ``(map,
step)`` is *expected to change* when the step randomises weights the map depends on. It
**fails** when it is expected to change and does not: mean absolute Spearman correlation
at or above ``unchanged_at`` (default 0.98) *and* mean SSIM at or above it. Failures are
listed in `RandomisationResult.failures`, make `RandomisationResult.passed` ``False``, and
are reported with a `DegenerateResultWarning`.

**Randomisation.** Each parameter of a randomised module is replaced by Gaussian noise with
that parameter's own mean and standard deviation (when the standard deviation is 0, as for
a freshly initialised BatchNorm, the noise has standard deviation ``max(|mean|, 1) / 10``),
drawn from a generator seeded with ``seed``: the scale of the activations is kept, the
learnt structure is destroyed. Buffers (BatchNorm running statistics, SALF-CBM's concept
mean and standard deviation) are kept.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm.errors import DegenerateResultWarning, InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = [
    "RandomisationResult",
    "average_ranks",
    "model_randomisation_test",
    "spearman",
    "ssim",
]

#: A map with this much similarity (absolute Spearman and SSIM) to the intact model's has not changed.
UNCHANGED_AT = 0.98

#: An extra method: ``f(model_copy, inputs, target) -> (B, 1, H, W)``, called on the randomised copy.
ExtraMethod = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- similarity measures


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks of a 1-D tensor, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    end = counts.cumsum(0).double()
    start = end - counts.double()
    return ((start + end - 1) / 2)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (ties get average ranks).

    Two constant maps count as identical (1.0); one constant and one varying map as
    unrelated (0.0).

    Examples:
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 40.0]))
        1.0
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
        -1.0
    """
    if a.shape != b.shape:
        raise InputError(f"Maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    ra, rb = average_ranks(a.flatten().double()), average_ranks(b.flatten().double())
    ca, cb = ra - ra.mean(), rb - rb.mean()
    na, nb = ca.norm(), cb.norm()
    if na == 0 or nb == 0:
        return 1.0 if (na == 0 and nb == 0) else 0.0
    return float(round(float((ca @ cb) / (na * nb)), 12))


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _unit(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return torch.zeros_like(x) if hi - lo == 0 else (x - lo) / (hi - lo)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004) of two 2-D maps.

    Each map is first min-max scaled to ``[0, 1]`` (a heatmap's scale is arbitrary), then SSIM
    is computed with a Gaussian window (``window`` x ``window``, ``sigma``; shrunk to the map's
    smaller side, kept odd), constants ``K1=0.01``, ``K2=0.03``, data range 1, and averaged over
    the positions where the window fits (no padding), as ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, use_sample_covariance=False`` does (tested to 1e-9). Two constant
    maps are identical (1.0).

    Examples:
        >>> x = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(x, 2 * x + 1)
        1.0
        >>> ssim(x, -x) < 0
        True
    """
    if a.shape != b.shape or a.dim() != 2:
        raise InputError(f"`ssim` takes two 2-D maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    x, y = _unit(a.double()), _unit(b.double())
    win = min(window, *x.shape)
    win = win if win % 2 == 1 else win - 1
    w = _gaussian_window(win, sigma, x.device)
    x4, y4 = x[None, None], y[None, None]
    mx, my = F.conv2d(x4, w), F.conv2d(y4, w)
    sxx = F.conv2d(x4 * x4, w) - mx**2
    syy = F.conv2d(y4 * y4, w) - my**2
    sxy = F.conv2d(x4 * y4, w) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(round(float(s.mean()), 12))


# --------------------------------------------------------------------------- randomisation


@torch.no_grad()
def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    for p in module.parameters():
        flat = p.detach().double().flatten().cpu()
        mean = float(flat.mean())
        std = float(flat.std()) if flat.numel() > 1 else 0.0
        if not std > 0 or not math.isfinite(std):
            std = max(abs(mean), 1.0) / 10
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std + mean
        p.copy_(noise.to(dtype=p.dtype, device=p.device))


def _backbone_steps(model: SALFCBM) -> list[tuple[str, nn.Module, bool]]:
    """The backbone's top-level modules with parameters, last first, and whether SALF-CBM's maps use them.

    A module is used by the maps when its forward pass starts before the tapped layer's ends
    (probed once with hooks on the backbone's own forward pass).
    """
    backbone = model.backbone
    children = [(n, m) for n, m in backbone.named_children() if any(True for _ in m.parameters())]
    tap = dict(backbone.named_modules())[model.layer]
    order: list[Any] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(("start", n))) for n, m in children]
    hooks.append(tap.register_forward_hook(lambda *_: order.append(("tap", None))))
    try:
        with torch.no_grad():
            backbone(model.probe_input(tuple(model.config.input_size)))
    finally:
        for h in hooks:
            h.remove()
    tap_end = next((i for i, (k, _) in enumerate(order) if k == "tap"), len(order))
    started_before = {n for i, (k, n) in enumerate(order[:tap_end]) if k == "start"}
    return [(f"backbone.{n}", m, n in started_before) for n, m in reversed(children)]


# --------------------------------------------------------------------------- result


@dataclass
class RandomisationResult:
    """What `model_randomisation_test` measured.

    Attributes:
        steps: the cascade, in order (each step randomises its module on top of the previous ones).
        methods: the maps scored (``"class_map"``, ``"concept_maps"``, baselines, extra methods).
        spearman: ``{method: [mean |Spearman| with the intact map, one per step]}``.
        ssim: ``{method: [mean SSIM with the intact map, one per step]}``.
        expected_change: ``{method: [does this step randomise weights the map depends on?]}``.
        failures: ``[(method, step)]`` pairs expected to change that did not.
        unchanged_at: the similarity at or above which a map counts as unchanged.
        examples: ``{method: [(H, W) map of the first image: intact, then after each step]}`` (the
            first concept for ``"concept_maps"``), for `salfcbm.viz.plot_randomisation`.
        skipped: ``{baseline: reason}`` for baselines that could not be built.
    """

    steps: list[str]
    methods: list[str]
    spearman: dict[str, list[float]]
    ssim: dict[str, list[float]]
    expected_change: dict[str, list[bool]]
    failures: list[tuple[str, str]]
    unchanged_at: float = UNCHANGED_AT
    examples: dict[str, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No map survived the randomisation of weights it depends on."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the example maps)."""
        return {
            "test": "model_parameter_randomisation (Adebayo et al. 2018), cascading",
            "steps": list(self.steps),
            "methods": list(self.methods),
            "spearman_abs": {k: list(v) for k, v in self.spearman.items()},
            "ssim": {k: list(v) for k, v in self.ssim.items()},
            "expected_change": {k: list(v) for k, v in self.expected_change.items()},
            "failures": [list(f) for f in self.failures],
            "passed": self.passed,
            "unchanged_at": self.unchanged_at,
            "skipped": dict(self.skipped),
        }

    def table(self) -> str:
        """A Markdown table: one row per step, ``|Spearman| / SSIM`` per method; ``!`` marks a failure."""
        head = "| step | " + " | ".join(self.methods) + " |\n|---|" + "---|" * len(self.methods) + "\n"
        rows = []
        bad = set(self.failures)
        for i, s in enumerate(self.steps):
            cells = []
            for m in self.methods:
                mark = " !" if (m, s) in bad else ("" if self.expected_change[m][i] else " (n/a)")
                cells.append(f"{self.spearman[m][i]:.2f} / {self.ssim[m][i]:.2f}{mark}")
            rows.append(f"| {s} | " + " | ".join(cells) + " |")
        return head + "\n".join(rows)


# --------------------------------------------------------------------------- the test


def _similarities(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """Mean |Spearman| and mean SSIM over the leading dimensions of ``(..., H, W)`` maps."""
    a, b = before.flatten(0, -3), after.flatten(0, -3)
    rho = [abs(spearman(x, y)) for x, y in zip(a, b)]
    ss = [ssim(x, y) for x, y in zip(a, b)]
    return sum(rho) / len(rho), sum(ss) / len(ss)


def _salfcbm_maps(model: Any, inputs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    from salfcbm._utils.tensors import upsample_bilinear
    from salfcbm.explain.attribution import SALFCBMAttribution

    with torch.no_grad():
        class_map = SALFCBMAttribution(model, mode="class").attribute(inputs, target)[:, 0]
        concept_maps = upsample_bilinear(model(inputs).concept_maps.float(), inputs.shape[-2:])
    return {"class_map": class_map, "concept_maps": concept_maps}


def _baseline_maps(model: Any, names: Sequence[str], images: torch.Tensor, targets: dict[str, torch.Tensor],
                   skipped: dict[str, str]) -> dict[str, torch.Tensor]:
    from salfcbm.evaluation.benchmark import build_methods

    if not names:
        return {}
    methods, why = build_methods(model, list(names), on_error="record")
    skipped.update(why)
    out = {}
    for name, method in methods.items():
        inputs = method.inputs(images)
        if name not in targets:
            with torch.no_grad():
                targets[name] = method.logits(inputs).argmax(1)
        out[name] = method.attribute(inputs, targets[name]).detach().float()[:, 0]
    return out


def _all_maps(model: Any, images: torch.Tensor, baselines: Sequence[str], extra: Mapping[str, ExtraMethod],
              targets: dict[str, torch.Tensor], skipped: dict[str, str]) -> dict[str, torch.Tensor]:
    inputs = model.preprocess(images, crop=False)
    if "salfcbm" not in targets:
        with torch.no_grad():
            targets["salfcbm"] = model(inputs).logits.argmax(1)
    maps = _salfcbm_maps(model, inputs, targets["salfcbm"])
    maps.update(_baseline_maps(model, baselines, images, targets, skipped))
    for name, fn in extra.items():
        heat = fn(model, inputs, targets["salfcbm"])
        if not isinstance(heat, torch.Tensor) or heat.dim() != 4 or heat.shape[1] != 1:
            raise InputError(f"extra method {name!r} must return a (B, 1, H, W) tensor, got "
                             f"{tuple(heat.shape) if isinstance(heat, torch.Tensor) else type(heat).__name__}.")
        maps[name] = heat.detach().float()[:, 0]
    return maps


def _check_args(model: Any, images: Any, baselines: Any, extra: Any, unchanged_at: Any) -> None:
    if not hasattr(model, "head_from_maps") or getattr(model, "backbone", None) is None:
        raise InputError(f"`model` must be a salfcbm.SALFCBM with its backbone, got {type(model).__name__}.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"`images` must be a non-empty (B, 3, H, W) tensor of [0, 1] images, got {got}.")
    if isinstance(baselines, str) or not all(isinstance(b, str) for b in baselines):
        raise InputError(f"`baselines` must be a sequence of method names (e.g. ['gradcam']), got {baselines!r}.")
    own = sorted({"salfcbm", "salfcbm_logit"} & set(baselines))
    if own:
        raise InputError(f"`baselines` names SALF-CBM's own maps {own}; they are always tested (as 'class_map' and "
                         "'concept_maps'). Name backbone methods only, e.g. ['gradcam'].")
    if not isinstance(extra, Mapping) or not all(callable(f) for f in extra.values()):
        raise InputError("`extra_methods` must map names to callables f(model, inputs, target) -> (B, 1, H, W).")
    clash = sorted(set(extra) & {"class_map", "concept_maps", *baselines})
    if clash:
        raise InputError(f"`extra_methods` names {clash} clash with built-in maps; rename them.")
    if isinstance(unchanged_at, bool) or not isinstance(unchanged_at, (int, float)) or not 0 < unchanged_at <= 1:
        raise InputError(f"`unchanged_at` must be a number in (0, 1], got {unchanged_at!r}.")


def model_randomisation_test(
    model: SALFCBM,
    images: torch.Tensor,
    *,
    baselines: Sequence[str] = ("gradcam",),
    extra_methods: Mapping[str, ExtraMethod] | None = None,
    seed: int = 0,
    unchanged_at: float = UNCHANGED_AT,
    warn: bool = True,
) -> RandomisationResult:
    """The cascading model-parameter randomisation test (Adebayo et al. 2018) on a copy of ``model``.

    Args:
        model: a SALF-CBM with its backbone; it is deep-copied, never changed.
        images: ``(B, 3, H, W)`` images in ``[0, 1]`` (fed through ``model.preprocess(..., crop=False)``).
        baselines: methods of `build_methods` to run on the copy's backbone next to SALF-CBM's maps
            (default Grad-CAM; ``()`` for none). A baseline that cannot explain the model is skipped and
            its reason kept in ``skipped``; a missing extra raises `MissingExtraError`.
        extra_methods: ``{name: f(model_copy, inputs, target) -> (B, 1, H, W)}``, maps of your own
            computed on the randomised copy; they are expected to depend on every weight SALF-CBM's class
            map depends on.
        seed: seed of the noise that replaces the weights.
        unchanged_at: similarity (mean |Spearman| and mean SSIM) at or above which a map has not changed.
        warn: emit a `DegenerateResultWarning` listing the failures.

    Returns:
        A `RandomisationResult`.

    Examples:
        >>> import torch, salfcbm
        >>> from salfcbm.demo.scenes import SmallConvNet
        >>> m = salfcbm.wrap(SmallConvNet(num_classes=2, width=4), concepts=["a", "b", "c"],
        ...                  num_classes=2, backbone_weights=None, grid=4, input_size=(32, 32))
        >>> r = model_randomisation_test(m, torch.rand(2, 3, 32, 32), baselines=())
        >>> r.steps, r.passed
        (['head', 'bottleneck', 'backbone.fc', 'backbone.stages', 'backbone.stem'], True)
    """
    extra_methods = dict(extra_methods or {}) if isinstance(extra_methods, (Mapping, type(None))) else extra_methods
    _check_args(model, images, baselines, extra_methods, unchanged_at)
    baselines = list(baselines)
    work = copy.deepcopy(model).eval()  # the user's model is never touched
    images = images.to(next(work.parameters()).device)
    targets: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    gen = torch.Generator().manual_seed(int(seed))
    maps0 = _all_maps(work, images, baselines, extra_methods, targets, skipped)
    methods = list(maps0)
    salf = {"class_map", *extra_methods}
    steps: list[tuple[str, nn.Module, set[str]]] = [
        ("head", work.head, salf),
        ("bottleneck", work.bottleneck, salf | {"concept_maps"}),
    ]
    backbone_methods = {m for m in methods if m not in salf and m != "concept_maps"}
    for name, module, used in _backbone_steps(work):
        steps.append((name, module, backbone_methods | ((salf | {"concept_maps"}) if used else set())))
    result = RandomisationResult(
        steps=[s for s, _, _ in steps], methods=methods, spearman={m: [] for m in methods},
        ssim={m: [] for m in methods}, expected_change={m: [] for m in methods}, failures=[],
        unchanged_at=float(unchanged_at), skipped=skipped,
        examples={m: [_example(maps0[m])] for m in methods},
    )
    for step, module, depends in steps:
        _randomise(module, gen)
        maps = _all_maps(work, images, baselines, extra_methods, targets, {})
        for m in methods:
            rho, ss = _similarities(maps0[m], maps[m])
            result.spearman[m].append(rho)
            result.ssim[m].append(ss)
            result.expected_change[m].append(m in depends)
            result.examples[m].append(_example(maps[m]))
            if m in depends and rho >= unchanged_at and ss >= unchanged_at:
                result.failures.append((m, step))
    if result.failures and warn:
        listed = ", ".join(f"{m} after randomising {s}" for m, s in result.failures)
        warnings.warn(
            f"Sanity check failed (model-parameter randomisation): these maps did not change when the weights "
            f"that produce them were randomised: {listed}. They do not explain the model.",
            DegenerateResultWarning, stacklevel=2,
        )
    return result


def _example(maps: torch.Tensor) -> torch.Tensor:
    first = maps[0]
    return (first[0] if first.dim() == 3 else first).detach().cpu().clone()

