"""A backbone its spec cannot rebuild (random init, your own module) survives a save: backbone.safetensors.

Loads that matter happen in a NEW process (a subprocess), where no torch seed and no cached module can
make a wrong rebuild look right.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import salfcbm
from salfcbm.errors import (
    BackboneMismatchError,
    BackboneSpecError,
    ChecksumError,
    ConfigMismatchError,
    InputError,
    WeightsFormatError,
)

ROOT = Path(salfcbm.__file__).resolve().parents[1]
CONCEPTS = ["a wing", "a beak", "water"]
X = torch.Generator().manual_seed(7)
INPUT = torch.rand(2, 3, 32, 32, generator=X)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _trained_like(model: salfcbm.SALFCBM) -> salfcbm.SALFCBM:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.bottleneck.weight.copy_(torch.randn(model.bottleneck.weight.shape, generator=g))
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g))
        model.concept_mean.copy_(torch.randn(model.num_concepts, generator=g))
        model.concept_std.copy_(torch.rand(model.num_concepts, generator=g) + 0.5)
    return model.eval()


def _random_init_model(**kw) -> salfcbm.SALFCBM:
    net = timm.create_model("test_resnet", pretrained=False)  # a random init: no spec can rebuild these weights
    return _trained_like(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, grid=2, input_size=(32, 32), **kw))


def _logits_in_new_process(folder: Path, tmp_path: Path) -> torch.Tensor:
    torch.save(INPUT, tmp_path / "x.pt")
    code = ("import sys, torch, salfcbm; m = salfcbm.SALFCBM.from_pretrained(sys.argv[1]).eval(); "
            "torch.save(m(torch.load(sys.argv[2])).logits, sys.argv[3])")
    r = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(tmp_path / "y.pt")


# ----------------------------------------------------------------------------- the Python API
def test_random_init_backbone_round_trips_in_a_new_process(tmp_path):
    model = _random_init_model(backbone_weights=None)
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    from salfcbm._utils.io import sha256_file

    assert cfg["backbone_weights_sha256"] == sha256_file(tmp_path / "m" / "backbone.safetensors")
    with torch.no_grad():
        ref = model(INPUT).logits
    assert torch.equal(_logits_in_new_process(tmp_path / "m", tmp_path), ref)


def test_torchvision_random_init_round_trips(tmp_path):
    import torchvision

    net = torchvision.models.squeezenet1_1(weights=None)
    model = _trained_like(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, grid=2, input_size=(64, 64),
                                       backbone_weights=None))
    assert model.backbone_spec["source"] == "torchvision"
    model.save_pretrained(tmp_path)
    torch.manual_seed(99)  # another seed: a rebuilt random init would differ
    same = salfcbm.SALFCBM.from_pretrained(tmp_path).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, same(x).logits)


def test_named_weights_are_not_saved_unless_asked(tmp_path):
    """A spec with named pretrained weights rebuilds them: 'auto' writes no file; True writes one, loaded offline."""
    model = _random_init_model(backbone_weights="a1_in1k")  # the spec names (undownloadable here) weights
    model.save_pretrained(tmp_path / "auto")
    assert not (tmp_path / "auto" / "backbone.safetensors").exists()
    assert 'from_pretrained("<this repo or folder>")' in (tmp_path / "auto" / "README.md").read_text()
    model.save_pretrained(tmp_path / "forced", save_backbone=True)
    same = salfcbm.SALFCBM.from_pretrained(tmp_path / "forced").eval()  # no download: the file is the weights
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, same(INPUT).logits)


def test_opt_out_writes_no_backbone_file_and_the_card_says_pass_backbone(tmp_path):
    model = _random_init_model(backbone_weights=None)
    model.save_pretrained(tmp_path, save_backbone=True)
    model.save_pretrained(tmp_path, save_backbone=False)  # a stale backbone file of an earlier save goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert "backbone_weights_sha256" not in json.loads((tmp_path / "config.json").read_text())
    card = (tmp_path / "README.md").read_text()
    assert 'from_pretrained("<this repo or folder>", backbone=backbone)' in card and "were not saved" in card
    with pytest.raises(BackboneMismatchError, match="were not saved with the model.*backbone="):
        salfcbm.SALFCBM.from_pretrained(tmp_path)
    same = salfcbm.SALFCBM.from_pretrained(tmp_path, backbone=model.backbone).eval()
    with torch.no_grad():
        assert torch.equal(model(INPUT).logits, same(INPUT).logits)


def _card_snippet(folder: Path) -> str:
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    return code.replace("<this repo or folder>", str(folder)).replace("<folder>", str(folder))


def test_the_card_snippet_works_for_a_saved_random_init(tmp_path):
    model = _random_init_model(backbone_weights=None)
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    mb = sum(v.numel() * v.element_size() for v in model.backbone.state_dict().values()) / 1e6
    assert f"`backbone.safetensors` ({mb:.1f} MB)" in card  # the size is stated
    ns = {"images": INPUT}
    exec(_card_snippet(tmp_path), ns)
    with torch.no_grad():
        assert torch.equal(ns["model"].eval()(INPUT).logits, model(INPUT).logits)


class OwnNet(torch.nn.Module):
    """A user's own backbone class: no spec can rebuild it."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.block = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())

    def forward(self, x):
        return self.block(self.stem(x))


