"""A Captum-style attribution adapter for SALF-CBM heatmaps.

Benchmark code written for Captum (``LayerGradCam(model, layer).attribute(x, target=...)``
followed by ``LayerAttribution.interpolate``) can use `SALFCBMAttribution` unchanged:
it returns ``(B, 1, H, W)`` heatmaps at input resolution, and needs no gradients.

Class mode (default) returns the spatial decomposition of the class logit (paper 3.5):

```text
A_l(x)[h, w] = sum_m  W[l, m] / sigma_m * c_up(x)[m][h, w]
```

where ``W`` is the head's weight, ``sigma`` the training std of the pooled activations and
``c_up`` the concept maps upsampled (bilinear by default) to the input size. It is computed at
grid resolution and then upsampled once, which is the same thing because upsampling is linear.
With mean pooling its grid-resolution mean plus a constant gives the logit exactly:
``logit_l = mean_{h,w} A_l^{grid} + b_l - sum_m W[l, m] mu_m / sigma_m``.

Concept mode returns the (upsampled) concept map ``c_up(x)[m]`` of one concept per image.

Class-concept mode is the paper's Table 2 protocol (section 4.2): the model is trained with one
concept per class, "An image of a {class}", and the heatmap for class ``l`` is the map of the
concept of class ``l``.
Captum is not needed to use the adapter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from salfcbm.errors import InputError, closest
from salfcbm.explain.inputs import as_batch, class_index

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["CLASS_TEMPLATE", "SALFCBMAttribution", "class_concept_indices", "class_heatmaps"]

MODES = ("class", "concept", "class_concept")
#: The class-concept template of the paper's Table 2 model.
CLASS_TEMPLATE = "An image of a {class}"
INTERPOLATE_MODES = ("bilinear", "nearest", "bicubic", "area")


def class_concept_indices(model: SALFCBM, template: str = CLASS_TEMPLATE) -> torch.Tensor:
    """``(L,)``: the index of the concept ``template.replace("{class}", name)`` for every class.

    Raises `InputError` naming the missing phrases when the model was
    not trained with class concepts (Table 2 needs them).
    """
    lower = {c.lower(): i for i, c in enumerate(model.concepts)}
    want = [template.replace("{class}", name) for name in model.class_names]
    missing = [w for w in want if w.lower() not in lower]
    if missing:
        raise InputError(
            f"The paper's Table 2 protocol scores the map of the class concept {template!r}, but this model has no "
            f"concept {missing[0]!r} ({len(missing)} of {len(want)} classes missing). Train a model with "
            "concepts_from_templates(class_names, template) (and class_names set), or use mode='class' for the "
            "class-logit decomposition."
        )
    return torch.tensor([lower[w.lower()] for w in want], dtype=torch.long)


def class_heatmaps(model: SALFCBM, concept_maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grid-resolution class maps ``sum_m W[l, m] / std[m] * c[m]``: ``(B, Hg, Wg)`` for ``targets`` ``(B,)``.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> class_heatmaps(m, torch.randn(3, 2, 7, 7), torch.tensor([0, 1, 1])).shape
        torch.Size([3, 7, 7])
    """
    w = model.head.weight.detach()[targets] / model.concept_std.detach()  # (B, M)
    return torch.einsum("bm,bmhw->bhw", w.to(concept_maps.dtype), concept_maps)


