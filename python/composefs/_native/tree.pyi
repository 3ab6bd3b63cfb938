"""OCI layer merge (native backend): layer splitstream files → one tree → dumpfile text, as
composefs-rs 0.9 ``create_filesystem`` + ``write_dumpfile`` (``cfsctl oci dump``) do, with
our whiteout rule (whiteouts hide lower layers only), PAX global headers skipped and ``..``
resolved lexically.

See ``docs/internals.md`` (section ``tree``) for the contract shared with
``composefs._pure.tree``. Malformed input raises :class:`ValueError` with composefs-rs's
message where it has one.
"""

from collections.abc import Sequence
from typing import TypeAlias

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["merge_layers", "mkfs_directory", "mkfs_layers", "scan_directory"]

def merge_layers(
    streams: Sequence[_Buffer], xattrs: str = "allowlist-only", raw_modes: bool = True
) -> bytes:
    """Merges the layer splitstream files ``streams`` (whole files, config diff_id order:
    bottom layer first) and returns the dumpfile of the result.

    Per layer, its whiteouts (``.wh.NAME``, ``.wh..wh..opq``) are applied first to the tree
    of the lower layers (a no-op when the parent directory is missing), then its other
    entries in stream order as composefs-rs ``process_entry`` does. Then, as
    ``transform_for_oci``: the root gets ``/usr``'s metadata (``/usr`` must be a directory),
    ``/run`` is emptied and given ``/usr``'s mtime, and xattrs are filtered: ``xattrs`` is
    ``"allowlist-only"`` (only ``security.capability``) or ``"keep-user-xattrs"`` (also
    ``user.*``).

    With ``raw_modes`` (``cfsctl oci dump``) MODE is ``st_mode | type``; without it,
    ``type | (st_mode & 0o7777)``. The GIL is released for the whole call.
    """

def mkfs_layers(
    streams: Sequence[_Buffer], xattrs: str = "allowlist-only", versions: Sequence[int] = (1,)
) -> list[bytes]:
    """Merges the layers as :func:`merge_layers` does and returns the EROFS image of each
    format in ``versions`` (0, 1, 2), written straight from the merged tree (no dumpfile in
    between). The GIL is released for the whole call."""

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
    versions: Sequence[int] = (1,),
    threads: int = 0,
    secure: bool = False,
) -> list[bytes]:
    """Scans the directory as :func:`scan_directory` does and returns the EROFS image of each
    format in ``versions`` (0, 1, 2), written straight from the scanned tree (no dumpfile in
    between). The GIL is released for the whole call."""
