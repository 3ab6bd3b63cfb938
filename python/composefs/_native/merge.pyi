"""OCI layer merge (native backend): layer splitstream files → one tree → dumpfile text, as
composefs-rs 0.9 ``create_filesystem`` + ``write_dumpfile`` (``cfsctl oci dump``) do, with
our whiteout rule (whiteouts hide lower layers only), PAX global headers skipped and ``..``
resolved lexically.

See ``docs/internals.md`` (section ``tree``) for the contract shared with
``composefs._pure.merge``. Malformed input raises :class:`ValueError` with composefs-rs's
message where it has one.
"""

from collections.abc import Sequence
from typing import TypeAlias

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["merge_layers", "merge_layers_to_fd", "mkfs_layers"]

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

def merge_layers_to_fd(
    streams: Sequence[_Buffer], fd: int, xattrs: str = "allowlist-only", raw_modes: bool = True
) -> int:
    """Merges the layers as :func:`merge_layers` does and writes the same dumpfile text to the
    file descriptor ``fd`` as it is produced, in ``write(2)`` calls of about 1 MiB (whole
    lines; partial writes continued, ``EINTR`` retried); returns the number of bytes written.
    The descriptor is not closed. A failed write raises ``OSError`` with its errno (the rest
    is not written). The GIL is released for the whole call."""

def mkfs_layers(
    streams: Sequence[_Buffer], xattrs: str = "allowlist-only", versions: Sequence[int] = [1]
) -> list[bytes]:
    """Merges the layers as :func:`merge_layers` does and returns the EROFS image of each
    format in ``versions`` (0, 1, 2), written straight from the merged tree (no dumpfile in
    between). The GIL is released for the whole call."""
