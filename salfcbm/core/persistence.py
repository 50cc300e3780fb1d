"""Saving and loading a SALF-CBM: all-or-nothing saves, checksums, checked loading.

* A save writes ``model.safetensors``, ``config.json`` and ``README.md`` into a staging
  directory next to the target and swaps it in with one atomic rename
  (`salfcbm._utils.io.atomic_directory`): a kill or a full disk at any moment leaves the
  previous model loadable; leftovers are removed by the next save.
* ``config.json`` records the SHA-256 of ``model.safetensors``; the weights file records
  the SHA-256 of the config in its metadata. Loading checks both (once per file per
  process), so a flipped byte in either file is an error, never a silently wrong model.
* Loading validates the config against `ModelConfig`, accepts
  exactly the adapter's tensors (finite floats of the right shapes, positive ``concept_std``),
  probes the backbone's channels at the layer and checks the backbone's weights fingerprint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salfcbm._utils.io import atomic_directory, sha256_bytes, sha256_file, verify_once
from salfcbm.core import backbone_weights
from salfcbm.core.backbones import backbone_fingerprint
from salfcbm.errors import (
    BackboneMismatchError,
    ChecksumError,
    ConfigError,
    ConfigMismatchError,
    InputError,
    ModelNotFoundError,
    WeightsFormatError,
)
from salfcbm.core.config import ModelConfig

__all__ = ["save_model", "load_model", "MODEL_CARD_TEMPLATE", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
_OURS = {WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, backbone_weights.BACKBONE_WEIGHTS_NAME}
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
_CONFIG_SHA_KEY = "salfcbm.config_sha256"

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# SALF-CBM on {{ backbone_name }}

A spatially-aware, label-free concept bottleneck model ([paper]({{ paper_url }})),
built with [salfcbm]({{ repo_url }}). It explains each prediction by the concepts
that drove it and shows where each concept is in the image.

| | |
|---|---|
| Backbone | `{{ backbone_name }}` (weights: `{{ backbone_weights }}`, fingerprint `{{ fingerprint }}`) |
| Tapped layer | `{{ layer }}` ({{ layout }}, {{ channels }} channels) |
| Concepts | {{ concepts | length }} |
| Prompting grid | {{ grid[0] }} x {{ grid[1] }} |
| Pooling | {{ pooling }} |
| Classes | {{ num_classes }} |
| Head non-zeros | {{ nnz }} ({{ '%.2f' % nec }} per class, density {{ '%.3f' % density }}) |
{% for k, v in head_stats.items() %}| {{ k }} | {{ v }} |
{% endfor %}
{{ backbone_note }}

```python
import salfcbm
{{ load_snippet }}
explanation = model.explain(images, top_k=5)
```

## Concepts

{% for c in concepts[:50] %}- {{ c }}
{% endfor %}{% if concepts | length > 50 %}- ... and {{ concepts | length - 50 }} more (see config.json)
{% endif %}"""


# ----------------------------------------------------------------------------- saving
def _canonical(config: ModelConfig) -> bytes:
    return json.dumps(config.replace(weights_sha256=None).to_dict(), sort_keys=True, separators=(",", ":")).encode()


def save_model(model: Any, directory: str | os.PathLike, *, save_backbone: bool | str = "auto") -> Path:
    """Write ``model`` to ``directory`` all-or-nothing (see the module docstring).

    ``save_backbone``: also write ``backbone.safetensors`` (`salfcbm.core.backbone_weights`).
    """
    config = model.config.replace(backbone=model.backbone_spec, weights_sha256=None, backbone_weights_sha256=None,
                                  backbone_fingerprint=backbone_fingerprint(model._require_backbone()))
    with_backbone = backbone_weights.wants_saving(save_backbone, config.backbone, frozen=config.freeze_backbone)
    return atomic_directory(directory, lambda staging: _write_files(model, config, staging, with_backbone),
                            keep=lambda name: name not in _OURS)


