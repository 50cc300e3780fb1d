"""``salfcbm explain``: explain images with a saved SALF-CBM and write an HTML report."""

from __future__ import annotations

import os

from salfcbm._utils.argtypes import in_file, int_in, out_file
from salfcbm.cli.args import Formatter, add_common
from salfcbm.cli.common import set_threads
from salfcbm.cli.models import load_model

__all__ = ["add_parser", "check_images", "cmd_explain"]


def add_parser(sub) -> None:
    """Add ``salfcbm explain`` to the sub-parsers ``sub``."""
    e = sub.add_parser("explain", formatter_class=Formatter,
                       help="explain images with a saved SALF-CBM and write an HTML report",
                       description="Explain images with a saved SALF-CBM: a model directory, a `salfcbm train` "
                                   "run's model/ folder, a `salfcbm demo` run folder, or a Hub repo id.")
    e.add_argument("--model", required=True, help="model directory, demo run directory, or Hub repo id")
    e.add_argument("images", nargs="+", type=in_file, help="image files")
    e.add_argument("--backbone", default=None,
                   help="rebuild the backbone from this name instead of the saved spec (for a custom backbone)")
    e.add_argument("--backbone-weights", default=None,
                   help="with --backbone: 'default', a tag, a local file or 'none' (default: the saved spec's)")
    e.add_argument("--top-k", type=int_in(1, 10**4), default=5, help="concepts shown per image")
    e.add_argument("--out", type=out_file, default="explanations.html", help="HTML report to write")
    e.add_argument("--no-verify-backbone", action="store_true",
                   help="load even if the backbone's weights differ from the fingerprint saved with the model")
    add_common(e)
    e.set_defaults(func=cmd_explain)


def check_images(paths: list[str]) -> None:
    """Every image file opens as an image (its header and structure are read, no pixels decoded)."""
    from PIL import Image, UnidentifiedImageError

    from salfcbm.errors import CorruptImageError

    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Image.DecompressionBombError:
            continue  # a readable image; the image reader applies its size rule when the pixels are read
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise CorruptImageError(
                f"Cannot read image {p!r} ({type(e).__name__}: {e}). Remove or replace the file; nothing was "
                "explained (every image is checked before the model is loaded)."
            ) from e


def cmd_explain(args) -> int:
    """Explain ``args.images`` (each checked before the model is loaded) and write the report."""
    from salfcbm.explain.evidence import EVIDENCE_LABELS
    from salfcbm.viz import write_html_report

    set_threads(args)
    check_images(args.images)  # every input, before the model costs anything to load
    model = load_model(args)
    x = model.image_transform.view(list(args.images))  # the one image entry point: what the model sees, in [0, 1]
    expl = model.explain(model.image_transform.normalize(x), top_k=args.top_k)
    out = write_html_report(args.out, x, expl, model=model, names=[os.path.basename(p) for p in args.images])
    for p, e in zip(args.images, expl):
        c = e.classes[0]
        shown = ", ".join(f"{n} ({float(s):+.2f}, {EVIDENCE_LABELS.get(k, k)})"
                          for n, s, k in zip(c.concepts, c.scores, c.evidence))
        print(f"{p}: {model.class_names[c.target]} <- " + (shown or "NO CONTRIBUTING CONCEPT: every head weight of "
                                                           "this class is zero (a degenerate head; refit it)"))
    print(f"report: {out}")
    return 0
