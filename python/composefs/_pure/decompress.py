"""Streaming layer decompression (gzip, zstd, none) in bounded memory.

A :class:`Decoder` pulls compressed bytes from a ``read_input(size) -> bytes`` callable (``b""``
at end of input) and hands out decompressed bytes with :meth:`Decoder.read`, never more than
asked for. Memory stays bounded whatever the compression ratio: zlib is asked for at most the
requested output per call, and zstd input is fed one block at a time (a block decodes to at most
128 KiB).

Every gzip member and every zstd frame is decoded and zstd skippable frames are skipped, as
composefs-rs 0.9.4 does (``multiple_members(true)``; 0.9.0 stopped after the first). Corrupt or
truncated input raises :class:`ValueError` ("decompressing gzip: ..." / "decompressing zstd:
..."), with composefs-rs's reason where one is known: an empty input ("unexpected end of file",
"zstd stream did not finish"), bytes after the last gzip member that do not start another
("Invalid gzip header"), a stream that ends inside a member or frame.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import zstandard

__all__ = ["COMPRESSIONS", "Decoder", "open_decoder"]

COMPRESSIONS = ("none", "gzip", "zstd")

#: Compressed bytes asked from the input at a time.
INPUT_CHUNK = 256 << 10

ReadInput = Callable[[int], bytes]


class Decoder:
    """Decompressed bytes of a compressed input; the base class passes input through."""

    __slots__ = ("_read_input",)

    def __init__(self, read_input: ReadInput) -> None:
        self._read_input = read_input

    def read(self, size: int) -> bytes:
        """Up to ``size`` (> 0) decompressed bytes; ``b""`` only at the end of the data."""
        return self._read_input(size)


class _GzipDecoder(Decoder):
    """All members of a gzip stream (RFC 1952), parsed in the order flate2's ``GzDecoder``
    (the native backend's, through composefs-rs's async-compression) parses them, so that both
    backends report the same first error for damaged input:

    * between members: the next member must start with ``1f 8b 08`` as far as bytes are there,
      else "Invalid gzip header"; an empty input is "unexpected end of file";
    * the header: 10 bytes, reserved flag bits are "Invalid gzip header", then FEXTRA, FNAME,
      FCOMMENT (each at most 65535 bytes: "gzip header field too long") and FHCRC (checked:
      "corrupt gzip stream does not have a matching checksum");
    * the raw deflate data (zlib), any damage "corrupt deflate stream";
    * the trailer: CRC-32 and size modulo 2^32, "corrupt gzip stream does not have a matching
      checksum" when either differs.

    Input that ends anywhere inside a member is "unexpected end of file".
    """

    __slots__ = ("_crc", "_input", "_members", "_obj", "_size", "_state")

    _BETWEEN = 0
    _DATA = 1

    def __init__(self, read_input: ReadInput) -> None:
        super().__init__(read_input)
        self._input = b""  # compressed bytes read but not consumed
        self._members = 0
        self._state = self._BETWEEN
        self._obj = zlib.decompressobj(wbits=-15)
        self._crc = 0
        self._size = 0

    @staticmethod
    def _error(reason: str) -> ValueError:
        return ValueError(f"decompressing gzip: {reason}")

    def _fill(self, need: int) -> None:
        while len(self._input) < need:
            more = self._read_input(max(INPUT_CHUNK, need - len(self._input)))
            if not more:
                raise self._error("unexpected end of file")
            self._input += more

    def _take(self, n: int) -> bytes:
        self._fill(n)
        out, self._input = self._input[:n], self._input[n:]
        return out

    def _field(self) -> bytes:
        """A NUL-terminated header field (the NUL included)."""
        start = 0
        while True:
            end = self._input.find(b"\0", start)
            if end >= 0:
                if end > _GZIP_FIELD_MAX:
                    raise self._error("gzip header field too long")
                return self._take(end + 1)
            if len(self._input) > _GZIP_FIELD_MAX:
                raise self._error("gzip header field too long")
            start = len(self._input)
            self._fill(start + 1)

    def _header(self) -> None:
        header = self._take(10)
        if header[:3] != _GZIP_MAGIC or header[3] & _GZIP_FRESERVED:
            raise self._error("Invalid gzip header")
        flags = header[3]
        parts = [header]
        if flags & _GZIP_FEXTRA:
            xlen = self._take(2)
            parts += (xlen, self._take(int.from_bytes(xlen, "little")))
        if flags & _GZIP_FNAME:
            parts.append(self._field())
        if flags & _GZIP_FCOMMENT:
            parts.append(self._field())
        if flags & _GZIP_FHCRC:
            stored = int.from_bytes(self._take(2), "little")
            if stored != zlib.crc32(b"".join(parts)) & 0xFFFF:
                raise self._error(_GZIP_CHECKSUM)

    def _start_member(self) -> bool:
        """Parses the next member's header; ``False`` at the clean end of the input."""
        if not self._input:
            self._input = self._read_input(INPUT_CHUNK)
            if not self._input:
                if not self._members:
                    raise self._error("unexpected end of file")  # an empty blob, as composefs-rs
                return False
        if not _GZIP_MAGIC.startswith(self._input[:3]):
            raise self._error("Invalid gzip header")
        self._members += 1
        self._header()
        self._obj = zlib.decompressobj(wbits=-15)
        self._crc = 0
        self._size = 0
        self._state = self._DATA
        return True

    def _trailer(self) -> None:
        trailer = self._take(8)
        if (
            int.from_bytes(trailer[:4], "little") != self._crc
            or int.from_bytes(trailer[4:], "little") != self._size & 0xFFFFFFFF
        ):
            raise self._error(_GZIP_CHECKSUM)
        self._state = self._BETWEEN

    def read(self, size: int) -> bytes:
        while True:
            if self._state == self._BETWEEN and not self._start_member():
                return b""
            if not self._input:
                self._input = self._read_input(INPUT_CHUNK)
                if not self._input:
                    raise self._error("unexpected end of file")
            obj = self._obj
            try:
                out = obj.decompress(self._input, size)
            except zlib.error:
                raise self._error("corrupt deflate stream") from None
            if obj.eof:
                self._input = obj.unused_data
            else:
                self._input = obj.unconsumed_tail
            if out:
                self._crc = zlib.crc32(out, self._crc)
                self._size += len(out)
            if obj.eof:
                self._trailer()
            if out:
                return out


