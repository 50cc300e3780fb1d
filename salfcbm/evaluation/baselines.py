"""Heatmap baselines behind one interface, for comparing against SALF-CBM (paper section 4.2, Table 2).

``make_baseline(name, model, layer)`` returns an `Attributor`;
``attributor.attribute(images, target)`` returns a ``(B, 1, H, W)`` float
heatmap at the input size, whatever the method. The methods are the ones of the
paper's Table 2, from the libraries people use for them, plus two floors:

| name | implementation | `layer` |
|---|---|---|
| `integrated_gradients` | Captum `IntegratedGradients` | ignored |
| `gradcam` | Captum `LayerGradCam` + bilinear upsampling | used |
| `lrp` | Captum `LRP` (epsilon rule) | ignored |
| `gradcam++` | pytorch-grad-cam `GradCAMPlusPlus` | used |
| `scorecam` | pytorch-grad-cam `ScoreCAM` | used |
| `fullgrad` | pytorch-grad-cam `FullGrad` | ignored |
| `random` | seeded uniform noise | ignored |
| `center` | centred Gaussian (centre-bias floor) | ignored |
| `torchcam_cam`, `torchcam_gradcam`, `torchcam_gradcam++` | torchcam's CAM extractors (optional) | used |
| `torchcam_smoothgradcam++`, `torchcam_xgradcam` | torchcam (optional) | used |
| `torchcam_layercam`, `torchcam_scorecam` | torchcam (optional) | used |
| `legrad` | torchcam `LeGrad` (vision transformers; optional) | transformer blocks (``layers=``) |

Used layers may be omitted: ``layer=None`` picks the last spatial stage
(`salfcbm.core.tap.default_layer`). Token layers (ViT ``(B, N, C)``) and NHWC
stages (Swin) are folded into a ``(B, C, h, w)`` map with the same logic as
`salfcbm.core.tap.FeatureTap` (prefix tokens dropped, grid from the input
size), unless you pass your own ``reshape_transform``.

Conventions, for every attributor:

* The model is put in ``eval()`` mode for the call (``eval_mode=True``, the
  default; pytorch-grad-cam would otherwise do it silently and leave it so) and
  every module's train/eval flag is restored afterwards.
* No hook outlives a call, whether it succeeds or raises; parameters'
  ``.grad`` are restored (pytorch-grad-cam calls ``backward()``).
* ``target=None`` explains the model's top-1 class.
* Values are the method's own: Captum methods return raw attributions (IG and
  LRP summed over colour channels, keeping the sign; ``channel_reduction="abs_sum"``
  sums absolute values), pytorch-grad-cam methods return maps min-max scaled to
  ``[0, 1]`` per image. The segmentation metrics are invariant to a positive
  affine rescaling of each heatmap and deletion/insertion uses only the order
  of values, so this does not matter there.

Needs ``captum`` and ``grad-cam`` (``pip install 'salfcbm[baselines]'``); the torchcam methods
need ``torchcam`` (in the same extra), and raise `MissingExtraError` naming the install without it.
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm.errors import InputError, LayerNotFoundError, MissingExtraError, SalfCBMError, UnsupportedBaselineError
from salfcbm._utils.modes import preserved_modes
from salfcbm.evaluation.metrics import _logits, _resolve_target

__all__ = [
    "Attributor",
    "UnsupportedBaselineError",
    "make_baseline",
    "list_baselines",
    "time_attribution",
]


def _captum(feature: str) -> Any:
    try:
        import captum.attr as attr
    except ImportError:  # pragma: no cover - installed in the dev environment
        raise MissingExtraError("captum", "baselines", feature) from None
    return attr


def _grad_cam(feature: str) -> Any:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:  # pragma: no cover - installed in the dev environment
        raise MissingExtraError("grad-cam", "baselines", feature) from None
    return pytorch_grad_cam, ClassifierOutputTarget


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


@contextlib.contextmanager
def _no_leftovers(model: nn.Module, grad_state: bool = True) -> Iterator[None]:
    """Undo what third-party attribution code may leave on ``model``.

    On exit, removes every hook registered on any module during the block (a
    safety net under the libraries' own clean-up), and, with ``grad_state``,
    puts each parameter's ``.grad`` back as it was.
    """
    modules = list(model.modules())
    before = [{d: set(getattr(m, d, {}).keys()) for d in _HOOK_DICTS} for m in modules]
    grads = [(p, p.grad) for p in model.parameters()] if grad_state else []
    try:
        yield
    finally:
        for m, seen in zip(modules, before):
            for d, keys in seen.items():
                hooks = getattr(m, d, None)
                if hooks:
                    for k in [k for k in hooks if k not in keys]:
                        del hooks[k]
        for p, g in grads:
            p.grad = g


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if layer is None:
        from salfcbm.core.tap import default_layer

        name = default_layer(model)
        return name, modules[name]
    if isinstance(layer, nn.Module):
        for name, m in modules.items():
            if m is layer:
                return name, m
        raise InputError(
            f"The `layer` module ({type(layer).__name__}) is not a submodule of the model. "
            "Pass a module of this model, or its name from `dict(model.named_modules())`."
        )
    if isinstance(layer, str):
        if layer == "" or layer not in modules:
            raise LayerNotFoundError(layer, [n for n in modules if n])
        return layer, modules[layer]
    raise InputError(f"`layer` must be a module name (str), an nn.Module or None, got {type(layer).__name__}.")


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise InputError(
            "`images` must be a float (B, C, H, W) tensor, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    if images.shape[0] == 0:
        raise InputError("`images` is empty (batch size 0).")
    return images


def _reduce_channels(attr: torch.Tensor, how: str) -> torch.Tensor:
    return attr.abs().sum(1, keepdim=True) if how == "abs_sum" else attr.sum(1, keepdim=True)


# --------------------------------------------------------------------------- base class


class Attributor:
    """One heatmap method, Captum style: configure in the constructor, call `attribute`.

    Subclasses implement `_attribute`; this class validates inputs,
    resolves ``target``, switches to ``eval()`` (if ``eval_mode``) and restores
    the model's modes, hooks and gradients afterwards.

    Args:
        model: classifier returning ``(B, num_classes)`` logits.
        eval_mode: run the model in ``eval()`` mode during the call (restored after).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> attributor = make_baseline("gradcam", model, layer="0")
        >>> attributor.attribute(torch.randn(2, 3, 16, 16), target=1).shape
        torch.Size([2, 1, 16, 16])
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = True

    def __init__(self, model: nn.Module | None, *, eval_mode: bool = True) -> None:
        if self.needs_model and not isinstance(model, nn.Module):
            raise InputError(f"{self.name!r} needs a torch.nn.Module `model`, got {type(model).__name__}.")
        self.model = model
        self.eval_mode = bool(eval_mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def attribute(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:
        """Heatmaps for ``images`` with respect to ``target``.

        Args:
            images: ``(B, C, H, W)`` model inputs.
            target: class index (int), one per image (sequence or ``(B,)`` tensor),
                or ``None`` for the model's top-1 class.

        Returns:
            ``(B, 1, H, W)`` float32 heatmaps, detached, on the images' device.
        """
        images = _check_images(images)
        B, _, H, W = images.shape
        tgt = _resolve_target(target, B, images.device)
        if self.model is None:
            heat = self._attribute(images.detach(), tgt)
        else:
            with preserved_modes(self.model, False if self.eval_mode else None), _no_leftovers(self.model):
                if tgt is None:
                    with torch.no_grad():
                        tgt = _logits(self.model, images).argmax(1)
                with torch.enable_grad():
                    # The input carries the graph: on a backbone frozen with requires_grad_(False)
                    # no parameter does, and the user's flags are never touched.
                    heat = self._attribute(images.detach().requires_grad_(True), tgt)
        heat = heat.detach().to(device=images.device, dtype=torch.float32)
        if heat.shape != (B, 1, H, W):  # pragma: no cover - guards the adapters below
            raise SalfCBMError(f"{self.name} produced shape {tuple(heat.shape)}, expected {(B, 1, H, W)}.")
        return heat

    __call__ = attribute

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class _LayerMixin:
    """Resolves ``layer`` and folds token / NHWC outputs into ``(B, C, h, w)``."""

    model: nn.Module
    layer_name: str
    layer: nn.Module
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    _tap: Any
    _hw: tuple[int, int]

    def _init_layer(self, layer: str | nn.Module | None, reshape_transform: Any) -> None:
        if reshape_transform is not None and not callable(reshape_transform):
            raise InputError(f"`reshape_transform` must be callable or None, got {type(reshape_transform).__name__}.")
        self.layer_name, self.layer = _resolve_layer(self.model, layer)
        self.reshape_transform = reshape_transform
        self._tap = None
        self._hw = (0, 0)

    def _layout(self, hw: tuple[int, int]) -> str:
        """``"custom"`` with a user reshape, else the layer's layout (probed once, at the first input size)."""
        self._hw = hw
        if self.reshape_transform is not None:
            return "custom"
        if self._tap is None:
            from salfcbm.core.tap import FeatureTap

            self._tap = FeatureTap(self.model, self.layer_name, input_size=hw, stop_early=False)
        return self._tap.layout

    def _fold(self, out: Any) -> torch.Tensor:
        if self.reshape_transform is not None:
            return self.reshape_transform(out)
        return self._tap.to_map(out, self._hw)


# --------------------------------------------------------------------------- captum methods


class _IntegratedGradients(Attributor):
    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int = 50,
        baseline: float | torch.Tensor = 0.0,
        internal_batch_size: int | None = 64,
        method: str = "gausslegendre",
        channel_reduction: str = "sum",
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        _captum("Integrated gradients")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise InputError(f"`n_steps` must be a positive int, got {n_steps!r}.")
        if internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
            raise InputError(f"`internal_batch_size` must be a positive int or None, got {internal_batch_size!r}.")
        if channel_reduction not in ("sum", "abs_sum"):
            raise InputError(f"`channel_reduction` must be 'sum' or 'abs_sum', got {channel_reduction!r}.")
        if not isinstance(baseline, (int, float, torch.Tensor)) or isinstance(baseline, bool):
            raise InputError(
                f"`baseline` must be a number or a tensor broadcastable to the images, got {type(baseline).__name__}."
            )
        self.n_steps, self.baseline, self.internal_batch_size = n_steps, baseline, internal_batch_size
        self.method, self.channel_reduction = method, channel_reduction

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        attr = _captum("Integrated gradients")
        base = self.baseline
        base = torch.as_tensor(base, dtype=images.dtype, device=images.device).expand_as(images).contiguous()
        ig = attr.IntegratedGradients(self.model)
        a = ig.attribute(
            images,
            baselines=base,
            target=target,
            n_steps=self.n_steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
        )
        return _reduce_channels(a, self.channel_reduction)


class _GradCAM(_LayerMixin, Attributor):
    name = "gradcam"

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_mode: bool = True,
    ) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        _captum("Grad-CAM")
        self._init_layer(layer, reshape_transform)

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        attr = _captum("Grad-CAM")
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        if self._layout(hw) == "NCHW":
            cam = attr.LayerGradCam(self.model, self.layer).attribute(images, target=target, relu_attributions=True)
        else:  # tokens / NHWC: same Grad-CAM arithmetic on the folded map
            captured: list[torch.Tensor] = []

            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                from salfcbm.core.tap import _first_tensor

                captured.append(_first_tensor(out))

            handle = self.layer.register_forward_hook(hook)
            try:
                logits = _logits(self.model, images)
            finally:
                handle.remove()
            if not captured:
                raise InputError(
                    f"Layer {self.layer_name!r} did not run during the forward pass; "
                    "choose a layer on the forward path."
                )
            act = captured[-1]
            (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)
            a_map, g_map = self._fold(act.detach()), self._fold(grad)
            weights = g_map.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((weights * a_map).sum(1, keepdim=True))
        return attr.LayerAttribution.interpolate(cam, hw, interpolate_mode="bilinear")


def _lrp_tables() -> tuple[dict[type, Any], list[type]]:
    try:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
    except ImportError:  # pragma: no cover - private location moved; captum will raise itself
        return {}, []
    return dict(SUPPORTED_LAYERS_WITH_RULES), list(SUPPORTED_NON_LINEAR_LAYERS)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0 and m is not model]
    return leaves or [("", model)]


class _LRP(Attributor):
    name = "lrp"

    def __init__(self, model: nn.Module, *, channel_reduction: str = "sum", eval_mode: bool = True) -> None:
        super().__init__(model, eval_mode=eval_mode)
        _captum("LRP")
        if channel_reduction not in ("sum", "abs_sum"):
            raise InputError(f"`channel_reduction` must be 'sum' or 'abs_sum', got {channel_reduction!r}.")
        self.channel_reduction = channel_reduction
        with_rules, non_linear = _lrp_tables()
        if with_rules:
            supported = tuple(with_rules) + tuple(non_linear)
            bad = [(n, m) for n, m in _leaves(model) if type(m) not in supported and not hasattr(m, "rule")]
            if bad:
                kinds = sorted({type(m).__name__ for _, m in bad})
                where = ", ".join(repr(n) for n, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
                raise UnsupportedBaselineError(
                    f"Captum's LRP has no propagation rule for {', '.join(kinds)} (modules {where}). "
                    f"It supports {', '.join(sorted(t.__name__ for t in supported))}. "
                    "Use another baseline for this model, or set a rule on those modules "
                    "(`module.rule = captum.attr._utils.lrp_rules.EpsilonRule()`)."
                )
        self._checked_reuse = False

    def _check_reuse(self, images: torch.Tensor) -> None:
        counts: dict[str, int] = {}
        handles = []
        _, non_linear = _lrp_tables()
        for n, m in _leaves(self.model):
            if n and type(m) not in non_linear:  # activations are stateless in LRP; layers with rules are not
                handles.append(
                    m.register_forward_hook(lambda _m, _i, _o, n=n: counts.__setitem__(n, counts.get(n, 0) + 1))
                )
        try:
            with torch.no_grad():
                self.model(images[:1])
        finally:
            for h in handles:
                h.remove()
        reused = sorted(n for n, c in counts.items() if c > 1)
        if reused:
            raise UnsupportedBaselineError(
                f"Captum's LRP keeps one activation per module, but {', '.join(repr(n) for n in reused[:5])} "
                "run more than once per forward pass (a module shared between several places of the network), "
                "so the relevance would be wrong. Give each use its own module, or use another baseline."
            )
        self._checked_reuse = True

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        attr = _captum("LRP")
        if not self._checked_reuse:
            self._check_reuse(images)
        leaves = [m for _, m in _leaves(self.model)]
        had = {id(m): {a for a in ("rule", "activations", "activation") if hasattr(m, a)} for m in leaves}
        user_rules = {id(m): m.rule for m in leaves if hasattr(m, "rule")}  # captum deletes every rule after a call
        inplace = [m for m in leaves if getattr(m, "inplace", False) is True]
        try:
            for m in inplace:  # in-place ReLUs break the backward hooks LRP relies on
                m.inplace = False
            a = attr.LRP(self.model).attribute(images.clone().requires_grad_(True), target=target)
        finally:
            for m in inplace:
                m.inplace = True
            for m in leaves:  # captum attaches rules before its own try/finally
                for a_name in ("rule", "activations", "activation"):
                    if a_name not in had[id(m)] and hasattr(m, a_name):
                        with contextlib.suppress(AttributeError):
                            delattr(m, a_name)
                if id(m) in user_rules:
                    m.rule = user_rules[id(m)]
        return _reduce_channels(a, self.channel_reduction)


# --------------------------------------------------------------------------- pytorch-grad-cam methods


class _PGCAM(_LayerMixin, Attributor):
    """A pytorch-grad-cam method, used inside a try/finally that releases its hooks."""

    cam_class: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_mode: bool = True,
    ) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        _grad_cam(self.name)
        self._init_layer(layer, reshape_transform)

    def _extra(self, cam: Any) -> None:
        pass

    def _target_layers(self) -> list[nn.Module]:
        return [self.layer]

    def _run(self, images: torch.Tensor, target: torch.Tensor, reshape: Any) -> torch.Tensor:
        pgc, ClassifierOutputTarget = _grad_cam(self.name)
        cam = None
        try:
            cam_class = getattr(pgc, self.cam_class)
            with preserved_modes(self.model):  # BaseCAM calls model.eval(); keep the mode chosen by `eval_mode`
                cam = cam_class(model=self.model, target_layers=self._target_layers(), reshape_transform=reshape)
            self._extra(cam)
            out = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in target.tolist()])
        finally:
            if cam is not None:
                cam.activations_and_grads.release()
        return torch.from_numpy(out).to(images.device)[:, None]

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        reshape = None if self._layout(hw) == "NCHW" else self._fold
        return self._run(images, target, reshape)


