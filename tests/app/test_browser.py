"""The explorer in a real headless browser: Playwright drives the system's Chromium.

Starts the app on 127.0.0.1 (a free port) with a tiny model, uploads an image, reads the
prediction, draws a box and checks the region's top concept against ``explain_region``, runs an
intervention and checks the logit change against ``intervene``, reads the decision rules and
searches a concept; a screenshot of each panel goes to the test's temporary directory (or to
``SALFCBM_APP_SCREENSHOTS`` when set, which is how the docs' pictures are made). Skips locally when
Chromium or Playwright is missing; CI installs both (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

CHROMIUM = os.environ.get("SALFCBM_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _requirements():
    why = None
    missing = [m for m in ("gradio", "playwright") if not _importable(m)]
    if missing:
        why = f"the browser test needs {', '.join(missing)}: pip install 'salfcbm[dev]'"
    elif not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        why = f"no Chromium at {CHROMIUM}: apt-get install chromium (CI does, in .ci/run)"
    if why and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser test, but {why}")
    if why:
        pytest.skip(why)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_and_scenes():
    """A 64 px SALF-CBM on the demo world's small CNN, random weights, a sparse head."""
    import salfcbm
    from salfcbm.demo import SmallConvNet, SyntheticScenes

    ds = SyntheticScenes(n=24, image_size=64, seed=0, split="test", num_classes=4)
    torch.manual_seed(0)
    m = salfcbm.wrap(SmallConvNet(num_classes=4, width=8), concepts=ds.concepts, num_classes=4,
                     class_names=ds.classes, input_size=(64, 64), backbone_weights=None,
                     input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0))
    with torch.no_grad():
        w = m.head.weight
        w.mul_(w.abs() >= w.abs().median(dim=1, keepdim=True).values)  # half the weights are zero, as after the sparse fit
    return m.eval(), ds


def _model_under_test():
    """The tiny model, or ``SALFCBM_APP_MODEL``: a model directory (the docs' screenshots use the
    demo's) or ``resnet50`` (a random ResNet-50-sized model at 224 px, for latency)."""
    from salfcbm.app import load_model

    which = os.environ.get("SALFCBM_APP_MODEL")
    if not which:
        return tiny_model_and_scenes()
    if which == "resnet50":
        import timm

        import salfcbm

        _, scenes = tiny_model_and_scenes()
        torch.manual_seed(0)
        concepts = [f"concept {i}" for i in range(500)]
        m = salfcbm.wrap(timm.create_model("resnet50", pretrained=False), concepts=concepts, num_classes=1000,
                         backbone_weights=None)
        with torch.no_grad():
            m.head.weight.mul_(torch.rand_like(m.head.weight) < 0.01)
        return m.eval(), scenes
    model, images = load_model(which)
    return model, images


def _text(page, sel: str, pattern: str, before: str | None = None, timeout: float = 60.0) -> str:
    """Wait until the element's text matches ``pattern`` (and differs from ``before``); return it."""
    loc = page.locator(f"{sel} .prose").first  # the message itself, not gradio's status overlay
    deadline = time.monotonic() + timeout
    txt = ""
    while time.monotonic() < deadline:
        txt = loc.inner_text() if loc.count() else ""
        if re.search(pattern, txt) and txt != before:
            return txt
        page.wait_for_timeout(20)
    raise AssertionError(f"{sel} never matched {pattern!r}; it reads {txt!r}")


def _timed(record: dict, name: str, fn, *also: tuple):
    """Run ``fn`` (an action and the wait for its message) and record the seconds it took in the
    browser, and the server's share that its message (and the messages ``also``) report."""
    t = time.perf_counter()
    out = fn()
    record[name] = round(time.perf_counter() - t, 3)
    texts = [out] + [also_page.locator(f"{sel} .prose").first.inner_text() for also_page, sel in also]
    server = [re.search(r"\((\d+\.\d+) s\)\s*$", x) for x in texts]
    if all(server):
        record[name + " (server)"] = round(sum(float(m.group(1)) for m in server), 3)
    return out


def _shot(page, path: Path, *selectors: str) -> None:
    """Screenshot the page once the images under ``selectors`` have loaded (quantised PNG: small files)."""
    js = "sels => sels.every(s => { const im = [...document.querySelectorAll(s + ' img')]; " \
         "return im.length > 0 && im.every(i => i.complete && i.naturalWidth > 0); })"
    page.wait_for_function(js, arg=list(selectors), timeout=30000)
    page.screenshot(path=str(path), full_page=True)
    from PIL import Image

    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)


