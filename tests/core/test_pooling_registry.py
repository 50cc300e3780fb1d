"""Poolings are an open registry (issue 20.7): one registered from user code works in wrap(), fit,
save/load and the explanations; the registry module imports no torch (the CLI's --help reads it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import salfcbm
from salfcbm.core import pooling as pooling_mod
from salfcbm.core.pooling import POOLINGS, get_pooling, is_linear, register_pooling
from salfcbm.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_pooling():
    """A pooling defined outside the package (top-2 mean), removed again after the test."""

    @register_pooling("test_top2")
    def top2(maps, config):
        return maps.flatten(2).topk(2, dim=-1).values.mean(-1)

    yield "test_top2", top2
    POOLINGS.pop("test_top2", None)


def _model(pooling, grid=4):
    torch.manual_seed(0)
    return salfcbm.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.ReLU()),
                        concepts=[f"c{i}" for i in range(5)], num_classes=3, grid=grid, input_size=(16, 16),
                        layer="1", pooling=pooling).eval()


def test_the_builtins_are_registered_in_order():
    assert list(POOLINGS)[:3] == ["mean", "softmax", "max"]
    assert is_linear("mean") and not is_linear("softmax") and not is_linear("max")
    from salfcbm.core.config import POOLINGS as config_poolings
    from salfcbm.core.model import POOLINGS as model_poolings

    assert config_poolings is POOLINGS and model_poolings is POOLINGS  # one registry, importable where it was


def test_a_user_pooling_works_in_wrap_forward_and_explanations(user_pooling):
    name, fn = user_pooling
    m = _model(name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = m(x)
        maps = m.concept_maps_from_features(m.forward_features(x))
    torch.testing.assert_close(out.concept_activations, fn(maps, m.config), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.pool(maps), fn(maps, m.config))
    batch = m.explain(x, top_k=2)
    assert batch[0].prediction == int(out.logits[0].argmax())
    res = m.intervene(x[0], "c1", beta=2.0)  # re-pools edited maps with the user's pooling
    edited = maps[:1].clone()
    edited[:, 1] += 2.0
    want = m.head(m.standardize(fn(edited, m.config)))
    torch.testing.assert_close(res.logits_after.reshape(-1), want.reshape(-1), atol=1e-5, rtol=1e-5)


def test_a_user_pooling_survives_save_and_load(user_pooling, tmp_path):
    name, _ = user_pooling
    m = _model(name)
    m.save_pretrained(tmp_path / "m")
    back = salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=m.backbone)
    assert back.config.pooling == name
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, m(x).logits)
    POOLINGS.pop(name)  # a process that has not registered it: a ConfigError that names the fix
    with pytest.raises(ConfigError, match="register_pooling"):
        salfcbm.SALFCBM.from_pretrained(tmp_path / "m", backbone=m.backbone)


def test_a_linear_user_pooling_takes_the_pool_then_project_path():
    @register_pooling("test_corner_mean", linear=True)
    def corner_mean(maps, config):  # a fixed convex average of the cells: the top-left 2x2
        return maps[..., :2, :2].flatten(2).mean(-1)

    try:
        m = _model("test_corner_mean")
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            out = m(x)
            maps = m.concept_maps_from_features(m.forward_features(x))
        torch.testing.assert_close(out.concept_activations, corner_mean(maps, m.config), atol=1e-5, rtol=1e-5)
    finally:
        POOLINGS.pop("test_corner_mean", None)


def test_a_user_pooling_trains_with_fit(user_pooling):
    from salfcbm.demo.scenes import GroundTruthScorer, SmallConvNet, SyntheticScenes
    from salfcbm.supervision.prompts import PromptGrid
    from salfcbm.training.pipeline import BottleneckConfig, fit

    name, fn = user_pooling
    kw = dict(num_classes=2, image_size=32)
    train, val = SyntheticScenes(n=32, split="train", **kw), SyntheticScenes(n=16, split="val", **kw)
    torch.manual_seed(0)
    m = salfcbm.wrap(SmallConvNet(num_classes=2, width=4).eval(), concepts=train.concepts, num_classes=2, grid=4,
                     input_size=(32, 32), backbone_weights=None, pooling=name)
    res = fit(m, train, val, scorer=GroundTruthScorer(train), prompts=PromptGrid(grid=(4, 4), radius=4),
              bottleneck=BottleneckConfig(max_steps=4, val_every=2, batch_size=16, cutoff=-1.0), progress=False)
    model = res.model
    assert model.config.pooling == name
    x = model.preprocess(torch.stack([val[i][0] for i in range(4)]))
    with torch.no_grad():
        out = model(x)
        maps = model.concept_maps_from_features(model.forward_features(x))
    torch.testing.assert_close(out.concept_activations, fn(maps, model.config), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(model.concept_std).all() and (model.concept_std > 0).all()


@pytest.mark.parametrize("name,match", [("", "non-empty"), (" mean", "spaces"), (3, "non-empty"),
                                        ("mean", "already registered")])
def test_bad_registrations_are_refused(name, match):
    with pytest.raises(InputError, match=match):
        register_pooling(name)
    assert list(POOLINGS)[:3] == ["mean", "softmax", "max"]


def test_registering_a_non_function_is_refused():
    with pytest.raises(InputError, match="decorates a function"):
        register_pooling("test_not_callable")(42)
    assert "test_not_callable" not in POOLINGS


def test_replace_true_replaces_and_unknown_names_list_the_registered():
    register_pooling("test_twice")(lambda maps, config: maps.flatten(2).mean(-1))
    try:
        register_pooling("test_twice", replace=True)(lambda maps, config: maps.flatten(2).amax(-1))
        assert POOLINGS["test_twice"](torch.tensor([[[[1.0, 3.0]]]]), None).item() == 3.0
    finally:
        POOLINGS.pop("test_twice")
    with pytest.raises(InputError, match="'mean', 'softmax'|register_pooling"):
        get_pooling("no-such-pooling")
    with pytest.raises(InputError, match="no-such-pooling"):
        _model("no-such-pooling")


def test_the_registry_module_imports_no_torch():
    code = ("import sys; import salfcbm.core.pooling as p; "
            "print(sorted(p.POOLINGS), 'torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['max', 'mean', 'softmax'] False"
    assert pooling_mod.__name__ == "salfcbm.core.pooling"
