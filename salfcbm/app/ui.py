"""The explorer's page: five tabs laid out with Gradio, every callback an `Explorer` method.

Element ids (``#upload``, ``#predict-msg``, ``#ea-click``, ``#iv-msg``, ...) are stable, so the
browser test and the docs' screenshot script can find each control.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from salfcbm.app.explorer import PREDICTED, REGION_HEADERS, REGION_MODES, Explorer

__all__ = ["build_app", "region_status"]

CSS = """
#ea-click img, #iv-click img, #cs-map img { image-rendering: auto; }
#upload img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#heatmaps img, #ea-maps img, #cs-top img { image-rendering: pixelated; }
.salfcbm-msg { min-height: 2.5em; }
.salfcbm-status { display: none; }
"""
_UPDATES = itertools.count(1)  # numbers every update of a region picker (see `region_status`)


def region_status(clicks: Sequence[Any]) -> str:
    """The hidden state of a region picker, set by every event that changes it: ``data-clicks`` (the
    clicks so far) and ``data-update`` (a number that grows with each update). The page has applied an
    event's outputs once this element shows its number: what a test (or a script) waits on."""
    return f'<span data-clicks="{len(clicks)}" data-update="{next(_UPDATES)}"></span>'



def _upload(gr, **kwargs):
    """An image upload whose file reaches the server as its path, unread.

    `gradio.Image` opens every upload with PIL before any callback runs, so a file that is not an
    image (a text file named ``.png``) fails inside Gradio, which shows a bare "Error" on every
    output. Here the path goes to `Explorer.load`, whose reader (`salfcbm.core.images`) checks it
    and says what is wrong. The page still shows it as a `gradio.Image` (a template of it).
    """
    return _uploaded_image_class(gr)(type="filepath", **kwargs)


def _uploaded_image_class(gr):
    """`gradio.Image` whose ``preprocess`` hands over the uploaded file's path unread (a template of it).

    gradio's component metaclass writes a ``.pyi`` stub next to the module of every component class it
    creates; that would write into the installed package at run time, so the stub writer is switched
    off while this one class is made (once per process).
    """
    global _UPLOADED_IMAGE
    if _UPLOADED_IMAGE is None:
        import gradio.component_meta as meta

        write_stub = meta.create_or_modify_pyi
        meta.create_or_modify_pyi = lambda *args, **kwargs: None
        try:
            class UploadedImage(gr.Image):
                is_template = True  # the browser side is gradio's own Image

                def preprocess(self, payload):
                    if payload is not None and payload.path and not str(payload.url or "").startswith("data:"):
                        return str(payload.path)  # already in gradio's upload cache, as gradio.Image returns it
                    return super().preprocess(payload)
        finally:
            meta.create_or_modify_pyi = write_stub
        _UPLOADED_IMAGE = UploadedImage
    return _UPLOADED_IMAGE


_UPLOADED_IMAGE = None


def _editor_value(gr, ex: Explorer, current, mode: str):
    """The brush editor's picture: sent only while the brush is in use (it costs two images)."""
    if mode != "brush":
        return gr.skip()
    view = None if current is None else ex.view(current)
    return None if view is None else {"background": view, "layers": [], "composite": view}


def _region_inputs(gr, ex: Explorer, state, prefix: str, modes: Sequence[str], label: str):
    """A region picker: a mode, an image to click (box corners, points) and a brush editor."""
    mode = gr.Radio(list(modes), value=modes[0], label="Region", elem_id=f"{prefix}-mode")
    with gr.Row():
        click = gr.Image(label=label, interactive=False, elem_id=f"{prefix}-click", format="png",
                         visible=modes[0] != "brush", height=360)
        brush = gr.ImageEditor(label="Paint the region", elem_id=f"{prefix}-brush", visible=modes[0] == "brush",
                               sources=(), transforms=(), layers=False, type="numpy", format="png", height=360,
                               brush=gr.Brush(colors=["#ff3030"], default_size=max(2, 3 * ex.view_scale)))
    note = gr.Markdown(elem_id=f"{prefix}-region")
    status = gr.HTML(region_status([]), elem_id=f"{prefix}-status", elem_classes="salfcbm-status")
    clicks = gr.State([])

    def show(current, m):
        return (gr.update(visible=m not in ("brush", "whole image")), gr.update(visible=m == "brush"), [], "",
                region_status([]), _editor_value(gr, ex, current, m))

    mode.change(show, [state, mode], [click, brush, clicks, note, status, brush])
    return mode, click, brush, clicks, note, status