class SALFCBMAttribution:
    """SALF-CBM heatmaps behind Captum's ``attribute`` interface.

    Construct, then call: options go in the constructor, data in `attribute`.
    Like ``LayerGradCam(...).attribute`` followed by ``LayerAttribution.interpolate(attr, (H, W))``,
    the result is ``(B, 1, H, W)``; unlike Grad-CAM it costs one forward pass and no backward.

    Args:
        model: a `SALFCBM`.
        mode: ``"class"`` (the logit's spatial decomposition, see the module docstring),
            ``"concept"`` (one concept's map; then ``target`` names the concept) or
            ``"class_concept"`` (Table 2: the map of the concept ``template`` of the target class).
        template: the class-concept phrase with ``{class}`` (matched case-insensitively).
        relu: clamp negative values to 0 (Grad-CAM's ``relu_attributions``).
        interpolate_mode: how to upsample from the grid to the input (``"bilinear"`` as in the paper;
            Captum's ``interpolate`` defaults to ``"nearest"``).
        upsample: return grid-resolution maps ``(B, 1, Hg, Wg)`` when ``False``.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=2, backbone_weights=None)
        >>> SALFCBMAttribution(m).attribute(torch.randn(2, 3, 64, 64), target=1).shape
        torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self,
        model: SALFCBM,
        *,
        mode: str = "class",
        relu: bool = False,
        interpolate_mode: str = "bilinear",
        upsample: bool = True,
        template: str = CLASS_TEMPLATE,
    ):
        if not hasattr(model, "head_from_maps") or not hasattr(model, "concept_maps_from_features"):
            raise InputError(f"`model` must be a salfcbm.SALFCBM, got {type(model).__name__}.")
        if mode not in MODES:
            raise InputError(f"`mode` must be one of {MODES}, got {mode!r}.")
        if interpolate_mode not in INTERPOLATE_MODES:
            raise InputError(f"`interpolate_mode` must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}.")
        self.model = model
        self.mode = mode
        self.relu = bool(relu)
        self.interpolate_mode = interpolate_mode
        self.upsample = bool(upsample)
        self.template = template
        self._class_concept = class_concept_indices(model, template) if mode == "class_concept" else None

    def __repr__(self) -> str:
        return f"SALFCBMAttribution(mode={self.mode!r}, relu={self.relu}, interpolate_mode={self.interpolate_mode!r})"

    @property
    def multiplies_by_inputs(self) -> bool:  # Captum attribute, for code that inspects it
        return False

    def _targets(self, target: Any, B: int, logits: torch.Tensor) -> torch.Tensor:
        resolve = (
            self.model.concept_index if self.mode == "concept" else (lambda t: class_index(self.model, t))
        )
        if target is None:
            if self.mode == "concept":
                raise InputError("mode='concept' needs `target`: a concept name or index (or one per image).")
            return logits.argmax(-1)
        target = _captum_target(target, B)
        if isinstance(target, (int, str)) and not isinstance(target, bool):
            return torch.full((B,), resolve(target), dtype=torch.long, device=logits.device)
        if isinstance(target, Sequence) and len(target) == B:
            return torch.tensor([resolve(t) for t in target], dtype=torch.long, device=logits.device)
        raise InputError(
            f"`target` must be an int, a name, or one per image (length {B}); got {target!r}."
        )

    def attribute(
        self,
        inputs: torch.Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        relu_attributions: bool | None = None,
        **captum_kwargs: Any,
    ) -> torch.Tensor:
        """Heatmaps ``(B, 1, H, W)`` for backbone-ready ``inputs`` ``(B, 3, H, W)``.

        Args:
            inputs: backbone-ready images (a 1-tuple, as Captum allows, is accepted).
            target: class mode: class index/name, one per image, a ``(B,)`` tensor, or ``None`` for
                the prediction; concept mode: a concept name/index, or one per image.
            additional_forward_args: must be ``None`` (SALF-CBM takes only images).
            relu_attributions: overrides the constructor's ``relu`` for this call.
            **captum_kwargs: arguments other Captum methods take (``baselines``, ``n_steps``,
                ``method``, ``internal_batch_size``, ``attribute_to_layer_input``, ...) are accepted
                so Captum code runs unchanged, and ignored with a warning naming them; SALF-CBM
                heatmaps need one forward pass and no baselines. Unknown names are errors.

        Returns:
            A detached float tensor ``(B, 1, H, W)`` (``(B, 1, Hg, Wg)`` with ``upsample=False``).
        """
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                raise InputError(f"SALF-CBM takes one input tensor, got a tuple of {len(inputs)}.")
            inputs = inputs[0]
        if additional_forward_args is not None:
            raise InputError("SALF-CBM takes no additional forward arguments; pass `additional_forward_args=None`.")
        _warn_ignored(captum_kwargs)
        x = as_batch(inputs, "inputs")
        B = x.shape[0]
        with torch.no_grad():
            out = self.model(x)
            t = self._targets(target, B, out.logits)
            if self.mode == "class":  # one weighted sum of the maps, built from the features when lazy
                w = self.model.head.weight.detach()[t] / self.model.concept_std.detach()
                attr = out.combine_maps(w).detach().float()
            elif self.mode == "class_concept":
                k = self._class_concept.to(t.device)[t]
                attr = out.concept_maps_at(k[:, None]).detach().float()[:, 0]
            else:
                attr = out.concept_maps_at(t[:, None]).detach().float()[:, 0]
            attr = attr.unsqueeze(1)
            if self.upsample and tuple(attr.shape[-2:]) != tuple(x.shape[-2:]):
                kw = {"align_corners": False} if self.interpolate_mode in ("bilinear", "bicubic") else {}
                attr = F.interpolate(attr, size=tuple(x.shape[-2:]), mode=self.interpolate_mode, **kw)
            relu = self.relu if relu_attributions is None else bool(relu_attributions)
            if relu:
                attr = attr.clamp_min(0)
        return attr


# Arguments of Captum's attribute() methods that have no meaning for SALF-CBM heatmaps.
CAPTUM_IGNORED = (
    "baselines", "n_steps", "method", "internal_batch_size", "attribute_to_layer_input",
    "attribute_to_neuron_input", "attr_dim_summation", "grad_kwargs", "nt_type", "nt_samples",
    "nt_samples_batch_size", "stdevs", "draw_baseline_from_distrib", "feature_mask",
    "perturbations_per_eval", "sliding_window_shapes", "strides", "show_progress", "n_samples",
    "layer_baselines", "return_convergence_delta",
)


def _warn_ignored(kwargs: dict[str, Any]) -> None:
    unknown = sorted(k for k in kwargs if k not in CAPTUM_IGNORED)
    if unknown:
        near = sorted({c for k in unknown for c in closest(k, CAPTUM_IGNORED + ("relu_attributions",), n=2)})
        raise InputError(
            f"SALFCBMAttribution.attribute() got unknown arguments {unknown}; it takes inputs, target, "
            f"additional_forward_args, relu_attributions and Captum's usual arguments. Closest: {near}."
        )
    if kwargs.get("return_convergence_delta"):
        raise InputError(
            "return_convergence_delta=True asks for a convergence delta, which SALF-CBM heatmaps (an exact "
            "decomposition, no integration) do not have; leave it False."
        )
    if kwargs:
        warnings.warn(
            f"SALFCBMAttribution ignores the Captum arguments {sorted(kwargs)}: its heatmaps come from one "
            "forward pass and need no baselines, integration steps or batching.",
            UserWarning,
            stacklevel=3,
        )


def _captum_target(target: Any, B: int) -> Any:
    """Captum's target forms -> an int/name or a list with one int/name per image.

    Captum takes an int, a tuple (an index into the output's non-batch dims; for logits a
    1-tuple), a tensor (scalar, ``(B,)`` or ``(B, 1)``) or a list of ints or 1-tuples.
    """
    if isinstance(target, torch.Tensor):
        if target.is_floating_point():
            raise InputError(f"A `target` tensor must hold integer indices, got dtype {target.dtype}.")
        if target.dim() == 2 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() == 0 or target.numel() == 1 and B != 1 and target.dim() == 1:
            return int(target.reshape(()))
        if target.dim() == 1 and target.shape[0] == B:
            return target.tolist()
        raise InputError(f"A `target` tensor must be a scalar, (B,) or (B, 1) with B={B}, got {tuple(target.shape)}.")
    if isinstance(target, tuple):
        if len(target) != 1:
            raise InputError(
                f"A tuple `target` indexes the output's non-batch dimensions; logits have one, so give a 1-tuple "
                f"such as (3,), got {target!r}."
            )
        return _captum_target(target[0], B)
    if isinstance(target, list):
        return [t[0] if isinstance(t, tuple) and len(t) == 1 else t for t in target]
    return target
