"""The baselines' common interface: `Attributor`, and the helpers every family builds on.

An `Attributor` validates the images, resolves ``target``, puts the model in ``eval()`` for the
call and restores its modes, hooks and gradients afterwards; a subclass implements ``_attribute``.
Each subclass also owns how it is listed and built (`salfcbm.evaluation.baselines.register_baseline`):
its ``name``, its table ``label``, whether it takes a ``layer`` (``uses_layer``), whether it is an
``optional`` extra, and the keyword defaults `build_methods` gives it (``benchmark_kwargs``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.errors import InputError, LayerNotFoundError, SalfCBMError
from salfcbm.evaluation.inputs import check_images, model_logits, resolve_target

__all__ = [
    "Attributor",
    "BaselineContext",
    "BatchSized",
    "LayerMixin",
    "no_leftovers",
    "reduce_channels",
    "resolve_layer",
]

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
def no_leftovers(model: nn.Module, grad_state: bool = True) -> Iterator[None]:
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


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` (a name, a submodule, or ``None``: the last spatial stage) in ``model``."""
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


def reduce_channels(attr: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, C, H, W)`` attributions -> ``(B, 1, H, W)``: summed over channels (``"abs_sum"``: absolute values)."""
    return attr.abs().sum(1, keepdim=True) if how == "abs_sum" else attr.sum(1, keepdim=True)


@dataclass(frozen=True)
class BaselineContext:
    """What `build_methods` knows when it builds a baseline for a SALF-CBM's backbone.

    Attributes:
        model: the explained backbone (the standard model with its own classifier).
        layer: the layer SALF-CBM taps (the layer methods' default).
        preprocess: how the benchmark's ``[0, 1]`` images become the backbone's inputs (``None``: unchanged).
        reference_colour: the "absent" colour in ``[0, 1]`` image space, one value per channel.
    """

    model: nn.Module
    layer: str | None
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None
    reference_colour: Sequence[float]


# --------------------------------------------------------------------------- base class


class Attributor:
    """One heatmap method, Captum style: configure in the constructor, call `attribute`.

    Subclasses implement `_attribute`; this class validates inputs,
    resolves ``target``, switches to ``eval()`` (if ``eval_mode``) and restores
    the model's modes, hooks and gradients afterwards.

    Class attributes a subclass sets (see `register_baseline`): ``name`` (the registry key),
    ``label`` (the name in tables; default ``name``), ``uses_layer`` (`make_baseline` passes
    ``layer`` as the second argument), ``optional`` (listed by ``list_baselines(optional=True)``
    only: an extra dependency), ``needs_model``; and the class method `benchmark_kwargs`.

    Args:
        model: classifier returning ``(B, num_classes)`` logits.
        eval_mode: run the model in ``eval()`` mode during the call (restored after).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from salfcbm.evaluation.baselines import make_baseline
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> attributor = make_baseline("gradcam", model, layer="0")
        >>> attributor.attribute(torch.randn(2, 3, 16, 16), target=1).shape
        torch.Size([2, 1, 16, 16])
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    uses_layer: ClassVar[bool] = False
    optional: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True

    @classmethod
    def benchmark_kwargs(cls, context: BaselineContext, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments `build_methods` builds this baseline with: the user's ``kwargs`` and
        this method's own benchmark defaults for ``context`` (none here; integrated gradients adds its
        ``baseline`` image of the reference colour)."""
        return dict(kwargs)

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
        images = check_images(images)
        B, _, H, W = images.shape
        tgt = resolve_target(target, B, images.device)
        if self.model is None:
            heat = self._attribute(images.detach(), tgt)
        else:
            with preserved_modes(self.model, False if self.eval_mode else None), no_leftovers(self.model):
                if tgt is None:
                    with torch.no_grad():
                        tgt = model_logits(self.model, images).argmax(1)
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


class LayerMixin:
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
        self.layer_name, self.layer = resolve_layer(self.model, layer)
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


class BatchSized:
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