class _GradCAMPlusPlus(_PGCAM):
    name = "gradcam++"
    cam_class = "GradCAMPlusPlus"


class _BatchSized:
    """A CAM that scores masked copies of the images in batches (Score-CAM): ``batch_size`` is its option."""

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        batch_size: int = 32,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_mode: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        super().__init__(model, layer, reshape_transform=reshape_transform, eval_mode=eval_mode)
        self.batch_size = batch_size


class _ScoreCAM(_BatchSized, _PGCAM):
    name = "scorecam"
    cam_class = "ScoreCAM"

    def _extra(self, cam: Any) -> None:
        cam.batch_size = self.batch_size


class _FullGrad(_PGCAM):
    name = "fullgrad"
    cam_class = "FullGrad"

    def __init__(self, model: nn.Module, *, eval_mode: bool = True) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        _grad_cam(self.name)
        has_bias = any(
            type(m) in (nn.Conv2d, nn.BatchNorm2d) and getattr(m, "bias", None) is not None for m in model.modules()
        )
        if not has_bias:
            raise UnsupportedBaselineError(
                f"FullGrad (pytorch-grad-cam) sums bias-gradients of Conv2d and BatchNorm2d layers, and "
                f"{type(model).__name__} has no such layer with a bias (a transformer?), so it would reduce to "
                "|input x gradient|. Use another baseline for this model."
            )
        bad_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is None]
        if bad_bn:
            raise UnsupportedBaselineError(
                f"FullGrad needs BatchNorm2d running statistics, but {', '.join(repr(n) for n in bad_bn[:5])} "
                "were built with track_running_stats=False. Use another baseline for this model."
            )

    def _target_layers(self) -> list[nn.Module]:
        return []  # FullGrad finds every bias layer itself

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._run(images, target, None)


