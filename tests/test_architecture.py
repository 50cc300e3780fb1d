"""The package's shape is part of its contract: import layers, a light `import salfcbm`, a curated API."""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import salfcbm

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "salfcbm"


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_import_salfcbm_is_light():
    out = _run(
        "import sys, salfcbm\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'captum', 'pytorch_grad_cam', 'open_clip', 'salfcbm.demo') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    assert out.strip() == ""


def test_using_the_model_does_not_load_pictures_or_the_demo_world():
    out = _run(
        "import sys, torch, salfcbm\n"
        "m = salfcbm.wrap(torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, stride=2), torch.nn.ReLU()), concepts=['a', 'b'],"
        " num_classes=2, input_size=(16, 16), layer='1')\n"
        "m(torch.rand(1, 3, 16, 16))\n"
        "print(','.join(x for x in ('matplotlib', 'captum', 'salfcbm.demo') if x in sys.modules))"
    )
    assert out.strip() == ""


def test_public_api_is_curated_and_resolves():
    for name in salfcbm.__all__:
        assert getattr(salfcbm, name) is not None, name
    # the README's and docs' entry points are there; solver internals and the demo world are not
    for name in ("wrap", "SALFCBM", "fit", "CLIPScorer", "PromptGrid", "RegionReport", "DecisionRule", "SalfCBMError"):
        assert name in salfcbm.__all__
    for name in ("HeadFit", "PathPoint", "fit_sparse_head", "SyntheticScenes", "GroundTruthScorer"):
        assert name not in salfcbm.__all__
    with pytest.warns(FutureWarning, match="salfcbm.demo.SyntheticScenes"):
        assert salfcbm.SyntheticScenes is salfcbm.demo.SyntheticScenes
    with pytest.raises(AttributeError):
        salfcbm.no_such_name  # noqa: B018


def test_every_error_lives_in_errors_py_and_refines_a_builtin():
    from salfcbm import errors

    defined_elsewhere = []
    for path in PKG.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                defined_elsewhere.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert defined_elsewhere == []
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Warning):  # warnings live there too, under SalfCBMWarning
            assert issubclass(obj, errors.SalfCBMWarning), name
            continue
        if isinstance(obj, type) and obj is not errors.SalfCBMError and issubclass(obj, Exception):
            assert issubclass(obj, errors.SalfCBMError), name
            builtins = [b for b in obj.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
            assert builtins, f"{name} refines no builtin exception"


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_layers_contract():
    exe = Path(sys.executable).parent / "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([str(exe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_no_function_is_over_80_lines_of_code():
    """Long orchestrators are split into named steps (docstrings do not count)."""
    too_long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            first = body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) and isinstance(first.value.value, str)
            start = (body[1].lineno if len(body) > 1 else first.end_lineno) if has_doc else first.lineno
            if node.end_lineno - start + 1 > 80:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - start + 1} lines)")
    assert too_long == []
