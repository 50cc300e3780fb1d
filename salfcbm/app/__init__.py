"""The explorer: a local web app to predict, explain anything, intervene, read rules and search concepts.

``salfcbm app MODEL_DIR_OR_REPO [--images FOLDER]`` on the command line, or from Python or a
notebook::

    from salfcbm.app import launch
    launch("runs/demo/model")                    # a saved model directory, a Hub repo id, or a SALFCBM

Built on Gradio (``pip install 'salfcbm[app]'``), so a saved model can also become a Hugging Face
Space. ``import salfcbm`` does not load this package. The panels are the methods of
`Explorer`, which call the library's public API only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salfcbm.errors import InputError, MissingExtraError

if TYPE_CHECKING:  # pragma: no cover
    import gradio

__all__ = ["launch", "load_model", "build_app", "Explorer", "EXAMPLES_DIR", "load_gradio"]

#: The folder of a saved model that holds example images: shown as examples and searched by default.
EXAMPLES_DIR = "examples"


def load_gradio():
    """Import gradio with telemetry off (unless the user set it), or name the install."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as e:
        raise MissingExtraError("gradio", "app", "The explorer (`salfcbm app`)") from e
    return gradio


def load_model(source: Any):
    """A model and the images that come with it: ``(model, images or None)``.

    ``source`` is a `SALFCBM`, a directory written by ``save_pretrained`` (or a run folder that holds
    one as ``model/``, as ``salfcbm train`` and ``salfcbm demo`` write) or a Hub repo id. A saved model
    folder may carry example images in ``examples/`` (`EXAMPLES_DIR`; the demo's model brings its test
    scenes there): they are the images to search.
    """
    from salfcbm.core.model import SALFCBM

    if isinstance(source, SALFCBM):
        return source, None
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"Expected a SALFCBM, a model directory or a Hub repo id, got {type(source).__name__}.")
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"  # a run folder: its model is in model/
    if path.is_dir():
        examples = path / EXAMPLES_DIR
        return SALFCBM.from_pretrained(str(path)).eval(), (str(examples) if examples.is_dir() else None)
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InputError(
            f"{text!r} is neither a model directory nor a Hub repo id (owner/name). Pass the folder that "
            "holds config.json and model.safetensors, e.g. runs/demo/model."
        )
    return SALFCBM.from_pretrained(text).eval(), None


def _example_files(images: Any, n: int = 8) -> list[str]:
    """Up to ``n`` example images as files (gradio's examples are files)."""
    from salfcbm.app.images import list_images

    if images is None:
        return []
    if isinstance(images, (str, os.PathLike)):
        return [str(p) for p in list_images(images, n)]
    from PIL import Image

    from salfcbm.viz.figures import to_display

    out = Path(tempfile.mkdtemp(prefix="salfcbm-examples-"))
    files = []
    for i in range(min(n, len(images))):
        item = images[i][0] if isinstance(images[i], tuple) else images[i]
        arr = (to_display(item) * 255 + 0.5).astype("uint8")
        Image.fromarray(arr).save(out / f"example_{i}.png")
        files.append(str(out / f"example_{i}.png"))
    return files


def build_app(model: Any, images: Any = None, *, top_k: int = 5, max_images: int = 1000) -> gradio.Blocks:
    """The explorer as a `gradio.Blocks` (not started): ``app.launch()`` or mount it yourself."""
    from salfcbm.app.explorer import Explorer
    from salfcbm.app.ui import build_app as _build

    load_gradio()
    model, found = load_model(model)
    images = images if images is not None else found
    ex = Explorer(model, images, top_k=top_k, max_images=max_images)
    ex.warm_up()
    return _build(ex, examples=_example_files(images))


def launch(
    model: Any,
    images: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    top_k: int = 5,
    max_images: int = 1000,
    quiet: bool = False,
) -> gradio.Blocks:
    """Start the explorer on ``http://host:port`` (default 127.0.0.1 and a free port from 7860).

    Args:
        model: a `SALFCBM`, a saved model directory or a Hub repo id.
        images: a folder (or list of images, or a dataset) to search by concept; default: the saved
            model's ``examples/`` folder, if it has one (the demo's model brings its test scenes there).
        host: interface to listen on; the default serves this machine only.
        port: port; ``None`` = the first free one from 7860.
        share: ask Gradio for a public link (off by default; it contacts Gradio's servers).
        block: wait until interrupted (a script); ``False`` returns at once (a notebook, a test).
        top_k: concepts shown per class or region.
        max_images: at most this many images are indexed for Concept search.
        quiet: no start-up message.

    Returns:
        The running `gradio.Blocks`; ``app.close()`` stops it, ``app.local_url`` is its address.

    Raises:
        MissingExtraError: gradio is not installed (``pip install 'salfcbm[app]'``).
    """
    app = build_app(model, images, top_k=top_k, max_images=max_images)
    app.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=quiet,
        ssr_mode=False, mcp_server=False, footer_links=[], show_error=False, enable_monitoring=False,
        theme=load_gradio().themes.Default(), css=_css(),
    )
    return app


def _css() -> str:
    from salfcbm.app.ui import CSS

    return CSS


def __getattr__(name: str):
    if name == "Explorer":
        from salfcbm.app.explorer import Explorer

        return Explorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
