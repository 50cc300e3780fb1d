"""Saving and loading a SALF-CBM: a save touches only its own files; loading is checked and bounded.

* A save writes only the files it owns (`OWNED_FILES`: ``model.safetensors``, ``config.json``
  and ``README.md`` if that card is absent or was written by salfcbm), each to a temporary file
  in the same folder, flushed, then moved over the old one with ``os.replace``
  (`salfcbm._utils.io.replace_files`). Every other file, subfolder, permission bit, owner and
  symlink in the folder stays as it was. All temporary files are complete before the first
  replace, so a full disk or a kill while writing leaves the previous model; the weights are
  replaced before ``config.json``, which records their SHA-256 (the commit record).
* ``config.json`` records the SHA-256 of ``model.safetensors``; the weights file records the
  SHA-256 of the config in its metadata. Loading reads each file's bytes once and checks the
  bytes it parses. A pair that does not match is read again while a writer is at work
  (`read_model_files`); a pair left mismatched by a save killed between its two replaces is a
  `ChecksumError`, and the next save repairs it.
* Everything a file says is bounded before it costs anything: ``config.json`` length and JSON
  depth, the safetensors header's length, offsets and shapes against the file's real size, and
  every size the config names (`salfcbm.core.config.CONFIG_LIMITS`).
* Loading validates the config against `ModelConfig`, accepts exactly the adapter's tensors
  (finite floats of the right shapes, positive ``concept_std``), follows backbone names that are
  locations (``local-dir:``, ``hf-hub:``) only with ``trust_backbone_source=True``, probes the
  backbone's channels at the layer, checks the backbone's weights fingerprint, and refuses
  weights whose outputs are not finite on a probe batch.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salfcbm._utils.io import replace_files, sha256_bytes, write_in_progress
from salfcbm.core import backbone_weights
from salfcbm.core.backbones import backbone_fingerprint
from salfcbm.errors import (
    ChecksumError,
    ConfigError,
    InputError,
    ModelNotFoundError,
    WeightsFormatError,
)
from salfcbm.core.adapter_init import adapter_init_skipped
from salfcbm.core.config import ModelConfig
from salfcbm.core.load_checks import (check_backbone, check_backbone_source, check_concept_count,
                                      check_outputs_finite, check_state_matches, check_tensors, probe_features)
from salfcbm.core.model_card import MODEL_CARD_TEMPLATE

__all__ = ["save_model", "load_model", "check_backbone", "check_backbone_source", "check_concept_count",
           "check_outputs_finite", "check_state_matches", "check_tensors", "MODEL_CARD_TEMPLATE", "WEIGHTS_NAME", "CONFIG_NAME", "CARD_NAME",
           "OWNED_FILES", "card_is_ours", "read_model_files", "MAX_CONFIG_BYTES", "MAX_JSON_DEPTH",
           "MAX_HEADER_BYTES"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
#: The files a save owns, in the order it replaces them: data files first, then ``config.json`` (which
#: records their checksums), then the card (only if `card_is_ours`). Nothing else in the folder is touched.
OWNED_FILES = (backbone_weights.BACKBONE_WEIGHTS_NAME, WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
_PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
_CONFIG_SHA_KEY = "salfcbm.config_sha256"
CARD_MARK = "<!-- salfcbm model card, sha256="  # the card's last line: the SHA-256 of everything above it

MAX_CONFIG_BYTES = 64 << 20  # a config.json with 100k long concept names is ~10 MB
MAX_JSON_DEPTH = 32  # a salfcbm config nests 4 levels (backbone kwargs); json.loads recurses
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the header
_READ_ATTEMPTS = 40  # x _READ_PAUSE_S: a reader waits up to 2 s for a save in progress
_READ_PAUSE_S = 0.05
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

# ----------------------------------------------------------------------------- saving
def _canonical(config: ModelConfig) -> bytes:
    return json.dumps(config.replace(weights_sha256=None).to_dict(), sort_keys=True, separators=(",", ":")).encode()


def save_model(model: Any, directory: str | os.PathLike, *, save_backbone: bool | str = "auto") -> Path:
    """Write the files ``model`` owns into ``directory``, touching nothing else (see the module docstring).

    ``save_backbone``: also write ``backbone.safetensors`` (`salfcbm.core.backbone_weights`); when it is
    not written, an old copy in ``directory`` (ours, from an earlier save) is removed after the replaces.
    """
    config = model.config.replace(backbone=model.backbone_spec, weights_sha256=None, backbone_weights_sha256=None,
                                  backbone_fingerprint=backbone_fingerprint(model._require_backbone()))
    with_backbone = backbone_weights.wants_saving(save_backbone, config.backbone, frozen=config.freeze_backbone)
    directory = Path(directory)
    out = replace_files(directory, _owned_files(model, config, directory, with_backbone))
    stale = directory / backbone_weights.BACKBONE_WEIGHTS_NAME
    if not with_backbone and stale.is_file() and not stale.is_symlink():
        stale.unlink()  # config.json no longer names it: an old copy would only mislead
    return out


def _owned_files(model: Any, config: ModelConfig, directory: Path,
                 with_backbone: bool = False) -> list[tuple[str, bytes | str]]:
    """``(name, content)`` of each file the save writes, in `OWNED_FILES` order (the order of the replaces)."""
    from safetensors.torch import save

    files: list[tuple[str, bytes | str]] = []
    if with_backbone:  # first: its checksum is part of the config the adapter's metadata pins
        data = backbone_weights.backbone_bytes(model.backbone, config.backbone, frozen=config.freeze_backbone)
        config = config.replace(backbone_weights_sha256=sha256_bytes(data))
        files.append((backbone_weights.BACKBONE_WEIGHTS_NAME, data))
    state = {k: v.detach().contiguous().cpu() for k, v in model.adapter_state_dict().items()}
    # one metadata entry: safetensors writes several in no fixed order, and a save must be reproducible
    weights = save(state, metadata={_CONFIG_SHA_KEY: sha256_bytes(_canonical(config))})
    written = config.replace(weights_sha256=sha256_bytes(weights))
    files += [
        (WEIGHTS_NAME, weights),
        (CONFIG_NAME, json.dumps(written.to_dict(), indent=2, sort_keys=True)),
    ]
    if card_is_ours(directory / CARD_NAME):
        files.append((CARD_NAME, _signed_card(str(model.generate_model_card(config=written)))))
    return files


def _signed_card(text: str) -> str:
    body = text if text.endswith("\n") else text + "\n"
    return f"{body}\n{CARD_MARK}{sha256_bytes(body.encode())} -->\n"


def card_is_ours(path: str | os.PathLike) -> bool:
    """Whether a save may write the model card at ``path``: it is absent, or salfcbm wrote it and nobody edited it.

    A card salfcbm writes ends with a line carrying the SHA-256 of the text above it; a card
    without that line counts as salfcbm's only if it is an unmarked card of salfcbm < 0.3 (front
    matter ``library_name: salfcbm`` and the ``# SALF-CBM on`` title). Your own ``README.md``,
    a salfcbm card you edited, and a ``README.md`` that is a symlink are left as they are.

    Examples:
        >>> import tempfile; p = Path(tempfile.mkdtemp()) / "README.md"
        >>> card_is_ours(p)
        True
        >>> _ = p.write_text("# My notes"); card_is_ours(p)
        False
        >>> _ = p.write_text(_signed_card("---\\nlibrary_name: salfcbm\\n---\\n# SALF-CBM on x")); card_is_ours(p)
        True
    """
    path = Path(path)
    if not os.path.lexists(path):
        return True
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > (4 << 20):
            return False
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    at = text.rfind("\n" + CARD_MARK)
    if at >= 0:
        m = re.fullmatch(r"([0-9a-f]{64}) -->\s*", text[at + 1 + len(CARD_MARK):])
        return bool(m) and sha256_bytes(text[:at].encode()) == m.group(1)
    front = text.split("\n---", 1)[0] if text.startswith("---") else ""
    return bool(re.search(r"^library_name: salfcbm\s*$", front, re.M)) and "\n# SALF-CBM on " in text


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
def _read_bytes(path: str, *, limit: int | None, what: type[Exception]) -> bytes:
    """The file's bytes, read once (at most ``limit`` + 1 of them: a longer file is refused unread)."""
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise what(f"Could not read {path}: {e.strerror or e}. Check the file, or save the model again.") from None
    if limit is not None and len(data) > limit:
        raise what(f"{path} is larger than {limit >> 20} MiB, far more than a salfcbm file of this kind needs "
                   "(it is corrupt or not from salfcbm). Save the model again or re-download it.")
    return data


