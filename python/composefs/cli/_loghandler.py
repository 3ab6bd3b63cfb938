"""The command's handler of the library's log records (imported only once something logs, or
with ``-v``: see :func:`composefs.cli._output.logging_to_stderr`)."""

from __future__ import annotations

import logging
import sys

from composefs._text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["install"]

#: -q, default, -v (-vv and more: DEBUG); -q only silences the progress: warnings stay, as
#: the commands' own ``warning:`` lines do
_LEVELS = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}


class _Handler(logging.Handler):
    """Writes records to stderr (looked up at each record, so that a redirected ``sys.stderr``
    is honoured), or to what ``redirect()`` returns while a progress display owns the
    terminal."""

    def __init__(
        self, verbose: bool, start: float, redirect: Callable[[], Callable[[str], None] | None]
    ) -> None:
        super().__init__()
        self.verbose = verbose
        self.start = start
        self.redirect = redirect

    def format(self, record: logging.LogRecord) -> str:
        message = printable(record.getMessage())
        if not self.verbose:  # warnings and errors of a normal run, like the CLI's own
            return f"{record.levelname.lower()}: {message}"
        elapsed = record.created - self.start
        return f"[{elapsed:8.3f}s {record.levelname:<7} {record.name}] {message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.exc_info and self.verbose:
                from composefs.errors import format_error

                exc = record.exc_info[1]
                if exc is not None:
                    line += "\n" + format_error(exc)
            write = self.redirect()
            if write is not None:
                write(line)
            else:
                stream = sys.stderr
                stream.write(line + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


def install(
    verbosity: int, start: float, redirect: Callable[[], Callable[[str], None] | None]
) -> Callable[[], None]:
    """Adds the handler to the ``composefs`` logger at ``verbosity``'s level; returns what
    puts the logger back as it was."""
    logger = logging.getLogger("composefs")
    handler = _Handler(verbosity > 0, start, redirect)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(verbosity, logging.DEBUG))
    logger.propagate = False

    def uninstall() -> None:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved

    return uninstall
