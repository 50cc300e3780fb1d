"""Hostile or broken model files are refused before they cost anything, with a salfcbm error.

Every file here carries valid checksums (re-signed, as anyone can): a checksum proves integrity, not
trust. The fuzzers (hypothesis, bounded examples) check that each generated ``config.json`` or
safetensors file ends in a correct load or a `SalfCBMError`, never another exception.
"""

from __future__ import annotations

import json
import resource
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save

import salfcbm
from salfcbm._utils.io import sha256_bytes
from salfcbm.core import persistence
from salfcbm.core.config import CONFIG_LIMITS, ModelConfig
from salfcbm.errors import BackboneSpecError, ConfigError, InputError, SalfCBMError, WeightsFormatError

from . import _models as M

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(path, **kw) -> salfcbm.SALFCBM:
    if "backbone" not in kw:
        kw["backbone"] = M.backbone()
    return salfcbm.SALFCBM.from_pretrained(path, **kw)


@pytest.fixture
def saved(tmp_path) -> Path:
    M.model(0).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _canon(cfg: dict) -> str:
    return sha256_bytes(json.dumps({**cfg, "weights_sha256": None}, sort_keys=True, separators=(",", ":")).encode())


def _sign(folder: Path, *, config: dict | None = None, state: dict | None = None, weights: bytes | None = None,
          raw_config: bytes | None = None) -> None:
    """Write both files with checksums that match, as an attacker who controls both would."""
    cfg = json.loads((folder / "config.json").read_text()) if config is None else config
    if weights is None:
        st_ = load_file(folder / "model.safetensors") if state is None else state
        weights = save(st_, metadata={"salfcbm.config_sha256": _canon(cfg)})
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_bytes(raw_config if raw_config is not None else
                                         json.dumps({**cfg, "weights_sha256": sha256_bytes(weights)}).encode())


def _cfg(folder: Path, **changes) -> dict:
    return {**json.loads((folder / "config.json").read_text()), **changes}


def _outcome(folder: Path, **kw) -> str:
    """'loaded' (with finite logits) or 'refused' (a salfcbm error); any other exception fails the test."""
    try:
        m = _load(folder, **kw)
    except SalfCBMError:
        return "refused"
    assert torch.isfinite(M.logits(m)).all()
    return "loaded"


def _header_file(header: dict, body: bytes, n: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if n is None else n) + text + body


# ----------------------------------------------------------------------------- safetensors headers
def test_a_header_that_claims_a_terabyte_is_refused_before_parsing(saved):
    fake = _header_file({"bottleneck.weight": {"dtype": "F32", "shape": [2 ** 38], "data_offsets": [0, 2 ** 40]}},
                        b"\0" * 64)
    _sign(saved, weights=fake)
    with pytest.raises(WeightsFormatError, match="beyond the file"):
        _load(saved)


def test_a_header_length_beyond_the_file_is_refused(saved):
    good = (saved / "model.safetensors").read_bytes()
    _sign(saved, weights=struct.pack("<Q", 2 ** 40) + good[8:])
    with pytest.raises(WeightsFormatError, match="header claims 1099511627776 bytes"):
        _load(saved)


def test_a_header_whose_offsets_do_not_cover_the_data_is_refused(saved):
    good = (saved / "model.safetensors").read_bytes()
    _sign(saved, weights=good + b"\0" * 16)  # trailing bytes no tensor owns
    with pytest.raises(WeightsFormatError, match="cover"):
        _load(saved)


def test_a_deeply_nested_header_is_refused(saved):
    _sign(saved, weights=_header_file({"x": json.loads("[" * 50 + "]" * 50)}, b""))
    with pytest.raises(WeightsFormatError, match="nests 51 levels"):
        _load(saved)


# ----------------------------------------------------------------------------- config.json
def test_a_deeply_nested_config_is_a_config_error_not_a_recursion_error(saved):
    deep = b'{"concepts": ' + b"[" * 100_000 + b"]" * 100_000 + b', "num_classes": 3}'
    (saved / "config.json").write_bytes(deep)
    with pytest.raises(ConfigError, match="nests 100001 levels"):
        _load(saved)


def test_brackets_inside_strings_do_not_count_as_depth(saved):
    names = ["[" * 5000, "a beak", "{" * 5000, "a tree"]
    _sign(saved, config=_cfg(saved, concepts=names))
    assert _load(saved).concepts == names


def test_a_huge_config_is_refused_unread(saved):
    with open(saved / "config.json", "wb") as f:
        f.write(b'{"concepts": ["' + b"x" * (persistence.MAX_CONFIG_BYTES + 16) + b'"], "num_classes": 3}')
    with pytest.raises(ConfigError, match="larger than 64 MiB"):
        _load(saved)


