"""The explorer's panels as plain functions (no browser, no server): they agree with the library and
turn bad input into a message."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import salfcbm
from salfcbm.app.explorer import PREDICTED, Explorer
from salfcbm.app.images import MAX_PIXELS, load_image
from salfcbm.errors import InputError, MissingExtraError
from salfcbm.demo import SmallConvNet, SyntheticScenes


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(n=12, image_size=32, seed=0, split="test", num_classes=3)


@pytest.fixture(scope="module")
def model(scenes):
    torch.manual_seed(0)
    m = salfcbm.wrap(SmallConvNet(num_classes=3, width=4), concepts=scenes.concepts, num_classes=3,
                     class_names=scenes.classes, input_size=(32, 32), backbone_weights=None,
                     input_mean=(0.0, 0.0, 0.0), input_std=(1.0, 1.0, 1.0))
    with torch.no_grad():
        m.head.weight[2] = 0  # a class no concept is connected to
        m.head.bias[2] = -1e3  # ...and never the prediction (the tests explain the predicted class's concepts)
        m.head.weight[0, ::2] = 0
    return m.eval()


@pytest.fixture(scope="module")
def explorer(model, scenes):
    return Explorer(model, scenes, top_k=3)


@pytest.fixture(scope="module")
def current(explorer, scenes):
    cur, view, msg = explorer.load(scenes[1][0])
    assert msg.startswith("Image loaded. _(") and view.shape == (320, 320, 3) and view.dtype == np.uint8
    return cur


def _is_message(out, n, *words):
    assert len(out) == n and all(o is None for o in out[:-1]), out
    assert "Traceback" not in out[-1]
    for w in words:
        assert w in out[-1], out[-1]


def test_predict_panel_shows_the_prediction_and_any_class(explorer, model, current):
    probs, fig, gallery, scale, msg = explorer.predict_panel(current)
    ref = model.explain(current.x, top_k=3)[0]
    assert max(probs, key=probs.get) == ref.predicted_class
    assert f"Prediction: **{ref.predicted_class}**" in msg
    assert [c for _, c in gallery] == [f"{c} ({s:+.3f})" for c, s in zip(ref.top.concepts, ref.top.scores.tolist())]
    assert gallery[0][0].shape == (32, 32, 3)
    assert all(f">{c}</span>" in fig for c in ref.top.concepts) and f"{float(ref.top.scores[0]):+.4f}" in fig
    other = next(c for c in model.class_names if c != ref.predicted_class)
    _, _, gallery, _, msg = explorer.predict_panel(current, other, top_k=2)
    ce = model.explain(current.x, target=other, top_k=2)[0].top
    assert f"Explaining **{other}**" in msg and [c.split(" (")[0] for _, c in gallery] == ce.concepts


def test_a_class_without_concepts_says_so(explorer, model, current):
    *_, msg = explorer.predict_panel(current, model.class_names[2])
    assert "No concept contributes" in msg
    rows, svg, msg = explorer.rules_panel([model.class_names[2]])
    assert rows == [] and svg == "" and "No concept is connected" in msg


@pytest.mark.parametrize("mode, clicks, kw", [
    ("box", [(20.4, 3.0), (2.0, 12.9)], {"box": (2, 3, 21, 13)}),
    ("points", [(5.0, 5.0), (25.0, 20.0)], {"points": [(5.0, 5.0), (25.0, 20.0)]}),
])
def test_region_panel_agrees_with_explain_region(explorer, model, current, mode, clicks, kw):
    rows, gallery, scale, msg = explorer.region_panel(current, mode, clicks)
    ref = model.explain_region(current.x, **kw, top_k=3)[0]
    assert [r[1] for r in rows] == ref.concepts
    assert [r[2] for r in rows] == pytest.approx(ref.scores.tolist(), abs=1e-5)
    assert f"Top concept: **{ref.concepts[0]}**" in msg and len(gallery) == 3


def test_clicks_on_the_enlarged_view_map_to_model_pixels(explorer, current):
    s = explorer.view_scale
    clicks, shown, note = explorer.click(current, [], "box", (3 * s, 4 * s))
    assert clicks == [(3.0, 4.0)] and shown.shape == (320, 320, 3) and "opposite corner" in note
    clicks, shown, note = explorer.click(current, clicks, "box", (10 * s + 1, 8 * s))
    assert note == "Region: box=(3, 4, 11, 9)."
    clicks, _, note = explorer.click(current, clicks, "box", (31 * s + 50, 2 * s))  # a new box; clamped to the image
    assert clicks == [(31.0, 2.0)] and "(31, 2)" in note
    clicks, _, note = explorer.click(current, clicks, "box", (10 * s + 1, 8 * s))
    assert explorer.region_kwargs("box", clicks, None) == {"box": (10, 2, 32, 9)}
    clicks, _, note = explorer.click(current, [(1.0, 2.0)], "points", (5 * s, 6 * s))
    assert clicks == [(1.0, 2.0), (5.0, 6.0)] and note == "Region: points=[(1.0, 2.0), (5.0, 6.0)]."
    assert explorer.click(None, [], "box", (1, 1))[2] == "Upload an image first."


def test_brush_region_is_the_painted_pixels(explorer, model, current):
    layer = np.zeros((320, 320, 4), dtype=np.uint8)
    layer[:160, :160, 3] = 255  # the top-left quarter, painted at view resolution
    rows, _, _, msg = explorer.region_panel(current, "brush", [], {"background": None, "layers": [layer]})
    mask = torch.zeros(32, 32)
    mask[:16, :16] = 1
    ref = model.explain_region(current.x, mask=mask, top_k=3)[0]
    assert [r[1] for r in rows] == ref.concepts and "256 px" in msg


@pytest.mark.parametrize("drawing", [None, {"layers": []}, {"layers": [np.zeros((320, 320, 4), np.uint8)]}])
def test_an_empty_drawing_gives_a_message(explorer, current, drawing):
    _is_message(explorer.region_panel(current, "brush", [], drawing), 4, "drawing is empty")


def test_incomplete_regions_give_messages(explorer, current):
    _is_message(explorer.region_panel(current, "box", [(1.0, 1.0)]), 4, "two clicks")
    _is_message(explorer.region_panel(current, "points", []), 4, "click on the image")
    _is_message(explorer.region_panel(None, "box", []), 4, "No image yet")


def test_intervene_panel_reports_intervenes_exact_change(explorer, model, current):
    concept = model.concepts[1]
    rows, msg = explorer.intervene_panel(current, concept, "box", [(0.0, 0.0), (15.0, 20.0)], None, 3.0)
    res = model.intervene(current.x, concept, box=(0, 0, 16, 21), beta=3.0)
    shown = float(msg.split("id='delta-logit'>")[1].split("<")[0])
    assert shown == pytest.approx(float(res.delta_logits[res.target]), abs=1e-6)
    by_class = {r[0]: r for r in rows}
    i = res.prediction_before
    assert by_class[model.class_names[i]][1:3] == pytest.approx([float(res.logits_before[i]), float(res.logits_after[i])], abs=1e-5)
    rows, msg = explorer.intervene_panel(current, concept, "whole image", [], None, -2.0, model.class_names[1])
    res = model.intervene(current.x, concept, beta=-2.0, target=1)
    assert f"logit of **{model.class_names[1]}**" in msg and "Removing" in msg
    assert float(msg.split("'>")[1].split("<")[0]) == pytest.approx(float(res.delta_logits[1]), abs=1e-6)


def test_intervene_with_an_unknown_concept_gives_a_message(explorer, current):
    _is_message(explorer.intervene_panel(current, "a cirle", "whole image", [], None, 1.0), 2, "Unknown concept", "a circle")
    _is_message(explorer.intervene_panel(current, None, "whole image", [], None, 1.0), 2, "Choose a concept")
    _is_message(explorer.intervene_panel(current, "a circle", "whole image", [], None, None), 2, "Type a beta")


def test_rules_panel_lists_the_non_zero_weights_and_draws_a_sankey(explorer, model):
    rows, svg, msg = explorer.rules_panel(model.class_names[:2])
    rules = model.decision_rules([0, 1])
    assert rows == [[r.class_name, c, pytest.approx(w, abs=1e-6)] for r in rules for c, w in r.pairs()]
    assert svg.startswith("<svg") and f"{len(rules[0])} non-zero weights" in msg
    _is_message(explorer.rules_panel([]), 3, "Pick at least one class")
    _is_message(explorer.rules_panel(["no such class"]), 3, "Unknown class")


def test_concept_search_finds_the_images_where_a_concept_fires_most(explorer, model, scenes, current):
    shown, gallery, scale, msg = explorer.search_panel(current, "A CIRCLE", k=4)
    m = model.concept_index("a circle")
    with torch.no_grad():
        acts = torch.cat([model(explorer.prepare(scenes[i][0]).x).concept_activations for i in range(len(scenes))])[:, m]
    best = acts.topk(4).indices.tolist()
    assert [c.split(" ")[0] for _, c in gallery] == [f"#{i}" for i in best]
    assert shown.shape == (320, 320, 3) and "Concept **a circle**" in msg and "Top 4 of 12" in msg


def test_concept_search_without_cached_maps_shows_the_same(model, scenes, explorer, current, monkeypatch):
    monkeypatch.setattr("salfcbm.app.explorer.MAX_CACHED_MAP_VALUES", 0)  # too many maps to keep: recompute
    lean = Explorer(model, scenes)
    assert lean._index_maps is None and explorer._index_maps is not None
    _, cached, _, _ = explorer.search_panel(current, "a circle", k=3)
    _, fresh, _, _ = lean.search_panel(current, "a circle", k=3)
    assert [c for _, c in cached] == [c for _, c in fresh]
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for (a, _), (b, _) in zip(cached, fresh))


def test_concept_search_without_a_folder_or_with_an_unknown_concept(model, explorer, current):
    shown, gallery, _, msg = Explorer(model).search_panel(current, "a circle")
    assert gallery == [] and "--images FOLDER" in msg
    _is_message(explorer.search_panel(current, "a cirle"), 4, "No concept named 'a cirle'", "Did you mean", "'a circle'")
    _is_message(explorer.search_panel(current, "  "), 4, "Type a concept")


def test_concept_search_indexes_a_folder(model, scenes, tmp_path):
    for i in range(3):
        Image.fromarray((scenes[i][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / f"s{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ex = Explorer(model, tmp_path)
    assert ex.index_names == ["s0.png", "s1.png", "s2.png"] and ex.index_activations.shape == (3, model.num_concepts)
    with pytest.raises(InputError, match="not a folder"):
        Explorer(model, tmp_path / "missing")


@pytest.mark.parametrize("image, note", [
    (np.random.default_rng(0).integers(0, 255, (40, 50), dtype=np.uint8), "Grayscale"),
    (np.random.default_rng(0).integers(0, 255, (40, 50, 4), dtype=np.uint8), "alpha channel"),
    (Image.new("LA", (30, 20), (128, 100)), "alpha channel"),
    (Image.new("P", (30, 20)), None),
    (Image.new("I;16", (30, 20), 40000), "Grayscale"),
    (torch.rand(3, 40, 50), None),
])
def test_odd_images_are_converted_with_a_note(explorer, image, note):
    cur, view, msg = explorer.load(image)
    assert cur is not None and cur.x.shape == (1, 3, 32, 32) and view.shape == (320, 320, 3)
    assert (note or "Image loaded. _(") in msg


@pytest.mark.parametrize("image, words", [
    (np.random.default_rng(0).random((40, 50, 3)) * 255.0, "[0, 1]"),  # a float image in 0..255
    (np.full((4, 4, 3), np.nan), "NaN"),
    (np.zeros((3, 40, 50)), "channels last"),
])
def test_images_the_library_refuses_give_its_message(explorer, image, words):
    _is_message(explorer.load(image), 3, "Cannot do that", words)


def test_huge_and_broken_images_give_messages(explorer, tmp_path, monkeypatch):
    side = int(MAX_PIXELS**0.5) + 1
    _is_message(explorer.load(np.zeros((side, side), dtype=np.uint8)), 3, "larger than the explorer's limit")
    big = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(big)
    monkeypatch.setattr("salfcbm.app.images.MAX_PIXELS", 100_000)
    _is_message(explorer.load(str(big)), 3, "400x300", "Downscale it first")
    monkeypatch.undo()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    _is_message(explorer.load(str(tmp_path / "bad.png")), 3, "Could not read 'bad.png'")
    _is_message(explorer.load(None), 3, "No image yet")
    _is_message(explorer.load(np.zeros((0, 5, 3))), 3, "The image is empty")


def test_a_large_file_is_shrunk_before_the_model_resize(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (1600, 1200), (10, 200, 30)).save(path)
    x, notes = load_image(str(path), (32, 32))
    assert max(x.shape[-2:]) <= 800 and "shrunk" in notes[0]


def test_panels_do_not_change_the_model(scenes):
    torch.manual_seed(1)
    m = salfcbm.wrap(SmallConvNet(num_classes=3, width=4), concepts=scenes.concepts, num_classes=3,
                     input_size=(32, 32), backbone_weights=None)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    ex = Explorer(m, scenes)
    cur, _, _ = ex.load(scenes[0][0])
    ex.predict_panel(cur, PREDICTED)
    ex.region_panel(cur, "box", [(1.0, 1.0), (9.0, 9.0)])
    ex.intervene_panel(cur, m.concepts[0], "whole image", [], None, 5.0)
    ex.rules_panel(m.class_names)
    ex.search_panel(cur, m.concepts[0])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert modes == {n: mod.training for n, mod in m.named_modules()}


def test_unexpected_errors_become_messages_not_tracebacks(explorer, current, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(explorer.model, "explain", boom)
    _is_message(explorer.predict_panel(current), 5, "Unexpected error", "RuntimeError: kaputt", "server log")
    assert "kaputt" in caplog.text


# ---------------------------------------------------------------------- loading, launching, the extra
def test_load_model_explains_a_bad_source(model, tmp_path):
    from salfcbm.app import load_model

    assert load_model(model) == (model, None)
    with pytest.raises(InputError, match="neither a model directory nor a Hub repo id"):
        load_model(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(InputError, match="Expected a SALFCBM"):
        load_model(3)


def test_missing_gradio_names_the_extra(monkeypatch, capsys, tmp_path):
    from salfcbm.app import load_gradio
    from salfcbm.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'salfcbm\[app\]'"):
        load_gradio()
    assert main(["app", str(tmp_path)]) == 2
    assert "salfcbm[app]" in capsys.readouterr().err


def test_gradio_telemetry_is_off_unless_the_user_set_it(monkeypatch):
    pytest.importorskip("gradio")
    from salfcbm.app import load_gradio

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)
    load_gradio()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    load_gradio()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "True"  # the user's choice stands


def test_cli_app_help(capsys):
    from salfcbm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["app", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--images" in out and "MODEL" in out.upper()


def test_import_salfcbm_does_not_load_the_app():
    code = "import sys, salfcbm; print('salfcbm.app' in sys.modules, 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_build_app_lays_out_five_tabs(model, scenes):
    pytest.importorskip("gradio")
    from salfcbm.app import build_app

    app = build_app(model, scenes)
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    for i in ("upload", "predict-msg", "ea-click", "ea-brush", "iv-run", "sankey", "cs-query", "cs-top"):
        assert i in ids
    labels = [b.label for b in app.blocks.values() if type(b).__name__ == "Tab"]
    assert labels == ["Predict and explain", "Explain anything", "Intervene", "Decision rules", "Concept search"]


# ---------------------------------------------------------------------- issue 22: units, scales, ranges, bad uploads
def test_heatmaps_use_the_reports_signed_scale_with_a_colour_bar(explorer, model, current):
    import matplotlib

    from salfcbm.viz import ColorScale

    _, _, gallery, scale, _ = explorer.predict_panel(current)
    ce = model.explain(current.x, top_k=3)[0].top
    z = ce.standardized_heatmaps()
    top = max(float(z.abs().max()), 1.0)  # the reports' scale: +-max|z| over the figure, at least one std
    assert "training stds from its training mean" in scale and f"{-top:+.2f}" in scale and f"{top:+.2f}" in scale
    blue = "#{:02x}{:02x}{:02x} 0%".format(*(int(255 * c + 0.5) for c in matplotlib.colormaps["RdBu_r"](0.0)[:3]))
    assert blue in scale  # the colour bar is the reports' colormap, not jet
    report = ColorScale([ce], None)
    assert report.cmap == "RdBu_r" and (report.vmin, report.vmax) == (-top, top)
    expected = (np.clip(report.overlay(current.image, z[0], 0.6, None), 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(gallery[0][0], expected)
    for out in (explorer.region_panel(current, "box", [(0.0, 0.0), (20.0, 20.0)]), explorer.search_panel(current, "a circle")):
        assert "salfcbm-colorbar" in out[-2] and "training stds" in out[-2]


def test_region_values_state_their_units(explorer, model, current):
    from salfcbm.app.explorer import REGION_HEADERS

    rows, _, _, _ = explorer.region_panel(current, "box", [(2.0, 3.0), (20.0, 12.0)])
    ref = model.explain_region(current.x, box=(2, 3, 21, 13), top_k=3)[0]
    assert "map units x px" in REGION_HEADERS[2] and "per px" in REGION_HEADERS[3]
    assert "training stds from the mean" in REGION_HEADERS[4]
    for row, m in zip(rows, ref.concept_indices):
        assert len(row) == len(REGION_HEADERS)
        assert row[3] == pytest.approx(row[2] / ref.area, abs=1e-5)  # the sum over the region / its pixels
        z = (row[3] - float(model.concept_mean[m])) / float(model.concept_std[m])
        assert row[4] == pytest.approx(z, abs=1e-3)


def test_beta_beyond_the_suggested_range_gets_a_note_not_a_clamp(explorer, model, current):
    r = explorer.beta_range()
    assert f"+-{r:g}" in explorer.beta_info() and f"{float(model.concept_std.max()):.3g}" in explorer.beta_info()
    concept = model.concepts[1]
    rows, msg = explorer.intervene_panel(current, concept, "box", [(0.0, 0.0), (3.0, 3.0)], None, -1.5 * r)
    assert "beyond the suggested range" in msg and f"beta={-1.5 * r:+g}" in msg
    res = model.intervene(current.x, concept, box=(0, 0, 4, 4), beta=-1.5 * r)  # taken as typed
    assert float(msg.split("id='delta-logit'>")[1].split("<")[0]) == pytest.approx(float(res.delta_logits[res.target]), abs=1e-6)
    _, msg = explorer.intervene_panel(current, concept, "box", [(0.0, 0.0), (3.0, 3.0)], None, r / 2)
    assert "suggested range" not in msg


def test_an_edit_that_leaves_the_training_range_is_flagged(explorer, model, current):
    m = 1
    concept, std = model.concepts[m], float(model.concept_std[m])
    z0 = float(model.standardize(current.output.concept_activations)[0, m])
    # whole image, mean pooling: the standardised activation moves by beta / std exactly
    _, msg = explorer.intervene_panel(current, concept, "whole image", [], None, (-5.0 - z0) * std)
    assert "Outside the training range" in msg and f"**{concept}** to -5.0 training stds" in msg
    assert f"(before: {z0:+.1f})" in msg
    _, msg = explorer.intervene_panel(current, concept, "whole image", [], None, (2.0 - z0) * std)
    assert "Outside the training range" not in msg


def test_a_file_that_is_not_an_image_passes_gradio_and_gets_salfcbms_message(explorer, tmp_path):
    gr = pytest.importorskip("gradio")
    from gradio.data_classes import ImageData

    from salfcbm.app.ui import _upload

    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(Exception):  # gradio's own Image opens the file with PIL first
        gr.Image(type="filepath").preprocess(ImageData(path=str(bad), orig_name="notes.png"))
    path = _upload(gr).preprocess(ImageData(path=str(bad), orig_name="notes.png"))
    assert path == str(bad)
    _is_message(explorer.load(path), 3, "Could not read 'notes.png' as an image", "upload a PNG")


def test_an_unreadable_upload_clears_every_panel(explorer, current, tmp_path):
    gr = pytest.importorskip("gradio")
    from salfcbm.app.ui import _on_load

    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    loaded = _on_load(gr, explorer, explorer.predict_panel, n_stale=10)
    good = loaded(str(tmp_path / "missing.png"), None, 3, "box", "box")  # a message, not an exception
    out = loaded(str(bad), None, 3, "box", "box")
    state, note, regions, predict, stale = out[0], out[1], out[2:12], out[12:17], out[17:]
    assert state is None and note.startswith("**Cannot do that:** Could not read 'notes.png'") and "\n" not in note
    assert regions[0] is None and regions[2] == [] and regions[5] is None and regions[7] == []
    assert 'data-clicks="0"' in regions[4] and 'data-clicks="0"' in regions[9]  # the pickers' state: no click
    assert predict[:4] == (None, None, None, "") and predict[4] == note  # the prediction panel says it too
    assert stale == (None,) * 10 and good[0] is None


def test_building_the_app_writes_nothing_into_the_package(model, scenes):
    """gradio's component metaclass writes a ``.pyi`` stub next to the module of every component class it
    creates: the explorer must not define one, or each start writes into the installed package."""
    pytest.importorskip("gradio")
    from pathlib import Path

    import salfcbm.app as app_pkg
    from salfcbm.app import build_app

    folder = Path(app_pkg.__file__).parent
    before = sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")
    build_app(model, scenes)
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == before
    assert not list(folder.glob("*.pyi"))
