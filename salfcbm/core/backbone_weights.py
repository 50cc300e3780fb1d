"""The backbone's own weights, saved next to the adapter when its spec cannot rebuild them.

A backbone spec (`salfcbm.core.backbones`) rebuilds a timm/torchvision model with *named*
pretrained weights. It cannot rebuild a random init (``weights=None``), weights loaded from a
local file (``"file:<sha256>"``), a backbone fine-tuned with ``freeze_backbone=False`` or a
user's own module. For those, `save_pretrained` also writes ``backbone.safetensors`` (the
backbone's state dict) and records its SHA-256 in ``config.json``
(``backbone_weights_sha256``); `from_pretrained` rebuilds the architecture from the spec
(no pretrained download) and loads the file strictly, so the fingerprint check passes.
A user's own module class has no spec: its weights are saved, and loading says how to
build the module and pass it as ``backbone=``.

``save_pretrained(dir, save_backbone="auto" | True | False)``: ``"auto"`` saves the
backbone exactly when the spec cannot rebuild it; ``False`` never (then loading needs
``backbone=``); ``True`` always.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salfcbm._utils.io import sha256_bytes
from salfcbm.core.backbones import build_backbone
from salfcbm.errors import BackboneSpecError, ChecksumError, ConfigMismatchError, InputError, WeightsFormatError

__all__ = ["BACKBONE_WEIGHTS_NAME", "unrebuildable_reason", "wants_saving", "backbone_bytes", "saved_backbone",
           "state_megabytes", "card_fields", "mismatch_advice"]

logger = logging.getLogger("salfcbm")

BACKBONE_WEIGHTS_NAME = "backbone.safetensors"
_CHOICES = ("auto", True, False)


def unrebuildable_reason(spec: dict[str, Any] | None, *, frozen: bool = True) -> str | None:
    """Why ``spec`` cannot rebuild the backbone's weights (``None``: it can, e.g. named pretrained weights)."""
    if spec is None or spec.get("source") == "custom":
        return f"a custom module ({(spec or {}).get('name') or 'unnamed'}) that no spec can rebuild"
    weights = spec.get("weights")
    if weights is None:
        return "randomly initialised (no pretrained weights)"
    if isinstance(weights, str) and weights.startswith("file:"):
        return "loaded from a local weights file"
    if not frozen:
        return "not frozen (freeze_backbone=False), so it may differ from the published weights"
    return None


def wants_saving(save_backbone: Any, spec: dict[str, Any] | None, *, frozen: bool = True) -> bool:
    """Whether a save writes ``backbone.safetensors`` (``save_backbone``: ``"auto"``, ``True`` or ``False``)."""
    if not any(save_backbone is c or save_backbone == c and isinstance(save_backbone, str) for c in _CHOICES):
        raise InputError(f"`save_backbone` must be 'auto', True or False, got {save_backbone!r}. 'auto' saves the "
                         "backbone's weights only when its spec cannot rebuild them (random init, a local file, "
                         "your own module).")
    if save_backbone == "auto":
        return unrebuildable_reason(spec, frozen=frozen) is not None
    return bool(save_backbone)


def _state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (tied weights); a copy of each is loaded back the same
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in backbone.state_dict().items()}


def state_megabytes(backbone: nn.Module) -> float:
    """Size of the backbone's state dict in MB (about the size of ``backbone.safetensors``)."""
    return sum(v.numel() * v.element_size() for v in backbone.state_dict().values()) / 1e6


def backbone_bytes(backbone: nn.Module, spec: dict[str, Any] | None, *, frozen: bool = True) -> bytes:
    """The bytes of ``backbone.safetensors`` for ``backbone`` (logs the MB a save writes)."""
    from safetensors.torch import save

    data = save(_state(backbone))
    why = unrebuildable_reason(spec, frozen=frozen) or "asked for with save_backbone=True"
    logger.info("Saving the backbone's weights (%.1f MB) as %s: the backbone is %s. Pass save_backbone=False to "
                "save the adapter only.", len(data) / 1e6, BACKBONE_WEIGHTS_NAME, why)
    return data


# ----------------------------------------------------------------------------- loading
def _locate(weights_file: str, model_id: str, hub_kwargs: dict) -> str:
    path = os.path.join(os.path.dirname(weights_file), BACKBONE_WEIGHTS_NAME)
    if os.path.isfile(path):
        return path
    if os.path.isdir(str(model_id)):
        raise WeightsFormatError(
            f"{str(model_id)!r}: config.json records the backbone's weights in {BACKBONE_WEIGHTS_NAME}, but the "
            "folder lacks that file. Copy the whole saved folder, or pass the backbone: "
            "SALFCBM.from_pretrained(path, backbone=my_backbone)."
        )
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    try:
        return huggingface_hub.hf_hub_download(repo_id=str(model_id), filename=BACKBONE_WEIGHTS_NAME, **hub_kwargs)
    except (hub_errors.EntryNotFoundError, hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled) as e:
        raise WeightsFormatError(
            f"The Hub repo {model_id!r} records the backbone's weights in {BACKBONE_WEIGHTS_NAME} but it could not "
            f"be fetched ({type(e).__name__}). Re-upload the whole saved folder, or pass `backbone=`."
        ) from None


