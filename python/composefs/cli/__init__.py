"""The ``composefs`` command: cfsctl's commands, names, arguments and output formats.

Errors are printed as ``Error: ...`` followed by a ``Caused by:`` chain (like cfsctl) and
exit with status 1; usage errors exit with status 2; Ctrl-C prints ``Error: interrupted`` and
exits with status 130. No Python traceback is shown for errors of the user's making (set
``COMPOSEFS_TRACEBACK=1`` to see one anyway).

This module is the console script's entry point and stays tiny: the commands (and most of the
package) are imported inside :func:`main`, under the same Ctrl-C handling as the run itself.
A SIGINT that arrives while the interpreter itself starts, before this module runs, is out of
our reach (see docs/differences.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from composefs.cli._main import build_parser as build

    return build()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``composefs`` console script; returns the exit status.

    Called without ``argv`` (as the console script), a Ctrl-C after the run has ended (while
    the interpreter shuts down) is left to the default action: the process ends by the
    signal, without a traceback.
    """
    try:
        try:
            args = argv
            if args is None and os.path.basename(sys.argv[0]) == "composefs-info":
                # multi-call, like cfsctl: `composefs` installed (or linked) as `composefs-info`
                args = ["composefs-info", *sys.argv[1:]]
            from composefs.cli._main import run

            status = run(args)
        finally:
            if argv is None:
                _default_sigint()
    except KeyboardInterrupt:
        if argv is None:
            _default_sigint()
        _report_interrupted()
        return 130
    return status


def _default_sigint() -> None:
    with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _report_interrupted() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, b"Error: interrupted\n")