_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2, CM = deflate
_GZIP_FHCRC, _GZIP_FEXTRA, _GZIP_FNAME, _GZIP_FCOMMENT = 0x02, 0x04, 0x08, 0x10
_GZIP_FRESERVED = 0xE0
#: flate2's limit on the FNAME and FCOMMENT fields.
_GZIP_FIELD_MAX = 65535
_GZIP_CHECKSUM = "corrupt gzip stream does not have a matching checksum"


# zstd framing (RFC 8878)
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_FCS_SIZES = (0, 2, 4, 8)
_DICT_ID_SIZES = (0, 1, 2, 4)


class _ZstdDecoder(Decoder):
    """All frames of a zstd stream.

    The frame structure is followed here (frame headers, block headers, checksums, skippable
    frames) only to cut the input into units given to libzstd one at a time: a frame header, a
    whole block, a checksum. So one call decodes at most one block, and an input that ends
    anywhere but between two frames is known to be truncated. libzstd validates everything.
    """

    __slots__ = ("_buffer", "_checksum", "_frames", "_obj", "_output", "_pos", "_skip", "_state")

    # states: what the next unit is
    _FRAME = 0  # a frame starts (magic number)
    _BLOCK = 1  # a block header and its content
    _CHECKSUM = 2  # the 4-byte content checksum
    _SKIP = 3  # the rest of a skippable frame (self._skip bytes)

    def __init__(self, read_input: ReadInput) -> None:
        super().__init__(read_input)
        self._obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self._buffer = b""
        self._pos = 0
        self._state = self._FRAME
        self._checksum = False
        self._skip = 0
        self._frames = 0  # frames started (skippable ones included)
        self._output = b""  # decoded but not yet returned

    def _available(self) -> int:
        return len(self._buffer) - self._pos

    def _fill(self, need: int) -> bool:
        """Ensures ``need`` input bytes are buffered; ``False`` at end of input."""
        while self._available() < need:
            more = self._read_input(max(INPUT_CHUNK, need - self._available()))
            if not more:
                return False
            self._buffer = self._buffer[self._pos :] + more
            self._pos = 0
        return True

    def _peek(self, offset: int, length: int) -> int:
        start = self._pos + offset
        return int.from_bytes(self._buffer[start : start + length], "little")

    def _feed(self, length: int) -> bytes:
        unit = self._buffer[self._pos : self._pos + length]
        self._pos += length
        try:
            return self._obj.decompress(unit)
        except zstandard.ZstdError as e:
            message = str(e).removeprefix("zstd decompressor error: ")
            raise ValueError(f"decompressing zstd: {message}") from None

    def _truncated(self) -> ValueError:
        return ValueError("decompressing zstd: zstd stream did not finish")  # composefs-rs's

    def _need(self, need: int) -> None:
        """Buffers ``need`` bytes, or raises: libzstd judges what there is first (it finds
        some damage, e.g. a raw block longer than the frame's content size, in a partial
        unit, as the native backend's streaming decoder does), then the stream is truncated."""
        if not self._fill(need):
            self._feed(self._available())
            raise self._truncated()

    def _next_unit(self) -> bytes | None:
        """Decodes the next unit of input; ``None`` at the (clean) end of the input."""
        state = self._state
        if state == self._FRAME:
            if not self._fill(1):
                if not self._frames:
                    raise self._truncated()  # an empty input, an error for composefs-rs too
                return None  # between frames: a clean end
            self._frames += 1
            self._need(5)
            magic = self._peek(0, 4)
            if magic == _ZSTD_MAGIC:
                descriptor = self._peek(4, 1)
                single_segment = descriptor >> 5 & 1
                fcs_size = _FCS_SIZES[descriptor >> 6] or single_segment
                header = 5 + (not single_segment) + _DICT_ID_SIZES[descriptor & 3] + fcs_size
                self._need(header)
                self._checksum = bool(descriptor >> 2 & 1)
                self._state = self._BLOCK
                return self._feed(header)
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._need(8)
                self._skip = self._peek(4, 4)
                self._state = self._SKIP
                return self._feed(8)
            self._feed(self._available())  # libzstd rejects the unknown magic number
            raise ValueError("decompressing zstd: Unknown frame descriptor")
        if state == self._BLOCK:
            self._need(3)
            block = self._peek(0, 3)
            block_type = block >> 1 & 3
            length = 3 + (1 if block_type == 1 else block >> 3)
            self._need(length)
            if block & 1:  # last block
                self._state = self._CHECKSUM if self._checksum else self._FRAME
            return self._feed(length)
        if state == self._CHECKSUM:
            self._need(4)
            self._state = self._FRAME
            return self._feed(4)
        # the content of a skippable frame, in bounded pieces
        if self._skip == 0:
            self._state = self._FRAME
            return b""
        if not self._fill(1):
            raise self._truncated()
        length = min(self._skip, self._available())
        self._skip -= length
        return self._feed(length)

    def read(self, size: int) -> bytes:
        while not self._output:
            out = self._next_unit()
            if out is None:
                return b""
            self._output = out
        out = self._output
        if len(out) > size:
            self._output = out[size:]
            return out[:size]
        self._output = b""
        return out


def open_decoder(compression: str, read_input: ReadInput) -> Decoder:
    """A decoder of ``compression`` (``"none"``, ``"gzip"`` or ``"zstd"``) over ``read_input``."""
    if compression == "none":
        return Decoder(read_input)
    if compression == "gzip":
        return _GzipDecoder(read_input)
    if compression == "zstd":
        return _ZstdDecoder(read_input)
    if not isinstance(compression, str):
        raise TypeError(f"compression must be a str, not {type(compression).__name__}")
    raise ValueError(f"unsupported compression '{compression}' (expected none, gzip or zstd)")
