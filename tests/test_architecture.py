"""The package's shape is part of its contract: import layers, a light `import salfcbm`, a curated API."""

import ast
import os
import re
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


# -- names that tell the truth (issue 20.8) ------------------------------------------------------------------
def _top_level_names(path: Path) -> set[str]:
    """Names a module binds itself at top level (def, class, assignment), not the ones it imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _module_file(module: str) -> Path:
    parts = module.split(".")
    path = ROOT.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_every_lazy_name_points_at_the_module_that_defines_it():
    """`salfcbm._LAZY` says where each public name is defined: that module binds it itself, not by re-export."""
    wrong = []
    for name, module in salfcbm._LAZY.items():
        path = _module_file(module)
        if not path.is_file() or name not in _top_level_names(path):
            wrong.append(f"{name} -> {module}")
    assert wrong == []


def test_the_type_checking_imports_agree_with_lazy():
    """What IDEs see (the TYPE_CHECKING block of salfcbm/__init__.py) is what `import salfcbm` resolves."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    seen = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom):
                    seen.update({a.name: imp.module for a in imp.names})
    assert seen == salfcbm._LAZY


def test_package_docstrings_list_only_modules_that_exist():
    """A package's docstring bullet ``* `name`: ...`` names one of its modules or subpackages."""
    missing = []
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        for name in re.findall(r"^\* `([a-z_][a-z0-9_]*)`:", doc, flags=re.MULTILINE):
            if not ((init.parent / f"{name}.py").is_file() or (init.parent / name / "__init__.py").is_file()):
                missing.append(f"{init.relative_to(ROOT)}: {name}")
    assert missing == []


def test_the_generic_store_lives_below_supervision_and_keeps_its_public_names():
    """The sharded store (training uses it too) is in `salfcbm._utils`; supervision keeps the prompted
    embeddings, and every old import path still gives the same objects."""
    import salfcbm.supervision as sup
    import salfcbm.supervision.store as store
    from salfcbm._utils import shard_compute, shards

    assert salfcbm.ShardedStore is sup.ShardedStore is store.ShardedStore is shards.ShardedStore
    assert salfcbm.compute_store is sup.compute_store is store.compute_store is shard_compute.compute_store
    assert salfcbm.SimilarityStore is sup.SimilarityStore is salfcbm.PromptedEmbeddingStore
    assert store.PromptedEmbeddingStore.__name__ == "PromptedEmbeddingStore"
    for module in ("shards", "shard_compute", "provenance"):
        imported = _imported_modules(PKG / "_utils" / f"{module}.py")
        assert not [m for m in imported if m.startswith(("salfcbm.supervision", "salfcbm.training"))], module


