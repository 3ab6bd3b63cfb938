"""The ``composefs`` command: cfsctl's commands, names, arguments and output formats.

Errors are printed as ``Error: ...`` followed by a ``Caused by:`` chain (like cfsctl) and
exit with status 1; usage errors exit with status 2. No Python traceback is shown for errors
of the user's making (set ``COMPOSEFS_TRACEBACK=1`` to see one anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from composefs.cli import _common, fsverity_cmd, image_cmd, oci_cmd, repo_cmd
from composefs.errors import ComposefsError, format_error

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="composefs",
        description="Manage composefs repositories, OCI images and composefs images.",
    )
    _common.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    repo_cmd.register(sub)
    fsverity_cmd.register(sub)
    oci_cmd.register(sub)
    image_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``composefs`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`); exit quietly like a Unix tool
        _silence_stdout()
        return 141
    except (ComposefsError, OSError, ValueError) as e:
        if os.environ.get("COMPOSEFS_TRACEBACK"):
            raise
        _flush_quietly()
        print(format_error(e), file=sys.stderr)
        return 1
    _flush_quietly()
    return int(status or 0)


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
