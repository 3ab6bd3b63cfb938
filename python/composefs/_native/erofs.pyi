"""Native backend module `erofs`: the composefs EROFS image writer (see the pure twin
``composefs._pure.erofs`` and ``docs/internals.md``).

Images are byte-identical to composefs-rs 0.9 (``mkfs_erofs_versioned``): format 0 and 1 equal C
``mkcomposefs --max-version=0`` and ``--min-version=1`` output, format 2 is composefs-rs's legacy
layout.
"""

from typing import TypeAlias

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["mkfs"]

def mkfs(dumpfile: _Buffer, version: int) -> bytes:
    """Parses ``dumpfile`` (composefs-dump(5) text) and returns the EROFS image of format
    ``version`` (0, 1 or 2). The GIL is released while the image is built.

    Raises :class:`ValueError` for a malformed dumpfile (composefs-rs's message), a tree the
    writer rejects (e.g. "invalid composefs filesystem: whiteout inode has nlink > 1") or an
    unsupported ``version``.
    """
