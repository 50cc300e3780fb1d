"""The methods a benchmark compares: `BenchmarkMethod` (a heatmap method and the model it explains) and
`build_methods`, the factory that builds SALF-CBM's entries and any registered baseline
(`salfcbm.evaluation.baselines.register_baseline`) for a trained SALF-CBM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from salfcbm._utils.tensors import check_logits
from salfcbm.errors import InputError, UnsupportedBaselineError
from salfcbm.evaluation.deletion import constant_substrate

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM


#: SALF-CBM's own entries of `build_methods` and their labels in tables.
SALFCBM_METHODS: dict[str, str] = {"salfcbm": "SALF-CBM", "salfcbm_logit": "SALF-CBM (class logit)"}

_RECORDABLE = (InputError, UnsupportedBaselineError)

__all__ = [
    "SALFCBM_METHODS",
    "BenchmarkMethod",
    "MethodPipeline",
    "build_methods",
    "constant_substrate",
    "logits_of",
    "method_label",
]


@dataclass
class BenchmarkMethod:
    """One heatmap method and the model whose decisions it explains.

    Args:
        attributor: an object with ``attribute(inputs, target) -> (B, 1, h, w)`` (an
            `Attributor`,
            `SALFCBMAttribution`, a Captum method wrapped to
            return one channel) or a plain callable ``f(inputs, target)``.
        model: the explained model, ``inputs -> (B, num_classes)`` logits (or an output
            with a ``.logits`` field, such as a `SALFCBM`). Its arg-max
            is the explained class with ``targets="predicted"`` and its softmax is scored
            by deletion / insertion.
        preprocess: maps the benchmark's images to this model's inputs (resize and
            normalisation); ``None`` feeds them unchanged.
        explains: a short label for the table ("SALF-CBM", "backbone").

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> m = BenchmarkMethod(make_baseline("gradcam", net, layer="0"), net, explains="net")
        >>> m.attribute(torch.rand(1, 3, 8, 8), torch.tensor([1])).shape
        torch.Size([1, 1, 8, 8])
    """

    attributor: Any
    model: Callable[[torch.Tensor], Any]
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
    explains: str = ""

    def __post_init__(self) -> None:
        fn = getattr(self.attributor, "attribute", self.attributor)
        if not callable(fn):
            raise InputError(
                "`attributor` must have an `attribute(inputs, target)` method or be callable, "
                f"got {type(self.attributor).__name__}."
            )
        if not callable(self.model):
            raise InputError(f"`model` must be callable (inputs -> logits), got {type(self.model).__name__}.")
        if self.preprocess is not None and not callable(self.preprocess):
            raise InputError(f"`preprocess` must be callable or None, got {type(self.preprocess).__name__}.")

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The model inputs for benchmark ``images``."""
        return images if self.preprocess is None else self.preprocess(images)

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` logits of the explained model for model ``inputs``."""
        return logits_of(self.model(inputs))

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(B, 1, h, w)`` for model ``inputs`` and one class per image."""
        fn = getattr(self.attributor, "attribute", self.attributor)
        return fn(inputs, target)


def logits_of(out: Any) -> torch.Tensor:
    """``(B, num_classes)`` logits of a model output (a tensor, or an output with ``.logits``), or `InputError`."""
    return check_logits(getattr(out, "logits", out), "The explained model", "(Or return an output with `.logits`.)")


class MethodPipeline(nn.Module):
    """``images -> logits`` of a method's model, for deletion / insertion in image space."""

    def __init__(self, method: BenchmarkMethod) -> None:
        super().__init__()
        self._method = method
        if isinstance(method.model, nn.Module):
            self.model = method.model  # registered, so DeletionInsertion's eval()/restore reaches it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._method.logits(self._method.inputs(images))


def build_methods(
    model: SALFCBM,
    names: Sequence[str] | None = None,
    *,
    backbone_preprocess: str | Callable[[torch.Tensor], torch.Tensor] | None = "model",
    layer: str | None = None,
    baseline_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    reference_colour: Sequence[float] | None = None,
    on_error: str = "raise",
    class_template: str | None = None,
) -> tuple[dict[str, BenchmarkMethod], dict[str, str]]:
    """SALF-CBM and the baselines of `salfcbm.evaluation.baselines`, ready for `run_attribution_benchmark`.

    ``"salfcbm"`` is the paper's Table 2 protocol: the model is trained with one concept per
    class, ``"An image of a {class}"``, and the heatmap of a class is that concept's map
    (`SALFCBMAttribution` in ``"class_concept"`` mode).
    ``"salfcbm_logit"`` is the extra row: the spatial decomposition of the class logit (paper
    3.5; ``"class"`` mode), which any SALF-CBM has. Both run on ``model``, fed
    ``model.preprocess(images)``. Every other name is a baseline built with
    `make_baseline` on ``model.backbone``, the standard model
    with its own classifier (the paper's Table 2 compares against it), at ``layer``
    (default: the layer SALF-CBM taps, ``model.layer``) for the layer methods.

    Args:
        model: a trained SALF-CBM with its backbone.
        names: methods, among ``"salfcbm"``, ``"salfcbm_logit"`` and every registered baseline
            (``list_baselines(optional=True)``: torchcam's ``torchcam_*`` and ``legrad``, and yours,
            `register_baseline`); default: SALF-CBM's two and the non-optional baselines. Each
            baseline is built with its class's `benchmark_kwargs` (integrated gradients: the reference colour).
        backbone_preprocess: how benchmark images become backbone inputs: ``"model"``
            (``model.preprocess(images, crop=False)``: resize the whole image and normalise with the
            backbone's statistics,
            right for timm / torchvision backbones), ``None`` (unchanged: a backbone that
            takes ``[0, 1]`` images, like `SmallConvNet`) or a
            callable.
        layer: layer for Grad-CAM, Grad-CAM++ and Score-CAM (default ``model.layer``).
        baseline_kwargs: per-method keyword arguments for ``make_baseline``, e.g.
            ``{"integrated_gradients": {"n_steps": 16}}``.
        reference_colour: the "absent" colour in ``[0, 1]`` image space (default: the
            backbone's normalisation mean, ``model.config.input_mean``). Integrated
            gradients integrates from an image of this colour (unless
            ``baseline_kwargs`` sets ``baseline``); use the same colour for the deletion
            substrate (`constant_substrate`).
        class_template: the class-concept phrase of ``"salfcbm"`` (default ``"An image of a {class}"``,
            matched case-insensitively).
        on_error: ``"raise"`` or ``"record"``: a method that cannot explain this model (``"salfcbm"``
            on a model without class concepts, or a baseline
            (`UnsupportedBaselineError`, e.g. LRP on a module
            type without a rule)) is left out and its reason returned.

    Returns:
        ``(methods, skipped)``: the methods by name, and ``{name: reason}`` for those
        left out.

    Examples:
        >>> import timm, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), num_classes=2,
        ...                  concepts=["An image of a cat", "An image of a dog"], class_names=["cat", "dog"],
        ...                  backbone_weights=None)
        >>> methods, skipped = build_methods(m, ["salfcbm", "salfcbm_logit", "gradcam", "random"])
        >>> sorted(methods), methods["gradcam"].attributor.layer_name
        (['gradcam', 'random', 'salfcbm', 'salfcbm_logit'], 'layer4')
    """
    from salfcbm.evaluation.baselines import BaselineContext

    if not hasattr(model, "head_from_maps") or getattr(model, "backbone", None) is None:
        raise InputError(f"`model` must be a salfcbm.SALFCBM with its backbone, got {type(model).__name__}.")
    if on_error not in ("raise", "record"):
        raise InputError(f"`on_error` must be 'raise' or 'record', got {on_error!r}.")
    names, baseline_kwargs = _checked_names(names, baseline_kwargs)
    # the benchmark's masks cover the whole image: preprocess without the eval crop, so maps stay aligned
    full_frame = functools.partial(model.preprocess, crop=False)
    if backbone_preprocess == "model":
        bpre: Callable[[torch.Tensor], torch.Tensor] | None = full_frame
    elif backbone_preprocess is None or callable(backbone_preprocess):
        bpre = backbone_preprocess
    else:
        raise InputError(f"`backbone_preprocess` must be 'model', None or a callable, got {backbone_preprocess!r}.")
    colour = list(model.config.input_mean if reference_colour is None else reference_colour)
    context = BaselineContext(model.backbone, model.layer if layer is None else layer, bpre, colour)

    methods: dict[str, BenchmarkMethod] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            if name in SALFCBM_METHODS:
                methods[name] = _salfcbm_method(model, name, class_template, full_frame)
            else:
                methods[name] = _baseline_method(name, context, baseline_kwargs.get(name, {}))
        except _RECORDABLE as e:
            if on_error == "raise" or not isinstance(e, _recordable(name)):
                raise
            skipped[name] = str(e)
    return methods, skipped


def _recordable(name: str) -> type[Exception]:
    """What ``on_error="record"`` turns into a skip for ``name``: SALF-CBM's refusal of a model without
    class concepts (`InputError`), or a baseline's refusal of the model (`UnsupportedBaselineError`)."""
    return InputError if name in SALFCBM_METHODS else UnsupportedBaselineError


def _checked_names(
    names: Sequence[str] | None, baseline_kwargs: Mapping[str, Mapping[str, Any]] | None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The requested method names (default: SALF-CBM's and the non-optional baselines) and per-method
    keyword arguments, checked against SALF-CBM's entries and the baseline registry."""
    from salfcbm.evaluation.baselines import list_baselines

    valid = [*SALFCBM_METHODS, *list_baselines(optional=True)]  # optional methods (torchcam) when named
    names = list([*SALFCBM_METHODS, *list_baselines()] if names is None else names)
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise InputError(f"Unknown method(s) {bad or names}; choose among {valid}.")
    if len(set(names)) != len(names):
        raise InputError(f"Methods are listed twice: {names}.")
    kwargs = {k: dict(v) for k, v in (baseline_kwargs or {}).items()}
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise InputError(f"`baseline_kwargs` names unknown method(s) {unknown}; choose among {valid}.")
    return names, kwargs


def _salfcbm_method(
    model: SALFCBM, name: str, class_template: str | None, full_frame: Callable[[torch.Tensor], torch.Tensor]
) -> BenchmarkMethod:
    """SALF-CBM's class-concept map (``"salfcbm"``) or class-logit decomposition (``"salfcbm_logit"``)."""
    from salfcbm.explain.attribution import CLASS_TEMPLATE, SALFCBMAttribution

    if name == "salfcbm":
        attr = SALFCBMAttribution(model, mode="class_concept", template=class_template or CLASS_TEMPLATE)
    else:
        attr = SALFCBMAttribution(model, mode="class")
    return BenchmarkMethod(attr, model, full_frame, explains="SALF-CBM")


def _baseline_method(name: str, context: Any, kwargs: Mapping[str, Any]) -> BenchmarkMethod:
    """The registered baseline ``name`` on the backbone, with the keyword defaults its class gives it."""
    from salfcbm.evaluation.baselines import baseline_class, make_baseline

    kw = baseline_class(name).benchmark_kwargs(context, kwargs)
    attr = make_baseline(name, context.model, context.layer, **kw)
    return BenchmarkMethod(attr, context.model, context.preprocess, explains="backbone")


def method_label(name: str) -> str:
    """The label of a benchmark method in tables: SALF-CBM's entries, else the registered baseline's ``label``.

    Examples:
        >>> method_label("salfcbm"), method_label("integrated_gradients")
        ('SALF-CBM', 'IG')
    """
    if name in SALFCBM_METHODS:
        return SALFCBM_METHODS[name]
    from salfcbm.evaluation.baselines import baseline_label

    return baseline_label(name)
