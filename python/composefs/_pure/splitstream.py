"""The splitstream file format of composefs-rs 0.9, in pure Python.

The pure-Python twin of ``composefs._native.splitstream``; see ``docs/internals.md`` for the
contract and ``splitstream-and-layers.md`` §1 for the format. The :class:`Writer` produces files
byte-identical to composefs-rs's ``SplitStreamWriter``: this depends on zstd being driven in
streaming mode (``compressobj``) with the same libzstd version (1.5.7).
"""

from __future__ import annotations

import operator
import re
import struct
from typing import TypeAlias

import zstandard

from composefs._contract import Chunk, SplitstreamContents
from composefs._pure.fsverity import _algorithm as _fsverity_algorithm
from composefs.constants import ALGORITHM_IDS

#: Byte arguments: any contiguous buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["Writer", "parse"]

MAGIC = b"SplitStream"
LG_BLOCKSIZE = 12
HEADER_SIZE = 32
INFO_SIZE = 80

# kernel algorithm id -> digest size, name
_DIGEST_SIZES = {ALGORITHM_IDS["sha256"]: 32, ALGORITHM_IDS["sha512"]: 64}
_NAMES = {kernel_id: name for name, kernel_id in ALGORITHM_IDS.items()}

_U64_MASK = (1 << 64) - 1
_I64 = struct.Struct("<q")
_HEADER = struct.Struct("<11sBHBBQQ")  # magic, version, flags, algorithm, lg_blocksize, info
_OLD_HEADER = struct.Struct("<QQH11sBBB")  # info, flags, magic, version, algorithm, lg_blocksize
_INFO = struct.Struct("<10Q")  # 4 ranges, content_type, stream_size
_ZSTD_LEVEL = 3  # composefs-rs passes 0 = ZSTD_CLEVEL_DEFAULT = 3

# Rust's `usize::from_str`: an optional '+' then ASCII digits.
_INDEX = re.compile(rb"\+?[0-9]+")


def _algorithm(algorithm: str) -> tuple[int, int]:
    """``(kernel id, digest size)``; the errors are the fs-verity module's."""
    kernel_id, _, size = _fsverity_algorithm(algorithm)
    return kernel_id, size


def _u64(value: int, what: str) -> int:
    value = operator.index(value)
    if not 0 <= value <= _U64_MASK:
        raise OverflowError(f"{what} must be an unsigned 64-bit integer, not {value}")
    return value


def _byte_view(data: Buffer) -> memoryview:
    """A flat byte view of any contiguous buffer (bytes, bytearray, memoryview, array, ...)."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _compressor() -> zstandard.ZstdCompressionObj:
    # Streaming mode with unknown content size, exactly as zstd-rs's `Encoder`: never the
    # one-shot `ZstdCompressor.compress()`, which writes the size and picks other parameters.
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compressobj()


class _UniqueVec:
    """Digests in order of first appearance, each with a stable index."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.index: dict[bytes, int] = {}

    def ensure(self, item: bytes) -> int:
        idx = self.index.get(item)
        if idx is None:
            idx = self.index[item] = len(self.items)
            self.items.append(item)
        return idx


