"""Flipped bytes in every file save_pretrained writes; adversarial config.json and safetensors files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import salfcbm
from salfcbm.core import persistence
from salfcbm._utils.io import sha256_bytes
from salfcbm.errors import (
    BackboneSpecError,
    ConfigError,
    ConfigMismatchError,
    SalfCBMError,
    WeightsFormatError,
)

from . import _models as M


def _load(path, **kw) -> salfcbm.SALFCBM:
    return salfcbm.SALFCBM.from_pretrained(path, backbone=kw.pop("backbone", None) or M.backbone(), **kw).eval()


@pytest.fixture
def saved(tmp_path) -> Path:
    M.model(0).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _flip(path: Path, pos: int, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "README.md"])
def test_every_flipped_byte_is_refused_or_harmless(saved, name):
    """30 single-byte flips per file: each load raises a salfcbm error or gives exactly the saved model."""
    rng = random.Random(name)
    good = {p.name: p.read_bytes() for p in saved.iterdir()}
    ref = M.logits(M.model(0))
    size = len(good[name])
    outcome = {"refused": 0, "identical": 0}
    for pos in sorted(rng.sample(range(size), min(30, size))):
        _flip(saved / name, pos, rng)
        try:
            got = _load(saved)
        except SalfCBMError:
            outcome["refused"] += 1
        else:
            assert torch.equal(M.logits(got), ref) and got.concepts == M.CONCEPTS, (name, pos)
            outcome["identical"] += 1
        (saved / name).write_bytes(good[name])
    if name == "README.md":
        assert outcome["refused"] == 0  # the card is never read
    else:
        assert outcome["refused"] >= 28, outcome


def test_truncated_weights_are_refused(saved):
    data = (saved / "model.safetensors").read_bytes()
    for cut in (0, 7, len(data) // 2, len(data) - 1):
        (saved / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(SalfCBMError):
            _load(saved)


def _rewrite(folder: Path, *, state: dict | None = None, config: dict | None = None, raw: bytes | None = None) -> None:
    """Write files with valid checksums, as an attacker who controls both files would."""
    from safetensors.torch import save

    cfg = json.loads((folder / "config.json").read_text()) if config is None else config
    st = load_file(folder / "model.safetensors") if state is None else state
    canon = json.dumps({**cfg, "weights_sha256": None}, sort_keys=True, separators=(",", ":")).encode()
    data = save(st, metadata={"salfcbm.config_sha256": sha256_bytes(canon)})
    (folder / "model.safetensors").write_bytes(data)
    text = raw if raw is not None else json.dumps({**cfg, "weights_sha256": sha256_bytes(data)}).encode()
    (folder / "config.json").write_bytes(text)


def _cfg(folder: Path, **changes) -> dict:
    return {**json.loads((folder / "config.json").read_text()), **changes}


def _state(folder: Path, **changes) -> dict:
    return {**load_file(folder / "model.safetensors"), **changes}


CONFIGS = {
    "not json": (lambda f: _rewrite(f, raw=b"{not json"), ConfigError, "not valid JSON"),
    "a list": (lambda f: _rewrite(f, raw=b"[1, 2]"), ConfigError, "JSON object"),
    "unexpected key": (lambda f: _rewrite(f, config=_cfg(f, concpets=["x"])), ConfigError, "did you mean 'concepts'"),
    "one string of concepts": (lambda f: _rewrite(f, config=_cfg(f, concepts="water")), ConfigError, "list"),
    "bool num_classes": (lambda f: _rewrite(f, config=_cfg(f, num_classes=True)), ConfigError, "positive int"),
    "checkpoint_path kwarg": (lambda f: _rewrite(f, config=_cfg(f, backbone={
        "source": "timm", "name": "resnet18", "weights": None, "kwargs": {"checkpoint_path": "/etc/passwd"}})),
        BackboneSpecError, "checkpoint_path"),
    "path-like kwarg value": (lambda f: _rewrite(f, config=_cfg(f, backbone={
        "source": "timm", "name": "resnet18", "weights": None, "kwargs": {"global_pool": "../x.pth"}})),
        BackboneSpecError, "only numbers, flags"),
    "future version": (lambda f: _rewrite(f, config=_cfg(f, version=99)), ConfigError, "Upgrade salfcbm"),
    "softmax temperature 0": (lambda f: _rewrite(f, config=_cfg(f, softmax_temperature=0)), ConfigError, "> 0"),
    "zero input_std": (lambda f: _rewrite(f, config=_cfg(f, input_std=[0, 1, 1])), ConfigError, "positive"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_adversarial_config(saved, case):
    make, error, match = CONFIGS[case]
    make(saved)
    with pytest.raises(error, match=match):
        _load(saved)


STATES = {
    "backbone tensors": (lambda f: _state(f, **{"backbone.0.weight": torch.zeros(8, 3, 3, 3)}), WeightsFormatError,
                         "never loads backbone weights"),
    "int64 head": (lambda f: _state(f, **{"head.weight": torch.ones(3, 4, dtype=torch.int64)}), WeightsFormatError,
                   "dtype torch.int64"),
    "NaN bottleneck": (lambda f: _state(f, **{"bottleneck.weight": torch.full((4, 8, 1, 1), float("nan"))}),
                       WeightsFormatError, "NaN or inf"),
    "zero concept_std": (lambda f: _state(f, concept_std=torch.zeros(4)), WeightsFormatError, "concept_std"),
    "unexpected tensor": (lambda f: _state(f, extra=torch.zeros(1)), ConfigMismatchError, "unexpected tensors"),
    "head of another width": (lambda f: _state(f, **{"head.weight": torch.zeros(3, 5)}), ConfigMismatchError, "shape"),
}


@pytest.mark.parametrize("case", list(STATES))
def test_adversarial_safetensors(saved, case):
    make, error, match = STATES[case]
    _rewrite(saved, state=make(saved))
    net = M.backbone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(error, match=match):
        _load(saved, backbone=net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the user's backbone is untouched


def test_backbone_of_another_width_is_refused_at_load(saved):
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))
    with pytest.raises(ConfigMismatchError, match="gives 16 channels at layer '2'.*expects 8"):
        _load(saved, backbone=wide)


def test_missing_path_is_a_salfcbm_error(tmp_path):
    for missing in (tmp_path / "nope", "./nope", "no/such/dir/model", "not a repo id!"):
        with pytest.raises(salfcbm.errors.ModelNotFoundError, match="save_pretrained"):
            salfcbm.SALFCBM.from_pretrained(missing)


def test_old_config_without_version_still_loads(saved):
    cfg = json.loads((saved / "config.json").read_text())
    for k in ("version", "weights_sha256", "backbone_fingerprint"):
        cfg.pop(k)
    (saved / "config.json").write_text(json.dumps(cfg))
    m = _load(saved)
    assert torch.equal(M.logits(m), M.logits(M.model(0)))


def test_the_config_is_typed_and_read_only():
    m = M.model(0)
    assert isinstance(m.config, salfcbm.core.config.ModelConfig)
    with pytest.raises(ConfigError, match="read-only"):
        m.config["head_stats"] = {"x": 1}
    m.set_head_stats({"val_accuracy": 0.5})
    assert m.config.head_stats == {"val_accuracy": 0.5}
    assert not hasattr(m, "_spec_weights")  # wrap passes the weights choice to the constructor
    assert persistence.MODEL_CARD_TEMPLATE in type(m)._hub_mixin_info.model_card_template


def test_saving_the_same_model_twice_gives_the_same_bytes(tmp_path):
    for name in ("a", "b"):
        M.model(0).save_pretrained(tmp_path / name)
    for f in ("model.safetensors", "config.json", "README.md"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