def _write_files(model: Any, config: ModelConfig, directory: Path, with_backbone: bool = False) -> None:
    from safetensors.torch import save

    if with_backbone:  # first: its checksum is part of the config the adapter's metadata pins
        config = config.replace(backbone_weights_sha256=backbone_weights.write_backbone(
            model.backbone, directory, config.backbone, frozen=config.freeze_backbone))
    state = {k: v.detach().contiguous().cpu() for k, v in model.adapter_state_dict().items()}
    # one metadata entry: safetensors writes several in no fixed order, and a save must be reproducible
    data = save(state, metadata={_CONFIG_SHA_KEY: sha256_bytes(_canonical(config))})
    (directory / WEIGHTS_NAME).write_bytes(data)
    written = config.replace(weights_sha256=sha256_bytes(data))
    (directory / CONFIG_NAME).write_text(json.dumps(written.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
    model.generate_model_card(config=written).save(directory / CARD_NAME)


# ----------------------------------------------------------------------------- resolving files
def _looks_local(model_id: str) -> bool:
    import re

    return os.path.exists(model_id) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id) or model_id.startswith(".")


def resolve_files(model_id: str | os.PathLike, **hub_kwargs: Any) -> tuple[str, str]:
    """``(config.json, model.safetensors)`` paths of a local folder or a Hub repo."""
    model_id = str(model_id)
    if os.path.isdir(model_id):
        weights, config = os.path.join(model_id, WEIGHTS_NAME), os.path.join(model_id, CONFIG_NAME)
        if not os.path.isfile(weights):
            _refuse_pickles(model_id)
            raise WeightsFormatError(f"No {WEIGHTS_NAME} in {model_id!r}. Save the model with `save_pretrained`.")
        if not os.path.isfile(config):
            raise ConfigError(f"No {CONFIG_NAME} in {model_id!r}; salfcbm needs it to rebuild the model. "
                              "Save with `model.save_pretrained(dir)`, which writes both files.")
        return config, weights
    if _looks_local(model_id):
        raise _not_found(model_id, "does not exist")
    return _hub_files(model_id, **hub_kwargs)


def _not_found(model_id: str, what: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"{model_id!r} {what}. Pass the folder written by `model.save_pretrained(folder)` (check the path and the "
        "working directory) or the id of a Hub repo you can reach, like 'user/name'."
    )


def _refuse_pickles(folder: str) -> None:
    pickles = [n for n in _PICKLE_NAMES if os.path.isfile(os.path.join(folder, n))]
    if pickles:
        raise WeightsFormatError(
            f"{folder!r} holds {pickles[0]} (a pickle file), which salfcbm refuses to load because unpickling "
            "can run arbitrary code. Convert it to safetensors (safetensors.torch.save_file) as model.safetensors."
        )


def _hub_files(repo_id: str, **hub_kwargs: Any) -> tuple[str, str]:
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    try:
        weights = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=WEIGHTS_NAME, **hub_kwargs)
        config = huggingface_hub.hf_hub_download(repo_id=repo_id, filename=CONFIG_NAME, **hub_kwargs)
    except (hub_errors.HFValidationError, hub_errors.LocalEntryNotFoundError, hub_errors.RepositoryNotFoundError,
            hub_errors.OfflineModeIsEnabled) as e:
        raise _not_found(repo_id, f"is neither an existing folder nor a reachable Hub repo ({type(e).__name__})") \
            from None
    except hub_errors.EntryNotFoundError as e:
        raise WeightsFormatError(
            f"The Hub repo {repo_id!r} lacks {WEIGHTS_NAME} or {CONFIG_NAME}; salfcbm loads safetensors only and "
            "refuses pickle checkpoints. Re-upload the model with `push_to_hub`."
        ) from e
    return config, weights


# ----------------------------------------------------------------------------- reading and checking
def read_config(path: str) -> ModelConfig:
    """Parse and validate ``config.json``."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path!r} is not valid JSON ({e}); the file is corrupt. Save the model again or "
                          "re-download it.") from None
    return ModelConfig.from_dict(data, source=path)


def read_weights(path: str, config: ModelConfig, *, verify: bool, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load ``model.safetensors``, checking checksums (``verify``), dtypes, finiteness and statistics."""
    from safetensors import SafetensorError, safe_open

    if verify and config.weights_sha256 is not None:
        _verify_checksums(path, config)
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise WeightsFormatError(f"Could not read {path} as safetensors ({e}); the file is corrupt or truncated. "
                                 "Save the model again or re-download it.") from None
    _check_tensors(state, path)
    return state


