"""The ``salfcbm`` parser: built without torch, its choices and defaults the library's, the entry point intact."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["demo", "similarities", "train", "explain", "push", "app", "reproduce"]
HEAVY = ("torch", "timm", "torchvision", "open_clip", "numpy", "salfcbm.training", "salfcbm.core.model")


def _heavy_after(code: str) -> list[str]:
    """The heavy modules imported by running ``code`` in a fresh interpreter (no time is measured)."""
    probe = f"import sys\n{code}\nprint(\"heavy:\" + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    last = out.stdout.strip().splitlines()[-1].removeprefix("heavy:")
    return [m for m in last.split(",") if m]


def test_building_the_parser_imports_no_torch():
    assert _heavy_after("from salfcbm.cli import build_parser\nbuild_parser()") == []


@pytest.mark.parametrize("argv", [[], *[[c] for c in COMMANDS]], ids=["root", *COMMANDS])
def test_every_help_imports_no_torch(argv):
    code = (f"from salfcbm.cli import main\ntry:\n    main({[*argv, '--help']!r})\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code")
    assert _heavy_after(code) == []


def test_console_script_and_module_entry_points():
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["salfcbm"]
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))
    out = subprocess.run([sys.executable, "-m", "salfcbm.cli", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("salfcbm ")


def _action(command: str, dest: str):
    from salfcbm.cli import build_parser
    from salfcbm.cli.parser import subparsers

    return next(a for a in subparsers(build_parser())[command]._actions if a.dest == dest)


def test_train_defaults_and_choices_are_the_librarys():
    from salfcbm.training import PAPER_LAMBDAS, BottleneckConfig
    from salfcbm.training.pipeline import CUTOFF_STATISTICS

    b = BottleneckConfig()
    for dest in ("lr", "cutoff", "cutoff_statistic", "cutoff_guard"):
        assert _action("train", dest).default == getattr(b, dest), dest
    assert list(_action("train", "cutoff_statistic").choices) == list(CUTOFF_STATISTICS)
    assert list(_action("train", "preset").choices) == list(PAPER_LAMBDAS)
    for guard in _action("train", "cutoff_guard").choices:  # every choice is one the library takes
        BottleneckConfig(cutoff_guard=guard)


def test_pooling_and_precision_choices_are_the_librarys():
    from salfcbm._utils.tensors import PRECISIONS
    from salfcbm.core.config import POOLINGS

    pooling = _action("train", "pooling")  # no fixed choices: checked against the live registry when train runs
    assert pooling.choices is None and all(name in pooling.help for name in POOLINGS)
    for command in ("similarities", "train", "reproduce"):
        assert list(_action(command, "precision").choices) == list(PRECISIONS), command


def test_reproduce_choices_are_the_recipes():
    from salfcbm.reproduce.recipes import RECIPES

    assert set(_action("reproduce", "dataset").choices) == {r.dataset for r in RECIPES.values()}


def test_modules_are_small():
    for f in (ROOT / "salfcbm" / "cli").glob("*.py"):
        assert len(f.read_text().splitlines()) < 600, f