# --------------------------------------------------------------------------- torchcam methods


def _torchcam(feature: str) -> Any:
    try:
        import torchcam.methods as methods
    except ImportError:
        raise MissingExtraError("torchcam", "baselines", feature) from None
    return methods


class _TorchCAM(_LayerMixin, Attributor):
    """A torchcam (``torchcam.methods``) CAM extractor at one layer, hooks removed after every call.

    Maps are torchcam's: ReLU'd (except CAM) and min-max normalised per image, at the layer's grid,
    upsampled bilinearly to the input.
    """

    cam_class: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_mode: bool = True,
    ) -> None:
        Attributor.__init__(self, model, eval_mode=eval_mode)
        if not hasattr(_torchcam(self.name), self.cam_class):
            raise UnsupportedBaselineError(
                f"The installed torchcam has no {self.cam_class}; upgrade it: pip install -U 'torchcam>=0.4'."
            )
        self._init_layer(layer, reshape_transform)

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        return {}

    def _extractor(self, images: torch.Tensor, reshape: Any) -> Any:
        cls = getattr(_torchcam(self.name), self.cam_class)
        kw: dict[str, Any] = {"input_shape": tuple(images.shape[1:]), **self._options(images)}
        if reshape is not None:
            kw["reshape_transform"] = reshape
        with preserved_modes(self.model):
            try:
                return cls(self.model, self.layer_name, **kw)
            except TypeError as e:
                if reshape is not None and "reshape_transform" in str(e):
                    raise UnsupportedBaselineError(
                        f"torchcam's {self.cam_class} of the installed version cannot fold the token / NHWC layer "
                        f"{self.layer_name!r} into a map; torchcam>=0.5 can: pip install -U torchcam."
                    ) from None
                raise

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        hw = (int(images.shape[-2]), int(images.shape[-1]))
        reshape = None if self._layout(hw) == "NCHW" else self._fold
        extractor = self._extractor(images, reshape)
        try:
            scores = _logits(self.model, images)
            cams = extractor([int(t) for t in target.tolist()], scores)
        finally:
            extractor.remove_hooks()
        cam = cams[0] if len(cams) == 1 else type(extractor).fuse_cams(cams)
        return F.interpolate(cam[:, None].float(), size=hw, mode="bilinear", align_corners=False)


