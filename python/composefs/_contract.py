"""The contract between the two backends (``composefs._native`` and ``composefs._pure``).

Defined once, here:

* the named results that cross the boundary (both backends build these classes: the Rust side
  imports this module, as pyca/cryptography's Rust code builds Python-defined types);
* one :class:`typing.Protocol` per backend module (:class:`FsverityModule`,
  :class:`SplitstreamModule`, :class:`TarSplitModule`, :class:`MergeModule`,
  :class:`ErofsModule`, :class:`FsModule`): the functions and classes each backend exposes under
  that module name, with their signatures. ``composefs._backend.Backend`` is typed with them and
  mypy checks both ``composefs._pure.<name>`` and the stubs of ``composefs._native.<name>``
  against them; a unit test compares names and signatures of the two backends at run time.

The behaviour behind the signatures (errors, GIL, byte-for-byte rules) is described in
``docs/internals.md``. This module imports nothing of ours, so any backend module may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeAlias

__all__ = [
    "BACKEND_MODULES",
    "Buffer",
    "Chunk",
    "ErofsModule",
    "FsModule",
    "FsverityModule",
    "HasherLike",
    "LayerSplit",
    "MergeModule",
    "SplitstreamContents",
    "SplitstreamModule",
    "TarEntry",
    "TarSplitModule",
    "VerityMeasurement",
    "WriterLike",
]

#: Byte arguments: any contiguous buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview

#: An item of :attr:`SplitstreamContents.chunks`: inline bytes, or an index into ``object_refs``.
Chunk: TypeAlias = bytes | int


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


# -- the backend modules --------------------------------------------------------------------------
# Defaults are written ``...`` here: the values are the backends' (``xattrs`` defaults to
# ``composefs.constants.ALLOWLIST_ONLY``, ``versions`` to ``(DEFAULT_EROFS_VERSION,)``, ``threads``
# to 0: one per core); the contract test checks that both backends agree.


class HasherLike(Protocol):
    """An instance of ``fsverity.Hasher``: incremental fs-verity digest."""

    def update(self, data: Buffer) -> None: ...
    def digest(self) -> bytes: ...
    @property
    def size(self) -> int:
        """Bytes fed so far."""
        ...


class FsverityModule(Protocol):
    """Backend module ``fsverity``."""

    @property
    def Hasher(self) -> Callable[[str], HasherLike]:
        """The class; ``Hasher(algorithm)``."""
        ...

    def digest(self, data: Buffer, algorithm: str) -> bytes: ...
    def digest_fd(self, fd: int, algorithm: str, threads: int = ...) -> bytes: ...
    def enable_verity(self, fd: int, algorithm: str) -> None: ...
    def measure_verity(self, fd: int, algorithm: str) -> VerityMeasurement: ...


class WriterLike(Protocol):
    """An instance of ``splitstream.Writer``."""

    def write_inline(self, data: Buffer) -> None: ...
    def write_external(self, object_id: Buffer, size: int) -> None: ...
    def add_named_ref(self, name: str, stream_id: Buffer) -> None: ...
    @property
    def stream_size(self) -> int: ...
    def finish(self) -> bytes: ...


class SplitstreamModule(Protocol):
    """Backend module ``splitstream``."""

    @property
    def Writer(self) -> Callable[[str, int], WriterLike]:
        """The class; ``Writer(algorithm, content_type)``."""
        ...

    def parse(self, data: Buffer) -> SplitstreamContents: ...


class TarSplitModule(Protocol):
    """Backend module ``tar_split``."""

    def split_layer(
        self,
        source_fd: int,
        compression: str,
        objects_fd: int,
        algorithm: str,
        content_type: int,
        secure: bool,
        threads: int = ...,
        progress: Callable[[int], object] | None = ...,
    ) -> LayerSplit: ...
    def read_entries(self, stream_file: Buffer) -> list[TarEntry]: ...


class MergeModule(Protocol):
    """Backend module ``merge``: the OCI layer merge."""

    def merge_layers(
        self, streams: Sequence[Buffer], xattrs: str = ..., raw_modes: bool = ...
    ) -> bytes: ...
    def merge_layers_to_fd(
        self, streams: Sequence[Buffer], fd: int, xattrs: str = ..., raw_modes: bool = ...
    ) -> int: ...
    def mkfs_layers(
        self, streams: Sequence[Buffer], xattrs: str = ..., versions: Sequence[int] = ...
    ) -> list[bytes]: ...


class ErofsModule(Protocol):
    """Backend module ``erofs``: the image writer (composefs-rs's, and C mkcomposefs's)."""

    def mkfs(self, dumpfile: Buffer, version: int) -> bytes: ...
    def mkcomposefs(
        self, dumpfile: Buffer, min_version: int, max_version: int, strict: bool
    ) -> bytes: ...


class FsModule(Protocol):
    """Backend module ``fs``: the directory scanner."""

    def scan_directory(
        self,
        path: str | bytes,
        algorithm: str,
        objects_fd: int | None = ...,
        transform: bool = ...,
        xattrs: str = ...,
        threads: int = ...,
        secure: bool = ...,
    ) -> bytes: ...
    def mkfs_directory(
        self,
        path: str | bytes,
        algorithm: str,
        objects_fd: int | None = ...,
        transform: bool = ...,
        xattrs: str = ...,
        versions: Sequence[int] = ...,
        threads: int = ...,
        secure: bool = ...,
    ) -> list[bytes]: ...


#: Backend module name -> its Protocol (what ``composefs._backend.Backend`` exposes).
BACKEND_MODULES: dict[str, type] = {
    "fsverity": FsverityModule,
    "splitstream": SplitstreamModule,
    "tar_split": TarSplitModule,
    "merge": MergeModule,
    "erofs": ErofsModule,
    "fs": FsModule,
}
