"""The built documentation site (issue 22, item 6): it reads offline (no web fonts), the API pages
have no empty "Type" cell, and the home page's diagram fits its column (checked in Chromium when
it is installed, as the explorer's browser test does)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SALFCBM_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def _text(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).strip()


def test_the_site_loads_no_web_fonts(site):
    pages = [p for p in site.rglob("*.html")]
    assert pages
    for p in pages:
        html = p.read_text(encoding="utf-8")
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, p


def test_api_tables_have_no_empty_type_cell(site):
    empty, seen = [], 0
    for p in sorted((site / "api").rglob("*.html")):
        for table in re.findall(r"<table>.*?</table>", p.read_text(encoding="utf-8"), re.S):
            heads = [_text(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
            if "Type" not in heads:
                continue
            col = heads.index("Type")
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]:
                cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
                if len(cells) > col:
                    seen += 1
                    if not _text(cells[col]):
                        empty.append(f"{p.parent.name}: {_text(cells[0])}")
    assert seen > 100 and empty == []


def test_the_home_page_diagram_is_not_clipped(site):
    if not _importable("playwright") or not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip("needs Playwright and Chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            for width in (1280, 1024):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.route("**/*", lambda r: r.continue_() if "127.0.0.1" in r.request.url else r.abort())
                page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
                sizes = page.evaluate("() => [...document.querySelectorAll('pre code')].map(c => [c.scrollWidth, c.clientWidth])")
                assert sizes and sizes[0][0] <= sizes[0][1], f"the diagram overflows its box at {width} px: {sizes[0]}"
            browser.close()
    finally:
        server.shutdown()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
