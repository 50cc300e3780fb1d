"""The SALF-CBM module: backbone -> spatial concept bottleneck -> sparse head.

Paper section 3.3-3.4 (Benou & Riklin-Raviv, "Show and Tell", CVPR 2025).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin
from torch import nn

from salfcbm._utils.modes import module_device_dtype, preserved_modes
from salfcbm.core import persistence
from salfcbm.core.backbones import build_backbone, infer_spec, normalize_spec, parse_backbone_name
from salfcbm.core.config import POOLINGS, ModelConfig, repeated
from salfcbm.core.images import ImageTransform, resolve_transform
from salfcbm._utils.tensors import grid_mean_weights
from salfcbm.core.outputs import SALFCBMClassifier, SALFCBMOutput
from salfcbm.core.tap import FeatureTap, default_input_size
from salfcbm.errors import (ConceptNotFoundError, ConfigError, ImageInputError, InputError, NotATensorError,
                            SalfCBMError)

__all__ = ["SALFCBM", "SALFCBMClassifier", "SALFCBMOutput", "wrap"]

logger = logging.getLogger("salfcbm")

WEIGHTS_NAME = persistence.WEIGHTS_NAME
CONFIG_NAME = persistence.CONFIG_NAME

if TYPE_CHECKING:  # the explain layer's result types, for annotations only
    from salfcbm.explain.explanations import DecisionRule, ExplanationBatch, InterventionResult, RegionReport


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _as_grid(grid) -> tuple[int, int]:
    if _is_count(grid):
        grid = (grid, grid)
    if not isinstance(grid, (tuple, list)) or len(grid) != 2 or not all(_is_count(g) for g in grid):
        raise InputError(f"`grid` must be an int or a pair of positive ints (H~, W~), got {grid!r}.")
    return int(grid[0]), int(grid[1])


class SALFCBM(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="salfcbm",
    tags=["salfcbm", "concept-bottleneck", "explainability", "image-classification"],
    repo_url="https://github.com/salfcbm/salfcbm",
    paper_url="https://arxiv.org/abs/2502.20134",
    docs_url="https://salfcbm.readthedocs.io",
    model_card_template=persistence.MODEL_CARD_TEMPLATE,
):
    """A spatially-aware, label-free concept bottleneck model (SALF-CBM).

    Implements paper sections 3.3-3.4: the backbone's feature map at ``layer`` is
    resized bilinearly to the prompting grid, projected to ``M`` concept maps by a
    1x1 convolution (the concept bottleneck layer), pooled, standardised with
    training statistics and classified by a (sparse) linear head. The paper does not
    say how the maps are pooled; the authors' released inference code pools with a
    softmax. salfcbm's default is the mean: the same global average pooling as the
    standard baseline's features (so the two heads compare like for like), and linear,
    so a concept's contribution is exactly the sum of its cells' (the intervention and
    Explain Anything arithmetic stays exact). ``pooling="softmax"`` is the authors'
    choice. The backbone runs in eval mode under ``no_grad`` while frozen, without
    changing the user's module.

    Use `salfcbm.wrap` to build one around a model; this constructor takes
    plain JSON-able arguments so the Hub mixin can save and rebuild it.

    Args:
        backbone: a spec dict (see `salfcbm.core.backbones`), a name such as
            ``"timm:resnet50"``, or an ``nn.Module``.
        concepts: the concept names, one per bottleneck channel.
        num_classes: number of classes of the head.
        layer: module to tap; ``None`` = the last spatial stage.
        grid: prompting grid ``(H~, W~)``.
        pooling: ``"mean"`` (salfcbm's default; the paper names none), ``"softmax"`` (the
            authors' released code) or ``"max"``.
        cls_concat: concatenate the CLS token to every position (appendix B.1).
        class_names: optional names of the classes.
        feature_channels: channels of the tapped map (probed if ``None``).
        layout: tap layout (probed if ``None``).
        num_prefix_tokens: leading tokens to drop (probed if ``None``).
        input_size: the backbone's input resolution (the crop of `preprocess`; also used to probe).
        input_mean: mean the backbone's inputs are normalised with (used by `preprocess`).
        input_std: std the backbone's inputs are normalised with.
        input_crop_pct: `preprocess` resizes the shorter side to ``input_size / input_crop_pct``
            before the centre crop (``None``: the model's own data config, 1.0 for custom modules).
        input_crop_mode: ``"center"``, ``"squash"`` or ``"border"`` (``None``: the model's own).
        input_interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (``None``: the model's own).
        freeze_backbone: keep the backbone fixed (no grad, eval-mode BN/dropout during calls).
        backbone_spec: the spec to record when ``backbone`` is a module.
        backbone_weights: with a module and no ``backbone_spec``, what the inferred spec records as
            its weights: ``"auto"`` (its source's pretrained weights), ``None`` (random init) or a tag.
        softmax_temperature: temperature of softmax pooling.
        head_stats: metrics shown on the model card (set by `salfcbm.fit`).
        bottleneck_bias: give the 1x1 bottleneck conv a bias. Off: neither the paper (Sec. 3.3,
            "a single 1x1 convolution") nor LF-CBM's projection (``bias=False``) has one, and Eq. 1
            centres every cell over the batch, so a bias gets no gradient and is removed by the
            standardisation anyway. Models saved before salfcbm 0.2 have one and load with it.
        presence_threshold: per concept, the calibrated presence threshold (`presence_threshold`;
            set by `salfcbm.fit`); ``None``: present means above the training mean.

    Examples:
        >>> import timm, torch, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("test_vit", pretrained=False), concepts=["a wing", "a beak"],
        ...                  num_classes=3, backbone_weights=None)
        >>> m(torch.randn(1, 3, 160, 160)).concept_maps.shape
        torch.Size([1, 2, 7, 7])
    """

    def __init__(
        self,
        backbone: dict | str | nn.Module,
        *,
        concepts: list[str],
        num_classes: int,
        layer: str | None = None,
        grid: list[int] | tuple[int, int] = (7, 7),
        pooling: str = "mean",
        cls_concat: bool = False,
        class_names: list[str] | None = None,
        feature_channels: int | None = None,
        layout: str | None = None,
        num_prefix_tokens: int | None = None,
        input_size: list[int] | None = None,
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
        input_crop_pct: float | None = None,
        input_crop_mode: str | None = None,
        input_interpolation: str | None = None,
        freeze_backbone: bool = True,
        backbone_spec: dict | None = None,
        backbone_weights: str | None = "auto",
        softmax_temperature: float = 1.0,
        head_stats: dict | None = None,
        bottleneck_bias: bool = False,
        presence_threshold: list[float] | None = None,
    ):
        super().__init__()
        _check_concepts(concepts)
        if not _is_count(num_classes):
            raise InputError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        if pooling not in POOLINGS:
            raise InputError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(f"{len(class_names)} class_names given for num_classes={num_classes}; pass one per class.")
        grid = _as_grid(grid)

        if isinstance(backbone, str):
            backbone = parse_backbone_name(backbone)
        if isinstance(backbone, dict):
            spec = normalize_spec(backbone)
            backbone = build_backbone(spec)
        elif isinstance(backbone, nn.Module):
            spec = normalize_spec(backbone_spec) if backbone_spec is not None else None  # inferred lazily
        else:
            raise InputError(
                f"`backbone` must be an nn.Module, a spec dict or a name like 'timm:resnet50', got {type(backbone).__name__}."
            )
        self.backbone = backbone
        input_size = tuple(input_size) if input_size is not None else default_input_size(backbone)
        self.tap = FeatureTap(
            backbone,
            layer,
            cls_concat=cls_concat,
            input_size=input_size,
            layout=layout,
            num_prefix_tokens=num_prefix_tokens,
        )
        channels = feature_channels if feature_channels is not None else self.tap.channels
        if channels is None:
            with torch.no_grad(), self._frozen_backbone(bool(freeze_backbone)):
                channels = self.tap(self._probe_input(input_size)).shape[1]
        transform = resolve_transform(
            backbone, spec=spec, input_size=input_size, mean=input_mean, std=input_std, crop_pct=input_crop_pct,
            crop_mode=input_crop_mode, interpolation=input_interpolation,
        )
        try:
            self.config = ModelConfig(
                backbone=spec, concepts=list(concepts), num_classes=num_classes, layer=self.tap.layer, grid=list(grid),
                pooling=pooling, cls_concat=cls_concat, feature_channels=int(channels),
                class_names=list(class_names) if class_names is not None else None,
                layout=self.tap.layout, num_prefix_tokens=self.tap.num_prefix_tokens, **transform.to_config(),
                freeze_backbone=freeze_backbone, softmax_temperature=softmax_temperature, head_stats=head_stats,
                bottleneck_bias=bool(bottleneck_bias), presence_threshold=presence_threshold,
            )
        except ConfigError as e:
            raise InputError(str(e).replace("Fix config.json (or the argument)", "Fix the argument")) from None
        self._backbone_weights = backbone_weights  # recorded by the lazily inferred spec (backbone_spec)
        self.bottleneck = nn.Conv2d(channels, len(concepts), kernel_size=1, bias=bool(bottleneck_bias))
        self.head = nn.Linear(len(concepts), num_classes)
        self.register_buffer("concept_mean", torch.zeros(len(concepts)))
        self.register_buffer("concept_std", torch.ones(len(concepts)))

    # ------------------------------------------------------------------ properties
    @property
    def backbone_spec(self) -> dict[str, Any]:
        """The recipe that rebuilds the backbone (inferred from the module on first use)."""
        if self.config.backbone is None:
            spec = infer_spec(self._require_backbone(), weights=self._backbone_weights)
            self.config = self.config.replace(backbone=spec)
        return self.config.backbone

    @property
    def concepts(self) -> list[str]:
        return self.config["concepts"]

    @property
    def class_names(self) -> list[str]:
        names = self.config["class_names"]
        return list(names) if names is not None else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.config["grid"])

    @property
    def layer(self) -> str:
        return self.config["layer"]

    @property
    def presence_threshold(self) -> torch.Tensor | None:
        """``(M,)`` calibrated presence thresholds on the standardised concept-map peak, or ``None``.

        A concept is present in an image when ``(max c(x)[m] - mean[m]) / std[m]`` exceeds its
        threshold (`salfcbm.explain.evidence`); ``None`` (not calibrated): when its standardised
        pooled activation is above 0. `salfcbm.fit` calibrates it on the validation split.
        """
        t = self.config.presence_threshold
        return None if t is None else torch.tensor(t, dtype=torch.float32)

    def set_presence_threshold(self, thresholds: Sequence[float] | torch.Tensor | None) -> None:
        """Store (or, with ``None``, remove) the per-concept presence thresholds (a new config)."""
        if isinstance(thresholds, torch.Tensor):
            thresholds = thresholds.detach().flatten().cpu().tolist()
        try:
            self.config = self.config.replace(presence_threshold=None if thresholds is None else list(thresholds))
        except ConfigError as e:
            raise InputError(str(e).replace("Fix config.json (or the argument)", "Fix the argument")) from None

    def set_head_stats(self, stats: dict[str, Any] | None) -> None:
        """Record the metrics the model card shows (a new config; nothing else changes)."""
        self.config = self.config.replace(head_stats=dict(stats) if stats is not None else None)

    def concept_index(self, concept: int | str) -> int:
        """Index of a concept given by name or index; unknown names list the closest ones."""
        if isinstance(concept, bool) or not isinstance(concept, (int, str)):
            raise InputError(f"A concept is a name (str) or an index (int), got {concept!r}. "
                             "Pass one of `model.concepts` or its position.")
        if isinstance(concept, int):
            if not -self.num_concepts <= concept < self.num_concepts:
                raise InputError(f"Concept index {concept} is out of range for {self.num_concepts} concepts.")
            return concept % self.num_concepts
        try:
            return self.concepts.index(concept)
        except ValueError:
            raise ConceptNotFoundError(concept, self.concepts) from None

    # ------------------------------------------------------------------ backbone handling
    def _probe_input(self, input_size) -> torch.Tensor:
        device, dtype = module_device_dtype(self.backbone)
        return torch.zeros(2, 3, *input_size, device=device, dtype=dtype)  # 2: a layer must keep the batch

    @contextmanager
    def _frozen_backbone(self, freeze: bool | None = None):
        """Eval-mode backbone for the duration of a call; the user's train/eval flags are restored."""
        if not (self.config["freeze_backbone"] if freeze is None else freeze):
            yield
            return
        with preserved_modes(self.backbone, mode=False):
            yield

    def _require_backbone(self) -> nn.Module:
        if self.backbone is None:
            raise SalfCBMError("This SALFCBM was unwrapped; its backbone was handed back. Wrap the backbone again.")
        return self.backbone

    def unwrap(self) -> nn.Module:
        """Hand back the backbone, untouched, and detach it from this model.

        salfcbm keeps no hooks on the backbone between calls, so what comes back is
        exactly the module that was wrapped.
        """
        backbone = self._require_backbone()
        self.backbone = None
        self.tap = None
        return backbone

    def select_concepts(self, keep: Sequence[int | str]) -> SALFCBM:
        """Keep only the given concepts (in the given order), with their bottleneck rows,
        head columns and statistics. Returns ``self``."""
        if isinstance(keep, (str, int)):
            raise InputError(f"select_concepts takes a list of concepts to keep, got {keep!r}; wrap it in a list.")
        idx = [self.concept_index(k) for k in keep]
        if not idx:
            raise InputError("select_concepts needs at least one concept to keep.")
        twice = [self.concepts[i] for i in repeated(idx)]
        if twice:
            raise InputError(f"select_concepts got the same concept more than once: {twice}. List each once.")
        t = torch.tensor(idx, device=self.bottleneck.weight.device)
        conv = nn.Conv2d(self.bottleneck.in_channels, len(idx), kernel_size=1,
                         bias=self.bottleneck.bias is not None).to(
            self.bottleneck.weight.device, self.bottleneck.weight.dtype
        )
        head = nn.Linear(len(idx), self.num_classes).to(self.head.weight.device, self.head.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.bottleneck.weight[t])
            if conv.bias is not None:
                conv.bias.copy_(self.bottleneck.bias[t])
            head.weight.copy_(self.head.weight[:, t])
            head.bias.copy_(self.head.bias)
        self.bottleneck, self.head = conv, head
        self.concept_mean = self.concept_mean[t].clone()
        self.concept_std = self.concept_std[t].clone()
        pt = self.config.presence_threshold
        self.config = self.config.replace(concepts=[self.concepts[i] for i in idx],
                                          presence_threshold=None if pt is None else [pt[i] for i in idx])
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters an optimiser should see: the adapter, plus the backbone if not frozen."""
        params = list(self.bottleneck.parameters()) + list(self.head.parameters())
        if not self.config["freeze_backbone"]:
            params = list(self.backbone.parameters()) + params
        return params

    # ------------------------------------------------------------------ forward pieces
    @property
    def image_transform(self) -> ImageTransform:
        """The backbone's evaluation geometry and normalisation, as recorded in the config."""
        return ImageTransform.from_config(self.config)

    def preprocess(self, images: Any, size: Sequence[int] | None = None, *, crop: bool = True) -> torch.Tensor:
        """Raw images -> backbone-ready ``(B, 3, H, W)``, on the model's device and in its dtype.

        The library's one image entry point (see `salfcbm.core.images`): takes tensors
        (``uint8`` is divided by 255; float must be in ``[0, 1]``), NumPy arrays, PIL images,
        file paths or lists of them; grayscale and RGBA are converted with a warning. The
        geometry is the backbone's own eval transform (`image_transform`: resize the
        shorter side with the model's interpolation, centre crop, normalise).

        Args:
            images: the images.
            size: crop to this ``(H, W)`` instead of the configured input size.
            crop: ``False`` resizes the whole image to the input size instead (no crop, the aspect
                ratio is not kept): for images whose annotations cover the whole frame, such as a
                benchmark's masks, so that maps and annotations stay aligned.
        """
        t = self.image_transform
        if size is not None:
            t = dataclasses.replace(t, size=tuple(size))
        if not crop:
            t = dataclasses.replace(t, crop_pct=1.0, crop_mode="squash")
        device, dtype = self._input_device_dtype()
        return t(images).to(device=device, dtype=dtype)

    def _input_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where inputs go: the backbone's device and dtype (the adapter's for a parameter-free backbone)."""
        has_params = self.backbone is not None and next(self.backbone.parameters(), None) is not None
        return module_device_dtype(self.backbone if has_params else self.bottleneck)

    def _check_input(self, x: Any) -> torch.Tensor:
        """``model(x)``'s input rule: a backbone-ready float tensor on the model's device; it is
        cast to the model's dtype (an fp16/bf16 model takes fp32 input)."""
        if not isinstance(x, torch.Tensor):
            raise ImageInputError(
                f"model(x) takes a backbone-ready (B, 3, H, W) tensor, got {type(x).__name__}. "
                "Use model(model.preprocess(images)) for PIL images, paths, arrays or lists."
            )
        if not x.is_floating_point():
            raise ImageInputError(
                f"model(x) takes backbone-ready float images, got dtype {x.dtype} {tuple(x.shape)}: raw pixels. "
                "Use model(model.preprocess(images)), which scales, resizes and normalises them."
            )
        if x.dim() == 4 and x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
            raise ImageInputError(
                f"model(x) got a channels-last (NHWC) tensor {tuple(x.shape)}; pass x.permute(0, 3, 1, 2)."
            )
        device, dtype = self._input_device_dtype()
        if x.device != device:
            raise ImageInputError(
                f"The images are on {x.device} but the model is on {device}. Move them with "
                f"images.to({str(device)!r}) (model.preprocess does this), or the model with model.to(...)."
            )
        return x.to(dtype) if x.dtype != dtype else x

    def _as_input(self, images: Any, name: str = "images") -> torch.Tensor:
        """What ``explain`` and friends accept: backbone-ready float tensors (checked: not empty,
        finite, moved to the model's device and dtype) or raw images (`preprocess`)."""
        if not (isinstance(images, torch.Tensor) and images.is_floating_point()):
            return self.preprocess(images)
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4:
            raise ImageInputError(
                f"`{name}` must be (B, C, H, W) or (C, H, W) backbone-ready images, got shape {tuple(images.shape)}."
            )
        if x.shape[0] == 0:
            raise ImageInputError(f"`{name}` is an empty batch {tuple(x.shape)}; pass at least one image.")
        if not bool(torch.isfinite(x).all()):
            raise ImageInputError(
                f"`{name}` holds NaN or infinite values; the model would return NaN probabilities. Check the images "
                "(or their normalisation) and pass finite values."
            )
        device, dtype = self._input_device_dtype()
        return x.to(device=device, dtype=dtype)

    def forward_features(self, x: torch.Tensor, *, backbone_grad: bool = False) -> torch.Tensor:
        """The tapped backbone map f(x), ``(B, C, h, w)``.

        A frozen backbone runs without gradients unless ``x`` requires them or ``backbone_grad``
        (used by `as_classifier` for attribution tools that differentiate backbone layers).
        """
        self._require_backbone()
        x = self._check_input(x)
        frozen = self.config["freeze_backbone"]
        grad = torch.is_grad_enabled() and (not frozen or backbone_grad or x.requires_grad)
        with self._frozen_backbone(), torch.set_grad_enabled(grad):
            return self.tap(x)

    def resize_to_grid(self, fmap: torch.Tensor) -> torch.Tensor:
        """Bilinear resize of a feature map to the prompting grid (paper 3.3)."""
        if tuple(fmap.shape[-2:]) == self.grid:
            return fmap
        return F.interpolate(fmap, size=self.grid, mode="bilinear", align_corners=False)

    def concept_maps_from_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """c(x) = g(resize(f(x))): ``(B, M, Hg, Wg)``."""
        w = self.bottleneck.weight
        return self.bottleneck(self.resize_to_grid(fmap).to(w.dtype))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Pool concept maps to global activations c*(x), ``(B, M)``."""
        flat = maps.flatten(2)
        kind = self.config["pooling"]
        if kind == "mean":
            return flat.mean(-1)
        if kind == "max":
            return flat.amax(-1)
        t = self.config["softmax_temperature"]
        return (torch.softmax(flat / t, dim=-1) * flat).sum(-1)

    def standardize(self, activations: torch.Tensor) -> torch.Tensor:
        """(c* - mean) / std with the training statistics."""
        return (activations - self.concept_mean) / self.concept_std

    def map_peaks(self, maps: torch.Tensor, concepts: Any = None) -> torch.Tensor:
        """``(B, K)`` peaks of standardised concept maps, ``(max_{h,w} c(x)[m] - mean[m]) / std[m]``, in fp32.

        ``maps`` is ``(B, K, h, w)``, the maps of the concepts at indices ``concepts`` (default: all
        of them); the calibrated presence rule compares these with ``presence_threshold``.
        """
        idx = slice(None) if concepts is None else concepts
        mean = self.concept_mean.detach().float().to(maps.device)[idx]
        std = self.concept_std.detach().float().to(maps.device)[idx]
        return (maps.detach().float().flatten(2).amax(-1) - mean) / std

    def head_from_maps(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pool, standardise and classify concept maps: ``(activations, normalised, logits)``."""
        act = self.pool(maps)
        norm = self.standardize(act)
        return act, norm, self.head(norm)

    def pooled_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """``mean(resize_to_grid(fmap))`` over the grid, ``(B, C)``, without resizing.

        Bilinear resizing is linear, so the mean of the resized map is a fixed weighted sum of
        the tapped map (`grid_mean_weights`).
        """
        if tuple(fmap.shape[-2:]) == self.grid:
            return fmap.mean((-2, -1))
        k = grid_mean_weights(tuple(fmap.shape[-2:]), self.grid, fmap.device, fmap.dtype)
        return (fmap * k).sum((-2, -1))

    def output_from_features(self, fmap: torch.Tensor) -> SALFCBMOutput:
        """Logits, activations and (lazy) concept maps from a tapped map ``(B, C, h, w)``.

        With mean pooling, pooling commutes with the 1x1 projection:
        ``c*(x) = W_b mean(resize(f)) + b_b``, so the logits cost one ``(B, C) x (C, M)`` product
        and the ``(B, M, Hg, Wg)`` maps are built only when read. Softmax and max pooling weigh
        each position by the concept's own map, so they need every map and build them here.
        """
        w, b = self.bottleneck.weight, self.bottleneck.bias
        f = fmap.to(w.dtype)
        if self.config["pooling"] != "mean":
            maps = self.concept_maps_from_features(f)
            act, _, logits = self.head_from_maps(maps)
            return SALFCBMOutput(logits=logits, concept_maps=maps, concept_activations=act)
        act = F.linear(self.pooled_features(f), w.flatten(1), b)
        logits = self.head(self.standardize(act))
        return SALFCBMOutput(logits=logits, concept_activations=act, features=f, grid=self.grid, weight=w, bias=b)

    def forward(self, x: torch.Tensor) -> SALFCBMOutput:
        """Run the model on backbone-ready images ``(B, 3, H, W)`` (normalised as the backbone expects).

        Returns a `SALFCBMOutput` (attribute, key and index access like a Hugging
        Face ``ModelOutput``); for a module returning the logits tensor use `as_classifier`.
        """
        _refuse_jit_trace(self)
        return self.output_from_features(self.forward_features(x))

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script``, which cannot compile a SALF-CBM (its tap and lazy output)."""
        raise NotATensorError(
            "torch.jit.script cannot compile a SALF-CBM or its as_classifier() view",
            "its output is a SALFCBMOutput and its tap a call-scoped hook. Trace or export it instead: "
            "torch.jit.trace(model.as_classifier(), x) for the logits, or torch.export.export(model, (x,)).")

    def as_classifier(self) -> SALFCBMClassifier:
        """This model as ``images -> logits`` (a plain tensor), sharing its parameters.

        The form Captum, pytorch-grad-cam, Quantus, ``torch.jit.trace``, ONNX export and
        ``F.cross_entropy`` expect; see `SALFCBMClassifier`. It shares this model's train/eval
        mode (``clf.training is model.training``, now and after either is switched); making it
        does not switch the model.
        """
        return SALFCBMClassifier(self)

    # ------------------------------------------------------------------ explanations (salfcbm.explain.explanations)
    def explain(
        self,
        images: torch.Tensor,
        target: Any = None,
        top_k: int = 5,
        *,
        heatmaps: bool = True,
        heatmap_size: Sequence[int] | None = None,
        skip_zero: bool = True,
        output: SALFCBMOutput | None = None,
    ) -> "ExplanationBatch":
        """Top-k concept contributions and their heatmaps, per image and class (paper 3.5).

        Args:
            images: `(B, 3, H, W)` (or one `(3, H, W)`) backbone-ready images (`model.preprocess(x)`).
            target: the classes to explain: `None` (the prediction), an int or a class name for every
                image, a `(B,)` tensor or a list with one entry per image, or a list of lists.
            top_k: concepts per class.
            heatmaps: compute the top-k heatmaps (`False` skips the upsampling).
            heatmap_size: `(H, W)` of the heatmaps; default the input size.
            skip_zero: drop concepts whose contribution is exactly 0.
            output: a `SALFCBMOutput` of `model(images)` to reuse instead of running the model.

        Returns:
            An `ExplanationBatch` (see `salfcbm.explain.explanations.explain`); `result[i].top` explains image `i`.
        """
        from salfcbm.explain.explanations import explain

        return explain(self, images, target=target, top_k=top_k, heatmaps=heatmaps, heatmap_size=heatmap_size,
                       skip_zero=skip_zero, output=output)

    def explain_region(
        self,
        image: torch.Tensor,
        *,
        mask: Any = None,
        box: Any = None,
        points: Any = None,
        radius: float | None = None,
        top_k: int = 5,
        standardize: bool = False,
        output: SALFCBMOutput | None = None,
    ) -> "RegionReport":
        """Which concepts the model sees inside one or several regions (Explain Anything, paper 3.6).

        Args:
            image: one backbone-ready image `(3, H, W)` or `(1, 3, H, W)`.
            mask: `(H, W)` or `(R, H, W)` region(s) (bool or non-negative weights), e.g. SAM masks.
            box: `(x0, y0, x1, y1)` in pixels (x1/y1 exclusive) or a list of boxes.
            points: `[(x, y), ...]` (one region: the union of disks) or a list of such lists.
            radius: disk radius for `points` in pixels (default: half a grid cell).
            top_k: concepts per region.
            standardize: aggregate standardised maps instead of the raw maps.
            output: a `SALFCBMOutput` of `model(image)` to reuse.

        Returns:
            A `RegionReport` (see `salfcbm.explain.explanations.explain_region`); `report[r]` is region `r`.
        """
        from salfcbm.explain.explanations import explain_region

        return explain_region(self, image, mask=mask, box=box, points=points, radius=radius, top_k=top_k,
                              standardize=standardize, output=output)

    def intervene(
        self,
        image: torch.Tensor,
        concept: int | str | Sequence[int | str],
        *,
        region: Any = None,
        mask: Any = None,
        box: Any = None,
        points: Any = None,
        radius: float | None = None,
        beta: float | Sequence[float] = 1.0,
        target: int | str | None = None,
        output: SALFCBMOutput | None = None,
    ) -> "InterventionResult":
        """Edit concept maps locally and re-run the head (local user intervention, paper 3.6).

        Args:
            image: one backbone-ready image.
            concept: a concept name or index, or a list of them.
            region: a mask (input or grid resolution) or a box; `None` with no `mask`/`box`/`points`
                edits the whole map.
            mask: the region as a mask.
            box: the region as a box `(x0, y0, x1, y1)`.
            points: the region as points (disks of `radius` pixels).
            radius: radius of the point disks.
            beta: correction factor (positive or negative), or one per concept.
            target: class whose contributions are reported (default: the prediction before the edit).
            output: a `SALFCBMOutput` of `model(image)` to reuse.

        Returns:
            An `InterventionResult` (see `salfcbm.explain.explanations.intervene`) with logits, probabilities,
            predictions and contributions before and after.
        """
        from salfcbm.explain.explanations import intervene

        return intervene(self, image, concept, region=region, mask=mask, box=box, points=points, radius=radius,
                         beta=beta, target=target, output=output)

    def decision_rules(
        self,
        target: int | str | Sequence[int | str],
        *,
        threshold: float = 0.0,
        top_k: int | None = None,
    ) -> "DecisionRule | list[DecisionRule]":
        """The concepts connected to a class by a non-zero weight, sorted by `|weight|` (paper 3.5).

        Args:
            target: a class index or name, or a list of them (then a list is returned).
            threshold: keep weights with `|w| > threshold` (default: every non-zero weight).
            top_k: keep at most this many concepts per class.

        Returns:
            A `DecisionRule` (see `salfcbm.explain.explanations.decision_rules`), or a list of them for a list of targets.
        """
        from salfcbm.explain.explanations import decision_rules

        return decision_rules(self, target, threshold=threshold, top_k=top_k)

    # ------------------------------------------------------------------ persistence
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights salfcbm saves: bottleneck, head and statistics (never the backbone)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def head_sparsity(self) -> dict[str, float]:
        """Non-zeros of the head: total, per class (NEC) and density."""
        w = self.head.weight.detach()
        nnz = int((w != 0).sum())
        return {"nnz": nnz, "nec": nnz / w.shape[0], "density": nnz / w.numel()}

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict | None = None,
                        save_backbone: bool | str = "auto", **push_to_hub_kwargs):
        """Save ``model.safetensors``, ``config.json`` and ``README.md`` to ``save_directory``, touching nothing else.

        ``save_backbone="auto"`` also saves the backbone's own weights as ``backbone.safetensors``
        when its spec cannot rebuild them (a random init, weights from a local file, a backbone
        trained with ``freeze_backbone=False``, your own module), so `from_pretrained` needs no
        ``backbone=``; the MB written are logged and stated on the model card. ``True`` always
        saves them, ``False`` never (then loading needs ``backbone=``).

        Only the files the save owns are written (the card only if absent or written by salfcbm
        and not edited since), each to a temporary file in the folder and moved over the old one
        atomically; your other files, subfolders, permissions and symlinks stay as they were. A
        full disk or a kill while writing leaves the previous model; a kill between the replaces
        is detected on load (`ChecksumError`) and the next save repairs it.
        ``config.json`` records a SHA-256 of the weights and the backbone's weights fingerprint
        (see `salfcbm.core.persistence`).
        """
        persistence.save_model(self, save_directory, save_backbone=save_backbone)
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or Path(save_directory).name,
                                    model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        persistence.save_model(self, save_directory)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the saved adapter to the Hub (`PyTorchModelHubMixin.push_to_hub`, same arguments).

        Offline (``HF_HUB_OFFLINE=1``) or without a network it raises `HubUnavailableError`
        naming the fix, not a connection error of the HTTP client.
        """
        from salfcbm._utils.hub import hub_call

        return hub_call("push_to_hub", super().push_to_hub, repo_id, **kwargs)

    def generate_model_card(self, *args, config: ModelConfig | None = None, **kwargs) -> ModelCard:
        """The model card (the class's Jinja template): backbone, layer, concepts, grid, head sparsity."""
        from salfcbm.core.backbone_weights import card_fields, wants_saving

        cfg = config or self.config.replace(backbone=self.backbone_spec)
        spec, info = cfg.backbone, self._hub_mixin_info
        saved = None if config is not None else wants_saving("auto", spec, frozen=cfg.freeze_backbone)  # as a save would
        kwargs = {**card_fields(cfg, self.backbone, saved=saved), **kwargs}
        data = ModelCardData(library_name="salfcbm", tags=list(info.model_card_data.tags or []))
        return ModelCard.from_template(
            card_data=data, template_str=info.model_card_template, repo_url=info.repo_url, paper_url=info.paper_url,
            backbone_name=f"{spec['source']}:{spec['name']}", backbone_weights=spec["weights"],
            fingerprint=cfg.backbone_fingerprint, layer=cfg.layer, layout=cfg.layout, channels=cfg.feature_channels,
            concepts=cfg.concepts, grid=cfg.grid, pooling=cfg.pooling, num_classes=cfg.num_classes,
            head_stats=cfg.head_stats or {}, **self.head_sparsity(), **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        backbone: nn.Module | None = None,
        verify: bool = True,
        verify_backbone: bool = True,
        trust_backbone_source: bool = False,
        map_location: str = "cpu",
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **config_overrides: Any,
    ) -> SALFCBM:
        """Load a model saved with `save_pretrained` from a folder or a Hub repo.

        Everything is checked before it is used: ``config.json`` against the
        `ModelConfig` schema (backbone constructor arguments
        limited to `salfcbm.core.backbones.SAFE_KWARGS`), both files against the checksums
        recorded at save time (``verify``), the tensors (exactly the adapter's, finite floats,
        positive ``concept_std``), the backbone's channels at the layer (probed) and its
        weights fingerprint (``verify_backbone``). Your ``backbone`` is never modified.

        Args:
            pretrained_model_name_or_path: a folder written by `save_pretrained` or a Hub repo id.
            backbone: the backbone to use instead of rebuilding it from the saved spec. Without it, a saved
                ``backbone.safetensors`` (see `save_pretrained`) is loaded on the spec's architecture.
            verify: check the checksums of ``model.safetensors`` and ``config.json``.
            verify_backbone: refuse a backbone whose weights differ from the saved fingerprint.
            trust_backbone_source: follow a backbone name from ``config.json`` that is a location
                (timm's ``local-dir:PATH`` or ``hf-hub:REPO``); refused by default, since anyone can
                write (and re-sign) a file that points at any folder or repository.
            map_location: device the adapter's tensors are loaded to.
            force_download: Hub option.
            token: Hub option.
            cache_dir: Hub option.
            local_files_only: Hub option.
            revision: Hub option.
            **config_overrides: model config fields to override (e.g. ``layer=``, ``input_size=``).

        Raises:
            ModelNotFoundError: the path does not exist (and is no reachable Hub repo).
            ConfigError: ``config.json`` is not valid JSON, too large or deep, breaks the schema or names sizes
                beyond `salfcbm.core.config.CONFIG_LIMITS`.
            BackboneSpecError: the saved backbone name is a location and ``trust_backbone_source`` is off.
            ChecksumError: a file does not match the checksum recorded when it was saved.
            WeightsFormatError: not safetensors (or a header beyond the file), pickle files, backbone tensors,
                NaN/inf, wrong dtypes, non-finite outputs on a probe batch.
            BackboneMismatchError: the backbone's weights are not the saved ones.
            ConfigMismatchError: the weights do not fit the config or the backbone.
        """
        hub = dict(force_download=force_download, token=token, cache_dir=cache_dir,
                   local_files_only=local_files_only, revision=revision)
        model = persistence.load_model(cls, pretrained_model_name_or_path, backbone=backbone, verify=verify,
                                       verify_backbone=verify_backbone, map_location=map_location, hub_kwargs=hub,
                                       overrides=config_overrides,
                                       trust_backbone_source=trust_backbone_source)
        with preserved_modes(backbone):  # eval mode, as Hugging Face loads; your backbone keeps its own flags
            return model.eval()


def _refuse_jit_trace(model: nn.Module) -> None:
    """Name the fix when ``torch.jit.trace(model, x)`` traces the model itself (it cannot return a
    `SALFCBMOutput`); a module that calls ``model(x).logits`` inside a trace is left alone."""
    if not torch.jit.is_tracing():
        return
    traced = getattr(torch.jit._trace, "_trace_module_map", None) or {}
    if traced.get("__module") is model:
        raise NotATensorError("torch.jit.trace(model, x) cannot return a SALFCBMOutput; trace "
                              "model.as_classifier() for the logits, or use torch.export.export(model, (x,))")


def _check_concepts(concepts) -> None:
    if isinstance(concepts, str):
        raise InputError(f"`concepts` must be a list of concept names, got the single string {concepts!r} "
                         f"(which would become {len(concepts)} one-letter concepts). Pass [{concepts!r}].")
    if not isinstance(concepts, Sequence) or not concepts:
        raise InputError(f"`concepts` must be a non-empty list of strings, got {concepts!r}.")
    bad = [c for c in concepts if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InputError(f"Every concept must be a non-empty string; got {bad[:5]!r} in `concepts`. "
                         "Convert or remove those entries.")
    dupes = repeated(concepts)  # linear: wrap takes 100k concepts
    if dupes:
        raise InputError(f"Concept names must be unique; repeated: {dupes[:10]}{' ...' if len(dupes) > 10 else ''}. "
                         "Deduplicate the list.")


def wrap(
    backbone: nn.Module | str,
    *,
    concepts: Sequence[str],
    num_classes: int,
    layer: str | None = None,
    grid: int | tuple[int, int] = (7, 7),
    pooling: str = "mean",
    softmax_temperature: float = 1.0,
    cls_concat: bool = False,
    class_names: Sequence[str] | None = None,
    freeze_backbone: bool = True,
    backbone_weights: str | None = "auto",
    input_size: tuple[int, int] | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    input_crop_pct: float | None = None,
    input_crop_mode: str | None = None,
    input_interpolation: str | None = None,
    pretrained: bool = True,
    **backbone_kwargs: Any,
) -> SALFCBM:
    """Turn any timm or torchvision backbone into a SALF-CBM.

    The backbone is used as it is: salfcbm registers no lasting hook, never calls
    ``.eval()`` on it and never changes ``requires_grad``. While frozen (the
    default) it runs in eval mode and without gradients *during* salfcbm's calls
    only, and its flags are restored afterwards.

    Args:
        backbone: a model, or a name (``"timm:resnet50"``, ``"torchvision:vit_b_16"``, ``"resnet50"``).
        concepts: concept names (one bottleneck channel each).
        num_classes: classes of the head.
        layer: module to tap; ``None`` picks the last spatial stage.
        grid: prompting grid, e.g. ``7`` or ``(7, 7)``.
        pooling: ``"mean"`` (default; the paper names none), ``"softmax"`` (the authors'
            released code) or ``"max"``.
        softmax_temperature: temperature of ``pooling="softmax"`` (the authors' ``SoftmaxPooling2D``: 1).
        cls_concat: concatenate the CLS token to every position (ViTs).
        class_names: names of the classes.
        freeze_backbone: keep the backbone fixed.
        backbone_weights: what to record in the spec for a model passed in: ``"auto"`` assumes its
            source's pretrained weights, ``None`` a random init, or a tag.
        input_size: resolution to probe the backbone at (default: the model's own).
        input_mean: mean `SALFCBM.preprocess` normalises ``[0, 1]`` images with (default: timm's
            ``pretrained_cfg``, else ImageNet's). Use ``(0, 0, 0)`` for a model that normalises itself.
        input_std: std for `SALFCBM.preprocess` (default as for ``input_mean``).
        input_crop_pct: `SALFCBM.preprocess` resizes the shorter side to ``input_size / input_crop_pct``
            and centre-crops ``input_size`` (default: the model's own data config, e.g. timm's ``crop_pct``,
            torchvision's ``crop_size / resize_size``; 1.0 for other modules). 1.0 keeps the whole shorter side.
        input_crop_mode: ``"center"``, ``"squash"`` or ``"border"`` (default: the model's own, else ``"center"``).
        input_interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` (default: the model's own).
        pretrained: with a name, whether to load pretrained weights.
        **backbone_kwargs: passed to ``timm.create_model`` / ``torchvision.models.get_model`` with a name.

    Returns:
        A `SALFCBM` with an untrained bottleneck and head.

    Examples:
        >>> import timm, salfcbm
        >>> m = salfcbm.wrap(timm.create_model("resnet18", pretrained=False), concepts=["fur", "grass"],
        ...                  num_classes=2, backbone_weights=None)
        >>> m.layer
        'layer4'
    """
    spec = None
    if isinstance(backbone, str):
        spec = parse_backbone_name(backbone, pretrained=pretrained)
        spec["kwargs"].update(backbone_kwargs)
        backbone = build_backbone(spec)
    elif backbone_kwargs:
        raise InputError(
            f"Unknown keyword arguments {sorted(backbone_kwargs)}; backbone keyword arguments are only "
            "accepted with a backbone name."
        )
    elif not isinstance(backbone, nn.Module):
        raise InputError(f"`backbone` must be an nn.Module or a name like 'timm:resnet50', got {type(backbone).__name__}.")
    concepts = getattr(concepts, "concepts", concepts)
    _check_concepts(concepts)
    concepts = list(concepts)
    model = SALFCBM(
        backbone,
        concepts=concepts,
        num_classes=num_classes,
        layer=layer,
        grid=_as_grid(grid),
        pooling=pooling,
        softmax_temperature=softmax_temperature,
        cls_concat=cls_concat,
        class_names=list(class_names) if class_names is not None else None,
        freeze_backbone=freeze_backbone,
        backbone_spec=spec,
        backbone_weights=backbone_weights,
        input_size=list(input_size) if input_size is not None else None,
        input_mean=[float(v) for v in input_mean] if input_mean is not None else None,
        input_std=[float(v) for v in input_std] if input_std is not None else None,
        input_crop_pct=input_crop_pct,
        input_crop_mode=input_crop_mode,
        input_interpolation=input_interpolation,
    )
    return model
