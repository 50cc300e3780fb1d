"""The demo backbone is a timm model (``salfcbm_demo_convnet``): a demo model saves a timm spec and
loads with ``SALFCBM.from_pretrained`` alone, in a fresh process too; the app has no demo branch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.core.model import SALFCBM
from salfcbm.demo import SmallConvNet, SyntheticScenes
from salfcbm.errors import BackboneSpecError, InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(n=6, image_size=32, seed=0, split="test", num_classes=2)


def _demo_model(scenes, spec: bool = True) -> SALFCBM:
    torch.manual_seed(0)
    net = SmallConvNet(num_classes=2, width=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # weights no rebuild reproduces: they must travel with the model
    kw = dict(concepts=scenes.concepts, num_classes=2, class_names=scenes.classes, grid=(4, 4), input_size=[32, 32],
              input_mean=[0.0, 0.0, 0.0], input_std=[1.0, 1.0, 1.0], input_crop_pct=1.0)
    if spec:  # what run_demo builds
        return SALFCBM(net, backbone_spec=net.spec, **kw).eval()
    return salfcbm.wrap(net, backbone_weights=None, **kw).eval()  # a demo model of an earlier release: custom spec


def test_timm_builds_the_demo_backbone_by_name():
    import timm

    assert timm.is_model("salfcbm_demo_convnet")
    net = timm.create_model("salfcbm_demo_convnet", num_classes=3, stem_width=4)
    ref = SmallConvNet(num_classes=3, width=4)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert net.spec == {"source": "timm", "name": "salfcbm_demo_convnet", "weights": None,
                        "kwargs": {"num_classes": 3, "stem_width": 4}}
    with pytest.raises(BackboneSpecError, match="no published weights"):
        timm.create_model("salfcbm_demo_convnet", pretrained=True)
    with pytest.raises(InputError, match="stem_width"):
        timm.create_model("salfcbm_demo_convnet", depth=3)


def test_a_demo_model_saves_a_timm_spec_and_loads_by_itself(scenes, tmp_path):
    model = _demo_model(scenes)
    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["backbone"]
    assert saved["source"] == "timm" and saved["name"] == "salfcbm_demo_convnet"
    loaded = SALFCBM.from_pretrained(tmp_path / "model")  # no backbone= : rebuilt by timm, weights from the folder
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_a_fresh_process_loads_a_demo_model_without_importing_the_demo_first(scenes, tmp_path):
    model = _demo_model(scenes)
    model.save_pretrained(tmp_path / "model")
    x = torch.rand(1, 3, 32, 32)
    torch.save(model(x).logits, tmp_path / "logits.pt")
    code = ("import sys, torch; from salfcbm import SALFCBM; "
            "assert 'salfcbm.demo' not in sys.modules; "
            f"m = SALFCBM.from_pretrained({str(tmp_path / 'model')!r}); "
            f"x = torch.load({str(tmp_path / 'x.pt')!r}); "
            f"assert torch.equal(m(x).logits, torch.load({str(tmp_path / 'logits.pt')!r})); "
            "print(type(m.backbone).__module__)")
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "salfcbm.demo.backbone"


def test_a_demo_run_of_an_earlier_release_still_loads_or_names_the_fix(scenes, tmp_path):
    from salfcbm.demo.run import load_demo

    run = tmp_path / "demo"
    model = _demo_model(scenes, spec=False)
    model.save_pretrained(run / "model")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.backbone.state_dict().items()}, str(run / "backbone.safetensors"))
    old = {"n_train": 8, "n_val": 4, "n_test": 6, "image_size": 32, "num_classes": 2, "backbone_width": 4,
           "bottleneck_steps": 10, "bottleneck_lr": 0.005, "cutoff": 0.3, "grid": 4}  # its flat keys
    (run / "demo_config.json").write_text(json.dumps(old))
    loaded, data = load_demo(run)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(x).logits, model(x).logits) and len(data["test"]) == 6
    with pytest.raises(BackboneSpecError, match=r"SmallConvNet.*backbone=my_backbone"):
        SALFCBM.from_pretrained(run / "model")


def test_the_app_has_no_demo_branch():
    """The explorer loads a demo model as any other: nothing in salfcbm.app imports salfcbm.demo."""
    for path in (ROOT / "salfcbm" / "app").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.startswith("salfcbm.demo") for n in names), (path.name, names)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert "demo_config" not in node.value, path.name


def test_the_app_loads_a_run_folder_and_the_models_examples(scenes, tmp_path):
    from salfcbm.app import EXAMPLES_DIR, load_model
    from salfcbm.app.explorer import Explorer
    from salfcbm.demo.run import EXAMPLES_DIR as DEMO_EXAMPLES
    from salfcbm.demo.run import write_examples

    assert DEMO_EXAMPLES == EXAMPLES_DIR
    model = _demo_model(scenes)
    model.save_pretrained(tmp_path / "run" / "model")
    write_examples(scenes, tmp_path / "run" / "model" / EXAMPLES_DIR, n=5)
    x = torch.rand(1, 3, 32, 32)
    for source in (tmp_path / "run", tmp_path / "run" / "model"):
        loaded, images = load_model(str(source))
        assert torch.equal(loaded(x).logits, model(x).logits) and not loaded.training
        assert images == str(tmp_path / "run" / "model" / EXAMPLES_DIR)
    ex = Explorer(loaded, images)
    assert ex.index_names == [f"{i:03d}.png" for i in range(5)]
    pixels = ex.model_input(str(tmp_path / "run" / "model" / EXAMPLES_DIR / "003.png"))[0][0]
    assert float((pixels - scenes[3][0]).abs().max()) <= 0.5 / 255 + 1e-6  # the scene, in 8 bits
    model.save_pretrained(tmp_path / "plain")
    assert load_model(str(tmp_path / "plain"))[1] is None  # no examples/: nothing to search
