"""Work to do when the library starts logging: the ``composefs`` command's log handler.

The command shows warnings of the library by default, but most commands never log: importing
:mod:`logging` (with ``traceback``, ``tokenize``, ``weakref``, ...) for them would cost a sixth
of ``composefs oci images``' start-up. So unless ``-v`` is given, the command leaves its
handler here, and :mod:`composefs._log` installs it on its first import, before any module of
the package has logged (every module logs through :func:`composefs._log.logger`). This module
imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["on_first_use"]

#: called once each (and removed) when :mod:`composefs._log` is first imported
on_first_use: list[Callable[[], None]] = []


def run() -> None:
    while on_first_use:
        on_first_use.pop(0)()
