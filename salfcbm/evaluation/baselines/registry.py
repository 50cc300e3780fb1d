"""The open registry of heatmap baselines: `register_baseline`, `make_baseline`, `list_baselines`.

A baseline is an `Attributor` subclass that owns everything the library needs to know about it:
its ``name`` (the registry key, what `make_baseline`, `build_methods` and
`run_attribution_benchmark`'s method dictionaries use), its ``label`` (the name in tables), whether
it takes a ``layer`` (``uses_layer``), whether it needs an extra install (``optional``), and the
keyword defaults the benchmark gives it (``benchmark_kwargs``). Decorating the class with
`register_baseline` is the whole registration, from inside the package or from user code, as timm's
``register_model``.
"""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from torch import nn

from salfcbm.errors import InputError
from salfcbm.evaluation.baselines.base import Attributor

__all__ = ["RESERVED_NAMES", "baseline_class", "baseline_label", "list_baselines", "make_baseline", "register_baseline", "unregister_baseline"]

#: Names a baseline cannot take: SALF-CBM's own entries of `build_methods`.
RESERVED_NAMES: tuple[str, ...] = ("salfcbm", "salfcbm_logit")

_BASELINES: dict[str, type[Attributor]] = {}  # registration order is list order

A = TypeVar("A", bound=type)


def register_baseline(cls: A) -> A:
    """Class decorator: register an `Attributor` subclass under its ``name`` attribute.

    The class sets ``name`` (required, a new name), and may set ``label`` (the name in tables;
    default ``name``), ``uses_layer = True`` (its ``__init__(model, layer, *, ...)`` takes the layer
    `build_methods` passes, e.g. SALF-CBM's tapped layer), ``optional = True`` (listed only by
    ``list_baselines(optional=True)``), ``needs_model = False`` (a floor that ignores the model), and
    override ``benchmark_kwargs`` (its keyword defaults inside `build_methods`). Its keyword-only
    ``__init__`` arguments are the options `make_baseline` accepts.

    Raises:
        InputError: ``cls`` is not an `Attributor` subclass, has no ``name``, or its name is taken
            (use `unregister_baseline` first to replace one).

    Examples:
        >>> import torch
        >>> from salfcbm.evaluation.baselines import Attributor
        >>> @register_baseline
        ... class Ones(Attributor):
        ...     name, label, needs_model = "ones_example", "all ones", False
        ...     def _attribute(self, images, target):
        ...         return torch.ones_like(images[:, :1])
        >>> make_baseline("ones_example", None).attribute(torch.rand(1, 3, 4, 4)).sum().item()
        16.0
        >>> "ones_example" in list_baselines()
        True
        >>> unregister_baseline("ones_example")
    """
    if not (isinstance(cls, type) and issubclass(cls, Attributor)):
        raise InputError(
            f"register_baseline decorates a subclass of salfcbm.evaluation.baselines.Attributor, got {cls!r}; "
            "derive your class from Attributor and implement `_attribute(images, target)`."
        )
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{cls.__name__} has no `name`; set the class attribute `name = \"my_method\"`.")
    if name in RESERVED_NAMES:
        raise InputError(f"The baseline name {name!r} is SALF-CBM's own method in build_methods; choose another name.")
    if name in _BASELINES and _BASELINES[name] is not cls:
        raise InputError(
            f"A baseline named {name!r} is already registered ({_BASELINES[name].__qualname__}); choose another "
            "name, or call unregister_baseline(name) first to replace it."
        )
    _BASELINES[name] = cls
    return cls


def unregister_baseline(name: str) -> None:
    """Remove the baseline ``name`` from the registry (to replace it, or after a test).

    Raises:
        InputError: no baseline has this name.
    """
    baseline_class(name)
    del _BASELINES[name]


def baseline_class(name: str) -> type[Attributor]:
    """The registered `Attributor` subclass called ``name``.

    Examples:
        >>> baseline_class("gradcam").label
        'GradCAM'
    """
    if not isinstance(name, str) or name not in _BASELINES:
        from salfcbm.errors import closest

        near = closest(str(name), _BASELINES)
        hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
        raise InputError(f"Unknown baseline {name!r}.{hint} Choose one of {list_baselines(optional=True)}.")
    return _BASELINES[name]


def baseline_label(name: str) -> str:
    """The table label of the baseline ``name`` (its class's ``label``, else its name)."""
    cls = baseline_class(name)
    return cls.label or cls.name


def list_baselines(optional: bool = False) -> list[str]:
    """Names accepted by `make_baseline`.

    Registered baselines in registration order (the package's own first); ``optional`` ones
    (``Attributor.optional``) only on request.

    Args:
        optional: also list the optional methods, such as the torchcam methods (``torchcam_*`` and
            ``legrad``), which need ``pip install 'salfcbm[baselines]'`` with torchcam; without it, only the methods of
            the paper's Table 2 and the floors (the default set of `build_methods`).

    Examples:
        >>> list_baselines()
        ['integrated_gradients', 'gradcam', 'lrp', 'gradcam++', 'scorecam', 'fullgrad', 'random', 'center']
        >>> list_baselines(optional=True)[8:]  # doctest: +NORMALIZE_WHITESPACE
        ['torchcam_cam', 'torchcam_gradcam', 'torchcam_gradcam++', 'torchcam_smoothgradcam++', 'torchcam_xgradcam',
         'torchcam_layercam', 'torchcam_scorecam', 'legrad']
    """
    return [n for n, c in _BASELINES.items() if optional or not c.optional]


def make_baseline(
    name: str, model: nn.Module | None, layer: str | nn.Module | None = None, **kwargs: Any
) -> Attributor:
    """Build the baseline ``name`` for ``model``.

    Args:
        name: one of `list_baselines` (``optional=True`` included), or a baseline you registered
            (`register_baseline`).
        model: classifier returning ``(B, num_classes)`` logits (may be ``None``
            for ``"random"`` and ``"center"``).
        layer: module name or module for the layer methods (``uses_layer``: ``"gradcam"``, ``"gradcam++"``,
            ``"scorecam"``, ``torchcam_*``; ``None``: the last spatial stage); ignored by the others,
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
    cls = baseline_class(name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p not in ("self", "model", "layer")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(f"{name!r} takes no argument(s) {unknown}; it accepts {allowed}.")
    if cls.uses_layer:
        return cls(model, layer, **kwargs)  # type: ignore[call-arg]
    return cls(model, **kwargs)  # type: ignore[call-arg]