def _click_at(page, sel: str, fx: float, fy: float) -> None:
    """Click an image at a fraction of its width and height."""
    img = page.locator(f"{sel} img")
    img.wait_for(state="visible", timeout=30000)
    box = img.bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def _region_click(page, prefix: str, fx: float, fy: float, clicks: int) -> str:
    """Click a region picker and wait until the page has applied that click: its hidden status
    (``#PREFIX-status``, `salfcbm.app.ui.region_status`) shows a newer update holding ``clicks``
    clicks. Waits on the page's state, not on a text that an earlier update may already show.
    Returns the region's note, which the same update wrote."""
    status = f"#{prefix}-status span"
    page.locator(status).wait_for(state="attached", timeout=30000)
    before = int(page.locator(status).first.get_attribute("data-update"))
    _click_at(page, f"#{prefix}-click", fx, fy)
    page.wait_for_function(
        "([sel, before, n]) => { const s = document.querySelector(sel); "
        "return s !== null && Number(s.dataset.update) > before && Number(s.dataset.clicks) === n; }",
        arg=[status, before, clicks], timeout=60000)
    return page.locator(f"#{prefix}-region .prose").first.inner_text()


def _message(page, sel: str) -> str:
    return page.locator(f"{sel} .prose").first.inner_text()


def test_explorer_in_a_real_browser(tmp_path):
    _requirements()
    from playwright.sync_api import sync_playwright

    from salfcbm.app import launch
    from salfcbm.app.explorer import Explorer

    model, scenes = _model_under_test()
    shots = Path(os.environ.get("SALFCBM_APP_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "scene.png"
    from PIL import Image

    pixels = scenes[3][0]
    Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(image)
    x = model.preprocess(torch.from_numpy(np.asarray(Image.open(image), dtype=np.float32) / 255).permute(2, 0, 1)[None])
    assert torch.equal(x, Explorer(model).prepare(str(image)).x)  # the page feeds the model exactly this

    app = launch(model, scenes, port=_free_port(), block=False, quiet=True)
    latency: dict[str, float] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            outside: list[str] = []  # the page must not reach anything but the app (no fonts, CDNs, telemetry)

            def local_only(route):
                host = urlparse(route.request.url).hostname
                if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
                    return route.continue_()
                outside.append(route.request.url)
                return route.abort()

            page.route("**/*", local_only)
            page.goto(app.local_url)
            page.wait_for_selector("#upload input[type=file]", state="attached", timeout=60000)

            # 1. predict: upload, read the prediction
            page.set_input_files("#upload input[type=file]", str(image))
            pred = _timed(latency, "upload + predict", lambda: _text(page, "#predict-msg", r"Prediction: \S"),
                          (page, "#load-msg"))
            expected = model.explain(x)[0]
            assert f"Prediction: {expected.predicted_class}" in pred
            page.locator("#heatmaps img").first.wait_for(timeout=30000)
            shown_box = page.locator("#upload img").first.bounding_box()
            assert min(shown_box["width"], shown_box["height"]) >= 3 * 64  # a 64 px image is enlarged to its box
            bar = page.locator("#heatmap-scale .salfcbm-colorbar").inner_text()
            assert "training stds from its training mean" in bar  # the heatmaps' colour bar, the reports' scale
            for i in (1, 2):  # another image, picked from the examples
                page.locator("#examples img").nth(i).click()
                pred = _timed(latency, f"example {i} + predict", lambda: _text(page, "#predict-msg", r"Prediction", pred),
                              (page, "#load-msg"))
            page.locator("#examples img").nth(3).click()  # back to the uploaded image (example 3 is the same scene)
            pred = _text(page, "#predict-msg", r"Prediction", pred)
            assert f"Prediction: {expected.predicted_class}" in pred
            other = next(c for c in model.class_names if c != expected.predicted_class)
            page.locator("#class-select input").fill(other)
            page.keyboard.press("Enter")  # the class selector: explain any class
            pred = _timed(latency, "explain another class", lambda: _text(page, "#predict-msg", rf"Explaining {re.escape(other)}", pred))
            _shot(page, shots / "app-predict.png", "#heatmaps", "#upload")

            # 2. explain anything: a box from two clicks; its top concept is explain_region's
            page.get_by_role("tab", name="Explain anything").click()
            assert "Box corner" in _region_click(page, "ea", 0.3, 0.3, clicks=1)
            assert _region_click(page, "ea", 0.9, 0.9, clicks=2).startswith("Region: box=")
            assert "Top concept" in _message(page, "#ea-msg")  # written by the same update
            assert "Box corner" in _region_click(page, "ea", 0.1, 0.15, clicks=1)  # a third click starts a new box
            msg = _timed(latency, "box -> concepts",
                         lambda: (_region_click(page, "ea", 0.55, 0.7, clicks=2), _message(page, "#ea-msg"))[1])
            note = _message(page, "#ea-region")
            assert re.search(r"box=\(\d+, \d+, \d+, \d+\)", note) and "Top concept" in msg
            assert note.split("box=")[1].rstrip(".") in msg  # the result is for this box
            box = tuple(int(v) for v in re.search(r"box=\((\d+), (\d+), (\d+), (\d+)\)", msg).groups())
            ref = model.explain_region(x, box=box)[0]
            assert f"Top concept: {ref.concepts[0]}." in msg
            _shot(page, shots / "app-region.png", "#ea-maps", "#ea-click")

            # ... and a region painted with the brush (the editor draws on a canvas)
            page.locator("#ea-mode label", has_text="brush").click()
            canvas = page.locator("#ea-brush canvas").first
            canvas.wait_for(state="visible", timeout=30000)
            page.wait_for_timeout(1000)
            bb = canvas.bounding_box()
            x0, y0 = bb["x"] + bb["width"] / 2 - 60, bb["y"] + bb["height"] / 2 - 40  # the picture is centred
            page.mouse.move(x0, y0)
            page.mouse.down()
            for k in range(20):
                page.mouse.move(x0 + 6 * k, y0 + 4 * k, steps=2)
            page.mouse.up()
            msg = _timed(latency, "brush -> concepts", lambda: (page.locator("#ea-run").click(),
                                                                 _text(page, "#ea-msg", r"painted mask of [1-9]\d* px", msg))[1])
            assert re.search(r"Top concept: .+\.", msg) and page.locator("#ea-table tbody tr").count() >= 1

            # 3. intervene on the same kind of box; the logit change is intervene's
            page.get_by_role("tab", name="Intervene").click()
            assert "Box corner" in _region_click(page, "iv", 0.1, 0.15, clicks=1)
            note = _region_click(page, "iv", 0.55, 0.7, clicks=2)  # about the same box (this tab's layout may
            box = tuple(int(v) for v in re.search(r"box=\((\d+), (\d+), (\d+), (\d+)\)", note).groups())  # differ by a px)
            msg = _timed(latency, "intervene", lambda: (page.locator("#iv-run").click(), _text(page, "#iv-msg", r"Exact change"))[1])
            assert f"box={box}" in msg
            shown = float(page.locator("#delta-logit").inner_text())
            concept = model.concepts[0]
            beta = float(page.locator("#iv-beta input[type=number]").input_value())
            res = model.intervene(x, concept, box=box, beta=beta)
            assert shown == pytest.approx(float(res.delta_logits[res.target]), abs=2e-6)
            _shot(page, shots / "app-intervene.png", "#iv-click")
            far = round(-2.9 * Explorer(model).beta_range(), 1) - 0.007  # typed beyond the range, off the box's step:
            # taken as typed (not clamped, not rounded), with a note
            page.locator("#iv-beta input[type=number]").fill(f"{far:g}")
            page.locator("#iv-run").click()
            msg = _text(page, "#iv-msg", r"beyond the suggested range", msg)
            assert f"beta={far:+g}" in msg and float(page.locator("#iv-beta input[type=number]").input_value()) == far
            res = model.intervene(x, concept, box=box, beta=far)
            assert float(page.locator("#delta-logit").inner_text()) == pytest.approx(float(res.delta_logits[res.target]), abs=2e-6)

            # 4. decision rules: the Sankey diagram of the first class
            page.get_by_role("tab", name="Decision rules").click()
            page.locator("#sankey svg").wait_for(timeout=30000)
            rule = model.decision_rules(0)
            assert f"{len(rule)} non-zero weights" in _text(page, "#rules-msg", r"non-zero")
            _shot(page, shots / "app-rules.png", "#upload")

            # 5. concept search: an unknown concept gets a message, a known one its top images
            page.get_by_role("tab", name="Concept search").click()
            q = page.locator("#cs-query input")
            name = model.concepts[-1]
            typo = name[: len(name) // 2] + name[len(name) // 2 + 1:] + "q"  # one letter dropped
            q.fill(typo)
            page.locator("#cs-run").click()
            assert "Did you mean" in _text(page, "#cs-msg", r"No concept named")
            q.fill(name)
            _timed(latency, "concept search", lambda: (page.locator("#cs-run").click(),
                                                       _text(page, "#cs-msg", r"Top \d+ of \d+ indexed"))[1])
            _shot(page, shots / "app-search.png", "#cs-top", "#cs-map")
            assert "Traceback" not in page.content()

            # 6. a text file named .png: one line of salfcbm's message, every panel cleared, no bare "Error"
            bad = tmp_path / "notes.png"
            bad.write_text("this is not an image\n")
            page.set_input_files("#upload input[type=file]", str(bad))
            note = _text(page, "#load-msg", r"Could not read 'notes\.png' as an image")
            assert "\n" not in note.strip() and "upload a PNG" in note
            page.get_by_role("tab", name="Predict and explain").click()
            assert "Could not read 'notes.png'" in _text(page, "#predict-msg", r"Could not read")
            for sel in ("#heatmaps img", "#probs .output-class", "#bars .salfcbm-bars", "#heatmap-scale .salfcbm-colorbar"):
                assert page.locator(sel).count() == 0, f"{sel} still shows the previous image's result"
            page.get_by_role("tab", name="Concept search").click()
            assert page.locator("#cs-top img").count() == 0 and page.locator("#cs-map img").count() == 0
            assert page.locator("#cs-msg .prose").first.inner_text().strip() == ""
            page.get_by_role("tab", name="Intervene").click()
            assert page.locator("#iv-table tbody td").count() == 0 or \
                page.locator("#iv-table tbody").inner_text().strip() == ""
            assert page.get_by_text("Error", exact=True).count() == 0  # gradio's bare error badge
            assert outside == [], f"the page tried to reach {outside}"
            browser.close()
    finally:
        app.close()
    (tmp_path / "latency.json").write_text(json.dumps(latency, indent=2))
    print("per-interaction latency in the browser (s):", latency)