class _TCCAM(_TorchCAM):
    name = "torchcam_cam"
    cam_class = "CAM"

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        linear = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise UnsupportedBaselineError(
                f"CAM (torchcam) weights the maps with the classifier's nn.Linear, and {type(self.model).__name__} "
                "has none. Use a gradient method (torchcam_gradcam) for this model."
            )
        return {"fc_layer": linear[-1]}


class _TCGradCAM(_TorchCAM):
    name = "torchcam_gradcam"
    cam_class = "GradCAM"


class _TCGradCAMpp(_TorchCAM):
    name = "torchcam_gradcam++"
    cam_class = "GradCAMpp"


class _TCSmoothGradCAMpp(_TorchCAM):
    name = "torchcam_smoothgradcam++"
    cam_class = "SmoothGradCAMpp"


class _TCXGradCAM(_TorchCAM):
    name = "torchcam_xgradcam"
    cam_class = "XGradCAM"


class _TCLayerCAM(_TorchCAM):
    name = "torchcam_layercam"
    cam_class = "LayerCAM"


class _TCScoreCAM(_BatchSized, _TorchCAM):
    name = "torchcam_scorecam"
    cam_class = "ScoreCAM"

    def _options(self, images: torch.Tensor) -> dict[str, Any]:
        return {"batch_size": self.batch_size}


