"""A faithful emulation of the sans-IO tar parser of the ``tar-core`` crate (0.1.0).

composefs-rs 0.9 splits layers with ``tar_core::parse::Parser::with_defaults()``; to produce the
same splitstreams and accept or reject the same archives, this module reproduces that parser's
observable behaviour: which event each call returns, how many bytes it consumes, which values it
resolves (PAX > GNU long name/link > ustar prefix + name), and which errors it raises, with the
same messages (:class:`ParseError`, a :class:`ValueError`).

The parser is called with the bytes that start at the next header. It returns one of:

* :class:`NeedData` -- at least ``min_bytes`` bytes (from the same start) are needed;
* :class:`Entry` -- ``consumed`` bytes of headers (extension headers included, content not);
* :class:`SparseEntry` -- a GNU or PAX sparse file (``consumed`` includes its map blocks);
* :class:`GlobalExtensions` -- a PAX global header and its padded data;
* :class:`End` -- two zero blocks.

Nothing is remembered between calls except that the archive has ended, so after
:class:`NeedData` the caller retries from the same start with more data.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterator
from typing import TypeAlias

#: Byte arguments: any contiguous buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "HEADER_SIZE",
    "End",
    "Entry",
    "Event",
    "GlobalExtensions",
    "NeedData",
    "ParseError",
    "ParsedEntry",
    "Parser",
    "SparseEntry",
    "entry_type_name",
    "is_file",
    "pax_records",
]

HEADER_SIZE = 512
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_ZERO_BLOCK = bytes(HEADER_SIZE)

# Limits::default()
MAX_METADATA_SIZE = 1 << 20
MAX_PENDING_ENTRIES = 16
MAX_SPARSE_ENTRIES = 10_000

# Type flags
REGULAR = 0x30  # '0' (also '\0')
LINK = 0x31
SYMLINK = 0x32
CHAR = 0x33
BLOCK = 0x34
DIRECTORY = 0x35
FIFO = 0x36
CONTINUOUS = 0x37
GNU_LONG_NAME = 0x4C  # 'L'
GNU_LONG_LINK = 0x4B  # 'K'
GNU_SPARSE = 0x53  # 'S'
X_HEADER = 0x78  # 'x'
X_GLOBAL_HEADER = 0x67  # 'g'

_TYPE_NAMES = {
    0: "Regular",
    REGULAR: "Regular",
    LINK: "Link",
    SYMLINK: "Symlink",
    CHAR: "Char",
    BLOCK: "Block",
    DIRECTORY: "Directory",
    FIFO: "Fifo",
    CONTINUOUS: "Continuous",
    GNU_LONG_NAME: "GnuLongName",
    GNU_LONG_LINK: "GnuLongLink",
    GNU_SPARSE: "GnuSparse",
    X_HEADER: "XHeader",
    X_GLOBAL_HEADER: "XGlobalHeader",
}


def entry_type_name(flag: int) -> str:
    """The ``Debug`` form of tar-core's ``EntryType`` for a type flag (``Other(68)`` for 'D')."""
    return _TYPE_NAMES.get(flag, f"Other({flag})")


def is_file(flag: int) -> bool:
    """``EntryType::is_file``: regular ('0' or NUL) or contiguous ('7')."""
    return flag in (REGULAR, 0, CONTINUOUS)


# Header field offsets (ustar layout; GNU shares the first 345 bytes)
_NAME = slice(0, 100)
_MODE = slice(100, 108)
_UID = slice(108, 116)
_GID = slice(116, 124)
_SIZE = slice(124, 136)
_MTIME = slice(136, 148)
_CKSUM = slice(148, 156)
_TYPEFLAG = 156
_LINKNAME = slice(157, 257)
_MAGIC_VERSION = slice(257, 265)
_DEV_MAJOR = slice(329, 337)
_DEV_MINOR = slice(337, 345)
_PREFIX = slice(345, 500)  # ustar only
_GNU_SPARSE = 386  # 4 descriptors of 24 bytes (GNU only)
_GNU_IS_EXTENDED = 482
_GNU_REAL_SIZE = slice(483, 495)
_EXT_IS_EXTENDED = 504  # in a GNU sparse extension block (21 descriptors)

_USTAR = b"ustar\x0000"
_GNU = b"ustar  \x00"


# --------------------------------------------------------------------------------------------
# Errors


class ParseError(ValueError):
    """A tar-core ``ParseError``; ``str()`` is its ``Display`` text."""


