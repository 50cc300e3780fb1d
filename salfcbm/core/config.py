"""The typed, validated model configuration: the schema of ``config.json``.

`ModelConfig` is frozen: a model's configuration changes only by building a new
one (`dataclasses.replace`), never by writing into a shared dict. ``version``
says which format a file was written in, so later formats can still read old files;
files written before the field existed (no ``version``) are read as version 1.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from salfcbm.core.backbones import normalize_spec
from salfcbm.core.pooling import POOLINGS  # the open registry (name -> function); torch-free at import
from salfcbm.errors import ConfigError, closest

__all__ = ["ModelConfig", "CONFIG_VERSION", "POOLINGS", "PRECISIONS", "CONFIG_LIMITS", "repeated"]

CONFIG_VERSION = 3  # 3: the image geometry (input_crop_pct, input_crop_mode, input_interpolation)
#: The compute precisions salfcbm takes (the keys of ``salfcbm._utils.tensors.PRECISIONS``, which maps them to
#: torch dtypes); listed here, without torch, for the command line's choices.
PRECISIONS = ("fp32", "bf16", "fp16")

#: The largest sizes a model config may name. A ``config.json`` is checked against them before
#: anything is allocated (a file asking for a 100000 px input is refused, not run), and `wrap`
#: refuses them too, so every model salfcbm saves loads again.
CONFIG_LIMITS: Mapping[str, int] = MappingProxyType({
    "input_side": 4096,  # each side of input_size, in pixels
    "grid_side": 64,  # each side of the prompting grid
    "concepts": 100_000,
    "classes": 100_000,
    "prefix_tokens": 4096,  # num_prefix_tokens
})


def _is_int(v: Any, lo: int = 1, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


def _is_pair(v: Any, hi: int | None = None) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x, 1, hi) for x in v)


def repeated(items: Any) -> list:
    """The items that occur more than once, sorted (one pass with a dict: linear, not quadratic).

    Examples:
        >>> repeated(["a", "b", "a", "c", "b", "a"])
        ['a', 'b']
    """
    seen: dict = {}
    for x in items:
        seen[x] = seen.get(x, 0) + 1
    return sorted(x for x, n in seen.items() if n > 1)


def _repeated_message(dupes: list) -> str:
    shown = ", ".join(repr(d) for d in dupes[:10]) + (f" and {len(dupes) - 10} more" if len(dupes) > 10 else "")
    return f"Concept names must be unique; repeated: [{shown}]. Deduplicate the list."


def _floats(v: Any, n: int = 3) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


def _fail(key: str, got: Any, expected: str) -> ConfigError:
    shown = repr(got)
    shown = shown if len(shown) <= 200 else f"{shown[:200]}... ({len(shown)} characters)"
    return ConfigError(
        f"Model config {key!r} is {shown}; expected {expected}. Fix config.json (or the argument), or save the "
        "model again with `save_pretrained`."
    )


@dataclass(frozen=True)
class ModelConfig:
    """Everything that rebuilds a `SALFCBM` except its weights (``config.json``).

    Attributes:
        concepts: concept names, one per bottleneck channel (unique, non-empty strings).
        num_classes: classes of the head.
        backbone: the backbone spec (`salfcbm.core.backbones`); ``None`` until inferred.
        layer: the tapped module.
        grid: prompting grid ``[H~, W~]``.
        pooling: ``"mean"``, ``"softmax"`` or ``"max"``.
        cls_concat: CLS token concatenated to every position.
        class_names: names of the classes, or ``None``.
        feature_channels: channels of the tapped map.
        layout: the tap's layout (``"NCHW"``, ``"NHWC"``, ``"NLC"``).
        num_prefix_tokens: leading tokens dropped from a token sequence.
        input_size: resolution the backbone is run at (the crop of `SALFCBM.preprocess`).
        input_mean: normalisation mean of `SALFCBM.preprocess`.
        input_std: normalisation std (positive).
        input_crop_pct: `SALFCBM.preprocess` resizes the shorter side to ``input_size / input_crop_pct``
            before the centre crop (the backbone's own data config; files before version 3: 1.0).
        input_crop_mode: ``"center"``, ``"squash"`` or ``"border"``.
        input_interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        freeze_backbone: backbone kept fixed.
        softmax_temperature: temperature of softmax pooling (positive).
        head_stats: metrics shown on the model card.
        bottleneck_bias: the 1x1 bottleneck conv has a bias (``False`` since salfcbm 0.2: the paper and
            LF-CBM have none); ``None`` in files written before the field existed (then the weights
            file decides).
        backbone_fingerprint: SHA-256 prefix of the backbone's weights when saved
            (`salfcbm.core.backbones.backbone_fingerprint`), checked on load.
        presence_threshold: per concept, the calibrated presence threshold: the concept is *present*
            in an image when the peak of its standardised concept map, ``(max c(x)[m] - mean[m]) / std[m]``,
            is above it (`salfcbm.explain.evidence`; set by `salfcbm.fit` on the validation split).
            ``None`` (uncalibrated, and files written before the field existed): present means a
            standardised pooled activation above 0, the training mean. Left out of the file when ``None``.
        weights_sha256: SHA-256 of ``model.safetensors`` (set in the written file only).
        backbone_weights_sha256: SHA-256 of ``backbone.safetensors``, the backbone's own weights, saved when
            its spec cannot rebuild them (random init, a local file, a custom module; see
            `salfcbm.core.backbone_weights`); ``None`` when the backbone is rebuilt from its spec.
        version: format version of the file.

    Examples:
        >>> cfg = ModelConfig(concepts=["fur", "grass"], num_classes=2, layer="layer4", feature_channels=8)
        >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> cfg["grid"]
        [7, 7]
    """

    concepts: list[str]
    num_classes: int
    backbone: dict | None = None
    layer: str | None = None
    grid: list[int] = field(default_factory=lambda: [7, 7])
    pooling: str = "mean"
    cls_concat: bool = False
    class_names: list[str] | None = None
    feature_channels: int | None = None
    layout: str | None = None
    num_prefix_tokens: int | None = 0
    input_size: list[int] = field(default_factory=lambda: [224, 224])
    input_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    input_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    input_crop_pct: float = 1.0
    input_crop_mode: str = "center"
    input_interpolation: str = "bilinear"
    freeze_backbone: bool = True
    softmax_temperature: float = 1.0
    head_stats: dict | None = None
    bottleneck_bias: bool | None = None
    backbone_fingerprint: str | None = None
    weights_sha256: str | None = None
    backbone_weights_sha256: str | None = None
    presence_threshold: list[float] | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self._check_concepts()
        self._check_fields()

    def _check_concepts(self) -> None:
        c = self.concepts
        if isinstance(c, str) or not isinstance(c, (list, tuple)) or not c:
            raise _fail("concepts", c, "a non-empty list of concept strings, e.g. ['water', 'a beak']")
        if len(c) > CONFIG_LIMITS["concepts"]:
            raise ConfigError(
                f"The model config lists {len(c)} concepts; salfcbm takes at most {CONFIG_LIMITS['concepts']} "
                "(CONFIG_LIMITS['concepts']). Select fewer concepts, or check that config.json is the one you saved."
            )
        bad = [x for x in c if not isinstance(x, str) or not x.strip()]
        if bad:
            raise _fail("concepts", bad[:5], "only non-empty strings (no numbers or None)")
        dupes = repeated(c)
        if dupes:
            raise ConfigError(_repeated_message(dupes))
        object.__setattr__(self, "concepts", list(c))

    def _check_fields(self) -> None:
        lim = CONFIG_LIMITS
        if not _is_int(self.num_classes, 1, lim["classes"]):
            raise _fail("num_classes", self.num_classes, f"a positive int <= {lim['classes']} (CONFIG_LIMITS)")
        if not _is_pair(self.grid, lim["grid_side"]):
            raise _fail("grid", self.grid, f"a pair of ints [H~, W~] in 1..{lim['grid_side']} (CONFIG_LIMITS)")
        if not isinstance(self.pooling, str) or self.pooling not in POOLINGS:
            raise _fail("pooling", self.pooling, f"one of {tuple(POOLINGS)} (register others with "
                        "salfcbm.core.pooling.register_pooling before loading)")
        if self.bottleneck_bias is not None and not isinstance(self.bottleneck_bias, bool):
            raise _fail("bottleneck_bias", self.bottleneck_bias, "true, false or null")
        if not isinstance(self.cls_concat, bool) or not isinstance(self.freeze_backbone, bool):
            raise _fail("cls_concat/freeze_backbone", (self.cls_concat, self.freeze_backbone), "true or false")
        names = self.class_names
        if names is not None and (not isinstance(names, (list, tuple)) or len(names) != self.num_classes
                                  or not all(isinstance(n, str) for n in names)):
            raise _fail("class_names", names, f"null or a list of {self.num_classes} strings (one per class)")
        if self.feature_channels is not None and not _is_int(self.feature_channels):
            raise _fail("feature_channels", self.feature_channels, "a positive int")
        if self.num_prefix_tokens is not None and not _is_int(self.num_prefix_tokens, 0, lim["prefix_tokens"]):
            raise _fail("num_prefix_tokens", self.num_prefix_tokens,
                        f"an int in 0..{lim['prefix_tokens']} (CONFIG_LIMITS)")
        for key in ("layer", "layout", "backbone_fingerprint", "weights_sha256", "backbone_weights_sha256"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise _fail(key, getattr(self, key), "a string or null")
        if not _is_pair(self.input_size, lim["input_side"]):
            raise _fail("input_size", self.input_size,
                        f"a pair of ints [H, W] in 1..{lim['input_side']} pixels (CONFIG_LIMITS)")
        if not _floats(self.input_mean):
            raise _fail("input_mean", self.input_mean, "three finite numbers")
        if not _floats(self.input_std) or min(self.input_std) <= 0:
            raise _fail("input_std", self.input_std, "three finite positive numbers")
        from salfcbm.core.images import CROP_MODES, INTERPOLATIONS  # torch: imported once a config is built

        cp = self.input_crop_pct
        if isinstance(cp, bool) or not isinstance(cp, (int, float)) or not 0 < cp <= 1:
            raise _fail("input_crop_pct", cp, "a number in (0, 1] (1 = keep the whole shorter side)")
        if self.input_crop_mode not in CROP_MODES:
            raise _fail("input_crop_mode", self.input_crop_mode, f"one of {CROP_MODES}")
        if self.input_interpolation not in INTERPOLATIONS:
            raise _fail("input_interpolation", self.input_interpolation, f"one of {INTERPOLATIONS}")
        t = self.softmax_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise _fail("softmax_temperature", t, "a finite number > 0")
        pt = self.presence_threshold
        if pt is not None:
            if not _floats(pt, len(self.concepts)):
                raise _fail("presence_threshold", pt, f"null or a list of {len(self.concepts)} finite numbers "
                            "(one per concept)")
            object.__setattr__(self, "presence_threshold", [float(x) for x in pt])
        if self.head_stats is not None and not isinstance(self.head_stats, dict):
            raise _fail("head_stats", self.head_stats, "a dict or null")
        if not _is_int(self.version) or self.version > CONFIG_VERSION:
            raise ConfigError(
                f"config.json has format version {self.version!r}; this salfcbm reads versions 1..{CONFIG_VERSION}. "
                "Upgrade salfcbm (pip install -U salfcbm) to load it."
            )
        if self.backbone is not None:
            object.__setattr__(self, "backbone", normalize_spec(self.backbone))

    # -- mapping-style reading (``model.config["input_size"]`` keeps working) --------
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELDS else default

    def __setitem__(self, key: str, value: Any) -> None:
        raise ConfigError(
            f"The model config is read-only (tried to set {key!r}). Build a new one: "
            f"`model.config = dataclasses.replace(model.config, {key}=...)`."
        )

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content (JSON-able, lists not tuples)."""
        d = {k: copy.deepcopy(getattr(self, k)) if k in _NESTED else getattr(self, k) for k in _FIELDS}
        for k in ("concepts", "grid", "input_size", "input_mean", "input_std"):  # fresh lists (asdict without its
            d[k] = list(d[k])  # deep copy of every string, which cost 40 ms at 4,741 concepts)
        for k in ("class_names", "presence_threshold"):
            d[k] = None if d[k] is None else list(d[k])
        if d["bottleneck_bias"] is None:  # not recorded (older files): keep their canonical form
            del d["bottleneck_bias"]
        if d["backbone_weights_sha256"] is None:  # no backbone file: the same bytes as before the field existed
            del d["backbone_weights_sha256"]
        if d["presence_threshold"] is None:  # uncalibrated: the file reads as before the field existed
            del d["presence_threshold"]
        return d

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config.json") -> ModelConfig:
        """Read and validate a config dict (a parsed ``config.json``); files without ``version`` are version 1.

        Raises:
            ConfigError: not a dict, unexpected or missing keys, or a value of the wrong type.
        """
        if not isinstance(data, dict):
            raise ConfigError(
                f"{source} must hold a JSON object of model settings; got {type(data).__name__}. "
                "Save the model again with `save_pretrained`."
            )
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            hints = {k: closest(k, _FIELDS, n=1) for k in unknown}
            hint = "; ".join(f"{k!r} (did you mean {v[0]!r}?)" for k, v in hints.items() if v)
            raise ConfigError(
                f"{source} has unexpected keys {unknown}{': ' + hint if hint else ''}. "
                f"Expected only {sorted(_FIELDS)}. Remove them, or save the model again with `save_pretrained`."
            )
        missing = [k for k in ("concepts", "num_classes") if k not in data]
        if missing:
            raise ConfigError(f"{source} lacks the required keys {missing}; it was not written by salfcbm.")
        data = {**data, "version": data.get("version", 1)}
        if data.get("backbone") is not None:
            data["backbone"] = normalize_spec(data["backbone"], trusted=False)
        return cls(**data)


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
_NESTED = ("backbone", "head_stats")  # dict fields: copied deeply, so the returned dict shares nothing mutable