def _vit_blocks(model: nn.Module) -> list[str]:
    """Names of the transformer blocks LeGrad can read: a ``self_attention`` that is an ``nn.MultiheadAttention``."""
    return [
        n for n, m in model.named_modules() if isinstance(getattr(m, "self_attention", None), nn.MultiheadAttention)
    ]


class _LeGrad(Attributor):
    """LeGrad (Bousselham et al., 2024) for vision transformers, from torchcam (>= 0.5).

    ``layers``: the transformer blocks to read (names or modules; default: the last
    ``n_layers`` blocks). torchcam supports torchvision ``VisionTransformer`` models (blocks
    with a batch-first ``nn.MultiheadAttention`` ``self_attention``); other transformers
    (timm's fused attention) are refused with `UnsupportedBaselineError`.
    """

    name = "legrad"

    def __init__(
        self,
        model: nn.Module,
        *,
        layers: Sequence[str | nn.Module] | None = None,
        n_layers: int = 4,
        score_projection: Callable[[torch.Tensor], torch.Tensor] | None = None,
        prefix_tokens: int = 1,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(model, eval_mode=eval_mode)
        if not hasattr(_torchcam("LeGrad"), "LeGrad"):
            raise UnsupportedBaselineError(
                "The installed torchcam has no LeGrad (added in 0.5): pip install -U torchcam."
            )
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise InputError(f"`n_layers` must be a positive int, got {n_layers!r}.")
        blocks = _vit_blocks(model)
        if not blocks:
            raise UnsupportedBaselineError(
                f"LeGrad (torchcam) reads attention from transformer blocks with a batch-first nn.MultiheadAttention "
                f"`self_attention` (torchvision's VisionTransformer); {type(model).__name__} has none "
                "(a CNN, or timm's fused attention). Use a layer method (gradcam, torchcam_gradcam) for this model."
            )
        self.layers = [_resolve_layer(model, b)[0] for b in layers] if layers is not None else blocks[-n_layers:]
        self.score_projection, self.prefix_tokens = score_projection, prefix_tokens

    def _attribute(self, images: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        methods = _torchcam("LeGrad")
        kw = {"score_projection": self.score_projection} if self.score_projection is not None else {}
        try:
            extractor = methods.LeGrad(self.model, list(self.layers), prefix_tokens=self.prefix_tokens, **kw)
        except (TypeError, ValueError) as e:
            raise UnsupportedBaselineError(f"torchcam's LeGrad cannot explain this model: {e}") from None
        try:
            scores = _logits(self.model, images)
            cams = extractor([int(t) for t in target.tolist()], scores)
        finally:
            extractor.remove_hooks()
        cam = cams[0] if len(cams) == 1 else type(extractor).fuse_cams(cams)
        return F.interpolate(cam[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- floors


class _Random(Attributor):
    name = "random"
    needs_model = False

    def __init__(self, model: nn.Module | None = None, *, seed: int = 0) -> None:
        super().__init__(model, eval_mode=False)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError(f"`seed` must be an int, got {seed!r}.")
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def attribute(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:
        images = _check_images(images)
        B, _, H, W = images.shape
        return torch.rand(B, 1, H, W, generator=self._gen).to(images.device)

    __call__ = attribute


class _Center(Attributor):
    name = "center"
    needs_model = False

    def __init__(self, model: nn.Module | None = None, *, sigma: float = 0.25) -> None:
        super().__init__(model, eval_mode=False)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
            raise InputError(f"`sigma` must be a positive fraction of the image side, got {sigma!r}.")
        self.sigma = float(sigma)

    def attribute(self, images: torch.Tensor, target: Any = None) -> torch.Tensor:
        images = _check_images(images)
        B, _, H, W = images.shape
        y = (torch.arange(H, dtype=torch.float32, device=images.device) + 0.5 - H / 2) / (self.sigma * H)
        x = (torch.arange(W, dtype=torch.float32, device=images.device) + 0.5 - W / 2) / (self.sigma * W)
        g = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
        return g.expand(B, 1, H, W).clone()

    __call__ = attribute


_CORE = (_IntegratedGradients, _GradCAM, _LRP, _GradCAMPlusPlus, _ScoreCAM, _FullGrad, _Random, _Center)
_TORCHCAM = (_TCCAM, _TCGradCAM, _TCGradCAMpp, _TCSmoothGradCAMpp, _TCXGradCAM, _TCLayerCAM, _TCScoreCAM, _LeGrad)
_REGISTRY: dict[str, type[Attributor]] = {c.name: c for c in (*_CORE, *_TORCHCAM)}
_LAYER_METHODS = {"gradcam", "gradcam++", "scorecam", *(c.name for c in _TORCHCAM if c is not _LeGrad)}


def list_baselines(optional: bool = False) -> list[str]:
    """Names accepted by `make_baseline`.

    Args:
        optional: also list the torchcam methods (``torchcam_*`` and ``legrad``), which need
            ``pip install 'salfcbm[baselines]'`` with torchcam; without it, only the methods of
            the paper's Table 2 and the floors (the default set of `build_methods`).

    Examples:
        >>> list_baselines()
        ['integrated_gradients', 'gradcam', 'lrp', 'gradcam++', 'scorecam', 'fullgrad', 'random', 'center']
        >>> list_baselines(optional=True)[8:]  # doctest: +NORMALIZE_WHITESPACE
        ['torchcam_cam', 'torchcam_gradcam', 'torchcam_gradcam++', 'torchcam_smoothgradcam++', 'torchcam_xgradcam',
         'torchcam_layercam', 'torchcam_scorecam', 'legrad']
    """
    return [c.name for c in (*_CORE, *(_TORCHCAM if optional else ()))]


def make_baseline(
    name: str, model: nn.Module | None, layer: str | nn.Module | None = None, **kwargs: Any
) -> Attributor:
    """Build the baseline ``name`` for ``model``.

    Args:
        name: one of `list_baselines`.
        model: classifier returning ``(B, num_classes)`` logits (may be ``None``
            for ``"random"`` and ``"center"``).
        layer: module name or module for ``"gradcam"``, ``"gradcam++"`` and
            ``"scorecam"`` (``None``: the last spatial stage); ignored by the others,
            so one loop can build every baseline with the same arguments.
        **kwargs: method options:

            * ``integrated_gradients``: ``n_steps=50``, ``baseline=0.0`` (zeros: black
              for ``[0, 1]`` inputs; pass the normalised black for normalised inputs),
              ``internal_batch_size=64``, ``method="gausslegendre"``,
              ``channel_reduction="sum"`` (or ``"abs_sum"``), ``eval_mode=True``;
            * ``gradcam``, ``gradcam++``: ``reshape_transform=None``, ``eval_mode=True``;
            * ``scorecam``: also ``batch_size=32`` (masked images per forward pass);
            * ``lrp``: ``channel_reduction="sum"``, ``eval_mode=True``;
            * ``fullgrad``: ``eval_mode=True``;
            * ``random``: ``seed=0``; ``center``: ``sigma=0.25`` (fraction of the side);
            * ``torchcam_*`` (torchcam's CAM, Grad-CAM, Grad-CAM++, Smooth Grad-CAM++, XGrad-CAM,
              Layer-CAM, Score-CAM at ``layer``): ``reshape_transform=None``, ``eval_mode=True``;
              ``torchcam_scorecam`` also ``batch_size=32``;
            * ``legrad`` (torchcam's LeGrad, vision transformers): ``layers=None`` (blocks, default the
              last ``n_layers=4``), ``score_projection=None``, ``prefix_tokens=1``, ``eval_mode=True``.

    Returns:
        An `Attributor`.

    Raises:
        InputError: unknown ``name`` or keyword argument.
        UnsupportedBaselineError: the method cannot explain this model.
        MissingExtraError: captum, grad-cam or (for ``torchcam_*`` and ``legrad``) torchcam is not installed.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> ig = make_baseline("integrated_gradients", model, n_steps=8)
        >>> ig.attribute(torch.randn(1, 3, 8, 8), target=0).shape
        torch.Size([1, 1, 8, 8])
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        from salfcbm.errors import closest

        near = closest(str(name), _REGISTRY)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise InputError(f"Unknown baseline {name!r}.{hint} Choose one of {list_baselines(optional=True)}.")
    cls = _REGISTRY[name]
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "model", "layer")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(f"{name!r} takes no argument(s) {unknown}; it accepts {allowed}.")
    if name in _LAYER_METHODS:
        return cls(model, layer, **kwargs)  # type: ignore[call-arg]
    return cls(model, **kwargs)  # type: ignore[call-arg]


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
    images = _check_images(images)
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
