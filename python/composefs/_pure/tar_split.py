"""Layer import: decompression, digests, and tar -> splitstream, in pure Python.

The pure-Python twin of ``composefs._native.tar_split``; see ``docs/internals.md`` (section
``tar_split``) for the contract and ``splitstream-and-layers.md`` §3-§5 for the format.

:func:`split_layer` reproduces composefs-rs 0.9's ``tar::split_async``: the tar is parsed with
an emulation of tar-core's parser (:mod:`._tarcore`), headers and small bodies go inline, bodies
of regular files larger than 64 bytes become objects (streamed to a temporary file in
``objects/`` while being hashed, then linked in), and everything from the end-of-archive blocks
to the end of the input is inline. Memory stays bounded: bodies are streamed in 1 MiB pieces,
and a run of inline bytes larger than 16 MiB (say, a decompression bomb of zeros after the end
of the archive) is spilled to an unlinked temporary file until it can be compressed.

:func:`read_entries` is the reverse path, composefs-rs's ``tar::get_entry`` loop.
"""

from __future__ import annotations

import errno
import hashlib
import operator
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import zstandard

from composefs._contract import LayerSplit, TarEntry
from composefs._pure import _tarcore, decompress, splitstream
from composefs._pure.objects import ObjectStore, open_tmpfile
from composefs.constants import ALGORITHM_IDS, INLINE_CONTENT_MAX

__all__ = ["read_entries", "split_layer"]

_HEADER = _tarcore.HEADER_SIZE
_U64 = (1 << 64) - 1
_CHUNK = 1 << 20  # read size and unit of body streaming
_SPILL_THRESHOLD = 16 << 20  # inline runs larger than this go to a temporary file
_PROGRESS_STEP = 4 << 20


def _round_up(size: int) -> int:
    """``size.next_multiple_of(512)`` as a release build of Rust computes it (wrapping)."""
    return (size + _HEADER - 1) // _HEADER * _HEADER & _U64


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - always present on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Input: the blob (digest, size, progress) and the tar inside it


