"""The ``salfcbm`` parser: every sub-command's options, checked at parse time, built without torch.

`build_parser` adds one sub-parser per command module (`salfcbm.cli.demo`, `.train`, `.explain`,
`.hub`, `.explorer`, `salfcbm.reproduce.cli`); `parse` also refuses flags that another one would
make ignored. Choices and defaults come from torch-free sources (`salfcbm.cli.choices`).
"""

from __future__ import annotations

import argparse

from salfcbm.cli import demo, explain, explorer, hub, train
from salfcbm.cli.args import BadUsage, Formatter, Parser
from salfcbm.cli.common import cuda_available

__all__ = ["build_parser", "conflicts", "given", "parse", "subparsers"]


def build_parser() -> argparse.ArgumentParser:
    """The ``salfcbm`` argument parser (also the source of ``docs/api/cli.md``)."""
    from salfcbm import __version__
    from salfcbm.reproduce.cli import add_parser as add_reproduce

    p = Parser(prog="salfcbm", formatter_class=Formatter,
               description="Spatially-aware, label-free concept bottleneck models.")
    p.add_argument("--version", action="version", version=f"salfcbm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    train.add_similarities_parser(sub)
    train.add_train_parser(sub)
    explain.add_parser(sub)
    hub.add_parser(sub)
    explorer.add_parser(sub)
    add_reproduce(sub, formatter_class=Formatter)
    return p


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by command name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def given(parser: argparse.ArgumentParser, argv: list[str] | None, command: str) -> set[str]:
    """The destinations of the options given on the command line (not left at their defaults)."""
    sub = subparsers(parser)[command]
    saved = [(a, a.default) for a in sub._actions]
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv))) - {"command", "func"}
    finally:
        for a, default in saved:
            a.default = default


def conflicts(args, given: set[str]) -> list[str]:
    """Flags that would be ignored or contradict each other: each an error naming the fix."""
    bad = []
    if getattr(args, "dense", False):
        for dest, flag in (("target_nec", "--target-nec"), ("lam", "--lam"), ("preset", "--preset"),
                           ("path_points", "--path-points")):
            if dest in given:
                bad.append(f"{flag} selects a point on the sparse head's path and --dense fits no path; drop {flag} "
                           "or --dense")
    if getattr(args, "no_filter", False) and "clip_cutoff" in given:
        bad.append("--clip-cutoff sets a concept filter and --no-filter turns the filters off; drop one of them")
    scorer = str(getattr(args, "scorer", "") or "")
    if "pretrained" in given and scorer.startswith(("local-dir:", "hf-hub:")):
        bad.append(f"--pretrained does not apply to the scorer {scorer!r} (its weights come from "
                   f"{scorer.split(':', 1)[0]}:); drop --pretrained, or name an open_clip model with --scorer")
    if getattr(args, "measure_throughput", False) and "throughput" in given:
        bad.append("--measure-throughput measures the throughput that --throughput states; pass one of them")
    if "dry_run_scorer" in given and not getattr(args, "dry_run", False):
        bad.append("--dry-run-scorer applies only with --dry-run; add --dry-run or drop --dry-run-scorer")
    return bad


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The parsed command line, every value checked; conflicting flags raise `BadUsage`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = conflicts(args, given(parser, argv, args.command))
    if bad:
        raise BadUsage(f"salfcbm {args.command}", "; ".join(bad))
    if args.command in ("similarities", "train") and args.device is None:
        args.device = "cuda" if cuda_available() else "cpu"
    return args