def test_a_config_number_with_too_many_digits_is_a_config_error(saved):
    (saved / "config.json").write_bytes(b'{"concepts": ["a"], "num_classes": ' + b"9" * 10_000 + b"}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        _load(saved)


GIANT = {
    "input side 100000": {"input_size": [100_000, 100_000]},
    "grid 10000": {"grid": [10_000, 10_000]},
    "a million classes": {"num_classes": 1_000_000},
    "a billion prefix tokens": {"num_prefix_tokens": 10 ** 9},
    "100001 concepts": {"concepts": [f"c{i}" for i in range(100_001)]},
}


@pytest.mark.parametrize("case", list(GIANT))
def test_every_size_in_the_config_is_bounded_before_allocating(saved, case):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _sign(saved, config=_cfg(saved, **GIANT[case]))
    with pytest.raises(ConfigError, match="CONFIG_LIMITS"):
        _load(saved)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024  # KiB: nothing big was allocated


def test_the_limits_are_the_documented_ones():
    assert dict(CONFIG_LIMITS) == {"input_side": 4096, "grid_side": 64, "concepts": 100_000, "classes": 100_000,
                                   "prefix_tokens": 4096}
    ModelConfig(concepts=["a"], num_classes=100_000, input_size=[4096, 4096], grid=[64, 64])  # at the limits: fine
    with pytest.raises(InputError, match="1..64"):
        salfcbm.wrap(M.backbone(), concepts=["a"], num_classes=2, layer="2", input_size=(32, 32), grid=65)


# ----------------------------------------------------------------------------- extreme weights
EXTREME = {
    "huge bottleneck and head": {"bottleneck.weight": torch.full((4, 8, 1, 1), 1e30),
                                 "head.weight": torch.full((3, 4), 1e30)},
    "tiny concept_std": {"concept_std": torch.full((4,), 1e-45)},
    "head bias at float max": {"head.bias": torch.full((3,), 3e38), "head.weight": torch.full((3, 4), 3e38)},
}


@pytest.mark.parametrize("case", list(EXTREME))
def test_finite_but_extreme_weights_are_refused_by_the_probe(saved, case):
    _sign(saved, state={**load_file(saved / "model.safetensors"), **EXTREME[case]})
    net = M.backbone().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightsFormatError, match="non-finite"):
        _load(saved, backbone=net)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# ----------------------------------------------------------------------------- backbone locations
@pytest.mark.parametrize("name", ["local-dir:{tmp}/evil", "hf-hub:someone/any-repo"])
def test_a_backbone_location_from_a_file_needs_the_callers_opt_in(saved, tmp_path, monkeypatch, name):
    import timm

    calls = []
    monkeypatch.setattr(timm, "create_model", lambda n, **kw: calls.append(n) or M.backbone())
    spec = {"source": "timm", "name": name.format(tmp=tmp_path), "weights": None, "kwargs": {}}
    _sign(saved, config=_cfg(saved, backbone=spec))
    with pytest.raises(BackboneSpecError, match="trust_backbone_source=True"):
        salfcbm.SALFCBM.from_pretrained(saved)
    assert calls == []  # nothing was read or fetched
    m = salfcbm.SALFCBM.from_pretrained(saved, trust_backbone_source=True)
    assert calls and calls[0] == spec["name"]
    assert torch.equal(M.logits(m), M.logits(M.model(0)))


def test_a_plain_timm_name_needs_no_opt_in(saved, monkeypatch):
    import timm

    monkeypatch.setattr(timm, "create_model", lambda n, **kw: M.backbone())
    _sign(saved, config=_cfg(saved, backbone={"source": "timm", "name": "resnet18", "weights": None, "kwargs": {}}))
    assert torch.equal(M.logits(salfcbm.SALFCBM.from_pretrained(saved)), M.logits(M.model(0)))


# ----------------------------------------------------------------------------- linear checks
class _CountingStr(str):
    comparisons = 0

    def __eq__(self, other):
        type(self).comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_the_duplicate_concept_check_is_linear():
    n = 3000
    concepts = [_CountingStr(f"concept {i}") for i in range(n)]
    _CountingStr.comparisons = 0
    salfcbm.wrap(M.backbone(), concepts=concepts, num_classes=2, layer="2", input_size=(32, 32), grid=4)
    assert _CountingStr.comparisons < 5 * n, _CountingStr.comparisons  # a quadratic check makes ~n * n


def test_wrap_takes_twenty_thousand_concepts_and_names_a_repeated_one():
    concepts = [f"concept {i}" for i in range(20_000)]
    m = salfcbm.wrap(M.backbone(), concepts=concepts, num_classes=2, layer="2", input_size=(32, 32), grid=4)
    assert m.num_concepts == 20_000
    with pytest.raises(InputError, match="repeated: \\['concept 7'\\]"):
        salfcbm.wrap(M.backbone(), concepts=[*concepts, "concept 7"], num_classes=2, layer="2", input_size=(32, 32))


# ----------------------------------------------------------------------------- fuzzing
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = sorted(ModelConfig.__dataclass_fields__)