def _header_error(message: str) -> ParseError:
    return ParseError(f"header error: {message}")


def _invalid_octal(field: bytes) -> ParseError:
    # HeaderError::InvalidOctal(Vec<u8>) prints the whole field as a Debug list: [48, 55, 0]
    return _header_error(f"invalid octal field: [{', '.join(map(str, field))}]")


def _utf8_error(data: bytes) -> str:
    """Rust's ``Utf8Error`` text for ``data`` (which is not valid UTF-8)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data":
            return f"incomplete utf-8 byte sequence from index {e.start}"
        return f"invalid utf-8 sequence of {e.end - e.start} bytes from index {e.start}"
    raise AssertionError("valid UTF-8")  # pragma: no cover


def rust_debug_str(text: str) -> str:
    """Rust's ``{:?}`` of a ``str``: quoted, with Rust's escapes (approximately for the
    classification of unprintable characters)."""
    out = ['"']
    for c in text:
        if c == "\0":
            out.append("\\0")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif c == "\n":
            out.append("\\n")
        elif c in '\\"':
            out.append("\\" + c)
        elif (c.isprintable() or c == " ") and unicodedata.category(c) not in ("Mn", "Me"):
            out.append(c)
        else:
            out.append(f"\\u{{{ord(c):x}}}")
    out.append('"')
    return "".join(out)


def _invalid_pax_value(key: str, value: str | None) -> ParseError:
    shown = rust_debug_str("<non-UTF-8>" if value is None else value)
    return ParseError(f"invalid PAX {key} value: {shown}")


def _invalid_sparse_map(reason: str) -> ParseError:
    return ParseError(f"invalid PAX sparse map: {reason}")


def _too_many_sparse(count: int) -> ParseError:
    return ParseError(f"too many sparse entries: {count} > {MAX_SPARSE_ENTRIES}")


_MALFORMED_PAX = "PAX error: malformed PAX extension record"


# --------------------------------------------------------------------------------------------
# Numbers


_TAR_WHITESPACE = b" \t\n\x0b\x0c\r"
_DECIMAL_DIGITS = frozenset(b"0123456789")


def _truncate_null(field: bytes) -> bytes:
    nul = field.find(0)
    return field if nul < 0 else field[:nul]


def _rust_unsigned(text: bytes, digits: frozenset[int], base: int, limit: int) -> int | None:
    """Rust's ``from_str_radix`` / ``str::parse`` for an unsigned type: an optional ``+``, then
    at least one digit, no overflow."""
    if text[:1] == b"+":
        text = text[1:]
    if not text or not digits.issuperset(text):
        return None
    value = int(text, base)
    return value if value <= limit else None


# The common case of an octal field, up to its first NUL: digits between tar whitespace (the
# digits as Rust's from_str_radix accepts them: an optional '+', then at least one digit).
_OCTAL_FIELD = re.compile(rb"[ \t\n\x0b\x0c\r]*(\+?[0-7]+)[ \t\n\x0b\x0c\r]*")


def parse_octal(field: bytes) -> int:
    """tar-core ``parse_octal``: up to the first NUL, tar whitespace trimmed, empty is 0."""
    nul = field.find(0)
    text = field if nul < 0 else field[:nul]
    match = _OCTAL_FIELD.fullmatch(text)
    if match is not None:
        value = int(match[1], 8)
        if value <= _U64:
            return value
    elif not text.strip(_TAR_WHITESPACE):
        return 0
    raise _invalid_octal(field)


# Values of numeric fields seen recently: most of them (modes, owners, device numbers, empty
# fields) repeat from header to header.
_NUMERIC_CACHE: dict[bytes, int] = {}


def parse_numeric(field: bytes) -> int:
    """tar-core ``parse_numeric``: GNU base-256 when the high bit is set (big-endian, the
    value kept modulo 2**64 as tar-core's shifts drop the high bits), else octal."""
    value = _NUMERIC_CACHE.get(field)
    if value is not None:
        return value
    if not field:
        return 0
    if field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big") & _U64
    else:
        value = parse_octal(field)
    if len(_NUMERIC_CACHE) >= 4096:
        _NUMERIC_CACHE.clear()
    _NUMERIC_CACHE[field] = value
    return value


def _parse_u64(text: str) -> int | None:
    """Rust's ``str::parse::<u64>()``."""
    return _rust_unsigned(text.encode(), _DECIMAL_DIGITS, 10, _U64)


# --------------------------------------------------------------------------------------------
# PAX records


class _Malformed:
    """Marker yielded by :func:`pax_records` for a malformed record (iteration stops)."""


MALFORMED = _Malformed()


def pax_records(data: bytes) -> Iterator[tuple[bytes, bytes] | _Malformed]:
    """tar-core's ``PaxExtensions`` iterator: ``(key, value)`` pairs of ``"<len> <k>=<v>\\n"``
    records; stops silently where no length can be read, yields :data:`MALFORMED` (and
    stops) for a record that is cut short or badly formed."""
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos)
        if space < 0:
            return
        length_text = data[pos:space]
        length = _rust_unsigned(length_text, _DECIMAL_DIGITS, 10, _U64)
        if length is None:
            return
        if length > end - pos:
            yield MALFORMED
            return
        record = data[pos : pos + length]
        kv_start = len(length_text) + 1
        if not record or record[-1] != 0x0A or kv_start > length - 1:
            yield MALFORMED
            return
        kv = record[kv_start : length - 1]
        eq = kv.find(b"=")
        if eq < 0:
            yield MALFORMED
            return
        yield kv[:eq], kv[eq + 1 :]
        pos += length