class Writer:
    """Builds one splitstream file, byte-identical to composefs-rs 0.9's ``SplitStreamWriter``.

    Inline data is buffered only until the next external reference (it must be written as one
    length-prefixed chunk); everything before is already compressed.
    """

    __slots__ = (
        "_alg_id",
        "_compressed",
        "_compressor",
        "_content_type",
        "_digest_size",
        "_finished",
        "_inline",
        "_named_refs",
        "_object_refs",
        "_stream_refs",
        "_stream_size",
    )

    def __init__(self, algorithm: str, content_type: int) -> None:
        self._alg_id, self._digest_size = _algorithm(algorithm)
        self._content_type = _u64(content_type, "content_type")
        self._stream_refs = _UniqueVec()
        self._object_refs = _UniqueVec()
        self._named_refs: dict[bytes, int] = {}  # UTF-8 name -> index into stream_refs
        self._inline = bytearray()
        self._stream_size = 0
        self._compressor = _compressor()
        self._compressed: list[bytes] = []
        self._finished = False

    def _check(self) -> None:
        if self._finished:
            raise ValueError("splitstream writer is already finished")

    def _digest(self, digest: memoryview, what: str) -> bytes:
        if len(digest) != self._digest_size:
            raise ValueError(
                f"{what} must be {self._digest_size} bytes for {_NAMES[self._alg_id]}, "
                f"not {len(digest)}"
            )
        return bytes(digest)

    @property
    def stream_size(self) -> int:
        """Bytes of the reassembled stream so far (inline bytes plus declared external sizes)."""
        self._check()
        return self._stream_size

    def write_inline(self, data: Buffer) -> None:
        """Appends inline bytes, coalesced with adjacent inline data."""
        view = _byte_view(data)
        self._check()
        self._inline += view
        self._stream_size = (self._stream_size + len(view)) & _U64_MASK

    def _flush_inline(self) -> None:
        inline = self._inline
        if inline:
            compress = self._compressor.compress
            out = compress(_I64.pack(-len(inline))) + compress(inline)
            if out:
                self._compressed.append(out)
            inline.clear()

    def write_external(self, object_id: Buffer, size: int) -> None:
        """Appends a reference to a stored object of ``size`` bytes."""
        size = _u64(size, "size")
        view = _byte_view(object_id)
        self._check()
        object_id = self._digest(view, "object id")
        self._flush_inline()
        idx = self._object_refs.ensure(object_id)
        out = self._compressor.compress(_I64.pack(idx))
        if out:
            self._compressed.append(out)
        self._stream_size = (self._stream_size + size) & _U64_MASK

    def add_named_ref(self, name: str, stream_id: Buffer) -> None:
        """Adds ``name -> stream_id``; a repeated name keeps the last value."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        encoded = name.encode("utf-8")  # lone surrogates: UnicodeEncodeError (a ValueError)
        view = _byte_view(stream_id)
        self._check()
        self._named_refs[encoded] = self._stream_refs.ensure(self._digest(view, "stream id"))

    def __repr__(self) -> str:
        if self._finished:
            return "<composefs._pure.splitstream.Writer (finished)>"
        return (
            f"<composefs._pure.splitstream.Writer {_NAMES[self._alg_id]} "
            f"stream_size={self._stream_size}>"
        )

    def finish(self) -> bytes:
        """The complete splitstream file; the writer cannot be used afterwards."""
        self._check()
        self._flush_inline()
        self._finished = True
        self._compressed.append(self._compressor.flush())
        stream = b"".join(self._compressed)
        self._compressed.clear()

        named = _compressor()
        # Sorted by name as Rust's BTreeMap<Box<str>, _> (UTF-8 byte order).
        records = b"".join(
            b"%d:%s\0" % (idx, name) for name, idx in sorted(self._named_refs.items())
        )
        named_refs = (named.compress(records) if records else b"") + named.flush()

        stream_refs = b"".join(self._stream_refs.items)
        object_refs = b"".join(self._object_refs.items)
        info_start = HEADER_SIZE
        stream_refs_start = info_start + INFO_SIZE
        object_refs_start = stream_refs_start + len(stream_refs)
        named_refs_start = object_refs_start + len(object_refs)
        stream_start = named_refs_start + len(named_refs)
        stream_end = stream_start + len(stream)
        header = _HEADER.pack(
            MAGIC, 0, 0, self._alg_id, LG_BLOCKSIZE, info_start, stream_refs_start
        )
        info = _INFO.pack(
            stream_refs_start,
            object_refs_start,
            object_refs_start,
            named_refs_start,
            stream_start,
            stream_end,
            named_refs_start,
            stream_start,
            self._content_type,
            self._stream_size,
        )
        return b"".join((header, info, stream_refs, object_refs, named_refs, stream))


# --------------------------------------------------------------------------------------------
# Reading


def _range(start: int, end: int) -> tuple[int, int]:
    if end < start:
        raise ValueError("Negative-sized range in splitstream")
    return start, end


def _read_range(data: memoryview, start: int, end: int) -> bytes:
    start, end = _range(start, end)
    section = bytes(data[start:end]) if start < len(data) else b""
    if len(section) != end - start:
        raise ValueError("Incomplete read from splitstream file")
    return section


def _digests(section: bytes, size: int, what: str) -> list[bytes]:
    if len(section) % size:
        raise ValueError(f"Error reading {what}: size {len(section)} is not a multiple of {size}")
    return [section[i : i + size] for i in range(0, len(section), size)]


def _decompress(section: bytes, what: str, first_read: int) -> bytes:
    """Decodes one or more concatenated zstd frames, as composefs-rs's zstd-rs ``Decoder`` does.

    The last frame must be complete; like zstd-rs, an empty section is an error (an incomplete
    frame). Messages name libzstd's error as zstd-rs does.

    ``first_read`` is the size of composefs-rs's first read from the decoder. It matters for
    one corner of libzstd: a frame that declares its content size and fits in that first read is
    decoded in single-pass mode, which checks the declared size; in streaming mode a mismatch
    goes unnoticed when the last block is empty. composefs-rs therefore rejects, for example,
    ``28 b5 2f fd 20 05 01 00 00`` (declared 5 bytes, empty) as named references (first read
    8 KiB) but accepts it as the stream (first read 8 bytes). Later frames are decoded in
    streaming mode.
    """
    decompressor = zstandard.ZstdDecompressor()
    out: list[bytes] = []
    rest = section
    single_pass = 0 <= _declared_size(rest) <= first_read
    try:
        while True:
            obj = decompressor.decompressobj()
            if not single_pass:
                # Feeding the first byte alone keeps libzstd in streaming mode: its single-pass
                # shortcut needs the whole frame in the call that completes the frame header.
                out.append(obj.decompress(rest[:1]))
                rest = rest[1:]
            out.append(obj.decompress(rest))
            if not obj.eof:
                raise ValueError(f"zstd error in splitstream {what}: incomplete frame")
            rest = obj.unused_data
            if not rest:
                return b"".join(out)
            single_pass = False
    except zstandard.ZstdError as e:
        message = str(e).removeprefix("zstd decompressor error: ")
        raise ValueError(f"zstd error in splitstream {what}: {message}") from e


def _declared_size(frame: bytes) -> int:
    """The content size declared in the zstd frame header at the start of ``frame``; -1 if
    there is none or the header is not valid."""
    try:
        size: int = zstandard.frame_content_size(frame[:18])  # 18: the longest frame header
    except zstandard.ZstdError:
        return -1
    return size


def _utf8_error(e: UnicodeDecodeError) -> str:
    """Rust's ``Utf8Error`` message for the same error (both follow Unicode's "maximal
    subpart" rule, so the positions agree)."""
    if e.reason == "unexpected end of data":
        return f"incomplete utf-8 byte sequence from index {e.start}"
    return f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"


