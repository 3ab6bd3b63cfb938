"""The contract between the two backends (``composefs._native`` and ``composefs._pure``).

Defined once, here:

* the named results that cross the boundary (both backends build these classes: the Rust side
  imports this module, as pyca/cryptography's Rust code builds Python-defined types);
* one :class:`typing.Protocol` per backend module (added with the backend restructuring).

This module imports nothing of ours, so any backend module may import it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "LayerSplit",
    "SplitstreamContents",
    "TarEntry",
    "VerityMeasurement",
]

#: An item of :attr:`SplitstreamContents.chunks`: inline bytes, or an index into ``object_refs``.
Chunk = bytes | int


class VerityMeasurement(NamedTuple):
    """``fsverity.measure_verity``: what ``FS_IOC_MEASURE_VERITY`` returned."""

    algorithm_id: int
    """The kernel's algorithm number (1 sha256, 2 sha512)."""
    digest: bytes


class SplitstreamContents(NamedTuple):
    """``splitstream.parse``: a whole splitstream file, decoded."""

    algorithm_id: int
    """1 (sha256) or 2 (sha512)."""
    content_type: int
    """The u64 at offset 96."""
    stream_size: int
    """Bytes of the reassembled stream."""
    stream_refs: list[bytes]
    """Raw digests of the referenced streams."""
    object_refs: list[bytes]
    """Raw digests of the referenced objects."""
    named_refs: list[tuple[str, int]]
    """``(name, index into stream_refs)`` in stored order."""
    chunks: list[Chunk]
    """Inline ``bytes`` or an ``int`` index into ``object_refs``."""


class LayerSplit(NamedTuple):
    """``tar_split.split_layer``: the splitstream of one layer blob and what it took."""

    stream_file: bytes
    """The complete splitstream file (not yet stored)."""
    blob_sha256: bytes
    """Raw sha256 of the bytes read (the compressed blob)."""
    tar_sha256: bytes
    """Raw sha256 of the decompressed tar."""
    blob_size: int
    tar_size: int
    objects_written: int
    """External bodies newly stored as objects."""
    objects_present: int
    """External bodies already in the repository."""
    external_bytes: int
    """Total size of the external chunks (every occurrence)."""
    inline_bytes: int
    """Total size of the inline chunks; with ``external_bytes``: ``tar_size``."""
    written_bytes: int
    """Total size of the objects newly written."""


class TarEntry(NamedTuple):
    """``tar_split.read_entries``: one tar entry read back from a layer splitstream."""

    path: bytes
    """Absolute as composefs-rs ``make_absolute_path`` makes it; the root is ``b""``."""
    kind: str
    """``"dir" "file" "symlink" "hardlink" "char" "block" "fifo"``."""
    mode: int
    """The header's mode field, unmasked (it may carry file-type bits)."""
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    """From the PAX mtime fraction."""
    size: int
    """File size; 0 for non-files."""
    link_target: bytes | None
    """Symlink target as stored; hard-link target made absolute."""
    rdev: int
    """``makedev(major, minor)`` for devices, else 0."""
    xattrs: list[tuple[bytes, bytes]]
    """Sorted by name."""
    inline: bytes | None
    """Inline file content."""
    object_id: bytes | None
    """Raw digest of the external file content."""