class _Hashing:
    """Feeds sha256 objects, in a helper thread when there is a core to spare.

    hashlib releases the GIL while it hashes a large buffer, so the digests of the blob and of
    the tar (a third of the work for an uncompressed layer) overlap with reading, writing and
    the fs-verity hashing of the objects. The queue is bounded (the items are 1 MiB at most).
    """

    __slots__ = ("_queue", "_thread")

    def __init__(self, threaded: bool) -> None:
        self._queue: queue.Queue[tuple[Any, bytes] | None] | None = (
            queue.Queue(maxsize=8) if threaded else None
        )
        self._thread: threading.Thread | None = None

    def update(self, hasher: Any, data: bytes) -> None:
        if self._queue is None:
            hasher.update(data)
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, args=(self._queue,), name="composefs-sha256", daemon=True
            )
            self._thread.start()
        self._queue.put((hasher, data))

    @staticmethod
    def _work(items: queue.Queue[tuple[Any, bytes] | None]) -> None:
        while (item := items.get()) is not None:
            item[0].update(item[1])

    def close(self) -> None:
        """Waits until everything queued is hashed."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class _Blob:
    """Reads the blob sequentially from a descriptor, hashing and counting it."""

    __slots__ = ("_fd", "_hashing", "_next_report", "_progress", "sha256", "size")

    def __init__(
        self, fd: int, hashing: _Hashing, progress: Callable[[int], object] | None
    ) -> None:
        self._fd = fd
        self._hashing = hashing
        self._progress = progress
        self._next_report = _PROGRESS_STEP
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int) -> bytes:
        data = os.read(self._fd, size)
        if data:
            self._hashing.update(self.sha256, data)
            self.size += len(data)
            if self._progress is not None and self.size >= self._next_report:
                self._next_report = self.size + _PROGRESS_STEP
                self._progress(self.size)
        return data

    def report_end(self) -> None:
        if self._progress is not None:
            self._progress(self.size)


#: Decoded bytes per segment of a compressed blob (the native ``SEGMENT``).
_SEGMENT = 1 << 20


class _Tar:
    """The decompressed tar stream, hashed and counted (unless it is the blob itself).

    A compressed blob is decoded in whole segments of :data:`_SEGMENT` bytes, as the native
    reader thread does: a decompression error discards the segment it falls in, so the tar
    parser never sees the bytes decoded just before it, and an error in the tar data and a
    damaged compression are reported in the same order by both backends.
    """

    __slots__ = ("_buf", "_eof", "_hashing", "_pos", "_read", "sha256", "size")

    def __init__(self, decoder: decompress.Decoder, hashing: _Hashing, hashed: bool) -> None:
        self._read = decoder.read
        self._hashing = hashing
        self.sha256 = hashlib.sha256() if hashed else None
        self.size = 0
        self._buf = b""
        self._pos = 0
        self._eof = False

    def read(self, size: int) -> bytes:
        if self.sha256 is None:
            data = self._read(size)
            self.size += len(data)
            return data
        if self._pos >= len(self._buf) and (self._eof or not self._fill()):
            return b""
        if self._pos == 0 and size >= len(self._buf):
            data = self._buf  # the whole segment: no copy
        else:
            data = self._buf[self._pos : self._pos + size]
        self._pos += len(data)
        return data

    def _fill(self) -> bool:
        parts = []
        n = 0
        while n < _SEGMENT:
            data = self._read(_SEGMENT - n)
            if not data:
                self._eof = True
                break
            parts.append(data)
            n += len(data)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0
        if self._buf:
            assert self.sha256 is not None
            self._hashing.update(self.sha256, self._buf)
            self.size += len(self._buf)
        return bool(self._buf)


# --------------------------------------------------------------------------------------------
# Objects: composefs._pure.objects (ObjectStore)

# --------------------------------------------------------------------------------------------
# Output: the splitstream, with inline runs of any length in bounded memory


class _LayerWriter(splitstream.Writer):
    """A :class:`splitstream.Writer` that can also take one inline chunk as a sequence of
    pieces of known total length, so that a huge inline run never sits in memory whole.

    The zstd output does not depend on how the input is cut into ``compress()`` calls, so the
    bytes are those of ``write_inline(b"".join(pieces))``.
    """

    __slots__ = ()

    def write_inline_pieces(self, length: int, pieces: Iterable[bytes]) -> None:
        self._check()
        self._flush_inline()  # nothing is pending; kept for safety
        compress = self._compressor.compress
        out = compress(splitstream._I64.pack(-length))
        if out:
            self._compressed.append(out)
        total = 0
        for piece in pieces:
            total += len(piece)
            out = compress(piece)
            if out:
                self._compressed.append(out)
        if total != length:
            raise AssertionError(f"inline run changed size ({total} != {length})")
        self._stream_size = (self._stream_size + length) & _U64


class _InlineRun:
    """The inline bytes since the last external chunk; spilled to a temporary file past
    ``_SPILL_THRESHOLD``."""

    __slots__ = ("_buffer", "_dir_fd", "_spill_fd", "_spilled", "total")

    def __init__(self, dir_fd: int) -> None:
        self._dir_fd = dir_fd
        self._buffer = bytearray()
        self._spill_fd = -1
        self._spilled = 0
        self.total = 0  # all inline bytes of the layer

    def add(self, data: memoryview | bytes) -> None:
        if not data:
            return
        self.total += len(data)
        self._buffer += data
        if len(self._buffer) >= _SPILL_THRESHOLD:
            if self._spill_fd < 0:
                self._spill_fd = _open_spill_file(self._dir_fd)
            with memoryview(self._buffer) as view:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._spill_fd, view[done:], self._spilled + done)
            self._spilled += len(self._buffer)
            self._buffer.clear()

    def flush(self, writer: _LayerWriter) -> None:
        """Hands the run to ``writer`` as one inline chunk (possibly empty: nothing)."""
        if not self._spilled:
            writer.write_inline(self._buffer)
            self._buffer.clear()
            return
        length = self._spilled + len(self._buffer)
        writer.write_inline_pieces(length, self._spilled_pieces())
        self._buffer.clear()
        self._spilled = 0
        os.ftruncate(self._spill_fd, 0)

    def _spilled_pieces(self) -> Iterable[bytes]:
        offset = 0
        while offset < self._spilled:
            piece = os.pread(self._spill_fd, min(_CHUNK, self._spilled - offset), offset)
            if not piece:
                raise OSError(errno.EIO, "temporary file shrank")
            offset += len(piece)
            yield piece
        yield bytes(self._buffer)

    def close(self) -> None:
        if self._spill_fd >= 0:
            os.close(self._spill_fd)
            self._spill_fd = -1


def _open_spill_file(dir_fd: int) -> int:
    fd, name = open_tmpfile(dir_fd)
    if name is not None:
        os.unlink(name, dir_fd=dir_fd)
    return fd


# --------------------------------------------------------------------------------------------
# Splitting


class _Splitter:
    """``split_async``'s loop over a tar stream."""

    __slots__ = ("_buf", "_external", "_inline", "_pos", "_store", "_tar", "_view", "_writer")

    def __init__(
        self, tar: _Tar, writer: _LayerWriter, store: ObjectStore, inline: _InlineRun
    ) -> None:
        self._tar = tar
        self._writer = writer
        self._store = store
        self._inline = inline
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._external = 0  # bytes stored as objects (every occurrence)

    def _available(self) -> int:
        return len(self._buf) - self._pos

    def _set_buffer(self, data: bytes) -> None:
        self._buf = data
        self._view = memoryview(data)
        self._pos = 0

    def _fill(self, need: int) -> bool:
        """Buffers at least ``need`` bytes; ``False`` at the end of the tar."""
        while (available := self._available()) < need:
            more = self._tar.read(max(_CHUNK, need - available))
            if not more:
                return False
            self._set_buffer(self._buf[self._pos :] + more if available else more)
        return True

    def _take(self, n: int) -> memoryview:
        start = self._pos
        self._pos = start + n
        return self._view[start : start + n]

    def _copy_inline(self, n: int, eof_message: str) -> None:
        """Moves the next ``n`` bytes of the tar to the inline run."""
        while n:
            if not self._available() and not self._fill(1):
                raise ValueError(eof_message)
            take = min(n, self._available())
            self._inline.add(self._take(take))
            n -= take

    def _large_file(self, size: int, storage: int) -> None:
        """Streams a body into a new object; its padding goes inline."""
        obj = self._store.create()
        try:
            remaining = size
            while remaining:
                if not self._available() and not self._fill(1):
                    raise ValueError("unexpected EOF reading tar entry")
                take = min(remaining, self._available())
                obj.write(self._take(take))
                remaining -= take
            object_id, _ = obj.finish()
        finally:
            obj.discard()
        self._inline.flush(self._writer)
        self._writer.write_external(object_id, size)
        self._external += size
        self._copy_inline(storage - size, "unexpected EOF reading tar padding")

    def run(self) -> None:
        parser = _tarcore.Parser()
        need = _HEADER
        while True:
            if not self._fill(need):
                if not self._available():
                    return  # a clean end at a header boundary, with or without end blocks
                if self._available() >= _HEADER and not any(
                    self._view[self._pos : self._pos + _HEADER]
                ):
                    # one end-of-archive block where the format asks for two (tarfile, GNU tar
                    # and Go accept it): the end, kept inline to the last byte
                    self._inline.add(self._take(self._available()))
                    return
                raise ValueError("unexpected EOF in tar stream")
            event = parser.parse(self._view[self._pos :])
            if isinstance(event, _tarcore.NeedData):
                need = event.min_bytes
                continue
            need = _HEADER
            if isinstance(event, _tarcore.Entry):
                self._inline.add(self._take(event.consumed))
                entry = event.entry
                size = entry.size
                storage = _round_up(size)
                if entry.is_file and size > INLINE_CONTENT_MAX:
                    self._large_file(size, storage)
                else:
                    self._copy_inline(storage, "unexpected EOF reading tar entry")
            elif isinstance(event, _tarcore.GlobalExtensions):
                self._inline.add(self._take(event.consumed))
            elif isinstance(event, _tarcore.End):
                # the end blocks and whatever follows them, up to the end of the input
                self._inline.add(self._take(self._available()))
                while more := self._tar.read(_CHUNK):
                    self._inline.add(more)
                return
            else:
                raise ValueError("sparse tar entries are not supported")


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
    """Imports one layer blob: see ``docs/internals.md``.

    Returns the splitstream file and what it took (:class:`composefs._contract.LayerSplit`);
    raises :class:`ValueError`
    for a malformed blob or tar (composefs-rs's and tar-core's messages) and :class:`OSError` for
    failed system calls. Objects already stored stay when it fails.

    In this backend ``threads`` only decides whether the sha256 digests of the blob and the
    tar are computed by a helper thread (``threads`` > 1, or 0 with more than one core):
    objects are written and hashed in the calling thread, one after the other. (On 2 cores
    that helper alone brings an uncompressed layer of 200 KiB files to cfsctl's speed.)
    """
    source_fd = operator.index(source_fd)
    objects_fd = operator.index(objects_fd)
    threads = operator.index(threads)
    if threads < 0:
        raise OverflowError(f"threads must be >= 0, not {threads}")  # as for a Rust usize
    if threads == 0:
        threads = _available_cores()
    writer = _LayerWriter(algorithm, content_type)  # checks algorithm and content_type
    hashing = _Hashing(threaded=threads > 1)
    blob = _Blob(source_fd, hashing, progress)
    tar = _Tar(decompress.open_decoder(compression, blob.read), hashing, compression != "none")
    store = ObjectStore(objects_fd, algorithm, bool(secure))
    inline = _InlineRun(objects_fd)
    try:
        splitter = _Splitter(tar, writer, store, inline)
        splitter.run()
        inline.flush(writer)
    finally:
        inline.close()
        hashing.close()
    blob.report_end()
    stream_file = writer.finish()
    blob_sha256 = blob.sha256.digest()
    tar_sha256 = blob_sha256 if tar.sha256 is None else tar.sha256.digest()
    return LayerSplit(
        stream_file=stream_file,
        blob_sha256=blob_sha256,
        tar_sha256=tar_sha256,
        blob_size=blob.size,
        tar_size=tar.size,
        objects_written=store.written,
        objects_present=store.present,
        external_bytes=splitter._external,
        inline_bytes=inline.total,
        written_bytes=store.written_bytes,
    )


