"""Splitstream files: a byte stream split into inline data and references to objects.

The format is composefs-rs 0.9's (``SplitStreamWriter``): a 32-byte header, an 80-byte info
section, the stream and object reference arrays, a zstd-compressed named-references section
and the zstd-compressed chunk stream. :class:`Writer` produces files byte-identical to cfsctl's;
:func:`parse` reads them (including the legacy header layout).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from composefs import _backend
from composefs._contract import Chunk, WriterLike
from composefs._record import record
from composefs.constants import (
    ALGORITHM_IDS,
    BLOB_CONTENT_TYPE,
    CONFIG_CONTENT_TYPE,
    INDEX_CONTENT_TYPE,
    LAYER_CONTENT_TYPE,
    MANIFEST_CONTENT_TYPE,
)
from composefs.errors import SplitStreamError
from composefs.fsverity import Algorithm, AlgorithmLike, BufferLike, _name

__all__ = [
    "BLOB_CONTENT_TYPE",
    "CONFIG_CONTENT_TYPE",
    "INDEX_CONTENT_TYPE",
    "LAYER_CONTENT_TYPE",
    "MANIFEST_CONTENT_TYPE",
    "SplitStream",
    "Writer",
    "content_type_name",
    "parse",
]


#: The content types (the u64 at offset 96 of the header), defined in :mod:`composefs.constants`:
#: ``ocilayer`` (a tar layer), ``ociconfg`` (an image configuration), ``ocimanif`` (a manifest),
#: ``oci_blob`` (a non-tar blob) and ``ociindx\0`` (an image index: our extension, as planned
#: upstream; composefs-rs 0.9 stores no indexes).


def content_type_name(content_type: int) -> str:
    """The 8 ASCII characters of a content type, or its hex value if it is not printable."""
    raw = content_type.to_bytes(8, "little").rstrip(b"\0")
    if raw and all(0x20 < b < 0x7F for b in raw):
        return raw.decode("ascii")
    return f"0x{content_type:016x}"


@record
class SplitStream:
    """A parsed splitstream file.

    ``chunks`` holds inline data as ``bytes`` and external references as ``int`` indexes
    into ``object_refs``; ``named_refs`` maps names to indexes into ``stream_refs``.
    """

    algorithm: Algorithm
    content_type: int
    stream_size: int
    stream_refs: tuple[bytes, ...]
    object_refs: tuple[bytes, ...]
    named_refs: dict[str, int]
    chunks: tuple[Chunk, ...]

    def named_ref(self, name: str) -> bytes:
        """The stream id the named ref ``name`` points at."""
        return self.stream_refs[self.named_refs[name]]

    def named_ref_ids(self) -> dict[str, bytes]:
        return {name: self.stream_refs[i] for name, i in self.named_refs.items()}

    def iter_chunks(self) -> Iterator[bytes | tuple[bytes]]:
        """Chunks with external ones resolved to a 1-tuple ``(object_id,)``."""
        for chunk in self.chunks:
            if isinstance(chunk, int):
                yield (self.object_refs[chunk],)
            else:
                yield chunk

    def inline_size(self) -> int:
        return sum(len(c) for c in self.chunks if isinstance(c, bytes))

    def rewrite(self, object_size: Callable[[bytes], int]) -> bytes:
        """Writes this stream again with :class:`Writer` (same chunks, same refs).

        ``object_size`` returns the size of an object (external chunk sizes are not stored
        in the file). The result equals the original file when that was written by a
        conforming writer.
        """
        writer = Writer(self.algorithm, self.content_type)
        by_index: dict[int, list[str]] = {}
        for name, index in self.named_refs.items():
            by_index.setdefault(index, []).append(name)
        for index, stream_id in enumerate(self.stream_refs):
            for name in sorted(by_index.get(index, [])):
                writer.add_named_ref(name, stream_id)
        for chunk in self.chunks:
            if isinstance(chunk, int):
                object_id = self.object_refs[chunk]
                writer.write_external(object_id, object_size(object_id))
            else:
                writer.write_inline(chunk)
        return writer.finish()


class Writer:
    """Builds a splitstream file; see ``docs/internals.md`` for the exact rules."""

    __slots__ = ("_inner", "algorithm", "content_type")

    def __init__(self, algorithm: AlgorithmLike, content_type: int) -> None:
        self.algorithm = Algorithm(_name(algorithm))
        self.content_type = content_type
        self._inner: WriterLike = _backend.backend().splitstream.Writer(
            self.algorithm.hash_name, content_type
        )

    def write_inline(self, data: BufferLike) -> None:
        self._inner.write_inline(data)

    def write_external(self, object_id: bytes, size: int) -> None:
        if len(object_id) != self.algorithm.digest_size:
            raise SplitStreamError(
                f"object id has {len(object_id)} bytes, expected {self.algorithm.digest_size}"
            )
        self._inner.write_external(object_id, size)

    def add_named_ref(self, name: str, stream_id: bytes) -> None:
        if len(stream_id) != self.algorithm.digest_size:
            raise SplitStreamError(
                f"stream id has {len(stream_id)} bytes, expected {self.algorithm.digest_size}"
            )
        self._inner.add_named_ref(name, stream_id)

    @property
    def stream_size(self) -> int:
        return self._inner.stream_size

    def finish(self) -> bytes:
        return self._inner.finish()


def parse(
    data: BufferLike,
    algorithm: AlgorithmLike | None = None,
    content_type: int | None = None,
) -> SplitStream:
    """Parses a splitstream file, checking its algorithm and content type when given."""
    try:
        contents = _backend.backend().splitstream.parse(data)
    except ValueError as e:
        raise SplitStreamError(str(e)) from None
    if contents.algorithm_id not in ALGORITHM_IDS.values():
        raise SplitStreamError("Invalid splitstream fs-verity algorithm type")
    alg = Algorithm.from_kernel_id(contents.algorithm_id)
    if algorithm is not None and alg is not Algorithm(_name(algorithm)):
        raise SplitStreamError("Invalid splitstream fs-verity algorithm type")
    if content_type is not None and contents.content_type != content_type:
        raise SplitStreamError("Invalid splitstream content type")
    return SplitStream(
        algorithm=alg,
        content_type=contents.content_type,
        stream_size=contents.stream_size,
        stream_refs=tuple(bytes(r) for r in contents.stream_refs),
        object_refs=tuple(bytes(r) for r in contents.object_refs),
        named_refs=dict(contents.named_refs),
        chunks=tuple(contents.chunks),
    )
