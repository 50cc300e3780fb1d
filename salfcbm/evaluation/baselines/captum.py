"""Captum's methods as baselines: integrated gradients, Grad-CAM (``LayerGradCam``) and LRP (epsilon rule).

Integrated gradients and LRP return raw attributions summed over the colour channels (keeping the sign;
``channel_reduction="abs_sum"`` sums absolute values); Grad-CAM is upsampled bilinearly to the input.
Needs ``captum`` (``pip install 'salfcbm[baselines]'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm._utils.modes import module_device
from salfcbm.errors import InputError, MissingExtraError, UnsupportedBaselineError
from salfcbm.evaluation.baselines.base import Attributor, BaselineContext, LayerMixin, reduce_channels
from salfcbm.evaluation.baselines.registry import register_baseline
from salfcbm.evaluation.deletion import constant_substrate
from salfcbm.evaluation.inputs import model_logits


def _captum(feature: str) -> Any:
    try:
        import captum.attr as attr
    except ImportError:  # pragma: no cover - installed in the dev environment
        raise MissingExtraError("captum", "baselines", feature) from None
    return attr


@register_baseline
class _IntegratedGradients(Attributor):
    name = "integrated_gradients"
    label = "IG"

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

    @classmethod
    def benchmark_kwargs(cls, context: BaselineContext, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Integrate from an image of the reference colour (``context.reference_colour``, preprocessed as the
        backbone's inputs) unless ``kwargs`` sets ``baseline``: the "absent" image of the benchmark."""
        kw = dict(kwargs)
        if "baseline" not in kw:
            colour = context.reference_colour
            ref = constant_substrate(colour)(torch.zeros(1, len(colour), 8, 8, device=module_device(context.model)))
            ref = ref if context.preprocess is None else context.preprocess(ref)
            kw["baseline"] = ref.mean(dim=(2, 3), keepdim=True)  # (1, 3, 1, 1), broadcast over the images
        return kw

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
        return reduce_channels(a, self.channel_reduction)


@register_baseline
class _GradCAM(LayerMixin, Attributor):
    name = "gradcam"
    label = "GradCAM"
    uses_layer = True

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
                from salfcbm.core.tap import first_tensor

                captured.append(first_tensor(out))

            handle = self.layer.register_forward_hook(hook)
            try:
                logits = model_logits(self.model, images)
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


@register_baseline
class _LRP(Attributor):
    name = "lrp"
    label = "LRP"

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
        return reduce_channels(a, self.channel_reduction)