def _pax_items(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The records as ``(key, value)`` with the key decoded, raising tar-core's errors."""
    for record in pax_records(data):
        if isinstance(record, _Malformed):
            raise ParseError(_MALFORMED_PAX)
        key, value = record
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"invalid UTF-8 in PAX key: {_utf8_error(key)}") from None
        yield text, value


def _pax_u64(value: bytes, key: str) -> int:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_pax_value(key, None) from None
    number = _parse_u64(text)
    if number is None:
        raise _invalid_pax_value(key, text)
    return number


# --------------------------------------------------------------------------------------------
# Events


@dataclasses.dataclass(slots=True)
class ParsedEntry:
    """A resolved entry (tar-core ``ParsedEntry``; user and group names are not kept)."""

    header: bytes
    entry_type: int  # the type flag byte
    path: bytes
    link_target: bytes | None
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    dev_major: int | None
    dev_minor: int | None
    xattrs: list[tuple[bytes, bytes]]
    pax: bytes | None

    @property
    def is_file(self) -> bool:
        return is_file(self.entry_type)


@dataclasses.dataclass(slots=True)
class NeedData:
    min_bytes: int


@dataclasses.dataclass(slots=True)
class Entry:
    consumed: int
    entry: ParsedEntry


@dataclasses.dataclass(slots=True)
class SparseEntry:
    consumed: int
    entry: ParsedEntry
    sparse_map: list[tuple[int, int]]
    real_size: int


@dataclasses.dataclass(slots=True)
class GlobalExtensions:
    consumed: int
    pax_data: bytes


@dataclasses.dataclass(slots=True)
class End:
    consumed: int


Event: TypeAlias = NeedData | Entry | SparseEntry | GlobalExtensions | End


@dataclasses.dataclass(slots=True)
class _Pending:
    """Extension data seen before the entry they apply to."""

    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: bytes | None = None
    count: int = 0
    metadata_size: int = 0

    def is_empty(self) -> bool:
        return self.long_name is None and self.long_link is None and self.pax is None


@dataclasses.dataclass(slots=True)
class _Sparse:
    sparse_map: list[tuple[int, int]]
    real_size: int
    ext_consumed: int


# --------------------------------------------------------------------------------------------
# The parser


def _verify_checksum(header: bytes) -> None:
    expected = parse_octal(header[_CKSUM])
    computed = sum(header) - sum(header[_CKSUM]) + 8 * 0x20
    if expected != computed:
        raise _header_error(f"checksum mismatch: expected {expected}, computed {computed}")


def _is_ustar(header: bytes) -> bool:
    return header[_MAGIC_VERSION] == _USTAR


def _is_gnu(header: bytes) -> bool:
    return header[_MAGIC_VERSION] == _GNU


def _sparse_descriptor(desc: bytes) -> tuple[int, int] | None:
    """A GNU sparse descriptor (offset, length); ``None`` if the slot is empty."""
    if desc[0] == 0 or desc[12] == 0:
        return None
    return parse_numeric(desc[:12]), parse_numeric(desc[12:24])


