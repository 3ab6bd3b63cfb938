"""Native backend module `erofs`: the composefs EROFS image writer (see the pure twin
``composefs._pure.erofs`` and ``docs/internals.md``).

``mkfs``: images byte-identical to composefs-rs 0.9 (``mkfs_erofs_versioned``): format 0 and 1
follow C mkcomposefs's layout for the trees composefs-rs can describe, format 2 is composefs-rs's
legacy layout. ``mkcomposefs``: C mkcomposefs 1.0 itself (its dumpfile rules and its writer;
``rust/mkcomposefs.rs``, pure twin ``composefs._pure.mkcomposefs``).
"""

from typing import TypeAlias

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["mkcomposefs", "mkfs"]

def mkfs(dumpfile: _Buffer, version: int) -> bytes:
    """Parses ``dumpfile`` (composefs-dump(5) text) and returns the EROFS image of format
    ``version`` (0, 1 or 2). The GIL is released while the image is built.

    Raises :class:`ValueError` for a malformed dumpfile (composefs-rs's message), a tree the
    writer rejects (e.g. "invalid composefs filesystem: whiteout inode has nlink > 1") or an
    unsupported ``version``.
    """

def mkcomposefs(dumpfile: _Buffer, min_version: int, max_version: int, strict: bool) -> bytes:
    """The image C ``mkcomposefs --min-version=MIN --max-version=MAX --from-file`` writes for
    ``dumpfile``; ``strict``: as with ``CFS_PARSE_STRICT`` set. The GIL is released.

    Raises :class:`ValueError` for an input C refuses (``"line 3: Invalid mode 0"``), or one
    whose image C cannot reproduce (see docs/differences.md).
    """
