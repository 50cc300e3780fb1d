"""A recipe's bottleneck regime is one nested value, read by attribute, and trains as `BottleneckConfig`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from salfcbm.errors import InputError
from salfcbm.reproduce.recipes import RECIPES, RecipeBottleneck, get_recipe
from salfcbm.reproduce.run import bottleneck_config
from salfcbm.training import BottleneckConfig


def test_the_bottleneck_regime_is_nested_and_has_bottleneckconfigs_names():
    flat = [f.name for f in dataclasses.fields(get_recipe("table1-imagenet")) if f.name.startswith("bottleneck")]
    assert flat == ["bottleneck"]  # no flat bottleneck_lr / _batch / _steps next to it
    names = {f.name for f in dataclasses.fields(RecipeBottleneck)}
    assert names <= {f.name for f in dataclasses.fields(BottleneckConfig)}


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipe_trains_with_its_regime(name):
    r = get_recipe(name)
    cfg = bottleneck_config(r, 100_000)
    b = r.bottleneck
    assert (cfg.lr, cfg.batch_size, cfg.max_steps, cfg.patience, cfg.val_every, cfg.init) == (
        b.lr, b.batch_size, b.max_steps, b.patience, b.val_every, b.init)
    assert bottleneck_config(r, 10).batch_size == 10  # a step sees at most the training set
    assert r.settings()["bottleneck.batch_size"] == b.batch_size == (50000 if r.dataset == "cub" else 8192)


def test_a_bad_regime_is_refused():
    with pytest.raises(InputError, match="bottleneck.init"):
        RecipeBottleneck(init="xavier")
    with pytest.raises(InputError, match="must be a RecipeBottleneck"):
        dataclasses.replace(get_recipe("table1-cub"), bottleneck={"lr": 1e-3})


def test_recipes_load_without_torch():
    code = "import sys\nfrom salfcbm.reproduce.recipes import RECIPES\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