def _on_click(gr, ex: Explorer, then=None):
    """A select handler (gradio passes the click's pixel coordinates as SelectData), optionally
    followed, in the same event, by a panel once the region is complete. Its outputs start with
    ``clicks, picture, note, status`` (`region_status`)."""

    def on_click(current, clicks, mode, drawing, evt):
        clicks, shown, note = ex.click(current, clicks, mode, evt.index)
        if then is None:
            return clicks, shown, note, region_status(clicks)
        if mode == "box" and len(clicks) < 2:  # one corner so far: keep the last result
            return (clicks, shown, note, region_status(clicks), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        return (clicks, shown, note, region_status(clicks), *then(current, mode, clicks, drawing))

    on_click.__annotations__ = {"evt": gr.SelectData}  # gradio finds event data by this annotation
    return on_click


def _predict_tab(gr, ex: Explorer, state):
    with gr.Row():
        target = gr.Dropdown(ex.class_choices(), value=PREDICTED, label="Explain class", elem_id="class-select")
        top_k = gr.Slider(1, min(20, ex.model.num_concepts), value=min(ex.top_k, ex.model.num_concepts), step=1,
                          label="Concepts shown", elem_id="top-k")
    msg = gr.Markdown(elem_id="predict-msg", elem_classes="salfcbm-msg")
    with gr.Row():
        probs = gr.Label(num_top_classes=5, label="Top classes", elem_id="probs")
        bars = gr.HTML(label="Concept contributions", elem_id="bars")
    maps = gr.Gallery(label="Where each concept is (heatmaps)", columns=5, height="auto", elem_id="heatmaps")
    scale = gr.HTML(elem_id="heatmap-scale")
    outs = [probs, bars, maps, scale, msg]
    for ev in (target.change, top_k.release):
        ev(ex.predict_panel, [state, target, top_k], outs)
    return (ex.predict_panel, [state, target, top_k], outs)


def _region_tab(gr, ex: Explorer, state):
    mode, click, brush, clicks, note, status = _region_inputs(gr, ex, state, "ea", REGION_MODES,
                                                              "Click two corners for a box, or points")
    with gr.Row():
        run = gr.Button("Explain region", variant="primary", elem_id="ea-run")
        clear = gr.Button("Clear region", elem_id="ea-clear")
    msg = gr.Markdown(elem_id="ea-msg", elem_classes="salfcbm-msg")
    table = gr.Dataframe(headers=REGION_HEADERS, label="Concepts in the region (c_up: the concept maps at the input size)",
                         elem_id="ea-table", interactive=False)
    maps = gr.Gallery(label="Their maps inside the region", columns=5, height="auto", elem_id="ea-maps")
    scale = gr.HTML(elem_id="ea-scale")
    inputs, outs = [state, mode, clicks, brush], [table, maps, scale, msg]
    click.select(_on_click(gr, ex, ex.region_panel), [state, clicks, mode, brush], [clicks, click, note, status, *outs])
    run.click(ex.region_panel, inputs, outs)
    clear.click(lambda cur: ([], None if cur is None else ex.view(cur), "", region_status([])), [state],
                [clicks, click, note, status])
    return (mode, click, brush, clicks, note, status), outs


def _intervene_tab(gr, ex: Explorer, state):
    r = ex.beta_range()
    with gr.Row():
        concept = gr.Dropdown(ex.model.concepts, value=ex.model.concepts[0], label="Concept", filterable=True,
                              elem_id="iv-concept")
        beta = gr.Number(value=round(r / 2, 2), step=r / 100, label="beta (add > 0, remove < 0)", info=ex.beta_info(),
                         elem_id="iv-beta")  # a number box: a typed value is taken as typed, never clamped
        target = gr.Dropdown(ex.class_choices(), value=PREDICTED, label="Report the logit of", elem_id="iv-target")
    mode, click, brush, clicks, note, status = _region_inputs(gr, ex, state, "iv",
                                                              ("box", "points", "brush", "whole image"),
                                                              "Click two corners for a box, or points")
    click.select(_on_click(gr, ex), [state, clicks, mode, brush], [clicks, click, note, status])
    run = gr.Button("Intervene", variant="primary", elem_id="iv-run")
    msg = gr.Markdown(elem_id="iv-msg", elem_classes="salfcbm-msg")
    table = gr.Dataframe(headers=["class", "logit before", "logit after", "change", "p before", "p after"],
                         label="Top classes before and after", elem_id="iv-table", interactive=False)
    inputs, outs = [state, concept, mode, clicks, brush, beta, target], [table, msg]
    for ev in (run.click, beta.submit):
        ev(ex.intervene_panel, inputs, outs)
    return (mode, click, brush, clicks, note, status), outs


def _rules_tab(gr, ex: Explorer):
    names = ex.model.class_names
    with gr.Row():
        classes = gr.Dropdown(names, value=[names[0]], multiselect=True, label="Classes", elem_id="rules-classes")
        k = gr.Slider(1, 20, value=8, step=1, label="Largest weights drawn per class", elem_id="rules-k")
    msg = gr.Markdown(elem_id="rules-msg", elem_classes="salfcbm-msg")
    sankey = gr.HTML(elem_id="sankey")
    table = gr.Dataframe(headers=["class", "concept", "weight"], label="Non-zero weights", elem_id="rules-table",
                         interactive=False)
    outs = [table, sankey, msg]
    classes.change(ex.rules_panel, [classes, k], outs)
    k.release(ex.rules_panel, [classes, k], outs)
    return (ex.rules_panel, [classes, k], outs)


def _search_tab(gr, ex: Explorer, state):
    with gr.Row():
        query = gr.Dropdown(ex.model.concepts, value=None, allow_custom_value=True, filterable=True,
                            label="Concept (type or pick)", elem_id="cs-query")
        run = gr.Button("Search", variant="primary", elem_id="cs-run")
    msg = gr.Markdown(elem_id="cs-msg", elem_classes="salfcbm-msg")
    with gr.Row():
        shown = gr.Image(label="Its map on the current image", interactive=False, elem_id="cs-map", format="png",
                         height=320)
        top = gr.Gallery(label="Where it fires most", columns=3, height="auto", elem_id="cs-top")
    scale = gr.HTML(elem_id="cs-scale")
    for ev in (run.click, query.input):
        ev(ex.search_panel, [state, query], [shown, top, scale, msg])
    return [shown, top, scale, msg]


def _on_load(gr, ex: Explorer, predict_fn, n_stale: int):
    """One event for a new image: state, the region pictures, the prediction panel, and every other
    panel's result cleared (it was the previous image's). An image that cannot be read clears them
    all too, and its message shows both under the upload and in the prediction panel."""

    def loaded(path, t, k, ea_mode, iv_mode):
        cur, view, note = ex.load(path)
        regions = []
        for m in (ea_mode, iv_mode):
            regions += [view, _editor_value(gr, ex, cur, m), [], "", region_status([])]
        if cur is not None:
            shown = predict_fn(cur, t, k)
        else:
            shown = (None, None, None, "", note if path is not None else "")
        return (cur, note, *regions, *shown, *([None] * n_stale))

    return loaded


def build_app(ex: Explorer, examples: Sequence[Any] | None = None, title: str = "salfcbm explorer"):
    """The explorer's `gradio.Blocks` for an `Explorer` (``launch`` it, or mount it)."""
    from salfcbm.app import load_gradio

    gr = load_gradio()
    m = ex.model
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"## {title}\n{m.num_concepts} concepts, {m.num_classes} classes, a {m.grid[0]}x{m.grid[1]} concept grid; "
            f"images are resized to {ex.size[1]}x{ex.size[0]}."
        )
        state = gr.State(None)
        with gr.Row():
            upload = _upload(gr, image_mode=None, sources=["upload", "clipboard"], label="Image", elem_id="upload",
                             height=260)
            with gr.Column():
                load_msg = gr.Markdown("Upload an image or pick an example.", elem_id="load-msg",
                                       elem_classes="salfcbm-msg")
                if examples:
                    gr.Examples([[e] for e in examples], inputs=[upload], label="Examples", examples_per_page=12,
                                elem_id="examples")
        with gr.Tabs():
            with gr.Tab("Predict and explain", id="predict"):
                predict = _predict_tab(gr, ex, state)
            with gr.Tab("Explain anything", id="region"):
                ea, ea_outs = _region_tab(gr, ex, state)
            with gr.Tab("Intervene", id="intervene"):
                iv, iv_outs = _intervene_tab(gr, ex, state)
            with gr.Tab("Decision rules", id="rules"):
                rules = _rules_tab(gr, ex)
            with gr.Tab("Concept search", id="search"):
                cs_outs = _search_tab(gr, ex, state)

        _, (_, target, top_k), predict_outs = predict
        region_outs = [c for tab in (ea, iv) for c in tab[1:]]
        stale = [*ea_outs, *iv_outs, *cs_outs]  # results of the previous image
        upload.change(_on_load(gr, ex, predict[0], len(stale)), [upload, target, top_k, ea[0], iv[0]],
                      [state, load_msg, *region_outs, *predict_outs, *stale])
        app.load(*rules)
    return app