def _custom_advice(name: str, where: str) -> str:
    return (f"my_backbone = {name}(...)  # your class, built as for training; "
            f"my_backbone.load_state_dict(safetensors.torch.load_file('{where}/{BACKBONE_WEIGHTS_NAME}')); "
            f"SALFCBM.from_pretrained('{where}', backbone=my_backbone)")


def saved_backbone(config: Any, weights_file: str, model_id: str, *, verify: bool = True,
                   hub_kwargs: dict | None = None) -> nn.Module | None:
    """The backbone rebuilt from the spec with the saved ``backbone.safetensors`` (``None``: none saved)."""
    expected = config.backbone_weights_sha256
    if expected is None:
        return None
    spec = config.backbone
    if spec is None or spec["source"] == "custom":
        name = (spec or {}).get("name") or "MyBackbone"
        raise BackboneSpecError(
            f"{str(model_id)!r} was saved with a custom backbone ({name}), whose architecture salfcbm cannot rebuild "
            f"from a spec; its weights are saved in {BACKBONE_WEIGHTS_NAME}. Build the module and pass it: "
            + _custom_advice(name, str(model_id))
        )
    path = _locate(weights_file, str(model_id), hub_kwargs or {})
    data = _read_bytes(path)  # read once: the checksum is checked on the bytes that are parsed
    if verify and sha256_bytes(data) != expected:
        raise ChecksumError(
            f"{path} does not match the SHA-256 recorded in config.json: the file is corrupt or comes from another "
            "save. Re-download the model or save it again; do not mix files of different saves."
        )
    state = _parse(data, path)
    del data
    module = build_backbone({**spec, "weights": None})  # the architecture only: no pretrained download
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigMismatchError(
            f"{path} does not fit the backbone {spec['source']}:{spec['name']} of config.json: "
            f"{str(e).splitlines()[0]} Use the {BACKBONE_WEIGHTS_NAME} saved together with this config.json."
        ) from None
    return module


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise WeightsFormatError(f"Could not read {path} ({e.strerror or e}). Save the model again or re-download "
                                 "it.") from None


def _parse(data: bytes, path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise WeightsFormatError(f"Could not read {path} as safetensors ({e}); the file is corrupt or truncated. "
                                 "Save the model again or re-download it.") from None


def mismatch_advice(spec: dict[str, Any] | None, saved: bool) -> str:
    """The fix named by a fingerprint mismatch: why the rebuilt weights differ and what to pass."""
    why = ""
    if not saved and (spec or {}).get("weights") is None:
        why = ("The backbone was randomly initialised and its weights were not saved with the model (saved with "
               "save_backbone=False, or by an older salfcbm), so a rebuild gives other random weights. ")
    return (why + "Pass the exact backbone: SALFCBM.from_pretrained(path, backbone=my_backbone); to load anyway, "
            "pass verify_backbone=False.")


# ----------------------------------------------------------------------------- the model card
def card_fields(config: Any, backbone: nn.Module | None, *, saved: bool | None = None) -> dict[str, str]:
    """``backbone_note`` and ``load_snippet`` of the model card: a loading snippet that works for this model.

    ``saved``: whether ``backbone.safetensors`` goes with the model (default: recorded in ``config``).
    """
    spec = config.backbone or {}
    name = spec.get("name") or "MyBackbone"
    saved = config.backbone_weights_sha256 is not None if saved is None else saved
    mb = f"{state_megabytes(backbone):.1f} MB" if backbone is not None else "size unknown"
    if saved and spec.get("source") in ("timm", "torchvision"):
        note = (f"The backbone's own weights are saved next to the adapter as `{BACKBONE_WEIGHTS_NAME}` ({mb}): its "
                "spec cannot rebuild them. Loading rebuilds the architecture from the spec, loads that file and "
                "checks the fingerprint.")
        code = 'model = salfcbm.SALFCBM.from_pretrained("<this repo or folder>")'
    elif saved:
        note = (f"The backbone is a custom module (`{name}`): its weights are saved as `{BACKBONE_WEIGHTS_NAME}` "
                f"({mb}), but its class is yours: build it and pass it as `backbone=`.")
        code = (f"from safetensors.torch import load_file\nnet = {name}(...)  # your class, built as for training\n"
                f'net.load_state_dict(load_file("<folder>/{BACKBONE_WEIGHTS_NAME}"))\n'
                'model = salfcbm.SALFCBM.from_pretrained("<this repo or folder>", backbone=net)')
    elif unrebuildable_reason(spec) is not None or not spec:
        note = (f"The weights file holds the adapter only. The backbone's weights were not saved ({mb} would have "
                "been; save with `save_backbone=True`) and its spec cannot rebuild them: pass the exact backbone "
                f"(fingerprint `{config.backbone_fingerprint}`) as `backbone=`.")
        code = ("backbone = ...  # the exact module this model was trained with\n"
                'model = salfcbm.SALFCBM.from_pretrained("<this repo or folder>", backbone=backbone)')
    else:
        note = ("The weights file holds the adapter only (concept bottleneck, head, statistics); the backbone is "
                "rebuilt from its spec (its pretrained weights are downloaded) and checked against its fingerprint.")
        code = 'model = salfcbm.SALFCBM.from_pretrained("<this repo or folder>")'
    return {"backbone_note": note, "load_snippet": code}
