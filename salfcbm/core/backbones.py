"""Backbone specs: a JSON-able recipe to rebuild a timm or torchvision model.

A spec is a plain dict ``{"source": "timm" | "torchvision" | "custom", "name": str,
"weights": str | None, "kwargs": dict}`` stored in ``config.json``; the weights of
the backbone itself are never saved by salfcbm.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from salfcbm.errors import BackboneSpecError

__all__ = [
    "build_backbone",
    "infer_spec",
    "normalize_spec",
    "parse_backbone_name",
    "input_stats",
    "backbone_fingerprint",
    "resolve_weights",
    "SAFE_KWARGS",
    "TIMM_NAME_MODULES",
]

if TYPE_CHECKING:  # torch is imported where a backbone is built or read, so specs and configs load without it
    from torch import nn

_SOURCES = ("timm", "torchvision", "custom")
#: timm names that a salfcbm module registers (``timm.models.register_model``): a spec whose timm name
#: starts with a key imports that module before timm builds it, so a saved model loads in a fresh process.
TIMM_NAME_MODULES: dict[str, str] = {"salfcbm_demo_": "salfcbm.demo.backbone"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Constructor keywords a spec read from a file may carry: architecture sizes and switches, never a
# path or anything that makes timm/torchvision read a file (checkpoint_path, pretrained_cfg, ...).
SAFE_KWARGS = frozenset({
    "num_classes", "img_size", "image_size", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "dropout",
    "attention_dropout", "patch_size", "window_size", "depths", "embed_dim", "num_heads", "mlp_ratio", "class_token",
    "reg_tokens", "no_embed_class", "dynamic_img_size", "dynamic_img_pad", "output_stride", "aux_logits",
    "init_logits", "transform_input", "qkv_bias", "qk_norm", "stem_width", "width_factor", "depth",
})


def _check_untrusted_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse kwargs from a file that are not in `SAFE_KWARGS` or are not plain numbers/flags."""
    bad = sorted(set(kwargs) - SAFE_KWARGS)
    if bad:
        raise BackboneSpecError(
            f"The saved backbone spec asks for constructor arguments {bad}, which salfcbm does not take from a "
            f"file (they could make timm/torchvision read arbitrary files). Allowed: {sorted(SAFE_KWARGS)}. "
            "Build the backbone yourself and pass it: SALFCBM.from_pretrained(path, backbone=my_backbone)."
        )
    for k, v in kwargs.items():
        items = v if isinstance(v, (list, tuple)) else [v]
        if not all(x is None or isinstance(x, (bool, int, float)) or (isinstance(x, str) and len(x) < 32
                   and "/" not in x and "\\" not in x and "." not in x) for x in items):
            raise BackboneSpecError(
                f"The saved backbone spec gives {k}={v!r}; only numbers, flags and short names are accepted from "
                "a file. Build the backbone yourself and pass `backbone=`."
            )


def normalize_spec(spec: dict[str, Any], *, trusted: bool = True) -> dict[str, Any]:
    """Validate a spec dict and fill defaults.

    ``trusted=False`` (a spec read from ``config.json``) also limits ``kwargs`` to
    `SAFE_KWARGS` with plain values, so a file can never point timm at a checkpoint.
    """
    if not isinstance(spec, dict):
        raise BackboneSpecError(f"A backbone spec must be a dict, got {type(spec).__name__}.")
    unknown = set(spec) - {"source", "name", "weights", "kwargs"}
    if unknown:
        raise BackboneSpecError(
            f"Unknown backbone spec keys {sorted(unknown)}; expected source, name, weights, kwargs."
        )
    source = spec.get("source")
    if source not in _SOURCES:
        raise BackboneSpecError(f"Backbone spec source must be one of {_SOURCES}, got {source!r}.")
    for key in ("name", "weights"):
        if spec.get(key) is not None and not isinstance(spec.get(key), str):
            raise BackboneSpecError(f"Backbone spec {key!r} must be a string or null, got {spec.get(key)!r}.")
    if not isinstance(spec.get("kwargs") or {}, dict):
        raise BackboneSpecError(f"Backbone spec 'kwargs' must be a dict, got {spec.get('kwargs')!r}.")
    if not trusted:
        _check_untrusted_kwargs(dict(spec.get("kwargs") or {}))
    return {
        "source": source,
        "name": spec.get("name"),
        "weights": spec.get("weights"),
        "kwargs": dict(spec.get("kwargs") or {}),
    }


def parse_backbone_name(name: str, *, pretrained: bool = True) -> dict[str, Any]:
    """``"timm:resnet50.a1_in1k"`` / ``"torchvision:resnet50"`` / ``"resnet50"`` (timm) -> spec."""
    source, _, rest = name.partition(":")
    if not rest:
        source, rest = "timm", name
    if source == "timm":
        arch, _, tag = rest.partition(".")
        return resolve_weights(normalize_spec(
            {"source": "timm", "name": arch, "weights": (tag or "default") if pretrained else None}
        ))
    if source == "torchvision":
        weights = "DEFAULT" if pretrained else None
        return resolve_weights(normalize_spec({"source": "torchvision", "name": rest, "weights": weights}))
    raise BackboneSpecError(
        f"Backbone name {name!r} has an unknown source {source!r}; use 'timm:NAME' or 'torchvision:NAME'."
    )