def _verify_checksums(path: str, config: ModelConfig) -> None:
    from safetensors import safe_open

    if not verify_once(path, lambda: sha256_file(path) == config.weights_sha256, config.weights_sha256):
        raise ChecksumError(
            f"{path} does not match the SHA-256 recorded in config.json: the file is corrupt or comes from another "
            "save. Re-download the model or save it again; do not mix files of different saves."
        )
    with safe_open(path, framework="pt") as f:
        recorded = (f.metadata() or {}).get(_CONFIG_SHA_KEY)
    if recorded is not None and recorded != sha256_bytes(_canonical(config)):
        raise ChecksumError(
            f"config.json next to {path} differs from the config saved with these weights (corrupt, edited or from "
            "another save). Re-download or save again; to load an intentionally edited config, pass verify=False."
        )


def _check_tensors(state: dict[str, torch.Tensor], path: str) -> None:
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
    if w.shape[0] != len(config.concepts):
        raise ConfigMismatchError(
            f"{model_id!r}: config.json lists {len(config.concepts)} concepts but the bottleneck has {w.shape[0]} rows. "
            "The concept list and the weights come from different runs; use the config.json saved with these weights."
        )
    if state["head.weight"].shape[0] != config.num_classes:
        raise ConfigMismatchError(f"{model_id!r}: config.json says num_classes={config.num_classes} but the head has "
                                  f"{state['head.weight'].shape[0]} rows.")


def check_backbone(model: Any, config: ModelConfig, saved_channels: int | None, *, verify_backbone: bool) -> None:
    """Channels probed at the layer must equal the saved ones; the weights fingerprint must match."""
    if saved_channels is not None and model.config.feature_channels != saved_channels:
        raise ConfigMismatchError(
            f"The backbone gives {model.config.feature_channels} channels at layer {model.layer!r}, but the saved "
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


def load_model(cls: type, model_id: str | os.PathLike, *, backbone: nn.Module | None = None,
               verify: bool = True, verify_backbone: bool = True, map_location: str = "cpu",
               hub_kwargs: dict | None = None, overrides: dict | None = None) -> Any:
    """Read, check and build a saved model (the body of ``SALFCBM.from_pretrained``)."""
    config_file, weights_file = resolve_files(model_id, **(hub_kwargs or {}))
    config = read_config(config_file)
    state = read_weights(weights_file, config, verify=verify, device=map_location)
    check_concept_count(state, config, str(model_id))
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__) - {"backbone_spec"})
    if unknown:
        raise InputError(f"from_pretrained got unexpected keyword arguments {unknown}; it takes backbone=, "
                         "verify=, verify_backbone=, map_location=, Hub options and model config fields.")
    if backbone is None:  # the saved backbone.safetensors, if any, on the architecture of the spec
        backbone = backbone_weights.saved_backbone(config, weights_file, str(model_id), verify=verify,
                                                   hub_kwargs=hub_kwargs)
    kwargs = _constructor_kwargs(config, backbone, overrides)
    if kwargs.get("bottleneck_bias") is None:  # saved before the field existed: the weights decide
        kwargs["bottleneck_bias"] = "bottleneck.bias" in state
    model = cls(**kwargs)
    check_backbone(model, config, config.feature_channels, verify_backbone=verify_backbone)
    check_state_matches(model, state, str(model_id))
    model.load_state_dict(state, strict=False)  # exactly the adapter's keys (checked above)
    model.config = model.config.replace(head_stats=config.head_stats, backbone_fingerprint=config.backbone_fingerprint)
    return model


def _constructor_kwargs(config: ModelConfig, backbone: nn.Module | None, overrides: dict) -> dict[str, Any]:
    d = config.to_dict()
    for k in ("version", "weights_sha256", "backbone_fingerprint", "head_stats"):
        d.pop(k)
    d.pop("backbone_weights_sha256", None)
    d["feature_channels"] = None  # probe the backbone at the layer instead of trusting the file
    if backbone is not None:
        if not isinstance(backbone, nn.Module):
            raise InputError(f"`backbone` must be an nn.Module, got {type(backbone).__name__}.")
        d["backbone_spec"] = d.pop("backbone")
        d["backbone"] = backbone
    elif d["backbone"] is None:
        raise ConfigError("config.json has no backbone spec; pass the backbone: "
                          "SALFCBM.from_pretrained(path, backbone=my_backbone).")
    d.update(overrides)
    return d
