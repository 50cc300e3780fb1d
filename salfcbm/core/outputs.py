"""What a SALF-CBM returns, and a view of the model that returns plain logits.

`SALFCBMOutput` behaves like a Hugging Face ``ModelOutput``: attribute access
(``out.logits``), key access (``out["logits"]``), index access (``out[0]``), ``keys()`` /
``items()`` and `to_tuple`. Its concept maps are computed lazily: with mean
pooling the model pools the backbone's map *before* the 1x1 projection (pooling commutes with it),
so the logits cost what the backbone costs, and the ``(B, M, Hg, Wg)`` maps are only built when a
caller reads ``concept_maps`` -- or, cheaper, only for the concepts it needs
(`concept_maps_at`, `combine_maps`,
`region_sums`).

The output is a registered pytree node (as a ``ModelOutput`` is), so ``torch.export.export(model,
(x,))`` works on the model itself and returns an equivalent (still lazy) output. It is not a tensor:
``out.shape``, ``out.argmax(1)``, ``torch.softmax(out, 1)``, ``out[tensor]`` and a tool that
treats it as logits (Captum, pytorch-grad-cam) raise `NotATensorError`, which names the fix.

`SALFCBMClassifier` (``model.as_classifier()``) is the model seen as an ordinary classifier
``images -> logits``, the form Captum, pytorch-grad-cam, Quantus, ``torch.jit.trace``, ONNX export
and ``F.cross_entropy`` expect. It shares the model's parameters and its train/eval mode.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm.errors import InputError, NotATensorError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["SALFCBMClassifier", "SALFCBMOutput"]


class _Key(str):
    """A field name; a ``str`` in every way, except that reading a tensor attribute of it (what a
    tool does that iterates over the output as if it were a batch of logits, e.g. pytorch-grad-cam's
    ``zip(targets, outputs)``) raises `NotATensorError` instead of ``'str' object has no attribute``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name in _TENSOR_NAMES:
            raise NotATensorError(f"`.{name}` of {str(self)!r}, a key of a SALFCBMOutput (iterating over an "
                                  "output gives its keys)")
        raise AttributeError(f"'str' object has no attribute {name!r}")

    def __reduce__(self):
        return str, (str(self),)


_KEYS = tuple(_Key(k) for k in ("logits", "concept_maps", "concept_activations"))
# Public attributes and methods of a tensor (shape, dim, size, argmax, softmax, cpu, numpy, ...)
_TENSOR_NAMES = frozenset(n for n in dir(torch.Tensor) if not n.startswith("_"))