class Parser:
    """tar-core's ``Parser::with_defaults()``: checksums verified, empty paths rejected,
    malformed PAX values rejected, 1 MiB of extension data per entry."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = False

    @property
    def is_done(self) -> bool:
        return self._done

    def parse(self, data: Buffer) -> Event:
        """The next event for the bytes ``data`` that start at a header boundary."""
        if self._done:
            return End(0)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        return self._parse(view)

    def _parse(self, view: memoryview) -> Event:
        available = len(view)
        pending = _Pending()
        pos = 0  # start of the header being looked at (after extensions / stray zero blocks)
        while True:
            if available - pos < HEADER_SIZE:
                return NeedData(pos + HEADER_SIZE)
            header = bytes(view[pos : pos + HEADER_SIZE])
            if header == _ZERO_BLOCK:
                # end of archive, or a single stray zero block that is skipped
                if available - pos < 2 * HEADER_SIZE:
                    return NeedData(pos + 2 * HEADER_SIZE)
                if view[pos + HEADER_SIZE : pos + 2 * HEADER_SIZE] == _ZERO_BLOCK:
                    self._done = True
                    if not pending.is_empty():
                        raise ParseError("metadata entries without a following actual entry")
                    return End(pos + 2 * HEADER_SIZE)
                pos += HEADER_SIZE
                continue

            if pending.count > MAX_PENDING_ENTRIES:
                raise ParseError(
                    f"too many pending metadata entries: {pending.count} > {MAX_PENDING_ENTRIES}"
                )
            _verify_checksum(header)
            flag = header[_TYPEFLAG]
            size = parse_numeric(header[_SIZE])
            padded = -(-size // HEADER_SIZE) * HEADER_SIZE
            if padded > _U64:
                raise ParseError(f"invalid entry size: {size}")
            extension_format = _is_gnu(header) or _is_ustar(header)

            if flag in (GNU_LONG_NAME, GNU_LONG_LINK, X_HEADER) and extension_format:
                if (
                    (flag == GNU_LONG_NAME and pending.long_name is not None)
                    or (flag == GNU_LONG_LINK and pending.long_link is not None)
                    or (flag == X_HEADER and pending.pax is not None)
                ):
                    raise ParseError(
                        {
                            GNU_LONG_NAME: "duplicate GNU long name entry",
                            GNU_LONG_LINK: "duplicate GNU long link entry",
                            X_HEADER: "duplicate PAX extended header",
                        }[flag]
                    )
                metadata_size = pending.metadata_size + size
                if metadata_size > MAX_METADATA_SIZE:
                    raise ParseError(
                        f"metadata exceeds limit: {metadata_size} bytes > {MAX_METADATA_SIZE} bytes"
                    )
                total = HEADER_SIZE + padded
                if available - pos < total:
                    return NeedData(pos + total)
                content = bytes(view[pos + HEADER_SIZE : pos + HEADER_SIZE + size])
                if flag == X_HEADER:
                    pending.pax = content
                else:
                    if content.endswith(b"\0"):
                        content = content[:-1]  # one trailing NUL only
                    if flag == GNU_LONG_NAME:
                        pending.long_name = content
                    else:
                        pending.long_link = content
                pending.count += 1
                pending.metadata_size = metadata_size
                pos += total
                continue

            if flag == X_GLOBAL_HEADER:  # whatever the magic
                if size > MAX_METADATA_SIZE:
                    raise ParseError(
                        f"metadata exceeds limit: {size} bytes > {MAX_METADATA_SIZE} bytes"
                    )
                total = HEADER_SIZE + padded
                if available - pos < total:
                    return NeedData(pos + total)
                pax_data = bytes(view[pos + HEADER_SIZE : pos + HEADER_SIZE + size])
                return GlobalExtensions(pos + total, pax_data)

            if flag == GNU_SPARSE and extension_format:
                return self._gnu_sparse(view, pos, header, size, pending)

            version = _pax_sparse_version(pending.pax) if pending.pax is not None else None
            if version == (1, 0):
                return self._pax_sparse_v1(view, pos, header, size, pending)
            return self._emit(pos, header, size, None, pending)

    def _gnu_sparse(
        self, view: memoryview, pos: int, header: bytes, size: int, pending: _Pending
    ) -> Event:
        if not _is_gnu(header):
            raise ParseError("sparse entry type but header is not GNU format")
        real_size = parse_numeric(header[_GNU_REAL_SIZE])
        sparse_map: list[tuple[int, int]] = []
        for i in range(4):
            start = _GNU_SPARSE + 24 * i
            desc = _sparse_descriptor(header[start : start + 24])
            if desc is None:
                break
            sparse_map.append(desc)
        ext_consumed = 0
        if header[_GNU_IS_EXTENDED] == 1:
            offset = HEADER_SIZE
            while True:
                if len(view) - pos < offset + HEADER_SIZE:
                    return NeedData(pos + offset + HEADER_SIZE)
                block = bytes(view[pos + offset : pos + offset + HEADER_SIZE])
                for i in range(21):
                    desc = _sparse_descriptor(block[24 * i : 24 * i + 24])
                    if desc is None:
                        break
                    if len(sparse_map) >= MAX_SPARSE_ENTRIES:
                        raise _too_many_sparse(len(sparse_map) + 1)
                    sparse_map.append(desc)
                offset += HEADER_SIZE
                if block[_EXT_IS_EXTENDED] != 1:
                    break
            ext_consumed = offset - HEADER_SIZE
        if len(sparse_map) > MAX_SPARSE_ENTRIES:
            raise _too_many_sparse(len(sparse_map))
        return self._emit(pos, header, size, _Sparse(sparse_map, real_size, ext_consumed), pending)

    def _pax_sparse_v1(
        self, view: memoryview, pos: int, header: bytes, size: int, pending: _Pending
    ) -> Event:
        assert pending.pax is not None
        real_size: int | None = None
        sparse_name: bytes | None = None
        for key, value in _pax_items(pending.pax):
            if key in ("GNU.sparse.realsize", "GNU.sparse.size"):
                real_size = _pax_u64(value, "GNU.sparse.realsize")
            elif key == "GNU.sparse.name":
                sparse_name = value
        if real_size is None:
            raise _invalid_sparse_map("missing GNU.sparse.realsize")

        data_start = pos + HEADER_SIZE
        data = bytes(view[data_start:])
        line_pos = 0

        def read_line() -> int | None:
            nonlocal line_pos
            newline = data.find(b"\n", line_pos)
            if newline < 0:
                return None
            line = data[line_pos:newline]
            line_pos = newline + 1
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid_sparse_map("non-UTF8 in sparse map") from None
            number = _parse_u64(text)
            if number is None:
                raise _invalid_sparse_map(f"invalid decimal: {rust_debug_str(text)}")
            return number

        count = read_line()
        if count is None:
            return NeedData(data_start + line_pos + HEADER_SIZE)
        if count > MAX_SPARSE_ENTRIES:
            raise _too_many_sparse(count)
        sparse_map: list[tuple[int, int]] = []
        for _ in range(count):
            offset = read_line()
            if offset is None:
                return NeedData(data_start + line_pos + HEADER_SIZE)
            length = read_line()
            if length is None:
                return NeedData(data_start + line_pos + HEADER_SIZE)
            sparse_map.append((offset, length))
        map_size = -(-line_pos // HEADER_SIZE) * HEADER_SIZE
        if len(data) < map_size:
            return NeedData(data_start + map_size)
        if size < map_size:
            raise _invalid_sparse_map("sparse map prefix larger than entry size")
        if sparse_name is not None:
            pending.long_name = sparse_name
        return self._emit(
            pos, header, size - map_size, _Sparse(sparse_map, real_size, map_size), pending
        )

    def _emit(
        self, pos: int, header: bytes, size: int, sparse: _Sparse | None, pending: _Pending
    ) -> Event:
        path = _truncate_null(header[_NAME])
        uid = parse_numeric(header[_UID])
        gid = parse_numeric(header[_GID])
        mtime = parse_numeric(header[_MTIME])
        entry_size = size
        xattrs: list[tuple[bytes, bytes]] = []
        ustar = _is_ustar(header)
        extension_format = ustar or _is_gnu(header)

        if ustar:
            prefix = _truncate_null(header[_PREFIX])
            if prefix:
                path = prefix + b"/" + path
        if pending.long_name is not None:
            path = pending.long_name
        link_target: bytes | None
        if pending.long_link is not None:
            link_target = pending.long_link
        else:
            link_target = _truncate_null(header[_LINKNAME]) or None

        pax_map: list[tuple[int, int]] | None = None
        pax_real_size: int | None = None
        pax_name: bytes | None = None
        pending_offset: int | None = None
        if pending.pax is not None:
            for key, value in _pax_items(pending.pax):
                if key == "path":
                    path = value
                elif key == "linkpath":
                    link_target = value
                elif key == "size":
                    entry_size = _pax_u64(value, "size")
                elif key == "uid":
                    uid = _pax_u64(value, "uid")
                elif key == "gid":
                    gid = _pax_u64(value, "gid")
                elif key == "mtime":
                    try:
                        text = value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise _invalid_pax_value("mtime", None) from None
                    seconds = _parse_u64(text.split(".", 1)[0])
                    if seconds is None:
                        raise _invalid_pax_value("mtime", text)
                    mtime = seconds
                elif key == "GNU.sparse.offset":
                    pending_offset = _pax_u64(value, "GNU.sparse.offset")
                elif key == "GNU.sparse.numbytes":
                    offset, pending_offset = pending_offset, None
                    length = _pax_u64(value, "GNU.sparse.numbytes")
                    if offset is not None:
                        if pax_map is None:
                            pax_map = []
                        if len(pax_map) >= MAX_SPARSE_ENTRIES:
                            raise _too_many_sparse(len(pax_map) + 1)
                        pax_map.append((offset, length))
                elif key == "GNU.sparse.map":
                    pax_map = _pax_sparse_map(value)
                elif key in ("GNU.sparse.realsize", "GNU.sparse.size"):
                    pax_real_size = _pax_u64(value, "GNU.sparse.realsize")
                elif key == "GNU.sparse.name":
                    pax_name = value
                elif key.startswith("SCHILY.xattr."):
                    xattrs.append((key[len("SCHILY.xattr.") :].encode(), value))
                # uname, gname, GNU.sparse.major/minor and anything else: not resolved

        if pax_name is not None:
            path = pax_name
        if not link_target:
            link_target = None
        if not path:
            raise ParseError("entry has empty path")

        mode = parse_numeric(header[_MODE]) & _U32
        if extension_format:
            dev_major: int | None = parse_octal(header[_DEV_MAJOR]) & _U32
            dev_minor: int | None = parse_octal(header[_DEV_MINOR]) & _U32
        else:
            dev_major = dev_minor = None

        entry = ParsedEntry(
            header=header,
            entry_type=header[_TYPEFLAG],
            path=path,
            link_target=link_target,
            mode=mode,
            uid=uid,
            gid=gid,
            mtime=mtime,
            size=entry_size,
            dev_major=dev_major,
            dev_minor=dev_minor,
            xattrs=xattrs,
            pax=pending.pax,
        )
        if sparse is None and pax_map is not None:
            real = entry_size if pax_real_size is None else pax_real_size
            sparse = _Sparse(pax_map, real, 0)
        if sparse is not None:
            return SparseEntry(
                pos + HEADER_SIZE + sparse.ext_consumed, entry, sparse.sparse_map, sparse.real_size
            )
        return Entry(pos + HEADER_SIZE, entry)


def _pax_sparse_map(value: bytes) -> list[tuple[int, int]]:
    """A PAX 0.1 ``GNU.sparse.map`` ("offset,length,offset,length,...")."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid_sparse_map("non-UTF8 sparse map") from None
    parts = [p for p in text.split(",") if p]
    if len(parts) % 2:
        raise _invalid_sparse_map("odd number of values in GNU.sparse.map")
    result: list[tuple[int, int]] = []
    for i in range(0, len(parts), 2):
        if len(result) >= MAX_SPARSE_ENTRIES:
            raise _too_many_sparse(len(result) + 1)
        offset = _parse_u64(parts[i])
        if offset is None:
            raise _invalid_sparse_map(f"invalid offset: {rust_debug_str(parts[i])}")
        length = _parse_u64(parts[i + 1])
        if length is None:
            raise _invalid_sparse_map(f"invalid length: {rust_debug_str(parts[i + 1])}")
        result.append((offset, length))
    return result


def _pax_sparse_version(pax: bytes) -> tuple[int, int] | None:
    """``(GNU.sparse.major, GNU.sparse.minor)`` when both are present."""
    major: int | None = None
    minor: int | None = None
    for key, value in _pax_items(pax):
        if key == "GNU.sparse.major":
            major = _pax_u64(value, "GNU.sparse.major")
        elif key == "GNU.sparse.minor":
            minor = _pax_u64(value, "GNU.sparse.minor")
        if major is not None and minor is not None:
            break
    if major is None or minor is None:
        return None
    return major, minor