def _fresh() -> tuple[tempfile.TemporaryDirectory, Path]:
    tmp = tempfile.TemporaryDirectory()
    M.model(0).save_pretrained(Path(tmp.name) / "m")
    return tmp, Path(tmp.name) / "m"


@FUZZ
@given(key=st.sampled_from(KEYS) | st.text(max_size=8), value=JSON)
def test_fuzz_config_fields(key, value):
    """One field of a re-signed config replaced by any JSON value: a correct load or a salfcbm error."""
    tmp, folder = _fresh()
    with tmp:
        _sign(folder, config=_cfg(folder, **{key: value}))
        _outcome(folder)
        _outcome(folder, verify=False)


@FUZZ
@given(data=st.data())
def test_fuzz_config_bytes(data):
    """Random bytes, and the real config.json with bytes flipped, inserted or cut."""
    tmp, folder = _fresh()
    with tmp:
        good = (folder / "config.json").read_bytes()
        raw = data.draw(st.one_of(
            st.binary(max_size=300),
            st.tuples(st.integers(0, len(good)), st.integers(0, 40), st.binary(max_size=20)).map(
                lambda t: good[:t[0]] + t[2] + good[t[0] + t[1]:]),
        ))
        (folder / "config.json").write_bytes(raw)
        _outcome(folder)
        _outcome(folder, verify=False)


ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F99", ""]),
    "shape": st.lists(st.integers(-2, 2 ** 40), max_size=5),
    "data_offsets": st.lists(st.integers(-1, 2 ** 41), max_size=3),
})
NAMES = ["bottleneck.weight", "head.weight", "head.bias", "concept_mean", "concept_std", "x", "__metadata__"]


@FUZZ
@given(header=st.dictionaries(st.sampled_from(NAMES), ENTRY | JSON, max_size=6),
       n=st.none() | st.integers(0, 2 ** 64 - 1), body=st.binary(max_size=200))
def test_fuzz_safetensors_headers(header, n, body):
    """Any header (shapes, offsets, dtypes, length field) on any data, re-signed: a salfcbm error."""
    tmp, folder = _fresh()
    with tmp:
        _sign(folder, weights=_header_file(header, body, n))
        assert _outcome(folder) == "refused"


SHAPES = st.lists(st.integers(0, 9), max_size=4)


@FUZZ
@given(tensors=st.dictionaries(st.sampled_from(NAMES[:-1]), st.tuples(
    SHAPES, st.sampled_from([torch.float32, torch.float16, torch.int64]),
    st.floats(allow_nan=True, allow_infinity=True, width=16))))
# found by this fuzzer: a 0-d bottleneck.weight raised a bare IndexError before the shape check
@example(tensors={"bottleneck.weight": ([], torch.float32, 0.0), "head.weight": ([], torch.float32, 0.0)})
def test_fuzz_well_formed_safetensors_of_any_content(tensors):
    """Valid safetensors files holding any tensors (names, shapes, dtypes, values), re-signed."""
    tmp, folder = _fresh()
    with tmp:
        state = {k: torch.full(shape, v).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
                 for k, (shape, dtype, v) in tensors.items()}
        _sign(folder, state=state)
        _outcome(folder)


def test_the_cli_does_not_take_a_backbone_location_from_the_file(saved):
    from salfcbm import cli

    spec = {"source": "timm", "name": "local-dir:/somewhere", "weights": None, "kwargs": {}}
    _sign(saved, config=_cfg(saved, backbone=spec))
    with pytest.raises(BackboneSpecError, match="trust_backbone_source"):
        cli._spec_name(saved)  # `salfcbm explain --backbone-weights ...` names the backbone from config.json


def _depth(o) -> int:
    if isinstance(o, list):
        return 1 + max((_depth(x) for x in o), default=0)
    if isinstance(o, dict):
        return 1 + max((_depth(x) for x in o.values()), default=0)
    return 0


@settings(max_examples=50, deadline=None)
@given(value=st.recursive(st.text(alphabet='[]{}"\\ab', max_size=8) | st.integers(),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                              st.text(alphabet='[]{}"\\', max_size=4), inner, max_size=3), max_leaves=20),
)
def test_json_depth_counts_exactly_what_json_nests(value):
    """Brackets, quotes and backslashes inside strings never count."""
    assert persistence.json_depth(json.dumps(value).encode()) == _depth(value)


@pytest.mark.parametrize("pad", range(4))
def test_json_depth_across_its_blocks(pad):
    """A run of backslashes or a string that spans the 1 MiB blocks of the pass."""
    value = [[['"[[', "\\]"]], {"a": ["{"]}]
    for filler in ("\\" * ((1 << 19) - 2), "[" * ((1 << 20) - 3)):
        text = json.dumps(["x" * pad + filler, value]).encode()
        assert persistence.json_depth(text) == 1 + _depth(value) == 4
