"""What a SALF-CBM returns, and a view of the model that returns plain logits.

`SALFCBMOutput` behaves like a Hugging Face ``ModelOutput``: attribute access
(``out.logits``), key access (``out["logits"]``), index access (``out[0]``), ``keys()`` /
``items()`` and `to_tuple`. Its concept maps are computed lazily: with mean
pooling the model pools the backbone's map *before* the 1x1 projection (pooling commutes with it),
so the logits cost what the backbone costs, and the ``(B, M, Hg, Wg)`` maps are only built when a
caller reads ``concept_maps`` -- or, cheaper, only for the concepts it needs
(`concept_maps_at`, `combine_maps`,
`region_sums`).

`SALFCBMClassifier` (``model.as_classifier()``) is the model seen as an ordinary classifier
``images -> logits``, the form Captum, pytorch-grad-cam, ``torch.jit.trace``, ``torch.export``,
ONNX export and ``F.cross_entropy`` expect.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from salfcbm.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from salfcbm.core.model import SALFCBM

__all__ = ["SALFCBMClassifier", "SALFCBMOutput"]

_KEYS = ("logits", "concept_maps", "concept_activations")


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
    ``model.as_classifier()`` for a module that returns the logits tensor itself.

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
                raise KeyError(f"{key!r} is not a field of SALFCBMOutput; fields: {list(_KEYS)}.")
            return getattr(self, key)
        return self.to_tuple()[key]

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


class SALFCBMClassifier(nn.Module):
    """A `SALFCBM` seen as a plain classifier: ``forward(images) -> logits`` tensor.

    Made by `SALFCBM.as_classifier`. It shares the model's parameters (no copy) and is the
    module to hand to tools that expect logits: Captum (``IntegratedGradients``,
    ``LayerGradCam``), pytorch-grad-cam (``GradCAM``), ``torch.jit.trace``, ``torch.export``,
    ``torch.onnx.export`` and losses such as ``F.cross_entropy``. Gradients flow back through the
    backbone to the input and to any backbone layer (which attribution tools need) even when the
    backbone is frozen; the backbone's parameters are not changed by that.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet10t", pretrained=False), concepts=["a", "b"],
        ...                  num_classes=3, backbone_weights=None)
        >>> m.as_classifier()(torch.randn(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, model: SALFCBM):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.output_from_features(self.model.forward_features(x, backbone_grad=True)).logits