def json_depth(data: bytes) -> int:
    """How deeply ``data`` (JSON text) nests arrays and objects: one vectorised pass, brackets in strings skipped.

    Examples:
        >>> json_depth(b'{"a": [1, {"b": "[[[\\\\"}]}')
        3
    """
    import numpy as np

    raw = np.frombuffer(data, dtype=np.uint8)
    level, deepest, in_string, backslashes = 0, 0, 0, 0
    for at in range(0, len(raw), 1 << 20):  # blocks of 1 MiB: a few MiB of scratch memory for any length
        a = raw[at:at + (1 << 20)]
        quote = a == 0x22
        escaping = a == 0x5C
        if backslashes or escaping.any():  # a quote after an odd run of backslashes is escaped
            idx = np.arange(len(a), dtype=np.int64)
            last_other = np.maximum.accumulate(np.where(escaping, -1, idx))  # last non-backslash up to i
            before = np.empty(len(a), dtype=np.int64)  # backslashes right before i
            before[0], prev = backslashes, last_other[:-1]
            before[1:] = np.where(prev >= 0, idx[1:] - 1 - prev, idx[1:] + backslashes)
            quote &= before % 2 == 0
            backslashes = int(len(a) - 1 - last_other[-1]) if last_other[-1] >= 0 else len(a) + backslashes
        outside = (np.cumsum(quote, dtype=np.int32) + in_string) % 2 == 0
        step = ((a == 0x5B) | (a == 0x7B)).astype(np.int32) - ((a == 0x5D) | (a == 0x7D))
        levels = np.cumsum(step * outside, dtype=np.int64) + level
        deepest, level, in_string = max(deepest, int(levels.max())), int(levels[-1]), int(not outside[-1])
    return deepest


