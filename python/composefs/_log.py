"""The library's loggers: :mod:`logging` under the ``composefs`` logger.

Importing this module puts a :class:`logging.NullHandler` on the ``composefs`` logger, so
that an application which configures no logging sees nothing (not Python's last-resort
output on stderr), and installs the ``composefs`` command's handler if the command left one
(:mod:`composefs._loghook`). Only the modules that log import it (with :mod:`logging`): a
program that never pulls pays nothing for it at start-up. Every module of the package logs
through :func:`logger` (``tests/unit/cli/test_startup.py`` checks it), never
``logging.getLogger`` directly. What is logged (see ``docs/api.md``): at INFO the
steps of a pull, each layer started and finished, each HTTP request; at DEBUG the details.
The ``composefs`` command shows them with ``-v`` / ``-vv``.
"""

from __future__ import annotations

import logging

from composefs import _loghook

__all__ = ["logger"]

logging.getLogger("composefs").addHandler(logging.NullHandler())
_loghook.run()


def logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` (``name`` is the module's ``__name__``)."""
    return logging.getLogger(name)