def test_own_module_saves_its_weights_and_the_error_and_card_say_pass_backbone(tmp_path):
    net = OwnNet()
    model = _trained_like(salfcbm.wrap(net, concepts=CONCEPTS, num_classes=2, layer="block", grid=2,
                                       input_size=(32, 32)))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "backbone.safetensors").is_file()
    with pytest.raises(BackboneSpecError, match=r"custom backbone \(OwnNet\).*backbone\.safetensors.*backbone="):
        salfcbm.SALFCBM.from_pretrained(tmp_path)
    snippet = _card_snippet(tmp_path).replace("OwnNet(...)", "OwnNet()")
    assert "backbone=net" in snippet
    ns = {"OwnNet": OwnNet, "images": INPUT}
    torch.manual_seed(5)  # a fresh OwnNet() has other weights; the snippet loads the saved ones
    exec(snippet, ns)
    with torch.no_grad():
        assert torch.equal(ns["model"].eval()(INPUT).logits, model(INPUT).logits)


def test_a_fine_tuned_backbone_is_saved_under_auto(tmp_path):
    model = _random_init_model(backbone_weights="a1_in1k", freeze_backbone=False)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "backbone.safetensors").is_file()


# ----------------------------------------------------------------------------- bad files and arguments
@pytest.fixture
def saved(tmp_path) -> Path:
    _random_init_model(backbone_weights=None).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_a_corrupt_missing_or_foreign_backbone_file_is_refused(saved, tmp_path):
    f = saved / "backbone.safetensors"
    good = f.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="backbone.safetensors"):
        salfcbm.SALFCBM.from_pretrained(saved)
    f.unlink()
    with pytest.raises(WeightsFormatError, match="lacks that file.*backbone="):
        salfcbm.SALFCBM.from_pretrained(saved)
    save_file({"x": torch.zeros(2)}, str(f))  # another architecture's weights, checksums off
    with pytest.raises(ConfigMismatchError, match="does not fit the backbone timm:test_resnet"):
        salfcbm.SALFCBM.from_pretrained(saved, verify=False)
    f.write_bytes(good)
    assert salfcbm.SALFCBM.from_pretrained(saved).num_concepts == 3


def test_the_adapter_pins_the_backbone_file(saved):
    """config.json's backbone checksum is part of the config the adapter's metadata records: editing it is refused."""
    cfg = json.loads((saved / "config.json").read_text())
    cfg["backbone_weights_sha256"] = "0" * 64
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ChecksumError):
        salfcbm.SALFCBM.from_pretrained(saved)


def test_every_flipped_byte_of_the_backbone_file_is_refused_or_harmless(saved):
    import random

    f, rng = saved / "backbone.safetensors", random.Random(0)
    good = f.read_bytes()
    ref = salfcbm.SALFCBM.from_pretrained(saved).eval()
    with torch.no_grad():
        ref_logits = ref(INPUT).logits
    refused = 0
    for pos in sorted(rng.sample(range(len(good)), 25)):
        data = bytearray(good)
        data[pos] ^= rng.randrange(1, 256)
        f.write_bytes(bytes(data))
        try:
            got = salfcbm.SALFCBM.from_pretrained(saved).eval()
        except salfcbm.SalfCBMError:
            refused += 1
        else:
            with torch.no_grad():
                assert torch.equal(got(INPUT).logits, ref_logits), pos
    f.write_bytes(good)
    assert refused == 25  # the SHA-256 in config.json covers every byte


