"""The composefs dumpfile format: one line per filesystem entry (as ``composefs-info dump``).

A line is ``PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST [XATTR...]``
with every variable field escaped as composefs does: ``\\\\``, ``\\n``, ``\\r``, ``\\t``
and ``\\xNN`` for bytes outside ``!``..``~``; ``-`` stands for an empty field and a literal
``-`` is ``\\x2d``.
Hardlinks are ``PATH 0 @120000 - - - - 0.0 TARGET - -``.

:func:`parse` reads a whole dumpfile into a :class:`composefs.tree.FileSystem` (composefs-rs's
parser rules; negative mtimes accepted) and :func:`write` writes one exactly as composefs-rs
``write_dumpfile`` does. Both are plain Python (``composefs._pure.dumpfile``); the native
backend has its own copy for the merge and the EROFS writer.
"""

from __future__ import annotations

from collections.abc import Iterable

from composefs._pure import dumpfile as _dumpfile
from composefs._pure.tree import FileSystem

__all__ = ["entry_line", "escape", "escape_raw", "hardlink_line", "parse", "write"]

S_IFMT = 0o170000
S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000
S_IFCHR = 0o020000
S_IFBLK = 0o060000
S_IFIFO = 0o010000
S_IFSOCK = 0o140000

_NAMED = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _escape_table(escape_equals: bool) -> list[str]:
    table = []
    for c in range(256):
        if c in _NAMED:
            table.append(_NAMED[c])
        elif (c == ord("=") and escape_equals) or not (0x21 <= c <= 0x7E):
            table.append(f"\\x{c:02x}")
        else:
            table.append(chr(c))
    return table


_PLAIN = _escape_table(False)
_XATTR = _escape_table(True)


def escape_raw(data: bytes, *, escape_equals: bool = False) -> str:
    """Escapes bytes without the ``-`` sentinel rules (xattr names and values)."""
    table = _XATTR if escape_equals else _PLAIN
    return "".join(table[b] for b in data)


def escape(data: bytes) -> str:
    """Escapes an optional field: empty is ``-``, a lone ``-`` is ``\\x2d``."""
    if not data:
        return "-"
    if data == b"-":
        return "\\x2d"
    return escape_raw(data)


def entry_line(
    path: bytes,
    *,
    mode: int,
    size: int = 0,
    nlink: int = 1,
    uid: int = 0,
    gid: int = 0,
    rdev: int = 0,
    mtime: int = 0,
    mtime_nsec: int = 0,
    payload: bytes = b"",
    content: bytes = b"",
    digest: str | None = None,
    xattrs: Iterable[tuple[bytes, bytes]] = (),
) -> str:
    """One dumpfile line; ``mode`` includes the file-type bits."""
    parts = [
        escape(path),
        f"{size} {mode:o} {nlink} {uid} {gid} {rdev} {mtime}.{mtime_nsec}",
        escape(payload),
        escape(content),
        digest if digest is not None else "-",
    ]
    for key, value in xattrs:
        parts.append(
            escape_raw(key, escape_equals=True) + "=" + escape_raw(value, escape_equals=True)
        )
    return " ".join(parts)


def hardlink_line(path: bytes, target: bytes) -> str:
    """A hardlink line (only the path and the target are meaningful)."""
    return f"{escape(path)} 0 @120000 - - - - 0.0 {escape(target)} - -"


def parse(data: bytes | bytearray | memoryview) -> FileSystem:
    """Reads a dumpfile into a tree (composefs-rs's parser rules; negative mtimes accepted).
    Raises ``ValueError`` with composefs-rs's message."""
    return _dumpfile.parse(data)


def write(fs: FileSystem, raw_modes: bool = True) -> bytes:
    """The dumpfile of ``fs``, exactly as composefs-rs ``write_dumpfile`` writes it (with
    ``raw_modes`` False the mode field is the type plus the permission bits only)."""
    return _dumpfile.write(fs, raw_modes)
