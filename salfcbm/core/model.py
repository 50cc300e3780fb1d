"""The SALF-CBM module: backbone -> spatial concept bottleneck -> sparse head.

Paper section 3.3-3.4 (Benou & Riklin-Raviv, "Show and Tell", CVPR 2025). `SALFCBMBase` is the
model without its explanation methods; the class users get, `salfcbm.SALFCBM` (returned by
`salfcbm.wrap` and ``salfcbm.SALFCBM.from_pretrained``), adds them with the explain layer's mixin
(`salfcbm.explain.mixin`, the Hugging Face ``GenerationMixin`` pattern), so this module imports
nothing above ``core``. Input checks live in `salfcbm.core.inputs`, poolings in
`salfcbm.core.pooling`, saving and loading in `salfcbm.core.persistence`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from salfcbm._utils.modes import preserved_modes
from salfcbm.core.backbones import build_backbone, infer_spec, normalize_spec, parse_backbone_name
from salfcbm.core.activations import pooled_activations
from salfcbm.core.adapter_init import new_adapter_layer
from salfcbm.core.config import ModelConfig, repeated
from salfcbm.core.images import ImageTransform, resolve_transform
from salfcbm._utils.tensors import grid_mean_weights
from salfcbm.core import inputs
from salfcbm.core.hub import HubMethods
from salfcbm.core.model_card import MODEL_CARD_TEMPLATE
from salfcbm.core.outputs import SALFCBMClassifier, SALFCBMOutput
from salfcbm.core.pooling import POOLINGS, get_pooling, is_linear
from salfcbm.core.tap import FeatureTap, default_input_size
from salfcbm.errors import ConceptNotFoundError, ConfigError, InputError, NotATensorError, SalfCBMError

__all__ = ["POOLINGS", "SALFCBM", "SALFCBMBase", "SALFCBMClassifier", "SALFCBMOutput", "wrap"]


class SALFCBMBase(
    nn.Module,
    HubMethods,
    PyTorchModelHubMixin,
    library_name="salfcbm",
    tags=["salfcbm", "concept-bottleneck", "explainability", "image-classification"],
    repo_url="https://github.com/salfcbm/salfcbm",
    paper_url="https://arxiv.org/abs/2502.20134",
    docs_url="https://salfcbm.readthedocs.io",
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """A spatially-aware, label-free concept bottleneck model (SALF-CBM), without the explanation methods.

    Users get `salfcbm.SALFCBM`, this class with `salfcbm.explain.mixin.ExplainMixin`'s
    ``explain``, ``explain_region``, ``intervene`` and ``decision_rules``.

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
            authors' released code), ``"max"`` or a name registered with
            `salfcbm.core.pooling.register_pooling`.
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
        inputs.check_concepts(concepts)
        if not inputs.is_count(num_classes):
            raise InputError(f"`num_classes` must be a positive int, got {num_classes!r}.")
        get_pooling(pooling)  # an unknown name lists the registered ones
        if class_names is not None and len(class_names) != num_classes:
            raise InputError(f"{len(class_names)} class_names given for num_classes={num_classes}; pass one per class.")
        grid = inputs.as_grid(grid)

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
                channels = self.tap(inputs.probe_input(backbone, input_size)).shape[1]
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
        self.bottleneck = new_adapter_layer(nn.Conv2d, channels, len(concepts), kernel_size=1, bias=bool(bottleneck_bias))
        self.head = new_adapter_layer(nn.Linear, len(concepts), num_classes)
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
        return self.config.concepts

    @property
    def class_names(self) -> list[str]:
        names = self.config.class_names
        return list(names) if names is not None else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def num_concepts(self) -> int:
        return len(self.concepts)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.config.grid)

    @property
    def layer(self) -> str:
        return self.config.layer

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
    def probe_input(self, input_size: Sequence[int] | None = None) -> torch.Tensor:
        """Two zero images at ``input_size`` (default the model's) on the backbone's device and dtype."""
        size = tuple(self.config.input_size if input_size is None else input_size)
        return inputs.probe_input(self._require_backbone(), size)

    @contextmanager
    def _frozen_backbone(self, freeze: bool | None = None):
        """Eval-mode backbone for the duration of a call; the user's train/eval flags are restored."""
        if not (self.config.freeze_backbone if freeze is None else freeze):
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

    def select_concepts(self, keep: Sequence[int | str]) -> SALFCBMBase:
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
        if not self.config.freeze_backbone:
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
        device, dtype = inputs.input_device_dtype(self)
        return t(images).to(device=device, dtype=dtype)

    def as_input(self, images: Any, name: str = "images") -> torch.Tensor:
        """What ``explain`` and friends accept, checked (`salfcbm.core.inputs.as_input`): backbone-ready
        float tensors (not empty, finite; moved to the model's device and dtype) or raw images (`preprocess`)."""
        return inputs.as_input(self, images, name)

    def forward_features(self, x: torch.Tensor, *, backbone_grad: bool = False) -> torch.Tensor:
        """The tapped backbone map f(x), ``(B, C, h, w)``.

        A frozen backbone runs without gradients unless ``x`` requires them or ``backbone_grad``
        (used by `as_classifier` for attribution tools that differentiate backbone layers).
        """
        self._require_backbone()
        x = inputs.check_input(self, x)
        frozen = self.config.freeze_backbone
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
        """Pool concept maps ``(B, K, Hg, Wg)`` to activations c*(x), ``(B, K)``, with the model's pooling
        (`salfcbm.core.pooling.POOLINGS`)."""
        return get_pooling(self.config.pooling)(maps, self.config)

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

        With mean pooling (or any pooling registered ``linear=True``), pooling commutes with the 1x1
        projection: ``c*(x) = W_b mean(resize(f)) + b_b``, so the logits cost one ``(B, C) x (C, M)``
        product. Softmax, max and other poolings weigh each position by the concept's own map, so
        they need every map's values: `salfcbm.core.activations.pooled_activations` computes and
        pools them in chunks of concepts (projecting before resizing when the grid is finer than the
        tapped map), never holding all ``(B, M, Hg, Wg)`` maps. Either way the maps are built only
        when read (`SALFCBMOutput.concept_maps`, or only some with `SALFCBMOutput.concept_maps_at`).
        """
        w, b = self.bottleneck.weight, self.bottleneck.bias
        f = fmap.to(w.dtype)
        name = self.config.pooling
        if name == "mean":
            act = F.linear(self.pooled_features(f), w.flatten(1), b)
        elif is_linear(name):
            act = F.linear(get_pooling(name)(self.resize_to_grid(f), self.config), w.flatten(1), b)
        else:
            act = pooled_activations(f, w, b, self.grid, get_pooling(name), self.config)
        logits = self.head(self.standardize(act))
        return SALFCBMOutput(logits=logits, concept_activations=act, features=f, grid=self.grid, weight=w, bias=b)

    def forward(self, x: torch.Tensor) -> SALFCBMOutput:
        """Run the model on backbone-ready images ``(B, 3, H, W)`` (normalised as the backbone expects).

        Returns a `SALFCBMOutput` (attribute, key and index access like a Hugging
        Face ``ModelOutput``); for a module returning the logits tensor use `as_classifier`.
        """
        inputs.refuse_jit_trace(self)
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

    @classmethod
    def wrap(
        cls,
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
    ) -> SALFCBMBase:
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
                released code), ``"max"`` or a name registered with `salfcbm.core.pooling.register_pooling`.
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
            A model of this class (`salfcbm.SALFCBM` from `salfcbm.wrap`) with an untrained bottleneck and head.

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
        inputs.check_concepts(concepts)
        concepts = list(concepts)
        model = cls(
            backbone,
            concepts=concepts,
            num_classes=num_classes,
            layer=layer,
            grid=inputs.as_grid(grid),
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


SALFCBM = SALFCBMBase
"""The base class under its old name, for annotations and ``isinstance`` (a `salfcbm.SALFCBM` is one).
Build models with `salfcbm.wrap` / `salfcbm.SALFCBM.from_pretrained`, which add the explanation methods."""

wrap = SALFCBMBase.wrap
