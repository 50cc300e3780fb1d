"""``salfcbm app``: explore a saved SALF-CBM in the browser (the `salfcbm.app` explorer)."""

from __future__ import annotations

from salfcbm._utils.argtypes import in_dir, int_in
from salfcbm.cli.args import Formatter, add_common
from salfcbm.cli.common import set_threads

__all__ = ["add_parser", "cmd_app"]


def add_parser(sub) -> None:
    """Add ``salfcbm app`` to the sub-parsers ``sub``."""
    a = sub.add_parser("app", formatter_class=Formatter,
                       help="explore a saved SALF-CBM in the browser (pip install 'salfcbm[app]')",
                       description="Start the explorer, a local web app: predict and explain, explain anything "
                                   "(draw a region), intervene with a brush, decision rules, concept search.")
    a.add_argument("model", help="model directory, demo run directory (or its model/ folder), or Hub repo id")
    a.add_argument("--images", type=in_dir, default=None,
                   help="folder of images for Concept search (a demo run brings its test scenes)")
    a.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1: this machine only)")
    a.add_argument("--port", type=int_in(1, 65535), default=None, help="port (default: the first free one from 7860)")
    a.add_argument("--share", action="store_true", help="ask Gradio for a public link (contacts Gradio's servers)")
    a.add_argument("--top-k", type=int_in(1, 10**4), default=5, help="concepts shown per class or region")
    add_common(a)
    a.set_defaults(func=cmd_app)


def cmd_app(args) -> int:
    """Serve the explorer until it is stopped."""
    from salfcbm.app import launch

    set_threads(args)
    launch(args.model, images=args.images, host=args.host, port=args.port, share=args.share, top_k=args.top_k,
           quiet=args.quiet)
    return 0
