"""The ``salfcbm`` command line: ``demo``, ``similarities``, ``train``, ``explain``, ``push``, ``app``, ``reproduce``.

Every subcommand has ``--help`` (with defaults) and ``--quiet``; long steps show one
labelled progress bar per stage; training writes a run directory with ``args.json``,
``metrics.json`` and the saved model. Every value is checked at parse time (bounded numbers,
path kinds, devices, conflicting flags). A user error (a missing file, a bad argument, a
corrupt image, any `SalfCBMError`) ends with one line, ``salfcbm: error: ...``, and exit
code 2; set ``SALFCBM_DEBUG=1`` to see the Python traceback instead. SIGINT and SIGTERM end
with one line and exit codes 130 and 143.

The parser is built without importing torch (``salfcbm --help`` starts in a blink); each
command imports what it needs when it runs. One module per command group: `demo`, `train`
(``similarities`` and ``train``), `explain`, `hub` (``push``), `explorer` (``app``), and
`salfcbm.reproduce.cli`; `parser` assembles them, `entry` runs one, `choices` holds the
choices and defaults the parser shows.
"""

from __future__ import annotations

from salfcbm.cli.entry import main
from salfcbm.cli.models import build_cli_backbone
from salfcbm.cli.parser import build_parser

__all__ = ["build_cli_backbone", "build_parser", "main"]

# the old private names of the single-module CLI, imported by tests outside this package (kept until they move)
from salfcbm.cli.entry import one_line as _one_line  # noqa: E402
from salfcbm.cli.common import workers as _workers  # noqa: E402
from salfcbm.cli.models import spec_name as _spec_name  # noqa: E402
from salfcbm.cli.parser import subparsers as _subparsers  # noqa: E402
from salfcbm.cli.train import head_config as _head_config  # noqa: E402
