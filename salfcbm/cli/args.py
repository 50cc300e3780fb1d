"""The pieces every ``salfcbm`` sub-parser shares: the formatter, the one-line-error parser, checked types.

Nothing here imports torch: the parser is built from these before any command runs.
"""

from __future__ import annotations

import argparse
import re

from salfcbm._utils.argtypes import clip_name, device, float_in, int_in
from salfcbm.cli.choices import PRECISIONS

__all__ = ["HUB_ID", "BadUsage", "Formatter", "Parser", "add_common", "add_scorer_args", "repo_id",
           "GRID", "IMAGE_SIZE", "LR", "SEED", "SIMILARITY", "THREADS", "WORKERS"]

#: A Hugging Face Hub repo id, ``user/name``.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# the checked number types of the command line
SEED = int_in(0, 2**32 - 1)  # numpy's legacy seeding takes 32 bits; torch's takes 64
THREADS = int_in(0, 4096)
WORKERS = int_in(0, 512)
IMAGE_SIZE = int_in(8, 8192)
GRID = int_in(1, 64)
SIMILARITY = float_in(-1.0, 1.0)  # a cosine similarity
LR = float_in(0.0, 10.0, open_low=True)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default once, where there is one; keeps descriptions as written.

    No "(default: None)" (required arguments, optional ones without a value) and nothing
    added to a help that already says its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.required or not action.option_strings or action.default in (None, False, argparse.SUPPRESS)
                or "(default" in text or "%(default)" in text):
            return text
        return text + " (default: %(default)s)"


class BadUsage(Exception):
    """A bad command line, raised by `Parser.error` so `salfcbm.cli.main` can print it as one line."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{prog}: {message} (see `{prog} --help`)")


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become one line (``salfcbm: error: ...``) instead of usage + message."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise BadUsage(self.prog, message)


def repo_id(s: str) -> str:
    """An argparse type: a Hub repo id ``user/name``."""
    if not HUB_ID.match(s):
        raise argparse.ArgumentTypeError(f"expected a Hub repo id like 'user/name', got {s!r}")
    return s


def add_common(q: argparse.ArgumentParser, *, threads: int | None = 1) -> None:
    """``--quiet`` and (unless ``threads=None``) ``--threads``."""
    q.add_argument("--quiet", action="store_true", help="no progress bars; print only the result")
    if threads is not None:
        q.add_argument("--threads", type=THREADS, default=threads,
                       help="torch intra-op CPU threads (0 = torch's default)")


def add_scorer_args(q: argparse.ArgumentParser) -> None:
    """The concept scorer, prompt and data-loading options of ``similarities`` and ``train``."""
    g = q.add_argument_group("concept scorer (CLIP) and prompts")
    g.add_argument("--scorer", type=clip_name, default="ViT-B-16",
                   help="open_clip model name, or hf-hub:ORG/REPO, or local-dir:PATH, or a scorer registered with "
                        "salfcbm.supervision.scorers.register_scorer (NAME or NAME:SPEC; built with its own options)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag, a local checkpoint file, or 'none' for a random init (seeded by --seed)")
    g.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="precision of the scorer and of the backbone while features are computed")
    g.add_argument("--grid", type=GRID, default=7, help="prompting grid (GRID x GRID; 7 = 49 CLIP passes per image)")
    g.add_argument("--radius", type=int_in(1, 4096), default=32,
                   help="prompt circle radius in pixels of a 224 px image (scaled to the scorer's resolution)")
    g.add_argument("--image-size", type=IMAGE_SIZE, default=224,
                   help="the backbone's input size: images are resized with the backbone's own eval transform and "
                        "centre-cropped to it; recorded in the saved config")
    g.add_argument("--skip-corrupt", action="store_true",
                   help="leave out unreadable images, images over the pixel limit (PIL.Image.MAX_IMAGE_PIXELS) or too thin to "
                        "resize, and non-regular files (each named in a warning) instead of stopping at the first one")
    g.add_argument("--batch-size", type=int_in(1, 2**20), default=64, help="images per batch")
    g.add_argument("--num-workers", type=WORKERS, default=None,
                   help="DataLoader worker processes, at most the CPU cores available (default: min(4, cores - 1))")
    g.add_argument("--device", type=device, default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--seed", type=SEED, default=0, help="seed of the random CLIP init, bottleneck init and batch order")