def test_saving_twice_gives_the_same_backbone_bytes(tmp_path):
    for name in ("a", "b"):
        torch.manual_seed(0)  # the same random init twice
        _random_init_model(backbone_weights=None).save_pretrained(tmp_path / name)
    for f in ("backbone.safetensors", "config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


@pytest.mark.parametrize("bad", ["yes", 1, None, "Auto"])
def test_bad_save_backbone_is_an_input_error(bad, tmp_path):
    with pytest.raises(InputError, match="save_backbone"):
        _random_init_model(backbone_weights=None).save_pretrained(tmp_path, save_backbone=bad)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_loads_the_backbone_file_from_a_hub_repo(saved, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo = tmp_path / "hub" / "user" / "own"
    shutil.copytree(saved, repo)

    fetched = []

    def download(repo_id, filename, **kw):  # each file to its own cache folder: found only if downloaded
        if not (tmp_path / "hub" / repo_id / filename).is_file():
            raise EntryNotFoundError(filename)
        fetched.append(filename)
        (tmp_path / "cache" / filename).mkdir(parents=True, exist_ok=True)
        return shutil.copy(tmp_path / "hub" / repo_id / filename, tmp_path / "cache" / filename / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    ref = salfcbm.SALFCBM.from_pretrained(saved).eval()
    same = salfcbm.SALFCBM.from_pretrained("user/own").eval()
    assert "backbone.safetensors" in fetched
    with torch.no_grad():
        assert torch.equal(ref(INPUT).logits, same(INPUT).logits)


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, Path]:
    """`salfcbm train --backbone-weights none` on tiny folders (the settings of tests/test_cli.py)."""
    import open_clip

    from salfcbm.cli import main

    open_clip.factory._MODEL_CONFIGS.setdefault("salf-bb-tiny", {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    })
    root = tmp_path_factory.mktemp("bb-cli")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    (root / "concepts.txt").write_text("fur\nwhiskers\ngrass\nsky\n")
    run = root / "run"
    argv = ["train", "--backbone", "timm:test_resnet", "--backbone-weights", "none", "--train", root / "train",
            "--val", root / "val", "--concepts", root / "concepts.txt", "--run-dir", run, "--scorer", "salf-bb-tiny",
            "--pretrained", "none", "--image-size", "32", "--grid", "2", "--radius", "4", "--steps", "4", "--lr",
            "0.01", "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--threads", "1", "--seed", "3",
            "--cutoff", "0", "--path-points", "3", "--no-filter", "--quiet"]
    assert main([str(a) for a in argv]) == 0
    return run, root / "train" / "cat" / "0.png"


def _explain(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "salfcbm.cli", "explain", *map(str, argv), "--quiet"],
                          capture_output=True, text=True, env=_env(), timeout=300)


def _explain_here(capsys, *argv) -> tuple[int, str]:
    """`salfcbm explain` in this process (the error paths; the success path runs in a new process above)."""
    from salfcbm.cli import main

    rc = main(["explain", *map(str, argv), "--quiet"])
    return rc, capsys.readouterr().err


def _one_line_error(r: tuple[int, str]) -> str:
    rc, err = r
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("salfcbm: error: "), err[-2000:]
    return lines[0]


def test_cli_train_random_init_then_explain_in_a_new_process(cli_run, tmp_path):
    run, img = cli_run
    assert (run / "model" / "backbone.safetensors").is_file()  # fit(run_dir=...) saved the backbone too
    r = _explain("--model", run / "model", img, "--out", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(img) in r.stdout and (tmp_path / "r.html").is_file()


def test_cli_mismatch_and_missing_backbone_name_cli_flags(cli_run, tmp_path, capsys):
    run, img = cli_run
    line = _one_line_error(_explain_here(capsys, "--model", run / "model", img, "--backbone-weights", "none",
                                         "--out", tmp_path / "r.html"))  # a rebuilt random init: other weights than the trained ones
    assert "--backbone-weights FILE" in line and "--no-verify-backbone" in line and "fingerprint" in line
    assert "from_pretrained" not in line and "verify_backbone=" not in line
    assert "drop --backbone/--backbone-weights" in line  # the folder has the right weights already
    moved = tmp_path / "moved"
    shutil.copytree(run / "model", moved)
    (moved / "backbone.safetensors").unlink()
    line = _one_line_error(_explain_here(capsys, "--model", moved, img, "--out", tmp_path / "r.html"))
    assert "backbone.safetensors" in line and "--backbone-weights FILE" in line and "backbone=" not in line


def test_cli_backbone_weights_file_fixes_an_adapter_only_save(cli_run, tmp_path, capsys):
    """Saved without its backbone: the error names the flags, and following them works."""
    run, img = cli_run
    model = salfcbm.SALFCBM.from_pretrained(run / "model")
    model.save_pretrained(tmp_path / "adapter", save_backbone=False)
    line = _one_line_error(_explain_here(capsys, "--model", tmp_path / "adapter", img, "--out", tmp_path / "r.html"))
    assert "--backbone-weights FILE" in line and "not saved" in line and "from_pretrained" not in line
    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(tmp_path / "bb.safetensors"))
    rc, err = _explain_here(capsys, "--model", tmp_path / "adapter", img, "--backbone-weights",
                            tmp_path / "bb.safetensors", "--out", tmp_path / "r.html")
    assert rc == 0, err[-2000:]


def test_cli_push_refuses_a_corrupt_backbone_file(saved, capsys):
    """`salfcbm push` uploads backbone.safetensors with the adapter: a corrupt one is refused before any upload."""
    from salfcbm.cli import main

    f = saved / "backbone.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    rc = main(["push", "--model", str(saved), "--repo-id", "u/m"])
    line = _one_line_error((rc, capsys.readouterr().err))
    assert "backbone.safetensors" in line and "SHA-256" in line