def _named_refs(section: bytes, n_stream_refs: int) -> list[tuple[str, int]]:
    # composefs-rs reads them through a BufReader (8 KiB reads).
    data = _decompress(section, "named references", 8192)
    *records, tail = data.split(b"\0")
    result: list[tuple[str, int]] = []
    for record in records:
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"Reading named references section: {_utf8_error(e)}") from None
        idx_str, colon, name = text.partition(":")
        if not colon:
            raise ValueError("Named reference doesn't contain a colon")
        idx_bytes = idx_str.encode()
        if not _INDEX.fullmatch(idx_bytes) or int(idx_bytes) > _U64_MASK:
            raise ValueError("Named reference contains a non-integer index")
        idx = int(idx_bytes)
        if idx >= n_stream_refs:
            raise ValueError("Named reference out of bounds")
        result.append((name, idx))
    if tail:  # bytes after the last NUL
        raise ValueError("Trailing junk in named references section")
    return result


def _chunks(data: bytes, n_object_refs: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    unpack = _I64.unpack_from
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 8:
            raise ValueError("Unexpected EOF in splitstream")
        (n,) = unpack(data, pos)
        pos += 8
        if n < 0:
            length = -n
            if end - pos < length:
                raise ValueError("Unexpected EOF in splitstream")
            chunks.append(data[pos : pos + length])
            pos += length
        else:
            if n >= n_object_refs:
                raise ValueError("Splitstream external reference is out of range")
            chunks.append(n)
    return chunks


def read_metadata(
    data: Buffer,
) -> tuple[int, int, int, list[bytes], list[bytes], list[tuple[str, int]], bytes]:
    """Everything :func:`parse` checks and returns except the chunks: ``(algorithm_id,
    content_type, stream_size, stream_refs, object_refs, named_refs, stream_section)``, the
    stream section still compressed (for readers that decode it as they go)."""
    view = _byte_view(data)
    if len(view) < HEADER_SIZE:
        raise ValueError("Incomplete read from splitstream file")
    magic, version, _flags, algorithm, lg_blocksize, info_start, info_end = _HEADER.unpack_from(
        view
    )
    if magic != MAGIC:
        # The layout written by bootc <= 1.15.x (a reordered, non-repr(C) struct).
        info_start, info_end, _flags, magic, version, algorithm, lg_blocksize = (
            _OLD_HEADER.unpack_from(view)
        )
        if magic != MAGIC:
            raise ValueError("Invalid splitstream header magic value")
    if version != 0:
        raise ValueError(f"Invalid splitstream version {version}")
    digest_size = _DIGEST_SIZES.get(algorithm)
    if digest_size is None:
        raise ValueError("Invalid splitstream fs-verity algorithm type")
    if lg_blocksize != LG_BLOCKSIZE:
        raise ValueError("Invalid splitstream fs-verity block size")

    info = _read_range(view, info_start, info_end)
    if len(info) < INFO_SIZE:
        raise ValueError(
            f"Error reading splitstream metadata: info section is {len(info)} bytes, "
            f"expected {INFO_SIZE}"
        )
    (
        stream_refs_start,
        stream_refs_end,
        object_refs_start,
        object_refs_end,
        stream_start,
        stream_end,
        named_refs_start,
        named_refs_end,
        content_type,
        stream_size,
    ) = _INFO.unpack_from(info)

    stream_refs = _digests(
        _read_range(view, stream_refs_start, stream_refs_end),
        digest_size,
        "splitstream references",
    )
    object_refs = _digests(
        _read_range(view, object_refs_start, object_refs_end),
        digest_size,
        "object references",
    )
    named_refs = _named_refs(_read_range(view, named_refs_start, named_refs_end), len(stream_refs))
    # Like composefs-rs, the stream section is read up to its end or to the end of the file,
    # whichever comes first: a truncated section shows up as a zstd error.
    stream_start, stream_end = _range(stream_start, stream_end)
    stream = bytes(view[stream_start:stream_end]) if stream_start < len(view) else b""
    return (algorithm, content_type, stream_size, stream_refs, object_refs, named_refs, stream)


def parse(data: Buffer) -> SplitstreamContents:
    """Parses a whole splitstream file (current or legacy header); see ``docs/internals.md``.
    Raises :class:`ValueError` on malformed input.
    """
    algorithm, content_type, stream_size, stream_refs, object_refs, named_refs, stream = (
        read_metadata(data)
    )
    # composefs-rs reads the stream chunk by chunk, starting with an 8-byte chunk header.
    chunks = _chunks(_decompress(stream, "stream", 8), len(object_refs))
    return SplitstreamContents(
        algorithm_id=algorithm,
        content_type=content_type,
        stream_size=stream_size,
        stream_refs=stream_refs,
        object_refs=object_refs,
        named_refs=named_refs,
        chunks=chunks,
    )
