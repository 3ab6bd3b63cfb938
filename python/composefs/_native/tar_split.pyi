"""OCI layer import (native backend): decompression, verification, tar → splitstream as
composefs-rs 0.9 ``tar::split_async`` does, and the reverse path (``tar::get_entry``).

See ``docs/internals.md`` (section ``tar_split``) for the contract shared with
``composefs._pure.tar_split``. Malformed input raises :class:`ValueError` with composefs-rs's
or tar-core's message, failed system calls :class:`OSError` with the errno.
"""

from collections.abc import Callable
from typing import TypeAlias

from composefs._contract import LayerSplit, TarEntry

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["read_entries", "split_layer"]

def split_layer(
    source_fd: int,
    compression: str,
    objects_fd: int,
    algorithm: str,
    content_type: int,
    secure: bool,
    threads: int = 0,
    progress: Callable[[int], object] | None = None,
) -> LayerSplit:
    """Reads a layer blob from ``source_fd`` to EOF, decompresses it (``"none"``, ``"gzip"``:
    every member, ``"zstd"``: every frame), hashes blob and tar (sha256), writes the bodies of
    regular files larger than 64 bytes as objects into ``objects_fd`` (in parallel: ``threads``
    workers, 0 = one per core) and returns the splitstream file, not stored.

    ``external_bytes`` is the total size of the external chunks (every occurrence) and
    ``inline_bytes`` that of the inline chunks: together ``tar_size``; ``written_bytes`` is the
    total size of the objects newly written. ``progress`` is called
    with the blob bytes read so far, at most every ~4 MiB and once at the end. The GIL is
    released throughout, except for those calls.
    """

def read_entries(stream_file: _Buffer) -> list[TarEntry]:
    """The tar entries of a layer splitstream file, as composefs-rs's ``tar::get_entry``
    reads them back (paths made absolute, PAX mtime nanoseconds, xattrs sorted by name,
    ``makedev`` device numbers)."""
