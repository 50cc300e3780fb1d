"""`main`: run one command; user errors as one line (exit 2), SIGINT / SIGTERM as one line (130 / 143)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

from salfcbm.cli.args import BadUsage
from salfcbm.cli.parser import parse

__all__ = ["RESUMABLE", "Signals", "Stopped", "main", "one_line", "stop_line", "user_errors"]

_SIGNALS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}
#: The commands whose rerun resumes from their finished steps.
RESUMABLE = ("demo", "similarities", "train", "reproduce")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions printed as one line (exit 2): salfcbm's, missing files, the Hub's."""
    from salfcbm.errors import SalfCBMError

    errors: list[type[BaseException]] = [SalfCBMError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                         IsADirectoryError, PermissionError]
    try:
        from huggingface_hub.errors import (
            HFValidationError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            LocalTokenNotFoundError,
        )

        errors += [HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, LocalTokenNotFoundError]
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    return tuple(errors)


def one_line(e: BaseException) -> str:
    """The error's message on one line (a DataLoader worker's error: its original last line)."""
    text = str(e)
    if "Original Traceback" in text:  # re-raised by a DataLoader worker: keep the original message
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if re.match(r"^[\w.]+(Error|Exception): ", last) else last
    return " ".join(text.split()) or type(e).__name__


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a command ran (a KeyboardInterrupt, so cleanup code treats it as one)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_line(signum: int, command: str | None) -> str:
    """The one line printed when a signal ends a command."""
    word, _ = _SIGNALS.get(signum, ("interrupted", 130))
    line = f"salfcbm: {word} by {signal.Signals(signum).name}"
    if command in RESUMABLE:
        line += "; finished steps are saved, and rerunning the same command resumes from them"
    return line


class Signals:
    """SIGINT/SIGTERM: raise `Stopped` while the command runs; once it has ended, print one line and exit."""

    def __init__(self):
        self.finished, self.previous, self.command, self.received = False, {}, None, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.finished:
            self.finished, self.received = True, signum  # a second signal during cleanup ends the process at once
            raise Stopped(signum)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os.write(2, (stop_line(signum, self.command) + "\n").encode())
        os._exit(_SIGNALS.get(signum, ("", 130))[1])

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    A user error is one line on stderr, ``salfcbm: error: ...``, and exit code 2. SIGINT and
    SIGTERM end with one line and 130 / 143; a rerun of the same command resumes.
    """
    signals = Signals().__enter__()

    def stopped(signum: int) -> int:
        signals.finished = True
        print(stop_line(signum, signals.command), file=sys.stderr)
        return _SIGNALS[signum][1]

    try:
        try:
            args = parse(argv)
            signals.command = args.command
            code = args.func(args)
        except BadUsage as e:
            print(f"salfcbm: error: {one_line(e)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            return stopped(e.signum if isinstance(e, Stopped) else signal.SIGINT)
        except Exception as e:
            if signals.received is not None:  # the interrupt surfaced as another error (a DataLoader worker's)
                return stopped(signals.received)
            if not isinstance(e, user_errors()) or os.environ.get("SALFCBM_DEBUG"):
                raise
            print(f"salfcbm: error: {one_line(e)}", file=sys.stderr)
            return 2
        if signals.received is not None:  # the command caught the interrupt itself (a server that stopped)
            return stopped(signals.received)
        return code
    finally:
        signals.finished = True
        if argv is not None:  # called as a function: give the caller its handlers back
            signals.restore()
