"""The ``composefs`` command's parser and run (:func:`composefs.cli.main` imports this)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from composefs.cli import _common, fsverity_cmd, image_cmd, oci_cmd, repo_cmd
from composefs.errors import ComposefsError, format_error

__all__ = ["build_parser", "run"]


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


def run(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the command; returns the exit status (``KeyboardInterrupt``
    propagates: :func:`composefs.cli.main` reports it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
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