def bounded_json(data: bytes, source: str, what: type[Exception]) -> Any:
    """Parse JSON bytes whose depth is at most `MAX_JSON_DEPTH` (checked first: ``json`` recurses)."""
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise what(f"{source} nests {depth} levels of JSON arrays/objects; a salfcbm file has at most "
                   f"{MAX_JSON_DEPTH}. The file is corrupt or hostile; save the model again or re-download it.")
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise what(f"{source} is not valid JSON ({str(e)[:200]}); the file is corrupt. Save the model again or "
                   "re-download it.") from None


def parse_config(data: bytes, source: str) -> ModelConfig:
    """Validate ``config.json`` bytes: length, JSON depth, then the `ModelConfig` schema and its size limits."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source} has {len(data)} bytes; a salfcbm config has at most {MAX_CONFIG_BYTES}. "
                          "The file is corrupt or hostile; save the model again or re-download it.")
    return ModelConfig.from_dict(bounded_json(data, source, ConfigError), source=source)


def read_config(path: str) -> ModelConfig:
    """Read (once, bounded) and validate ``config.json``."""
    return parse_config(_read_bytes(path, limit=MAX_CONFIG_BYTES, what=ConfigError), path)


def parse_header(data: bytes, path: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor entries and metadata of safetensors bytes, checked against the bytes' real size first."""
    def bad(why: str) -> WeightsFormatError:
        return WeightsFormatError(f"{path} is not a valid safetensors file: {why}. The file is corrupt, truncated "
                                  "or hostile; save the model again or re-download it.")

    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 2 <= n <= min(len(data) - 8, MAX_HEADER_BYTES):
        raise bad(f"its header claims {n} bytes, the file has {len(data)} bytes in all" if n >= 0
                  else f"only {len(data)} bytes")
    header = bounded_json(data[8:8 + n], f"The header of {path}", WeightsFormatError)
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("__metadata__ is not a map of strings")
    body, end = len(data) - 8 - n, 0
    for k, v in header.items():
        shape, offsets = (v.get("shape"), v.get("data_offsets")) if isinstance(v, dict) else (None, None)
        if not (isinstance(shape, list) and len(shape) <= 8 and all(_nat(s) for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(_nat(o) for o in offsets)
                and v.get("dtype") in _DTYPE_BYTES and offsets[0] <= offsets[1] <= body):
            raise bad(f"tensor {k[:80]!r} has a malformed entry or claims bytes beyond the file's {body} data bytes")
        if _DTYPE_BYTES[v["dtype"]] * _prod(shape) != offsets[1] - offsets[0]:
            raise bad(f"tensor {k[:80]!r} of shape {shape} needs another byte count than its offsets give")
        end = max(end, offsets[1])
    if end != body:
        raise bad(f"the tensors cover {end} of its {body} data bytes")
    return header, meta


def _nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _mismatch(config: ModelConfig, data: bytes, path: str) -> ChecksumError | None:
    """Why ``config`` and the weights ``data`` do not belong to one save (``None`` if they do)."""
    if config.weights_sha256 is None:
        return None  # written before salfcbm recorded checksums
    if sha256_bytes(data) != config.weights_sha256:
        return ChecksumError(
            f"{path} does not match the SHA-256 recorded in config.json: the file is corrupt, comes from another "
            "save, or a save was interrupted between its two files. Save the model again (the next save repairs "
            "the folder) or re-download it; do not mix files of different saves."
        )
    recorded = parse_header(data, path)[1].get(_CONFIG_SHA_KEY)
    if recorded is not None and recorded != sha256_bytes(_canonical(config)):
        return ChecksumError(
            f"config.json next to {path} differs from the config saved with these weights (corrupt, edited, from "
            "another save, or a save was interrupted). Re-download or save again; to load an intentionally edited "
            "config, pass verify=False."
        )
    return None


def _signature(*paths: str) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def read_model_files(config_file: str, weights_file: str, *, verify: bool = True) -> tuple[ModelConfig, bytes]:
    """Read ``config.json`` and ``model.safetensors`` once each and, with ``verify``, check they are one save.

    Each check runs on the very bytes that are parsed. A pair that disagrees while a save is at
    work (the files change under us, or a live writer's temporary files are in the folder) is
    read again, up to `_READ_ATTEMPTS` times; a pair that disagrees with no writer at work (a
    corrupt file, or a save killed between its replaces) is a `ChecksumError` at once.
    """
    problem: ChecksumError | None = None
    folder = os.path.dirname(os.path.abspath(config_file))
    for _ in range(_READ_ATTEMPTS):
        before = _signature(config_file, weights_file)
        config = parse_config(_read_bytes(config_file, limit=MAX_CONFIG_BYTES, what=ConfigError), config_file)
        data = _read_bytes(weights_file, limit=None, what=WeightsFormatError)
        problem = _mismatch(config, data, weights_file) if verify else None
        if problem is None:
            return config, data
        time.sleep(_READ_PAUSE_S)
        if _signature(config_file, weights_file) == before and not write_in_progress(folder, OWNED_FILES):
            break  # nobody is writing: the files on disk disagree
    raise problem


def weights_state(data: bytes, path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data`` (header bounded first), checked: dtypes, finiteness, statistics."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    parse_header(data, path)
    try:
        state = load(data)
    except (SafetensorError, RuntimeError, ValueError, TypeError) as e:
        raise WeightsFormatError(f"Could not read {path} as safetensors ({str(e)[:200]}); the file is corrupt or "
                                 "truncated. Save the model again or re-download it.") from None
    check_tensors(state, path)
    if str(device) != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    return state


def read_weights(path: str, config: ModelConfig, *, verify: bool, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` (read once), checking checksums (``verify``), dtypes, finiteness and statistics."""
    data = _read_bytes(path, limit=None, what=WeightsFormatError)
    problem = _mismatch(config, data, path) if verify else None
    if problem is not None:
        raise problem
    return weights_state(data, path, device)


def load_model(cls: type, model_id: str | os.PathLike, *, backbone: nn.Module | None = None,
               verify: bool = True, verify_backbone: bool = True, map_location: str = "cpu",
               hub_kwargs: dict | None = None, overrides: dict | None = None,
               trust_backbone_source: bool = False) -> Any:
    """Read, check and build a saved model (the body of ``SALFCBM.from_pretrained``)."""
    config_file, weights_file = resolve_files(model_id, **(hub_kwargs or {}))
    config, data = read_model_files(config_file, weights_file, verify=verify)
    state = weights_state(data, weights_file, device=map_location)
    del data
    check_concept_count(state, config, str(model_id))
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ModelConfig.__dataclass_fields__) - {"backbone_spec"})
    if unknown:
        raise InputError(f"from_pretrained got unexpected keyword arguments {unknown}; it takes backbone=, "
                         "verify=, verify_backbone=, trust_backbone_source=, map_location=, Hub options and model "
                         "config fields.")
    if backbone is None:  # the saved backbone.safetensors, if any, on the architecture of the spec
        check_backbone_source(config.backbone, str(model_id), trusted=trust_backbone_source)
        backbone = backbone_weights.saved_backbone(config, weights_file, str(model_id), verify=verify,
                                                   hub_kwargs=hub_kwargs)
        # weights read from a file whose SHA-256 was just checked need no second hash (their fingerprint)
        verify_backbone = verify_backbone and not (verify and backbone is not None)
    kwargs = _constructor_kwargs(config, backbone, overrides)
    if kwargs.get("bottleneck_bias") is None:  # saved before the field existed: the weights decide
        kwargs["bottleneck_bias"] = "bottleneck.bias" in state
    with adapter_init_skipped():  # every adapter value is loaded below (check_state_matches)
        model = cls(**kwargs)
    fmap = probe_features(model)  # one probe forward: the channels check here and the finite-outputs check below
    check_backbone(model, config, config.feature_channels, verify_backbone=verify_backbone, channels=fmap.shape[1])
    check_state_matches(model, state, str(model_id))
    model.load_state_dict(state, strict=False)  # exactly the adapter's keys (checked above)
    model.config = model.config.replace(head_stats=config.head_stats, backbone_fingerprint=config.backbone_fingerprint)
    check_outputs_finite(model, str(model_id), fmap)
    return model


def _constructor_kwargs(config: ModelConfig, backbone: nn.Module | None, overrides: dict) -> dict[str, Any]:
    d = config.to_dict()
    for k in ("version", "weights_sha256", "backbone_fingerprint", "head_stats"):
        d.pop(k)
    d.pop("backbone_weights_sha256", None)
    # the file's channels size the bottleneck; `load_model` checks them against the probed map
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
