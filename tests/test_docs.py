"""Every code block of the README and docs/ runs, page by page, in a fresh temporary directory.

``python`` blocks of a page run in order in one namespace (a later block may use names an
earlier one defined); ``bash`` blocks run with ``bash -e`` with ``salfcbm`` and ``python`` on the
PATH pointing at this checkout. A block may be skipped only with an explicit marker on the line
right before it, with a reason: ``<!-- docs-test: skip (reason) -->``. Skipped bash blocks are
still syntax-checked. ``text``/``console`` blocks and unlabelled blocks are not code.

Also checks that docs/api/cli.md is the reference generated from the parser
(``python scripts/cli_docs.py`` rewrites it) and that no Sphinx role is left in a docstring
(mkdocstrings renders Markdown, so ``:meth:`x``` would show up literally).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^(\s*)```+\s*([\w+-]*)")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(.*?)\s*-->")
RUN = {"python", "py", "bash", "sh", "shell"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the reason, when marked


_SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$', re.M)


def _expand_snippets(code: str) -> str:
    """``--8<-- "path"`` lines (pymdownx.snippets, paths from the repo root) replaced by the file."""
    return _SNIPPET.sub(lambda m: (ROOT / m.group(1)).read_text(encoding="utf-8").rstrip("\n"), code)


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their skip markers."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        code = _expand_snippets(textwrap.dedent("\n".join(ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j])))
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = _SKIP.search(prev)
        out.append(Block(page, start + 1, lang, code, marker.group(1) if marker else None))
        i = j + 1
    return out


def _pages_with_code() -> list[Path]:
    return [p for p in PAGES if p.name != "changelog.md" and any(b.lang in RUN for b in blocks(p))]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_skip_markers_give_a_reason():
    for page in PAGES:
        for b in blocks(page):
            if b.skip is not None:
                assert len(b.skip.strip(" ():-")) >= 8, f"{_id(page)}:{b.line}: a docs-test skip needs a reason"


@pytest.mark.parametrize("page", _pages_with_code(), ids=_id)
def test_page_code_runs(page: Path, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": "__docs__"}
    for b in blocks(page):
        where = f"{_id(page)}:{b.line}"
        if b.lang in ("python", "py"):
            if b.skip is None:
                try:
                    exec(compile(b.code, where, "exec"), namespace)  # noqa: S102 - the docs' own code
                except Exception as e:
                    raise AssertionError(f"the python block at {where} fails: {type(e).__name__}: {e}") from e
            else:
                compile(b.code, where, "exec")
        elif b.lang in ("bash", "sh", "shell"):
            _run_bash(b, tmp_path, where)


def _run_bash(b: Block, tmp_path: Path, where: str) -> None:
    check = subprocess.run(["bash", "-n"], input=b.code, text=True, capture_output=True)
    assert check.returncode == 0, f"the bash block at {where} has a syntax error: {check.stderr}"
    if b.skip is not None:
        return
    bin_dir = tmp_path / "_bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "salfcbm").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m salfcbm.cli "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "SALFCBM_REPO": str(ROOT)}
    r = subprocess.run(["bash", "-e", "-c", b.code], cwd=tmp_path, env=env, text=True, capture_output=True,
                       timeout=600)
    assert r.returncode == 0, f"the bash block at {where} fails ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_cli_reference_matches_the_parser():
    # rendered in a fresh process: the parser lists the registries' names (poolings), and a test in this
    # process may have registered one of its own
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('cli_docs', sys.argv[1]); "
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); "
            "sys.stdout.write(mod.render())")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "scripts" / "cli_docs.py")], cwd=ROOT,
                       capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert r.returncode == 0, r.stderr
    assert (ROOT / "docs" / "api" / "cli.md").read_text(encoding="utf-8") == r.stdout, (
        "docs/api/cli.md is out of date: run `python scripts/cli_docs.py`"
    )


_ROLES = re.compile(r":(meth|func|class|mod|attr|data|obj|exc|ref):`|^\s*\.\. (math|note|warning|code-block)::", re.M)


def test_docstrings_are_markdown_not_sphinx():
    found = []
    for path in sorted((ROOT / "salfcbm").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _ROLES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, f"{len(found)} Sphinx roles would show up literally in the API pages:\n" + "\n".join(found[:20])
