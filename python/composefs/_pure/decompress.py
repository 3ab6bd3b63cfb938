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
    """All members of a gzip stream (RFC 1952), one ``zlib.decompressobj`` per member."""

    __slots__ = ("_in_member", "_input", "_members", "_obj")

    def __init__(self, read_input: ReadInput) -> None:
        super().__init__(read_input)
        self._obj = zlib.decompressobj(wbits=31)
        self._input = b""  # compressed bytes not yet given to zlib
        self._in_member = False  # some input of the current member has been decoded
        self._members = 0  # members started

    def read(self, size: int) -> bytes:
        while True:
            if not self._input:
                self._input = self._read_input(INPUT_CHUNK)
                if not self._input:
                    # like composefs-rs, an empty input is an error too
                    if self._in_member or not self._members:
                        raise ValueError("decompressing gzip: unexpected end of file")
                    return b""
            if not self._in_member:
                # a member starts: ID1 ID2 CM (composefs-rs's message for anything else)
                if not _GZIP_MAGIC.startswith(self._input[:3]):
                    raise ValueError("decompressing gzip: Invalid gzip header")
                self._members += 1
                self._in_member = True
            obj = self._obj
            try:
                out = obj.decompress(self._input, size)
            except zlib.error as e:
                raise ValueError(f"decompressing gzip: {e}") from None
            if obj.eof:
                # the rest, if any, is the next member
                self._input = obj.unused_data
                self._obj = zlib.decompressobj(wbits=31)
                self._in_member = False
            else:
                self._input = obj.unconsumed_tail
            if out:
                return out


_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1, ID2, CM = deflate


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

    def _next_unit(self) -> bytes | None:
        """Decodes the next unit of input; ``None`` at the (clean) end of the input."""
        state = self._state
        if state == self._FRAME:
            if not self._fill(1):
                if not self._frames:
                    raise self._truncated()  # an empty input, an error for composefs-rs too
                return None  # between frames: a clean end
            self._frames += 1
            if not self._fill(5):
                # too short for any frame: let libzstd judge what there is
                self._feed(self._available())
                raise self._truncated()
            magic = self._peek(0, 4)
            if magic == _ZSTD_MAGIC:
                descriptor = self._peek(4, 1)
                single_segment = descriptor >> 5 & 1
                fcs_size = _FCS_SIZES[descriptor >> 6] or single_segment
                header = 5 + (not single_segment) + _DICT_ID_SIZES[descriptor & 3] + fcs_size
                if not self._fill(header):
                    raise self._truncated()
                self._checksum = bool(descriptor >> 2 & 1)
                self._state = self._BLOCK
                return self._feed(header)
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                if not self._fill(8):
                    raise self._truncated()
                self._skip = self._peek(4, 4)
                self._state = self._SKIP
                return self._feed(8)
            self._feed(self._available())  # libzstd rejects the unknown magic number
            raise ValueError("decompressing zstd: Unknown frame descriptor")
        if state == self._BLOCK:
            if not self._fill(3):
                raise self._truncated()
            block = self._peek(0, 3)
            block_type = block >> 1 & 3
            length = 3 + (1 if block_type == 1 else block >> 3)
            if not self._fill(length):
                raise self._truncated()
            if block & 1:  # last block
                self._state = self._CHECKSUM if self._checksum else self._FRAME
            return self._feed(length)
        if state == self._CHECKSUM:
            if not self._fill(4):
                raise self._truncated()
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