# --------------------------------------------------------------------------------------------
# The reverse path

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_START = 0x184D2A50
_DICT_ID_SIZES = (0, 1, 2, 4)
_SKIP_PIECE = 8192  # unwanted inline bytes are skipped in reads of this size, as natively

# What the zstd frame being decoded expects next
_FRAME_HEADER, _BLOCK, _CHECKSUM, _FRAME_END = range(4)


def _le(data: bytes, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def _stream_error(e: zstandard.ZstdError) -> ValueError:
    message = str(e).removeprefix("zstd decompressor error: ")
    return ValueError(f"zstd error in splitstream stream: {message}")


class _StreamDecoder:
    """The stream section as composefs-rs reads it: zstd-rs's ``Decoder`` (a ``zio::Reader``
    over libzstd's streaming API, all of the section offered as input), emulated on top of
    python-zstandard so that the same libzstd calls see the same bytes.

    What matters is *when* a decoding error shows up, since the tar entries before it are
    read first. libzstd decodes one step of a frame at a time (the frame header, a block
    with its 3-byte header, the checksum), only when the output of the previous step has
    been handed out; zstd-rs's ``read`` first hands out what libzstd holds (a short read),
    and only a read that finds nothing held lets libzstd decode, filling as much of the
    read's buffer as it can, and one step further when the buffer ends exactly where a
    step's output does. Here every step is fed to a decompressor object on its own (its
    bytes are known from the block headers), its output held in ``_out``; a step whose
    bytes run past the end of the section gets everything that is left, as libzstd does.

    A frame that declares its content size and fits in the read that starts it is decoded
    by libzstd in one pass (with other checks): so it is here, with the same capacity.
    """

    __slots__ = (
        "_checksum",
        "_data",
        "_dctx",
        "_done",
        "_finished",
        "_obj",
        "_off",
        "_out",
        "_pos",
        "_stage",
    )

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0  # bytes of the section handed to libzstd
        self._out = b""  # output of the last step ...
        self._off = 0  # ... of which this much was read
        self._dctx = zstandard.ZstdDecompressor()
        self._obj: zstandard.ZstdDecompressionObj | None = None
        self._stage = _FRAME_HEADER
        self._checksum = False
        self._finished = False  # zstd-rs's `finished_frame`
        self._done = False  # the end of the section was reached after a complete frame

    def read_exact(self, n: int) -> bytes | None:
        """composefs-rs's ``read_exactish``: ``n`` bytes, or ``None`` at the end of the
        stream before the first of them."""
        off = self._off
        if len(self._out) - off > n:  # the usual case: served from the held output
            self._off = off + n
            return self._out[off : off + n]
        if n == 0:
            return b""
        got = self._read(n)
        if len(got) == n:
            return got
        if not got:
            return None
        parts = [got]
        have = len(got)
        while have < n:
            more = self._read(n - have)
            if not more:
                raise ValueError("Unexpected EOF in splitstream")
            parts.append(more)
            have += len(more)
        return b"".join(parts)

    def _read(self, size: int) -> bytes:
        """zstd-rs's ``Reader::read`` with a buffer of ``size`` (> 0) bytes."""
        out = self._out
        off = self._off
        if off < len(out):  # libzstd hands out what it holds, and no more
            end = min(off + size, len(out))
            self._off = end
            if end == len(out) and self._stage == _FRAME_END:
                self._finished = True
            return out[off:end]
        if self._done:
            return b""
        while True:
            if self._pos >= len(self._data):
                if self._finished:
                    self._done = True
                    return b""
                raise ValueError("zstd error in splitstream stream: incomplete frame")
            if self._finished:  # more input after a frame: the next one
                self._finished = False
                self._stage = _FRAME_HEADER
            got = self._decode(size)
            if got:
                return got

    def _feed(self, data: bytes) -> bytes:
        assert self._obj is not None
        self._pos += len(data)
        try:
            return self._obj.decompress(data)
        except zstandard.ZstdError as e:
            raise _stream_error(e) from None

    def _decode(self, size: int) -> bytes:
        """One ``ZSTD_decompressStream`` call with all the remaining input and ``size`` bytes
        of room, nothing being held: steps are decoded until the room is used up."""
        parts: list[bytes] = []
        room = size
        data = self._data
        while True:
            stage = self._stage
            pos = self._pos
            avail = len(data) - pos
            if stage == _FRAME_END:
                self._finished = True
                break
            following = stage
            if stage == _FRAME_HEADER:
                one_pass = self._start_frame(size)
                if one_pass is not None:
                    return one_pass
                if self._stage == _FRAME_HEADER:  # an incomplete header
                    break
                continue
            if stage == _CHECKSUM:
                step = 4
                following = _FRAME_END
            elif avail < 3:
                step = 3
            else:
                header = _le(data, pos, 3)
                step = 3 + (1 if header >> 1 & 3 == 1 else header >> 3)  # RLE: 1 byte
                if header & 1:  # the last block
                    following = _CHECKSUM if self._checksum else _FRAME_END
            incomplete = step > avail
            if incomplete:  # the section ends within this step: libzstd takes what is left
                produced = self._feed(data[pos:])
            else:
                produced = self._feed(data[pos : pos + step])
                self._stage = following
            if produced:
                if len(produced) > room:
                    self._out = produced
                    self._off = room
                    parts.append(produced[:room])
                    break
                parts.append(produced)
                room -= len(produced)
            if incomplete:
                break
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def _start_frame(self, size: int) -> bytes | None:
        """Starts a frame: its header is decoded, or the whole frame in one pass (its output
        is returned)."""
        data = self._data
        pos = self._pos
        avail = len(data) - pos
        self._obj = self._dctx.decompressobj()
        self._out = b""
        self._off = 0
        header_size = 0  # 0: unknown (libzstd is given everything, to fail or wait)
        content_size = -1
        skippable = False
        if avail >= 4:
            magic = _le(data, pos, 4)
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_START:
                skippable = True
                if avail >= 8:
                    header_size = 8 + _le(data, pos + 4, 4)  # with the skipped content
            elif magic == _ZSTD_MAGIC and avail >= 5:
                descriptor = data[pos + 4]
                single_segment = descriptor >> 5 & 1
                fcs_flag = descriptor >> 6
                self._checksum = bool(descriptor & 4)
                fcs_at = 5 + (not single_segment) + _DICT_ID_SIZES[descriptor & 3]
                fcs_size = (single_segment, 2, 4, 8)[fcs_flag]
                header_size = fcs_at + fcs_size
                if fcs_size and header_size <= avail:
                    content_size = _le(data, fcs_at + pos, fcs_size) + (256 if fcs_size == 2 else 0)
        if not header_size or header_size > avail:
            self._feed(data[pos:])
            return None
        if 0 <= content_size <= size:
            frame_size = _frame_size(data, pos + header_size, self._checksum)
            if frame_size is not None:
                self._obj = self._dctx.decompressobj(write_size=size)
                out = self._feed(data[pos:frame_size])
                self._stage = _FRAME_END
                self._finished = True
                return out
        self._feed(data[pos : pos + header_size])
        self._stage = _FRAME_END if skippable else _BLOCK
        return None


def _frame_size(data: bytes, pos: int, checksum: bool) -> int | None:
    """``ZSTD_findFrameCompressedSize`` after a frame header ending at ``pos``: where the frame
    ends, or ``None`` if it does not end within ``data``."""
    end = len(data)
    while True:
        if end - pos < 3:
            return None
        header = _le(data, pos, 3)
        kind = header >> 1 & 3
        if kind == 3:
            return None
        pos += 3 + (1 if kind == 1 else header >> 3)
        if pos > end:
            return None
        if header & 1:
            break
    if checksum:
        pos += 4
    return pos if pos <= end else None


class _ChunkReader:
    """composefs-rs's ``SplitStreamReader`` (``ensure_chunk``, ``read_inline_exact``,
    ``read_exact``) over the stream section as it is decoded: inline reads may not cross chunk
    boundaries, and a problem is found only when the reading gets to it."""

    __slots__ = ("_decoder", "_inline_left", "_object_refs")

    def __init__(self, decoder: _StreamDecoder, object_refs: list[bytes]) -> None:
        self._decoder = decoder
        self._object_refs = object_refs
        self._inline_left = 0

    def _ensure_chunk(self, eof_ok: bool, ext_ok: bool, expected: int) -> bytes | bool:
        """``True``: inline data (at least ``expected`` bytes); ``False``: the end of the
        stream; ``bytes``: an external object id."""
        if self._inline_left == 0:
            word = self._decoder.read_exact(8)
            if word is None:
                if not eof_ok:
                    raise ValueError("Unexpected EOF in splitstream")
                return False
            n = int.from_bytes(word, "little", signed=True)
            if n < 0:
                self._inline_left = -n
            else:
                if not ext_ok:
                    raise ValueError("Unexpected external reference in splitstream")
                if n >= len(self._object_refs):
                    raise ValueError("Splitstream external reference is out of range")
                return self._object_refs[n]
        if self._inline_left < expected:
            raise ValueError("Unexpectedly small inline content when parsing splitstream")
        return True

    def _read_inline(self, n: int) -> bytes:
        data = self._decoder.read_exact(n)
        if data is None:
            raise ValueError("Unexpected EOF in splitstream")
        return data

    def _skip_inline(self, n: int) -> None:
        while n:
            take = min(n, _SKIP_PIECE)
            self._read_inline(take)
            n -= take

    def read_inline_exact(self, n: int) -> bytes | None:
        if self._ensure_chunk(True, False, n) is True:
            self._inline_left -= n
            return self._read_inline(n)
        return None

    def read_exact(self, actual: int, stored: int, keep: bool) -> bytes | tuple[bytes]:
        """Inline content (``bytes``; empty unless ``keep``, the bytes being skipped) or
        ``(object_id,)``."""
        chunk = self._ensure_chunk(False, True, stored)
        if isinstance(chunk, bytes):
            if actual < stored:
                padding = stored - actual
                self._ensure_chunk(False, False, padding)
                self._skip_inline(padding)
                self._inline_left -= padding
            return (chunk,)
        self._inline_left -= stored
        if keep:
            return self._read_inline(stored)[:actual]
        self._skip_inline(stored)
        return b""


def _make_absolute_path(path: bytes) -> bytes:
    """``make_absolute_path``: one leading ``/``, no trailing ``/``, the root is empty."""
    path = b"/" + (path[1:] if path.startswith(b"/") else path)
    while len(path) > 1 and path.endswith(b"/"):
        path = path[:-1]
    return b"" if path == b"/" else path


def _pax_mtime_nsec(pax: bytes) -> int:
    """The nanoseconds of a PAX ``mtime`` ("<sec>.<fraction>"), 0 if absent or unparsable."""
    for record in _tarcore.pax_records(pax):
        if isinstance(record, tuple) and record[0] == b"mtime":
            try:
                value = record[1].decode("utf-8")
            except UnicodeDecodeError:
                return 0
            _, dot, fraction = value.partition(".")
            if not dot:
                return 0
            digits = fraction.encode()[:9]
            number = _tarcore._rust_unsigned(digits, _tarcore._DECIMAL_DIGITS, 10, 0xFFFFFFFF)
            if number is None:
                return 0
            return number * 10 ** (9 - len(digits)) if len(digits) < 9 else number
    return 0


def _makedev(major: int, minor: int) -> int:
    return (
        (major & 0xFFFFF000) << 32
        | (major & 0xFFF) << 8
        | (minor & 0xFFFFFF00) << 12
        | (minor & 0xFF)
    )


_KINDS = {
    _tarcore.DIRECTORY: "dir",
    _tarcore.LINK: "hardlink",
    _tarcore.SYMLINK: "symlink",
    _tarcore.CHAR: "char",
    _tarcore.BLOCK: "block",
    _tarcore.FIFO: "fifo",
}


def _get_entry(reader: _ChunkReader, hash_name: str) -> TarEntry | None:
    parser = _tarcore.Parser()
    header_buf = bytearray()
    while True:
        block = reader.read_inline_exact(_HEADER)
        if block is None:
            return None
        header_buf += block
        while True:
            event = parser.parse(header_buf)
            if isinstance(event, _tarcore.NeedData):
                break
            if isinstance(event, _tarcore.GlobalExtensions):
                del header_buf[: event.consumed]
                continue
            if isinstance(event, _tarcore.End):
                return None
            if isinstance(event, _tarcore.SparseEntry):
                raise ValueError("Sparse tar entries are not supported")
            return _tar_entry(reader, event.entry, hash_name)


def _tar_entry(reader: _ChunkReader, entry: _tarcore.ParsedEntry, hash_name: str) -> TarEntry:
    size = entry.size
    flag = entry.entry_type
    type_name = _tarcore.entry_type_name(flag)
    # Inline file content is read (and checked after); any other type's is skipped.
    content = reader.read_exact(size, _round_up(size), entry.is_file and size <= INLINE_CONTENT_MAX)
    link_target: bytes | None = None
    inline: bytes | None = None
    object_id: bytes | None = None
    rdev = 0
    if isinstance(content, tuple):
        (object_id,) = content
        if not entry.is_file:
            raise ValueError(
                f"Unsupported external-chunked entry {type_name} {hash_name}:{object_id.hex()}"
            )
        if size <= INLINE_CONTENT_MAX:
            raise ValueError(f"Splitstream incorrectly stored a small ({size} byte) file external")
        kind = "file"
    elif entry.is_file:
        if size > INLINE_CONTENT_MAX:
            raise ValueError(f"Splitstream incorrectly stored a large ({size} byte) file inline")
        kind = "file"
        inline = content
    else:
        found = _KINDS.get(flag)
        if found is None:
            raise ValueError(f"Unsupported entry type {type_name}")
        kind = found
        if kind == "hardlink":
            link_target = _make_absolute_path(entry.link_target or b"")
        elif kind == "symlink":
            link_target = entry.link_target or b""
        elif kind in ("char", "block"):
            if entry.dev_major is None or entry.dev_minor is None:
                raise ValueError("Device entry without device numbers?")
            rdev = _makedev(entry.dev_major, entry.dev_minor)
    mtime = entry.mtime
    return TarEntry(
        path=_make_absolute_path(entry.path),
        kind=kind,
        mode=entry.mode,
        uid=entry.uid & 0xFFFFFFFF,  # Stat's u32
        gid=entry.gid & 0xFFFFFFFF,
        mtime=mtime - (1 << 64) if mtime >> 63 else mtime,  # Stat's i64
        mtime_nsec=0 if entry.pax is None else _pax_mtime_nsec(entry.pax),
        size=size if kind == "file" else 0,
        link_target=link_target,
        rdev=rdev,
        xattrs=sorted(dict(entry.xattrs).items()),
        inline=inline,
        object_id=object_id,
    )


def read_entries(stream_file: splitstream.Buffer) -> list[TarEntry]:
    """The tar entries of a layer splitstream file (composefs-rs ``tar::get_entry`` until the
    end). The stream is decoded as it is read, so that a damaged stream fails (or not) where
    and as composefs-rs fails."""
    algorithm_id, _, _, _, object_refs, _, stream = splitstream.read_metadata(stream_file)
    hash_name = "sha256" if algorithm_id == ALGORITHM_IDS["sha256"] else "sha512"
    reader = _ChunkReader(_StreamDecoder(stream), object_refs)
    entries: list[TarEntry] = []
    while (entry := _get_entry(reader, hash_name)) is not None:
        entries.append(entry)
    return entries
