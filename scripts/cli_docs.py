"""Write docs/api/cli.md, the command-line reference, from salfcbm's argparse parser.

    python scripts/cli_docs.py          # rewrite docs/api/cli.md
    python scripts/cli_docs.py --check  # exit 1 if it is out of date (tests/test_docs.py does this too)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _option_rows(p: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | default | description |", "|---|---|---|"]
    for a in p._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        names = ", ".join(f"`{s}`" for s in a.option_strings) or f"`{a.dest}`"
        if a.choices and not isinstance(a, argparse._SubParsersAction):
            names += " {" + ", ".join(map(str, a.choices)) + "}"
        if a.required or not a.option_strings:
            default = "required"
        elif isinstance(a, argparse._StoreTrueAction):
            default = "off"
        else:
            default = "-" if a.default is None else f"`{a.default}`"
        rows.append(f"| {names} | {default} | {_cell(a.help or '')} |")
    return rows


def render() -> str:
    """The Markdown page (deterministic: usage lines are wrapped at 100 columns)."""
    from salfcbm.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        parts = [
            "# Command line",
            "",
            "<!-- Generated from the argparse parser by `python scripts/cli_docs.py`; do not edit by hand. -->",
            "",
            f"{parser.description} Installed as the `salfcbm` command (`python -m salfcbm.cli` works too).",
            "",
            "Every command takes `--help` (with the defaults shown here) and `--quiet`. Every value is",
            "checked before anything is loaded (numbers finite and within bounds, folders and files of the",
            "right kind, devices present on this machine, no flag that another one would make ignored).",
            "A user error (a bad or conflicting argument, a missing file, a corrupt image, a model that",
            "cannot be loaded, the Hub out of reach) ends with one line, `salfcbm: error: ...`, and exit",
            "code 2; set `SALFCBM_DEBUG=1` to see the traceback. SIGINT (Ctrl-C) and SIGTERM end with one",
            "line and exit codes 130 and 143; rerunning `demo`, `similarities`, `train` or `reproduce`",
            "resumes from the finished steps (see [Reliability](../reliability.md#the-command-line)).",
            "",
            "```text",
            parser.format_usage().strip(),
            "```",
            "",
        ]
        for name, sub in _subparsers(parser).items():
            parts += [f"## salfcbm {name}", "", _cell(sub.description or ""), "", "```text",
                      sub.format_usage().strip(), "```", "", *_option_rows(sub), ""]
        return "\n".join(parts)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def main() -> int:
    path = ROOT / "docs" / "api" / "cli.md"
    text = render()
    if "--check" in sys.argv[1:]:
        ok = path.read_text(encoding="utf-8") == text
        print("docs/api/cli.md is up to date" if ok else "docs/api/cli.md is out of date: run python scripts/cli_docs.py")
        return 0 if ok else 1
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
