"""`DemoConfig` nests the bottleneck's settings in a `BottleneckConfig`; the flat keywords of earlier
releases (``bottleneck_steps``, ``bottleneck_lr``, ``cutoff``) still work, with a warning naming the new
spelling, and give the same settings; ``salfcbm demo`` runs with the same bottleneck as before."""

from __future__ import annotations

import json
import warnings

import pytest

from salfcbm.demo import DemoConfig, demo_bottleneck
from salfcbm.errors import InputError
from salfcbm.training import BottleneckConfig


def _before(cfg_seed: int = 0, steps: int = 1500, lr: float = 5e-3, cutoff: float = 0.3) -> BottleneckConfig:
    """What run_demo passed to fit before the nesting, from the flat fields."""
    return BottleneckConfig(max_steps=steps, batch_size=256, val_every=50, patience=8, lr=lr, cutoff=cutoff,
                            seed=cfg_seed)


def test_the_default_bottleneck_is_the_demos_of_before():
    assert DemoConfig().bottleneck == _before()
    assert DemoConfig(seed=7).bottleneck == _before(7)  # the demo's seed seeds the bottleneck, as before


def test_flat_keywords_set_the_nested_config_and_name_the_new_spelling():
    with pytest.warns(DeprecationWarning, match=r"DemoConfig\(bottleneck=demo_bottleneck\(max_steps=300, lr=0.01\)\)"):
        cfg = DemoConfig(seed=3, bottleneck_steps=300, bottleneck_lr=0.01)
    assert cfg.bottleneck == _before(3, steps=300, lr=0.01)
    assert (cfg.bottleneck_steps, cfg.bottleneck_lr, cfg.cutoff) == (300, 0.01, 0.3)  # read back, as before
    with pytest.warns(DeprecationWarning, match="cutoff=0.0"):
        assert DemoConfig(cutoff=0.0).bottleneck == _before(cutoff=0.0)
    nested = DemoConfig(seed=3, bottleneck=demo_bottleneck(3, max_steps=300, lr=0.01))
    assert nested == cfg


def test_bad_settings_are_named():
    with pytest.raises(InputError, match="both bottleneck= and the flat keywords"):
        DemoConfig(bottleneck=demo_bottleneck(), bottleneck_steps=5)
    with pytest.raises(InputError, match="bottleneck_lr must be a number in"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DemoConfig(bottleneck_lr=3.0)
    with pytest.raises(InputError, match="must be a salfcbm.training.BottleneckConfig"):
        DemoConfig(bottleneck=1500)
    with pytest.raises(InputError, match="max_stepz"):
        DemoConfig(bottleneck={"max_stepz": 3})
    with pytest.raises(InputError, match="n_train must be a positive int"):
        DemoConfig(n_train=0)


def test_settings_round_trip_and_old_run_files_load(tmp_path):
    cfg = DemoConfig(n_train=50, seed=2, bottleneck=demo_bottleneck(2, max_steps=40))
    text = json.dumps(cfg.to_dict())
    assert json.loads(text)["bottleneck"]["max_steps"] == 40
    assert DemoConfig.from_dict(json.loads(text)) == cfg
    old = {"n_train": 50, "seed": 2, "bottleneck_steps": 40, "bottleneck_lr": 0.005, "cutoff": 0.3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an old demo_config.json loads quietly
        assert DemoConfig.from_dict(old) == cfg


def test_run_demo_and_the_cli_train_the_same_bottleneck_as_before(monkeypatch, tmp_path):
    import salfcbm.demo.run as run
    from salfcbm.cli import main

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(*args, bottleneck=None, **kwargs):
        seen["bottleneck"] = bottleneck
        raise Stop

    monkeypatch.setattr(run, "fit", fake_fit)
    monkeypatch.setattr(run, "_backbone", lambda cfg, data, out, progress: run.SmallConvNet(cfg.num_classes, 2))
    monkeypatch.setattr(run, "compute_similarity_store", lambda *a, **k: None)
    with pytest.raises(Stop):
        run.run_demo(tmp_path / "a", DemoConfig(n_train=4, n_val=2, n_test=2, seed=5), progress=False)
    assert seen["bottleneck"] == _before(5)
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "b"), "--n-train", "4", "--n-val", "2", "--n-test", "2",
              "--bottleneck-steps", "33", "--seed", "4", "--quiet"])
    assert seen["bottleneck"] == _before(4, steps=33)
    saved = json.loads((tmp_path / "b" / "demo_config.json").read_text())
    assert saved["bottleneck"]["max_steps"] == 33 and "bottleneck_steps" not in saved