# -- one home per mechanism (issue 20.5) ---------------------------------------------------------------------
#: Private names imported across modules today; each is to be made public in its module (or the code moved).
#: Private names imported across modules (none); a new entry fails the test below.
KNOWN_PRIVATE_IMPORTS: set[str] = set()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from X import ...`` in ``path`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
    return ".".join([*package, *([node.module] if node.module else [])])


def private_imports(path: Path, code: str | None = None) -> list[str]:
    """``'FILE: module.name'`` for every private name that ``path`` (or ``code`` placed there) imports from
    another module.

    The rule (PEP 8: a leading underscore makes a name private to its module): no module imports another
    module's ``_name``, at top level or inside a function. Private *modules* (``salfcbm._utils``, a
    package's ``_helpers``) are modules, not names: importing them, or public names from them, is fine.
    ruff's ``PLC2701`` states the same rule but skips first-party modules, so it cannot check this package.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text() if code is None else code)):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = _resolve(path, node)
        if not source.startswith("salfcbm"):
            continue
        for alias in node.names:
            if _is_private(alias.name) and not _module_file(f"{source}.{alias.name}").is_file():
                found.append(f"{path.relative_to(ROOT)}: {source}.{alias.name}")
    return found


def test_no_private_name_is_imported_across_modules():
    found = {hit for path in sorted(PKG.rglob("*.py")) for hit in private_imports(path)}
    assert sorted(found - KNOWN_PRIVATE_IMPORTS) == [], "make the name public in its module (one home per mechanism)"
    assert sorted(KNOWN_PRIVATE_IMPORTS - found) == [], "fixed: remove it from KNOWN_PRIVATE_IMPORTS"


def test_the_private_import_rule_catches_what_it_should():
    """The checker on a sample: absolute, relative and deferred private imports count; modules do not."""
    code = ("from salfcbm.core.tap import _first_tensor, default_layer\n"
            "from . import _nothing_here\n"
            "from salfcbm._utils.io import sha256_file\n"
            "from salfcbm import _utils\n"
            "from torch.utils import _pytree\n"
            "def f():\n    from .metrics import _logits\n")
    hits = [h.split(": ", 1)[1] for h in private_imports(PKG / "evaluation" / "sample.py", code)]
    assert hits == ["salfcbm.core.tap._first_tensor", "salfcbm.evaluation._nothing_here",
                    "salfcbm.evaluation.metrics._logits"]


#: Each mechanism, its one home and the copies allowed outside it (none); a new copy fails the test.
MECHANISMS = {
    # mechanism: (its home, a regular expression of a copy, {file: copies allowed today})
    "rank / world size / barrier": ("salfcbm/_utils/distributed.py",
                                    r"torch\.distributed\.(get_rank|get_world_size|barrier)\(",
                                    {}),
    "precision table": ("salfcbm/_utils/tensors.py", r"[\"']bf16[\"']\s*:\s*torch\.bfloat16",
                        {}),
    "file SHA-256": ("salfcbm/_utils/io.py", r"for block in iter\(lambda: f\.read", {}),
    "dataset file digest": ("salfcbm/_utils/provenance.py", r"os\.path\.relpath\(path, (self\.)?root\)", {}),
    "top-1 accuracy": ("salfcbm/_utils/tensors.py", r"argmax\((dim=)?1\) == [^\n]*?\)\.float\(\)\.mean\(\)",
                       {}),
    "logits check": ("salfcbm/_utils/tensors.py", r"tensor of logits|num_classes\) logits",
                     {}),
    "dataloader image collation": ("salfcbm/_utils/shard_compute.py", r"it\[0\] if isinstance\(it, \(tuple, list\)\)",
                                   {}),
}


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
def test_each_mechanism_has_one_home(mechanism):
    home, pattern, allowed = MECHANISMS[mechanism]
    assert re.search(pattern, (ROOT / home).read_text()), f"{home} no longer holds the {mechanism}"
    copies = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        n = len(re.findall(pattern, path.read_text())) if rel != home else 0
        if n:
            copies[rel] = n
    assert copies == allowed, f"use {home} instead of a copy"


# -- tests that say what they test (issue 20.8) --------------------------------------------------------------
TESTS = ROOT / "tests"

#: Test files that import another test module (none); a new one fails the test.
KNOWN_TEST_MODULE_IMPORTS: set[str] = set()


def _imported_modules(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(path, node)
            out.append(base)
            out.extend(f"{base}.{a.name}" for a in node.names)
    return out


def test_tests_do_not_import_other_test_modules():
    """Shared test helpers live in conftest.py (fixtures) or a helper module, never in another test file."""
    found = set()
    for path in sorted(TESTS.rglob("*.py")):
        for module in _imported_modules(path):
            if module.split(".")[-1].startswith("test_") and module.split(".")[-1] != path.stem:
                found.add(f"{path.relative_to(ROOT)}: {module}")
    assert sorted(found - KNOWN_TEST_MODULE_IMPORTS) == []
    assert sorted(KNOWN_TEST_MODULE_IMPORTS - found) == [], "fixed: remove it from KNOWN_TEST_MODULE_IMPORTS"


#: Tests that rerun a module's doctests, which pytest --doctest-modules (testpaths: salfcbm) already runs.
KNOWN_DOCTEST_RERUNS: set[str] = set()


def test_no_test_reruns_the_doctests():
    found = set()
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and getattr(node.func.value, "id", None) == "doctest"
                    and node.func.attr in ("testmod", "DocTestSuite", "run_docstring_examples")):
                found.add(str(path.relative_to(ROOT)))
    assert sorted(found - KNOWN_DOCTEST_RERUNS) == [], "--doctest-modules runs them already"
    assert sorted(KNOWN_DOCTEST_RERUNS - found) == [], "fixed: remove it from KNOWN_DOCTEST_RERUNS"


#: Test files named after a tracker item instead of the behaviour they check (their docstring opens with the
#: item) (none); a new one fails the test.
KNOWN_TRACKER_NAMED_TESTS: set[str] = set()


def test_test_files_say_what_behaviour_they_check():
    """A test file's docstring opens with the behaviour it checks; the tracker item may follow, in brackets."""
    named_for_items = set()
    for path in TESTS.rglob("test_*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if re.match(r"(issues?|review|gap)\b", doc, flags=re.IGNORECASE):
            named_for_items.add(str(path.relative_to(ROOT)))
    assert sorted(named_for_items - KNOWN_TRACKER_NAMED_TESTS) == []
    assert sorted(KNOWN_TRACKER_NAMED_TESTS - named_for_items) == [], "renamed: remove it from the list"


#: Modules over 600 lines (none); a new one fails the test.
KNOWN_LONG_MODULES: set[str] = set()


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if len(p.read_text().splitlines()) > 600}
    assert sorted(long - KNOWN_LONG_MODULES) == []
    assert sorted(KNOWN_LONG_MODULES - long) == [], "split: remove it from KNOWN_LONG_MODULES"