def resolve_weights(spec: dict[str, Any]) -> dict[str, Any]:
    """Replace the aliases ``"default"`` (timm) and ``"DEFAULT"`` (torchvision) by the exact tag/enum.

    ``"resnet50"`` becomes timm's ``"a1_in1k"`` and ``"torchvision:resnet50"`` becomes
    ``"IMAGENET1K_V2"``, so a saved spec names the weights that were actually loaded
    even after a library changes its default. Unknown names are left as they are.
    """
    spec = dict(spec)
    try:
        if spec["source"] == "timm" and spec["weights"] == "default":
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(spec["name"])
            if cfg is not None and cfg.tag:
                spec["weights"] = cfg.tag
        elif spec["source"] == "torchvision" and spec["weights"] == "DEFAULT":
            import torchvision

            spec["weights"] = torchvision.models.get_model_weights(spec["name"]).DEFAULT.name
    except Exception:  # noqa: BLE001 - an unknown name fails later, in build_backbone, with advice
        pass
    return spec


def backbone_fingerprint(backbone: nn.Module) -> str:
    """SHA-256 (24 hex digits) of the backbone's state dict: names, shapes and float32 values.

    Two backbones with the same fingerprint compute the same function; any other weights
    (another release, a fine-tune, a random init) give another fingerprint.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in sorted(backbone.state_dict().items()):
        h.update(f"{k}:{tuple(v.shape)}\n".encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy().data)  # hashed in place
    return h.hexdigest()[:24]


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """Create the backbone a spec describes (downloads pretrained weights if the spec names them)."""
    spec = normalize_spec(spec)
    src, name, weights, kwargs = spec["source"], spec["name"], spec["weights"], spec["kwargs"]
    if src == "custom":
        raise BackboneSpecError(
            f"This model was saved with a custom backbone ({name or 'unnamed'}), which salfcbm cannot rebuild. "
            "Build it yourself and pass it: SALFCBM.from_pretrained(path, backbone=my_backbone)."
        )
    if isinstance(weights, str) and weights.startswith("file:"):
        raise BackboneSpecError(
            f"This model was trained on {src}:{name} with backbone weights from a local file (sha256 {weights[5:17]}...), "
            "which are not saved with the adapter. Load them and pass the module: "
            "SALFCBM.from_pretrained(path, backbone=my_backbone), or `salfcbm explain --backbone-weights FILE`."
        )
    try:
        if src == "timm":
            import timm

            _register_timm_name(name)
            if weights is None:
                return timm.create_model(name, pretrained=False, **kwargs)
            full = name if weights == "default" else f"{name}.{weights}"
            return timm.create_model(full, pretrained=True, **kwargs)
        import torchvision

        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except BackboneSpecError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with advice
        raise BackboneSpecError(
            f"Could not build the {src} backbone {name!r} (weights={weights!r}): {type(e).__name__}: {e}. "
            "If the weights cannot be downloaded here, build the backbone yourself and pass `backbone=`."
        ) from e


def _register_timm_name(name: str) -> None:
    """Import the salfcbm module that registers the timm model ``name`` (see `TIMM_NAME_MODULES`)."""
    import importlib

    for prefix, module in TIMM_NAME_MODULES.items():
        if name.startswith(prefix):
            importlib.import_module(module)


@functools.lru_cache(maxsize=None)
def _torchvision_candidates(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(builder name, parameter shapes) of every torchvision builder that returns ``cls`` (built on meta)."""
    import warnings

    import torch
    import torchvision

    out = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_builder(name).__module__ != cls.__module__:
            continue
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = torchvision.models.get_model(name)
        except Exception:  # noqa: BLE001 - some builders need arguments; skip them
            continue
        if type(m) is cls:
            out.append((name, _shapes(m)))
    return tuple(out)


def _shapes(m: nn.Module) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in m.state_dict().items())


def infer_spec(backbone: nn.Module, weights: str | None | bool = "auto") -> dict[str, Any]:
    """Guess the spec of a model built by timm or torchvision.

    ``weights="auto"`` assumes the model carries its source's pretrained weights
    (timm: the ``pretrained_cfg`` tag; torchvision: ``"DEFAULT"``); pass ``None``
    for a randomly initialised backbone or a tag to be explicit.
    """
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        tag = cfg.get("tag") or "default"
        w = tag if weights == "auto" else (None if weights in (None, False) else str(weights))
        kwargs = {}
        num_classes = getattr(backbone, "num_classes", None)
        if isinstance(num_classes, int) and num_classes != cfg.get("num_classes", num_classes):
            kwargs["num_classes"] = num_classes
        return normalize_spec({"source": "timm", "name": cfg["architecture"], "weights": w, "kwargs": kwargs})
    if type(backbone).__module__.startswith("torchvision.models"):
        shapes = _shapes(backbone)
        for name, ref in _torchvision_candidates(type(backbone)):
            if ref == shapes:
                w = "DEFAULT" if weights == "auto" else (None if weights in (None, False) else str(weights))
                return resolve_weights(normalize_spec({"source": "torchvision", "name": name, "weights": w}))
    return normalize_spec({"source": "custom", "name": type(backbone).__name__, "weights": None})


def input_stats(backbone: nn.Module) -> tuple[list[float], list[float]]:
    """The mean/std the backbone expects its inputs normalised with."""
    cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std"):
        return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    return list(IMAGENET_MEAN), list(IMAGENET_STD)
