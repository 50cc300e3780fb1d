"""The checks `from_pretrained` runs before a loaded model is used (the body of `salfcbm.core.persistence`'s
loading): the tensors, their shapes against the model, the backbone's channels, weights fingerprint and
source, and finite outputs on a probe batch. Each refusal names the file, what it holds and the fix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from salfcbm._utils.modes import module_device_dtype, preserved_modes
from salfcbm.core import backbone_weights
from salfcbm.core.backbones import backbone_fingerprint
from salfcbm.core.config import ModelConfig
from salfcbm.errors import BackboneMismatchError, BackboneSpecError, ConfigMismatchError, WeightsFormatError

__all__ = ["check_backbone", "check_backbone_source", "check_concept_count", "check_outputs_finite",
           "check_state_matches", "check_tensors", "probe_features"]


def check_tensors(state: dict[str, torch.Tensor], path: str) -> None:
    """The adapter's tensors only (no backbone's), finite floats, positive ``concept_std``."""
    foreign = sorted(k for k in state if k.startswith(("backbone.", "tap.")))
    if foreign:
        raise WeightsFormatError(
            f"{path} carries backbone tensors {foreign[:3]}{'...' if len(foreign) > 3 else ''}; salfcbm never loads "
            "backbone weights from an adapter file (they would overwrite your backbone). Remove them from the file."
        )
    for k, v in state.items():
        if not v.is_floating_point():
            raise WeightsFormatError(f"{path}: tensor {k!r} has dtype {v.dtype}; the adapter's tensors are floats. "
                                     "The file was not written by salfcbm; save the model again.")
        if not torch.isfinite(v).all():
            raise WeightsFormatError(f"{path}: tensor {k!r} holds NaN or inf values; the model would give NaN "
                                     "logits. Retrain or restore a good copy.")
    std = state.get("concept_std")
    if std is not None and (std <= 0).any():
        raise WeightsFormatError(f"{path}: concept_std has {int((std <= 0).sum())} values <= 0, which make the "
                                 "standardised activations inf/NaN. Retrain or restore a good copy.")


def check_state_matches(model: nn.Module, state: dict[str, torch.Tensor], model_id: str) -> None:
    """The file's tensors must be exactly the adapter's, with the adapter's shapes."""
    own = model.adapter_state_dict()
    unexpected, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    if unexpected or missing:
        raise ConfigMismatchError(
            f"Weights in {model_id!r} do not match the model: unexpected tensors {unexpected}, missing {missing}. "
            "Use the model.safetensors saved together with this config.json."
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ConfigMismatchError(f"Weights in {model_id!r}: {k!r} has shape {tuple(state[k].shape)}, the "
                                      f"config implies {tuple(v.shape)}. Use the config.json saved with the weights.")


def check_concept_count(state: dict[str, torch.Tensor], config: ModelConfig, model_id: str) -> None:
    """Cheap consistency of config and weights before the backbone is built."""
    w = state.get("bottleneck.weight")
    if w is None or "head.weight" not in state:
        raise ConfigMismatchError(f"{model_id!r}: the weights file lacks the bottleneck or head; it was not saved "
                                  "by salfcbm.")
    if w.dim() != 4:
        raise ConfigMismatchError(f"{model_id!r}: bottleneck.weight has shape {tuple(w.shape)}; the bottleneck is a 1x1 "
                                  "convolution, (concepts, channels, 1, 1). The file was not saved by salfcbm.")
    if w.shape[0] != len(config.concepts):
        raise ConfigMismatchError(
            f"{model_id!r}: config.json lists {len(config.concepts)} concepts but the bottleneck has {w.shape[0]} rows. "
            "The concept list and the weights come from different runs; use the config.json saved with these weights."
        )
    head = tuple(state["head.weight"].shape)
    if head != (config.num_classes, len(config.concepts)):  # before the model (and its head) is allocated
        raise ConfigMismatchError(f"{model_id!r}: config.json implies a head of shape ({config.num_classes}, "
                                  f"{len(config.concepts)}) (num_classes, concepts) but the weights hold {head}. "
                                  "Use the config.json saved with these weights.")


def check_backbone(model: Any, config: ModelConfig, saved_channels: int | None, *, verify_backbone: bool,
                   channels: int | None = None) -> None:
    """Channels probed at the layer (``channels``: of a probe map) must equal the saved ones; the weights
    fingerprint must match."""
    channels = model.config.feature_channels if channels is None else channels
    if saved_channels is not None and channels != saved_channels:
        raise ConfigMismatchError(
            f"The backbone gives {channels} channels at layer {model.layer!r}, but the saved "
            f"bottleneck expects {saved_channels}. Pass the backbone (and layer) the model was trained with."
        )
    expected = config.backbone_fingerprint
    if not verify_backbone or expected is None:
        return
    got = backbone_fingerprint(model.backbone)
    if got != expected:
        spec = config.backbone or {}
        err = BackboneMismatchError(
            f"The backbone's weights (fingerprint {got}) are not the ones this model was saved with (fingerprint "
            f"{expected}; spec {spec.get('source')}:{spec.get('name')}, weights {spec.get('weights')!r}). The concept "
            "bottleneck was trained on those features, so results would differ. "
            + backbone_weights.mismatch_advice(spec, config.backbone_weights_sha256 is not None)
        )
        err.got, err.expected = got, expected  # for callers that phrase their own fix (the CLI)
        raise err


def check_backbone_source(spec: dict | None, model_id: str, *, trusted: bool) -> None:
    """Refuse a backbone name from a file that is a location (``local-dir:PATH``, ``hf-hub:REPO``) unless trusted.

    timm reads such names as "load the weights from this folder / fetch this repository"; a
    checksum proves a file is intact, not that its author is trusted, so salfcbm follows a
    location written in a file only when the caller opts in (``trust_backbone_source=True``).
    """
    if trusted or not spec or spec.get("source") != "timm":
        return
    for key in ("name", "weights"):
        value = str(spec.get(key) or "")
        if key == "weights" and value.startswith("file:"):
            continue  # a recorded local weights digest: build_backbone explains how to pass them
        if ":" in value or "/" in value or "\\" in value:
            raise BackboneSpecError(
                f"{model_id!r}: config.json names the backbone {key} {value[:200]!r}, a location that would make timm "
                "load weights from a folder or fetch a Hub repository chosen by the file. salfcbm does not follow "
                "locations written in a model file unless you ask: pass trust_backbone_source=True to "
                "SALFCBM.from_pretrained if you trust where this file came from, or build the backbone yourself and "
                "pass backbone=."
            )


def probe_features(model: Any) -> torch.Tensor:
    """The tapped map of the probe batch: one image of seeded noise at the model's input size, normalised as
    the model expects; the model's train/eval flags are restored afterwards."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    h, w = cfg.input_size
    x = torch.rand(1, 3, h, w, generator=g)
    x = (x - torch.tensor(cfg.input_mean).view(1, 3, 1, 1)) / torch.tensor(cfg.input_std).view(1, 3, 1, 1)
    with torch.no_grad(), preserved_modes(model, mode=False):
        return model.forward_features(x.to(module_device_dtype(model.backbone)[0]))  # the backbone's device


def check_outputs_finite(model: Any, model_id: str, fmap: torch.Tensor | None = None) -> None:
    """Refuse finite but extreme weights: the model must give finite logits on the probe batch
    (`probe_features`; ``fmap``: its map, when already computed)."""
    fmap = probe_features(model) if fmap is None else fmap
    with torch.no_grad(), preserved_modes(model, mode=False):
        out = model.output_from_features(fmap.to(module_device_dtype(model.bottleneck)[0]))  # the adapter's
    bad = [k for k in ("logits", "concept_activations") if not torch.isfinite(out[k]).all()]
    if bad:
        w_max = max(float(v.abs().max()) for v in model.adapter_state_dict().values() if v.numel())
        raise WeightsFormatError(
            f"{model_id!r}: every weight is finite, but the model gives non-finite {' and '.join(bad)} on a probe "
            f"image (its largest adapter weight is {w_max:.3g}): the weights are corrupt or hostile. Retrain, or "
            "restore a good copy of model.safetensors."
        )
