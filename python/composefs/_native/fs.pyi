"""Directory scanner (native backend): a directory tree read as composefs-rs 0.9
``read_filesystem`` reads it, written as dumpfile text or EROFS images, its large files
hashed (and optionally stored as objects) in parallel.

The contract is shared with ``composefs._pure.fs``.
"""

from collections.abc import Sequence

__all__ = ["mkfs_directory", "scan_directory"]

def scan_directory(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None = None,
    transform: bool = True,
    xattrs: str = "allowlist-only",
    threads: int = 0,
    secure: bool = False,
) -> bytes:
    """Reads the directory tree at ``path`` as composefs-rs ``read_filesystem`` does and
    returns its dumpfile, exactly what ``cfsctl create-dumpfile [--no-propagate-usr-to-root]
    [--xattrs M] DIR`` prints (raw modes).

    The root is opened ``O_NOFOLLOW``; entries are read in byte order; ``Stat`` is
    ``st_mode & 0o7777``, uid, gid, mtime (ns) and every xattr; every non-directory is keyed by
    ``(st_dev, st_ino)`` (hard links); regular files of at most 64 bytes are inline, larger
    ones get their fs-verity digest (``algorithm``), computed by ``threads`` worker threads
    (0: one per core) reading with ``pread``. With ``objects_fd`` (a repository's
    ``objects/`` directory) each external file is also stored as an object, as a layer import
    stores them (``secure``: fs-verity required). With ``transform`` the OCI transform follows
    (root metadata from ``/usr``, ``/run`` emptied, xattrs filtered by ``xattrs``:
    ``"allowlist-only"`` or ``"keep-user-xattrs"``). The GIL is released for the whole call.

    A failing system call raises ``OSError`` (errno, strerror, the entry's path as
    ``filename``); anything else ``ValueError``.
    """

def mkfs_directory(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None = None,
    transform: bool = True,
    xattrs: str = "allowlist-only",
    versions: Sequence[int] = [1],
    threads: int = 0,
    secure: bool = False,
) -> list[bytes]:
    """Scans the directory as :func:`scan_directory` does and returns the EROFS image of each
    format in ``versions`` (0, 1, 2), written straight from the scanned tree (no dumpfile in
    between). The GIL is released for the whole call."""