class SALFCBMOutput(Mapping):
    """What `SALFCBM.forward` returns; a Hugging Face ``ModelOutput`` look-alike.

    Attributes:
        logits: ``(B, L)`` class scores.
        concept_maps: ``(B, M, Hg, Wg)`` one map per concept on the prompting grid, c(x); computed
            on first read when the model pooled before projecting (mean pooling), then kept.
        concept_activations: ``(B, M)`` pooled maps c*(x), before standardisation.

    Keys, in order: ``"logits"``, ``"concept_maps"``, ``"concept_activations"``; ``out[0]`` is the
    logits, ``out[1:]`` the other two, and iterating gives the keys, as for a ``ModelOutput``.
    An output is not a tensor: write ``F.cross_entropy(out.logits, y)``, or call
    ``model.as_classifier()`` for a module that returns the logits tensor itself. Tensor attributes
    (``out.shape``, ``out.argmax``), torch functions (``torch.softmax(out, 1)``) and tensor or
    tuple indices (``out[:, 0]``) raise `NotATensorError` (an ``AttributeError`` and a
    ``TypeError``), which names both fixes.

    It is a pytree node (``torch.utils._pytree``), so ``torch.export``, ``tree_map`` and
    ``DistributedDataParallel`` see its tensors; flattening keeps lazy maps lazy (the leaves are
    the logits, the activations and the maps, or the features and bottleneck weights that build them).

    Lazy maps are built from the features and the bottleneck weights of the forward pass that made
    this output; read them before changing the model's weights in place.

    Examples:
        >>> out = SALFCBMOutput(torch.zeros(2, 3), torch.zeros(2, 4, 7, 7), torch.zeros(2, 4))
        >>> out["logits"] is out[0] is out.logits, list(out.keys()), len(out.to_tuple())
        (True, ['logits', 'concept_maps', 'concept_activations'], 3)
    """

    logits: torch.Tensor  # class-level annotations: the API pages show the attributes' types
    concept_activations: torch.Tensor | None

    def __init__(
        self,
        logits: torch.Tensor,
        concept_maps: torch.Tensor | None = None,
        concept_activations: torch.Tensor | None = None,
        *,
        features: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ):
        if concept_maps is None and (features is None or grid is None or weight is None):
            raise InputError("A SALFCBMOutput needs `concept_maps`, or `features`, `grid` and `weight` to build them.")
        self.logits = logits
        self.concept_activations = concept_activations
        self._maps = concept_maps
        self._features = features  # (B, C, h, w) backbone map, resized to the grid on first use
        self._grid = tuple(grid) if grid is not None else None
        self._weight = weight.flatten(1) if weight is not None else None  # (M, C)
        self._bias = bias

    # ------------------------------------------------------------------ lazy maps
    @property
    def maps_computed(self) -> bool:
        """Whether the full ``(B, M, Hg, Wg)`` maps exist yet (reading ``concept_maps`` builds them)."""
        return self._maps is not None

    @property
    def grid_features(self) -> torch.Tensor:
        """The backbone map resized to the grid, ``(B, C, Hg, Wg)`` (only for lazily mapped outputs)."""
        if self._features is None:
            raise InputError("This output holds its concept maps, not the features; read `concept_maps` instead.")
        f = self._features
        if tuple(f.shape[-2:]) != self._grid:
            f = F.interpolate(f, size=self._grid, mode="bilinear", align_corners=False)
            self._features = f
        return f

    @property
    def concept_maps(self) -> torch.Tensor:
        if self._maps is None:
            w = self._weight
            self._maps = F.conv2d(self.grid_features, w[:, :, None, None], self._bias)
        return self._maps

    def concept_maps_at(self, concepts: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Maps of some concepts only: ``(B', k, Hg, Wg)``.

        Args:
            concepts: ``(k,)`` concept indices for every row, or ``(B', k)`` per row.
            rows: ``(B',)`` batch indices (default: every image, in order).
        """
        concepts = torch.as_tensor(concepts, dtype=torch.long, device=self.logits.device)
        B = self.logits.shape[0]
        rows = torch.arange(B, device=concepts.device) if rows is None else torch.as_tensor(rows, device=concepts.device)
        if concepts.dim() == 1:
            concepts = concepts.expand(rows.shape[0], -1)
        if self._maps is not None:
            return self._maps[rows[:, None], concepts]
        feats = self.grid_features[rows]  # (B', C, Hg, Wg)
        maps = torch.einsum("bkc,bchw->bkhw", self._weight[concepts].to(feats.dtype), feats)
        if self._bias is not None:
            maps = maps + self._bias[concepts][..., None, None].to(maps.dtype)
        return maps

    def combine_maps(self, coefficients: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_m coefficients[b, m] * concept_maps[rows[b], m]``: ``(B', Hg, Wg)``, without building all maps."""
        B = self.logits.shape[0]
        rows = torch.arange(B, device=coefficients.device) if rows is None else rows
        if self._maps is not None:
            return torch.einsum("bm,bmhw->bhw", coefficients.to(self._maps.dtype), self._maps[rows])
        feats = self.grid_features[rows]
        c = coefficients.to(feats.dtype)
        out = torch.einsum("bc,bchw->bhw", c @ self._weight.to(feats.dtype), feats)
        if self._bias is not None:
            out = out + (c @ self._bias.to(feats.dtype))[:, None, None]
        return out

    def region_sums(self, weights: torch.Tensor, row: int = 0) -> torch.Tensor:
        """``sum_ij weights[r, i, j] * concept_maps[row, m, i, j]`` for every region and concept: ``(R, M)``."""
        if self._maps is not None:
            maps = self._maps[row]
            return torch.einsum("rij,mij->rm", weights.to(maps.dtype), maps)
        feats = self.grid_features[row]  # (C, Hg, Wg)
        w = weights.to(feats.dtype)
        pooled = torch.einsum("rij,cij->rc", w, feats)
        out = pooled @ self._weight.to(feats.dtype).T
        if self._bias is not None:
            out = out + w.sum((-2, -1))[:, None] * self._bias.to(feats.dtype)
        return out

    # ------------------------------------------------------------------ ModelOutput behaviour
    def keys(self):
        return list(_KEYS)

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in _KEYS:
                raise KeyError(f"{key!r} is not a field of SALFCBMOutput; fields: {[str(k) for k in _KEYS]}.")
            return getattr(self, key)
        if not isinstance(key, slice):
            if isinstance(key, (torch.Tensor, bool)) or not hasattr(type(key), "__index__"):
                raise NotATensorError(f"Indexing with {_describe(key)} (out[0] is the logits, "
                                      "out['concept_maps'] a field)")
            key = operator.index(key)
        return self.to_tuple()[key]

    def __getattr__(self, name: str) -> Any:  # only reached when normal lookup fails
        if name in _TENSOR_NAMES:
            raise NotATensorError(f"`.{name}` of a SALFCBMOutput")
        raise AttributeError(f"'SALFCBMOutput' object has no attribute {name!r}; its fields are "
                             f"{', '.join(_KEYS)} (and keys(), items(), to_tuple()).")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        raise NotATensorError(f"`{name}` was given a SALFCBMOutput")

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """``(logits, concept_maps, concept_activations)`` (builds the maps if they are lazy)."""
        return tuple(getattr(self, k) for k in _KEYS)

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        maps = "lazy" if self._maps is None else f"shape={tuple(self._maps.shape)}"
        return (
            f"SALFCBMOutput(logits=shape={tuple(self.logits.shape)}, concept_maps={maps}, "
            f"concept_activations=shape={tuple(self.concept_activations.shape)})"
        )


def _not_an_operand(op: str):
    def refuse(self, *other):
        raise NotATensorError(f"`{op}` with a SALFCBMOutput operand")

    refuse.__name__ = op
    return refuse


for _op in ("add", "sub", "mul", "truediv", "floordiv", "matmul", "pow"):  # out * 2, logits - out, ...
    for _name in (f"__{_op}__", f"__r{_op}__"):
        setattr(SALFCBMOutput, _name, _not_an_operand(_name))
for _name in ("__neg__", "__lt__", "__le__", "__gt__", "__ge__"):
    setattr(SALFCBMOutput, _name, _not_an_operand(_name))


def _describe(key: Any) -> str:
    if isinstance(key, torch.Tensor):
        return f"a tensor of shape {tuple(key.shape)}"
    return f"{type(key).__name__} {key!r}"


# ---------------------------------------------------------------------- pytree registration
_STATE = ("logits", "concept_activations", "_maps", "_features", "_weight", "_bias")


def _flatten(out: SALFCBMOutput) -> tuple[list[Any], Any]:
    return [out.__dict__[k] for k in _STATE], out._grid


def _unflatten(values: Any, context: Any) -> SALFCBMOutput:
    logits, acts, maps, feats, weight, bias = values
    grid = tuple(context) if context is not None else None
    return SALFCBMOutput(logits, maps, acts, features=feats, grid=grid, weight=weight, bias=bias)


def _register_pytree() -> None:
    try:
        from torch.utils import _pytree as pytree
    except ImportError:  # pragma: no cover - every supported torch has it
        return

    def flatten_with_keys(out):
        values, context = _flatten(out)
        return [(pytree.GetAttrKey(k), v) for k, v in zip(_STATE, values)], context

    pytree.register_pytree_node(SALFCBMOutput, _flatten, _unflatten,
                                serialized_type_name=f"{SALFCBMOutput.__module__}.{SALFCBMOutput.__qualname__}",
                                flatten_with_keys_fn=flatten_with_keys)


_register_pytree()


class SALFCBMClassifier(nn.Module):
    """A `SALFCBM` seen as a plain classifier: ``forward(images) -> logits`` tensor.

    Made by `SALFCBM.as_classifier`. It shares the model's parameters (no copy) and is the
    module to hand to tools that expect logits: Captum (``IntegratedGradients``,
    ``LayerGradCam``), pytorch-grad-cam (``GradCAM``), ``torch.jit.trace``, ``torch.export``,
    ``torch.onnx.export`` and losses such as ``F.cross_entropy``. Gradients flow back through the
    backbone to the input and to any backbone layer (which attribution tools need) even when the
    backbone is frozen; the backbone's parameters are not changed by that.

    It has no train/eval mode of its own: ``clf.training`` is the model's, and ``clf.eval()`` /
    ``clf.train()`` switch the model, as they would any submodule. Making the view changes nothing.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=3, backbone_weights=None)
        >>> m.as_classifier()(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: SALFCBM):
        super().__init__()  # sets `training`, which reads and writes the model's flag (none yet)
        self.model = model

    @property
    def training(self) -> bool:
        """The model's own ``training`` flag: the view is in eval mode exactly when its model is."""
        model = self.__dict__.get("_modules", {}).get("model")
        return model.training if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        # ``train()``/``eval()`` on the view set this flag and then recurse into the model, so they
        # switch the model (as for any submodule); ``nn.Module.__init__`` sets it before the model exists.
        model = self.__dict__.get("_modules", {}).get("model")
        if model is not None:
            model.training = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.output_from_features(self.model.forward_features(x, backbone_grad=True)).logits
