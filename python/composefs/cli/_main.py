"""The ``composefs`` command's parser and run (:func:`composefs.cli.main` imports this).

Start-up: the parser knows every command's name and one-line help from :data:`COMMANDS`
alone. A command's module (its arguments and everything it imports) is loaded only when the
command is chosen, or when its own ``--help`` is asked for: ``composefs --help`` imports
nothing of the package beyond this module, ``composefs oci images`` only the ``oci`` commands
and what listing images needs. ``tests/unit/cli/test_startup.py`` keeps it so.
"""

from __future__ import annotations

import argparse
import os
import sys

from composefs.cli import _common

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

__all__ = ["COMMANDS", "build_parser", "run"]

#: command -> (module of ``composefs.cli`` that defines it, one-line help, aliases), in the
#: order ``--help`` lists them; the module's ``configure(name, parser)`` adds the arguments
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "init": ("repo_cmd", "initialize a repository", ()),
    "transaction": (
        "repo_cmd",
        "take a transaction lock on the repository (it prevents garbage collection) until "
        "interrupted or killed",
        (),
    ),
    "fsck": ("repo_cmd", "check the repository's integrity", ()),
    "gc": ("repo_cmd", "remove unreferenced objects and dangling links", ()),
    "cat": ("repo_cmd", "write a stream's reassembled content to stdout", ()),
    "images": ("repo_cmd", "list image refs", ("list-images",)),
    "image-objects": ("repo_cmd", "list the objects an image references", ()),
    "dump-files": (
        "surface_cmd",
        "print files of a composefs image of the repository as dumpfile lines (a directory: "
        "everything below it)",
        (),
    ),
    "import-image": (
        "surface_cmd",
        "store a composefs image read on stdin as images/<id> and images/refs/REFERENCE",
        (),
    ),
    "composefs-info": (
        "composefs_info",
        "query composefs images (C composefs-info's commands)",
        (),
    ),
    "fsverity": ("fsverity_cmd", "fs-verity utilities", ()),
    "oci": ("oci_cmd", "commands for OCI images and layers", ()),
    "create-image": (
        "image_cmd",
        "store a directory's files as objects and its tree as a composefs image",
        (),
    ),
    "compute-id": (
        "image_cmd",
        "compute the composefs image id of a directory (nothing is stored)",
        (),
    ),
    "create-dumpfile": (
        "image_cmd",
        "print a directory's tree as a composefs dumpfile (nothing is stored)",
        (),
    ),
    "mount": ("image_cmd", "mount a composefs image of the repository", ()),
    "mkcomposefs": (
        "image_cmd",
        "build a composefs image from a directory or a dumpfile (C mkcomposefs's options)",
        (),
    ),
}

#: commands whose every argument (options and ``--help`` included) is their own tool's
#: command line: no help option, no option prefix, no global options after the name
RAW_COMMANDS = frozenset({"composefs-info"})

_TRAILING_NOTE = "Global options (see `composefs --help`) may also follow the command."


class _Parser(argparse.ArgumentParser):
    """A parser that is completed on first use: the arguments of a command are added (by its
    module's ``configure``) only when the command is parsed or its help is shown, and every
    command's parser then also accepts the global options after the command name."""

    _configure: Callable[[argparse.ArgumentParser], None] | None = None
    _top = False
    _raw = False
    _prepared = False

    def prepare(self) -> None:
        if self._prepared:
            return
        self._prepared = True
        if self._configure is not None:
            self._configure(self)
        if not self._top and not self._raw:
            _common.add_global_options(self, trailing=True)
            self.epilog = _TRAILING_NOTE

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.prepare()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.prepare()
        return super().format_help()


class _VersionAction(argparse.Action):
    """``--version``: the package version and the backend in use (loaded only now)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        import composefs

        print(f"composefs {composefs.__version__} ({composefs.backend} backend)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="composefs",
        description="Manage composefs repositories, OCI images and composefs images.",
    )
    parser._top = True
    parser.add_argument(
        "--version", action=_VersionAction, help="print the version and the backend, then exit"
    )
    _common.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help, aliases) in COMMANDS.items():
        raw = name in RAW_COMMANDS
        command = sub.add_parser(
            name,
            help=help,
            description=help,
            aliases=list(aliases),
            add_help=not raw,
            prefix_chars="\0" if raw else "-",
        )
        command._raw = raw
        command._configure = _configurator(module, name)
    return parser


def _configurator(module: str, name: str) -> Callable[[argparse.ArgumentParser], None]:
    def configure(parser: argparse.ArgumentParser) -> None:
        import importlib

        importlib.import_module(f"composefs.cli.{module}").configure(name, parser)

    return configure


def run(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the command; returns the exit status (``KeyboardInterrupt``
    propagates: :func:`composefs.cli.main` reports it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += vars(args).pop("verbose_after", 0)
    problem = _common.global_option_conflicts(args)
    if problem is not None:
        parser.error(problem)
    from composefs.cli import _output

    with _output.logging_to_stderr(-1 if args.quiet else args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from composefs.errors import ComposefsError, format_error

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
