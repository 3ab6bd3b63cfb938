"""The composefs dumpfile format (composefs-dump(5)): writer and parser, pure Python.
Native twin: ``rust/dumpfile.rs``.

:func:`write` prints a tree as composefs-rs ``write_dumpfile`` does (pre-order, names in byte
order, the first name of a hard-linked leaf in full and the others as ``@120000`` lines,
NLINK computed from the tree). :func:`parse` reads one back with the rules of composefs-rs
``dumpfile_to_filesystem`` / ``Entry::parse``; the one deliberate difference is that a negative
MTIME second count is accepted (cfsctl writes those for pre-1970 tar mtimes).

Digests of external files are 32 (sha256) or 64 (sha512) bytes; the parser takes the size from
the DIGEST field (64 or 128 hex digits) or, without a digest, from the object path in PAYLOAD.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Iterator
from stat import S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK

from composefs._pure.tree import (
    BLOCK,
    CHAR,
    ENTER,
    FIFO,
    FILE,
    LEAF,
    SOCKET,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
    walk,
)

__all__ = ["debug_bytes", "link_counts", "parse", "subtree_lines", "write", "write_to_fd"]

S_IFMT = 0o170000  # stat.S_IFMT is a function

_IFMT_OF_KIND = {
    FILE: S_IFREG,
    SYMLINK: S_IFLNK,
    BLOCK: S_IFBLK,
    CHAR: S_IFCHR,
    FIFO: S_IFIFO,
    SOCKET: S_IFSOCK,
}

PATH_MAX = 4096
SYMLINK_MAX = 1024
MAX_INLINE_CONTENT = 512
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 0xFFFF
XATTR_LIST_MAX = 0xFFFF

# --------------------------------------------------------------------------------------------
# Writer

_NAMED = {ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_PLAIN_TABLE = [_NAMED.get(c, chr(c) if 0x21 <= c <= 0x7E else f"\\x{c:02x}") for c in range(256)]
_XATTR_TABLE = [("\\x3d" if c == ord("=") else s) for c, s in enumerate(_PLAIN_TABLE)]
# bytes that need no escaping in plain fields / xattr fields
_PLAIN_SAFE = re.compile(rb"[\x21-\x5b\x5d-\x7e]*")
_XATTR_SAFE = re.compile(rb"[\x21-\x3c\x3e-\x5b\x5d-\x7e]*")


def _escape_raw(data: bytes) -> str:
    if _PLAIN_SAFE.fullmatch(data):
        return data.decode("ascii")
    return "".join([_PLAIN_TABLE[b] for b in data])


def _escape_xattr(data: bytes) -> str:
    if _XATTR_SAFE.fullmatch(data):
        return data.decode("ascii")
    return "".join([_XATTR_TABLE[b] for b in data])


def _escape(data: bytes) -> str:
    """A fixed field: empty is ``-``, a lone ``-`` is ``\\x2d``."""
    if not data:
        return "-"
    if data == b"-":
        return "\\x2d"
    return _escape_raw(data)


def _object_pathname(digest: bytes) -> bytes:
    text = digest.hex()
    return f"{text[:2]}/{text[2:]}".encode("ascii")


def link_counts(fs: FileSystem) -> dict[int, int]:
    """How many names each leaf of ``fs`` has, by ``id(leaf)``."""
    return _link_counts(fs)


def _link_counts(fs: FileSystem) -> dict[int, int]:
    counts: dict[int, int] = {}
    stack = [fs.root]
    while stack:
        for inode in stack.pop().entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            else:
                counts[id(inode)] = counts.get(id(inode), 0) + 1
    return counts


def _line(
    out: list[str],
    path: bytes,
    stat: Stat,
    ifmt: int,
    raw_modes: bool,
    size: int,
    nlink: int,
    rdev: int,
    payload: bytes,
    content: bytes,
    digest: str | None,
) -> None:
    mode = (stat.mode | ifmt) if raw_modes else (ifmt | (stat.mode & 0o7777))
    parts = [
        _escape(path),
        f"{size} {mode:o} {nlink} {stat.uid} {stat.gid} {rdev} {stat.mtime}.{stat.mtime_nsec}",
        _escape(payload),
        _escape(content),
        "-" if digest is None else digest,
    ]
    for key in sorted(stat.xattrs):
        parts.append(_escape_xattr(key) + "=" + _escape_xattr(stat.xattrs[key]))
    out.append(" ".join(parts))


#: bytes of lines gathered before :func:`write_to_fd` writes them
CHUNK = 1 << 20


def write(fs: FileSystem, raw_modes: bool = True) -> bytes:
    """The dumpfile of ``fs`` (composefs-rs ``write_dumpfile``). With ``raw_modes`` False the
    MODE field is ``type | (mode & 0o7777)`` instead of ``mode | type``."""
    out: list[str] = []
    for lines in _write_lines(fs, raw_modes, 0):
        out.extend(lines)
    out.append("")
    return "\n".join(out).encode("ascii")


def write_to_fd(fs: FileSystem, fd: int, raw_modes: bool = True) -> int:
    """:func:`write`, streamed: the text goes to the file descriptor ``fd`` as it is produced,
    in writes of about :data:`CHUNK` bytes (whole lines). Partial writes are continued
    (``EINTR`` is retried by ``os.write``); errors are ``OSError``. Returns the bytes written."""
    written = 0
    for lines in _write_lines(fs, raw_modes, CHUNK):
        lines.append("")
        data = memoryview("\n".join(lines).encode("ascii"))
        while data:
            n = os.write(fd, data)
            data = data[n:]
            written += n
    return written


def subtree_lines(
    fs: FileSystem, node: Directory | Leaf, path: bytes, counts: dict[int, int] | None = None
) -> list[str]:
    """The dumpfile lines of ``node`` (a directory of ``fs`` with everything below it, or a
    leaf) printed under ``path`` as given, link counts those of the whole ``fs``, a second
    name of a hard-linked leaf as a hardlink line: composefs-rs ``dump_single_dir`` /
    ``dump_single_file`` (``cfsctl dump-files``). A child's path is ``path``, a ``/`` unless
    ``path`` ends with one, and its name."""
    if counts is None:
        counts = _link_counts(fs)
    lines: list[str] = []
    for part in _write_lines(fs, True, 0, node, path, counts):
        lines.extend(part)
    return lines


def _rust_parent_base(path: bytes) -> bytes:
    """What a child's path is joined to once composefs-rs has popped its first child off
    ``path``: trailing ``/`` and ``/.`` removed (the root stays ``/``, joined as empty)."""
    trimmed = path
    while True:
        stripped = trimmed.rstrip(b"/")
        if stripped.endswith(b"/."):
            trimmed = stripped[:-1]
            continue
        return stripped


def _write_lines(
    fs: FileSystem,
    raw_modes: bool,
    chunk: int,
    start: Directory | Leaf | None = None,
    start_path: bytes = b"/",
    counts: dict[int, int] | None = None,
) -> Iterator[list[str]]:
    """The lines of :func:`write` (without their newlines), in lists of at least ``chunk``
    bytes (counting a newline per line) but the last; ``chunk`` 0: one list with them all.
    ``start``/``start_path``/``counts``: see :func:`subtree_lines`."""
    if counts is None:
        counts = _link_counts(fs)
    first_path: dict[int, bytes] = {}
    out: list[str] = []

    def leaf_line(path: bytes, leaf: Leaf) -> None:
        nlink = counts[id(leaf)]
        if nlink > 1:
            target = first_path.get(id(leaf))
            if target is not None:
                out.append(f"{_escape(path)} 0 @120000 - - - - 0.0 {_escape(target)} - -")
                return
            first_path[id(leaf)] = path
        kind = leaf.kind
        ifmt = _IFMT_OF_KIND[kind]
        stat = leaf.stat
        if kind == FILE:
            if leaf.digest is not None:
                _line(
                    out,
                    path,
                    stat,
                    ifmt,
                    raw_modes,
                    leaf.size,
                    nlink,
                    0,
                    _object_pathname(leaf.digest),
                    b"",
                    leaf.digest.hex(),
                )
            elif leaf.inline is not None:
                data = leaf.inline
                _line(out, path, stat, ifmt, raw_modes, len(data), nlink, 0, b"", data, None)
            else:
                _line(out, path, stat, ifmt, raw_modes, leaf.size, nlink, 0, b"", b"", None)
        elif kind == SYMLINK:
            target = leaf.target
            _line(out, path, stat, ifmt, raw_modes, len(target), nlink, 0, target, b"", None)
        elif kind in (BLOCK, CHAR):
            _line(out, path, stat, ifmt, raw_modes, 0, nlink, leaf.rdev, b"", b"", None)
        else:
            _line(out, path, stat, ifmt, raw_modes, 0, nlink, 0, b"", b"", None)

    def dir_line(path: bytes, directory: Directory) -> None:
        nlink = 2 + sum(1 for inode in directory.entries.values() if isinstance(inode, Directory))
        _line(out, path, directory.stat, S_IFDIR, raw_modes, 0, nlink, 0, b"", b"", None)

    # iterative (tree.walk), no recursion on the depth: `path` is the current directory's
    # path ("" for the root), `lens` its length before each open directory's name was
    # appended (not a path per level: their sum is quadratic in the depth)
    top = fs.root if start is None else start
    if isinstance(top, Leaf):
        leaf_line(start_path, top)
        yield out
        return
    dir_line(start_path, top)
    path = bytearray(start_path[:-1] if start_path.endswith(b"/") else start_path)
    # composefs-rs pushes a child's name onto the PathBuf it was given and pops it after:
    # the pop leaves the parent as std::path sees it, without trailing `/.` or `/`, so the
    # first child of `/usr/bin/.` is `/usr/bin/./a` and the next `/usr/bin/b`
    base = _rust_parent_base(start_path)
    lens: list[int] = []
    size = 0  # bytes of the lines in `out`
    for event, name, inode in walk(top):
        if event == ENTER:
            assert isinstance(inode, Directory)
            lens.append(len(path))
            path += b"/"
            path += name
            dir_line(bytes(path), inode)
        elif event == LEAF:
            assert isinstance(inode, Leaf)
            leaf_line(b"%s/%s" % (path, name), inode)
            if not lens:
                path[:] = base
        else:
            del path[lens.pop() :]
            if not lens:
                path[:] = base
            continue
        if chunk:
            size += len(out[-1]) + 1
            if size >= chunk:
                yield out
                out = []
                size = 0
    yield out


# --------------------------------------------------------------------------------------------
# Parser


def debug_bytes(value: bytes) -> str:
    """Rust's ``{:?}`` of a path or name (``Path``/``OsStr``), as composefs-rs's messages
    print them: valid UTF-8 with ``char::escape_debug`` (``\\u{..}`` for every character
    Rust deems unprintable or grapheme-extending), except that ``'`` stays plain; each byte
    of invalid UTF-8 as ``\\xHH``."""
    out = ['"']
    for ch in value.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02X}")
        elif ch in _STR_ESCAPES:
            out.append(_STR_ESCAPES[ch])
        elif _rust_escapes(code):
            out.append(f"\\u{{{code:x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_debug = debug_bytes

_STR_ESCAPES = {"\0": "\\0", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\", '"': '\\"'}

# The code points Rust's ``char::escape_debug`` writes as ``\u{..}`` (not printable, or
# Grapheme_Extend), as ranges: ``GAP.LENGTH`` in base 36, GAP counted from the end of the
# previous range. Generated with rustc 1.95 (the toolchain of the native backend and of
# cfsctl 0.9.4 here) by checking ``format!("{:?}", Path::new(&format!("a{c}")))`` for every
# char; Python's own Unicode database is older, so it cannot answer this.
_ESCAPED_RANGES = (
    "1.8 2.2 1.i 2n.y c.1 gi.34 8.2 6.4 7.1 1.1 k.1 68.7 4m.1 12.2 1e.2 3.1a 1.1 1.2 "
    "1.2 1.9 r.4 6.h a.b 1.1 1a.l g.1 2t.8 1.6 2.2 1.4 w.2 1.1 u.t 2h.b 1.e 17.9 7.3 "
    "o.4 1.9 1.3 1.7 f.1 p.5 1.1 b.5 w.g 16.1l 1j.1 1.1 4.8 4.1 3.7 a.2 t.1 2.1 8.2 2.2 "
    "m.1 7.1 1.3 4.3 1.1 2.6 2.2 2.1 1.d 2.1 3.4 o.5 1.1 6.4 2.2 m.1 7.1 2.1 2.1 2.4 "
    "3.o 4.1 1.7 a.2 3.1 1.c 1.1 9.1 3.1 m.1 7.1 2.1 5.3 4.8 1.1 2.3 1.f 2.4 c.7 1.8 "
    "2.1 8.2 2.2 m.1 7.1 2.1 5.3 1.2 1.6 2.2 2.f 2.1 3.4 i.b 1.1 6.3 3.1 4.3 2.1 1.1 "
    "2.3 2.3 3.3 c.5 1.1 2.3 3.1 3.3 1.l l.6 3.1 8.1 3.1 n.1 g.3 1.3 4.j 3.1 2.2 2.4 "
    "a.7 a.1 b.1 3.1 n.1 a.1 5.3 2.2 1.1 2.n 3.1 2.4 a.1 3.e b.1 3.1 15.2 1.1 2.5 3.1 "
    "3.1 2.4 3.1 a.4 q.2 2.1 i.3 o.1 9.1 1.2 7.9 2.6 7.7 a.2 3.c 1c.1 2.b 8.8 d.11 2.1 "
    "1.1 5.1 o.1 1.1 a.1 2.9 1.2 5.1 1.9 a.2 4.w o.2 r.1 1.1 1.1 e.1 10.i 1.5 1.2 5.1d "
    "8.1 6.1 d.11 19.4 1.6 1.2 2.2 p.2 4.3 g.4 d.1 2.2 6.1 f.1 14.1 1.5 1.2 ah.1 4.2 "
    "7.1 1.1 4.2 15.1 4.2 x.1 4.2 7.1 1.1 4.2 f.1 1l.1 4.2 1v.5 t.3 q.6 2e.2 6.2 hs.1 "
    "s.3 2h.7 i.d j.3 2.9 i.e d.1 3.f 1g.2 1.7 8.1 2.b 9.3 a.6 a.6 b.5 a.6 2h.7 5.2 y.1 "
    "1.5 1y.a v.4 4.2 3.4 2.1 6.7 1.3 16.2 5.b 18.4 q.6 b.3 1l.2 2.3 1k.1 1.9 1.1 2.8 "
    "6.d a.6 a.6 e.2e 1c.a 4.3 8.1 t.9 c.2 w.4 2.6 1k.1 1.2 3.1 1.d 1c.8 2.5 f.3 1q.5 "
    "17.2 b.b 1.d 1.7 4.1 6.1 3.2 1.5 5c.1s 7q.2 6.2 12.2 6.2 8.1 1.1 1.1 1.1 v.2 1h.1 "
    "f.1 e.2 6.1 j.2 3.1 9.h o.8 1b.h 2.2 r.1 d.3 y.1q 3w.4 ii.m b.l 1ec.2 ah.3 2.5 "
    "19.1 1.5 1.2 1k.7 2.f n.9 7.1 7.1 7.1 7.1 7.1 7.1 7.1 7.x 2m.y q.1 2h.c 5y.q g.1 "
    "15.6 g.1 2e.4 2t.5 17.1 2m.1 2e.9 1c.1 mlp.3 1j.9 9o.k 1b.4 1.a w.2 28.2 6.8 65.k "
    "h.1 3.1 4.1 p.2 5.4 a.6 1k.8 1w.a c.o d.1 12.8 p.b 1.c u.6 1c.1 2.4 2.2 2.1 d.1 "
    "b.4 7.1 p.1 15.6 2.2 2.b 3.1 8.1 1.2 a.2 w.1 1f.1 1.3 2.2 5.2 1.1 1.o h.2 8.b 6.2 "
    "6.2 6.9 7.1 7.1 1o.4 39.1 2.1 4.3 a.6 8mc.c n.4 1d.4 1kw.4xs a6.2 2y.12 7.c 5.5 "
    "1.1 o.1 5.1 1.1 2.1 2.1 i2.w g.g a.m z.1 j.1 4.4 5.1 3r.4 4d.2 v.3 6.2 6.2 6.2 3.3 "
    "7.1 7.d 2.2 c.1 q.1 j.1 2.1 f.2 e.y 3f.5 3.4 19.3 2g.1 d.3 1.1b 19.3n t.3 1d.g r.4 "
    "10.9 u.5 12.a u.1 11.4 e.16 4e.2 a.6 10.4 10.4 14.8 1g.b c.1 f.1 7.1 2.1 b.1 f.1 "
    "7.1 2.3 1g.c 8n.9 m.a 8.o 6.1 16.1 9.1x 6.2 1.1 18.1 2.3 1.2 n.1 20.8 9.1c j.1 2.5 "
    "x.3 r.5 r.12 1k.4 k.2 1b.f 4.1 3.1 t.a 9.7 9.7 1s.w 11.6 c.9 1i.3 t.2 r.5 q.7 4.c "
    "7.28 21.1j 1f.d 1f.7 16.c a.6 12.8 o.8 2.5s v.1 16.3 1.2 2.g 6.8 9.13 14.8 m.b 9.m "
    "i.4 4.12 s.k n.9 1.1 1i.f 7.4 u.1 2.2 1.c 1d.4 2.2 2.1 4.e p.7 a.9 10.5 1.9 i.8 "
    "z.1 3.b 1g.9 1.1 8.4 2.1 g.1 k.b i.1 s.3 2.4 6.1 2.1r 7.1 1.1 4.1 f.1 b.6 1b.1 3.d "
    "a.8 2.1 8.2 2.2 m.1 7.1 2.1 5.3 1.1 1.1 4.2 2.2 2.3 1.c 7.s a.1 1.2 1.1 12.1 1.1 "
    "2.f 1.1 2.3 1.1 3.1 2.13 1k.8 2.3 1.1 l.1 1.1 3.u 1c.1 2.6 1.1 2.1 1.2 1.2 4.8 "
    "a.4m 1b.1 2.6 4.2 1.2 r.10 1f.8 2.1 1.2 4.b a.6 d.j 17.1 1.1 2.8 2.6 a.6 k.s r.3 "
    "1.1 2.4 1.9 n.55 1b.9 1.2 1.2s 2b.c 8.2 1.2 8.1 2.1 o.1 5.1 2.6 4.1 3.9 a.1y 8.2 "
    "16.8 4.1 4.r 1.a 14.6 2.4 8.9 1.6 2.3 1a.d 1.2 9.d 21.7 a.2f 1.3 1.1 1.2g y.e a.6 "
    "9.1 12.e 1.1 6.a t.3 w.p 1.7 1.2 1.23 7.1 2.1 12.l 1.9 a.6 6.1 2.1 11.4 2.1 1.1 "
    "1.7 a.6 18.4 a.6u j.2 4.9 f.1 10.8 2.3 n.2e 1.f 1e.d pn.2u 33.1 5.b 5g.218 2r.d "
    "ts.h 6.p 32z.5 g7.5a1 u.c 3.3 a.1c6 ft.7 v.1 a.4 29.1 a.6 u.7 1.a 1c.7 f.a a.1 7.1 "
    "l.5 j.c0 1m.5i 2j.5 p.2 p.18 23.5 1k.b d.1s 4.e 5.9 5p2.15 w.2p 37.6pp 4.1 7.1 2.1 "
    "83.f 1.t 3.2 1.e 4.8 b0.1s4 2z.5 d.3 9.7 a.2 1.2 1.31c 71.3 c4.6 n.f h.2n 38.1o "
    "6u.a 13.2 1o.5 3.m 2.7 u.4 1p.l 1u.3 1.3e k.c k.c 2f.9 p.3r 2d.1 1z.1 2.2 1.2 2.2 "
    "4.1 c.1 1.1 7.1 1t.1 4.2 8.1 7.1 s.1 4.1 5.1 1.3 7.1 9g.2 84.2 fm.1j 4.1e 8.1 e.1 "
    "7.vo v.6 6.79 1q.42 19.a 7.2 a.4 2.8w u.i 18.4 a.5 1.cw s.4 a.5y u.2 b.4 1.5c v.1 "
    "3.1 2.1 7.2 5.9 2.68 7.1 4.1 2.1 f.1 5h.2 9.1c 1w.7 1.4 a.4 2.lt 1w.24 1p.5e 4.1 "
    "r.1 2.1 1.2 1.1 a.1 4.1 1.1 1.6 1.4 1.1 1.1 1.1 3.1 2.1 1.2 1.1 1.1 1.1 1.1 1.1 "
    "2.1 1.2 4.1 7.1 4.1 4.1 1.1 a.1 h.5 3.1 5.1 h.1g 2.7i 18.4 2s.c f.2 f.1 f.1 11.a "
    "4u.1k t.d 18.4 9.7 2.e 6.4a rd.3 h.3 d.3 62.6 c.4 1.f c.4 1k.8 a.6 14.8 u.2 c.4 "
    "2.e 9.13 9k.8 e.2 d.3 b.3 1l.1 1.4 g.2 c.4 a.7 43.1 2v.sl wyo.w 3dq.2 4ge.2 5rl.f "
    "ha.1wi f2.15u 3t7.5 6ju.jdl2"
)
_escaped_bounds: list[int] = []


def _rust_escapes(code: int) -> bool:
    if 0x20 <= code < 0x7F:
        return False
    bounds = _escaped_bounds
    if not bounds:
        end = 0
        for token in "".join(_ESCAPED_RANGES).split():
            gap, length = token.split(".")
            start = end + int(gap, 36)
            end = start + int(length, 36)
            bounds += (start, end)
    # inside a range when an odd number of bounds are <= code
    return bisect.bisect_right(bounds, code) % 2 == 1


class _Error(Exception):
    """A parse error of one field (wrapped with the line by :func:`parse`)."""


# Rust's char::is_whitespace (Unicode White_Space), for str::trim
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
_DIGITS = re.compile(r"\+?[0-9]+")


def _rust_uint(text: str, bits: int, radix: int = 10) -> int:
    """Rust ``uN::from_str_radix``: an optional ``+``, then at least one digit; digits are
    taken in order, so an overflow is reported before a later invalid digit."""
    if not text:
        raise _Error("cannot parse integer from empty string")
    body = text[1:] if text[0] == "+" else text
    if not body:
        raise _Error("invalid digit found in string")
    value = 0
    limit = 1 << bits
    for ch in body:
        digit = _digit(ch, radix)
        value = value * radix + digit
        if value >= limit:
            raise _Error("number too large to fit in target type")
    return value


def _digit(ch: str, radix: int) -> int:
    digit = int(ch, 36) if ch.isascii() and ch.isalnum() else radix
    if digit >= radix:
        raise _Error("invalid digit found in string")
    return digit


def _mtime_seconds(text: str) -> int:
    """Seconds of MTIME: composefs-rs takes a u64 (stored as i64, so large values wrap); we
    also accept a negative i64 (our leniency; Rust ``i64::from_str``)."""
    if text.startswith("-"):
        body = text[1:]
        if not body:
            raise _Error("invalid digit found in string")
        value = 0
        for ch in body:
            value = value * 10 + _digit(ch, 10)
            if value > 1 << 63:
                raise _Error("number too small to fit in target type")
        return -value
    value = _rust_uint(text, 64)
    return value - (1 << 64) if value >> 63 else value


def _unescape(text: str, limit: int | None = None) -> bytes:
    """composefs-rs ``unescape_limited`` (the limit is checked before each character)."""
    if "\\" not in text and text.isascii():
        if limit is not None and len(text) > limit:
            raise _Error(f"Input {len(text)} exceeded maximum length {limit}")
        return text.encode("ascii")
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        if limit is not None and len(out) == limit:
            raise _Error(f"Input exceeded maximum length {limit}")
        ch = text[i]
        i += 1
        if ch != "\\":
            out += ch.encode("utf-8")
            continue
        if i >= n:
            raise _Error("Unterminated escape")
        ch = text[i]
        i += 1
        if ch == "\\":
            out.append(0x5C)
        elif ch == "n":
            out.append(0x0A)
        elif ch == "r":
            out.append(0x0D)
        elif ch == "t":
            out.append(0x09)
        elif ch == "x":
            if i + 2 > n:
                raise _Error("Unterminated hex escape")
            digits = text[i : i + 2]
            i += 2
            try:
                out.append(_rust_uint(digits, 8, 16))
            except _Error as e:
                raise _Error(f"Invalid hex escape {digits}: {e}") from None
        else:
            raise _Error(f"Invalid escape {ch}")
    return bytes(out)


def _unescape_name(text: str) -> bytes:
    value = _unescape(text)
    if b"\0" in value:
        raise _Error("Invalid embedded NUL")
    return value


def _unescape_path(text: str) -> bytes:
    value = _unescape_name(text)
    if not value:
        raise _Error("Invalid empty path")
    if len(value) > PATH_MAX:
        raise _Error(f"Path is too long: {len(value)} bytes")
    return value


def _unescape_canonical_path(text: str) -> bytes:
    value = _unescape_path(text)
    if not value.startswith(b"/"):
        raise _Error("Invalid non-absolute path")
    if value != b"/":
        for component in value.split(b"/")[1:]:
            if component == b"":
                raise _Error("Empty path component (// or trailing /)")
            if component == b".":
                raise _Error("Invalid path component '.'")
            if component == b"..":
                raise _Error("Invalid path component '..'")
    return value


def _char_debug(byte: int) -> str:
    """Rust's ``{:?}`` of ``char::from(byte)`` (a Latin-1 character), quotes included."""
    ch = chr(byte)
    if ch in _CHAR_ESCAPES:
        return f"'{_CHAR_ESCAPES[ch]}'"
    if byte < 0x20 or 0x7F <= byte <= 0xA0 or byte == 0xAD:
        return f"'\\u{{{byte:x}}}'"
    return f"'{ch}'"


_CHAR_ESCAPES = {"\0": "\\0", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def _decode_hex(data: bytes, n: int) -> bytes:
    """The ``hex`` crate's ``decode_to_slice`` of ``data`` into ``n`` bytes, with its errors."""
    if len(data) % 2:
        raise _Error("Odd number of digits")
    if len(data) // 2 != n:
        raise _Error("Invalid string length")
    for index, byte in enumerate(data):
        if byte not in _HEX_DIGITS:
            raise _Error(f"Invalid character {_char_debug(byte)} at position {index}")
    return bytes.fromhex(data.decode("ascii"))


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _hex_digest(text: str) -> bytes:
    """``FsVerityHashValue::from_hex`` on the UTF-8 bytes of ``text``: a sha512 id when it
    has 128 bytes, else a sha256 id."""
    data = text.encode("utf-8")
    return _decode_hex(data, 64 if len(data) == 128 else 32)


def _digest_from_object_path(path: bytes) -> bytes:
    """``FsVerityHashValue::from_object_pathname``: the trailing ``xx/hex`` of the path; a
    sha512 id when the path has the ``/`` of one (127 bytes from its end), else sha256."""
    n = 64 if len(path) >= 129 and path[-127] == 0x2F else 32
    try:
        if len(path) < 2 * n + 1:
            raise _Error("Invalid string length")
        tail = path[-(2 * n + 1) :]
        first = _decode_hex(tail[:2], 1)
        if tail[2] != 0x2F:
            raise _Error(f"Invalid character {_char_debug(tail[2])} at position 2")
        return first + _decode_hex(tail[3:], n - 1)
    except _Error as e:
        raise _Error(f"invalid object pathname: {e}") from None


class _Entry:
    """One parsed line (composefs-rs ``dumpfile_parse::Entry``)."""

    __slots__ = ("data", "digest", "hardlink", "mode", "nlink", "path", "payload", "rdev", "size")

    def __init__(self, path: bytes, size: int) -> None:
        self.path = path
        self.size = size
        self.mode = 0
        self.nlink = 0
        self.rdev = 0
        self.hardlink: bytes | None = None  # target of a hardlink line
        self.payload: bytes | None = None  # external file's object path / symlink target
        self.data = b""  # inline content
        self.digest: str | None = None  # hex, checked when the leaf is built


def _optional(text: str) -> str | None:
    return None if text == "-" else text


def _check_nonregfile(content: str | None, digest: str | None) -> None:
    if content is not None:
        raise _Error("entry cannot have content")
    if digest is not None:
        raise _Error("entry cannot have fsverity digest")


def _check_rdev(rdev: int) -> None:
    if rdev != 0:
        raise _Error(f"entry cannot have device (rdev) {rdev}")


def _parse_line(line: str) -> tuple[_Entry, Stat]:
    """``Entry::parse``: the entry and its (unchecked) stat."""
    fields = line.split(" ")
    position = 0

    def take(name: str) -> str:
        nonlocal position
        if position >= len(fields):
            raise _Error(f"Missing {name}")
        position += 1
        return fields[position - 1]

    path = _unescape_canonical_path(take("path"))
    entry = _Entry(path, _rust_uint(take("size"), 64))
    mode_text = take("mode")
    if "@" in mode_text:
        mode = _rust_uint(mode_text.split("@", 1)[1], 32, 8)
        if mode & S_IFMT == S_IFDIR:
            raise _Error("Invalid hardlinked directory")
        for name in ("nlink", "uid", "gid", "rdev", "mtime"):
            take(name)
        payload = _optional(take("payload"))
        if payload is None:
            raise _Error("Missing payload")
        entry.hardlink = _unescape_canonical_path(payload)
        return entry, Stat()

    entry.mode = _rust_uint(mode_text, 32, 8)
    entry.nlink = _rust_uint(take("nlink"), 32)
    uid = _rust_uint(take("uid"), 32)
    gid = _rust_uint(take("gid"), 32)
    entry.rdev = _rust_uint(take("rdev"), 64)
    mtime_text = take("mtime")
    if "." not in mtime_text:
        raise _Error("Missing . in mtime")
    sec_text, nsec_text = mtime_text.split(".", 1)
    sec = _mtime_seconds(sec_text)
    nsec = _rust_uint(nsec_text, 64)
    payload = _optional(take("payload"))
    content = _optional(take("content"))
    digest = _optional(take("digest"))
    xattrs: dict[bytes, bytes] = {}
    total = 0
    for item in fields[position:]:
        if "=" not in item:
            raise _Error("Missing = in xattrs")
        key_text, value_text = item.split("=", 1)
        key = _unescape_name(key_text)
        if len(key) > XATTR_NAME_MAX:
            raise _Error(f"xattr name too long; max={XATTR_NAME_MAX} found={len(key)}")
        value = _unescape(value_text)
        if len(value) > XATTR_SIZE_MAX:
            raise _Error(f"xattr value too long; max={XATTR_SIZE_MAX} found={len(key)}")
        total += len(key)
        if total > XATTR_LIST_MAX:
            raise _Error("Too many xattrs")
        # composefs-rs sorts the (key, value) pairs and then fills a map: for a repeated key
        # the greatest value wins
        if key not in xattrs or value > xattrs[key]:
            xattrs[key] = value

    ifmt = entry.mode & S_IFMT
    if ifmt == S_IFREG:
        _check_rdev(entry.rdev)
        if payload is not None:
            entry.payload = _unescape_path(payload)
            entry.digest = digest
        else:
            entry.data = _unescape(content or "", MAX_INLINE_CONTENT)
            if digest is not None:
                raise _Error("Inline file cannot have fsverity digest")
    elif ifmt == S_IFLNK:
        _check_nonregfile(content, digest)
        _check_rdev(entry.rdev)
        if payload is None:
            raise _Error("Missing payload")
        target = _unescape_path(payload)
        if len(target) > SYMLINK_MAX:
            raise _Error(f"Symlink target length {len(target)} exceeds limit {SYMLINK_MAX}")
        entry.payload = target
    elif ifmt in (S_IFCHR, S_IFBLK):
        _check_nonregfile(content, digest)
    elif ifmt in (S_IFIFO, S_IFDIR, S_IFSOCK):
        _check_nonregfile(content, digest)
        _check_rdev(entry.rdev)
    else:
        raise _Error(f"Unhandled file type from raw mode: {entry.mode}")
    return entry, Stat(entry.mode & 0o7777, uid, gid, sec, nsec, xattrs)


def _checked(stat: Stat) -> Stat:
    """``entry_to_stat``'s nanosecond check."""
    if stat.mtime_nsec >= 1_000_000_000:
        raise _Error(f"Invalid mtime nanoseconds: {stat.mtime_nsec} (must be < 1_000_000_000)")
    return stat


def _lines(text: str) -> list[str]:
    """Rust ``str::lines``: split at ``\\n``; one ``\\r`` before a ``\\n`` is dropped."""
    pieces = text.split("\n")
    last = pieces.pop()
    lines = [piece[:-1] if piece.endswith("\r") else piece for piece in pieces]
    if last:
        lines.append(last)
    return lines


def _blank(line: str) -> bool:
    return not line.strip(_WHITESPACE)


def _parse_entry(line: str) -> tuple[_Entry, Stat]:
    try:
        return _parse_line(line)
    except _Error as e:
        raise _Error(f"Failed to parse dumpfile line: {line}: {e}") from None


def _add_entry(
    fs: FileSystem,
    entry: _Entry,
    stat: Stat,
    hardlinks: dict[bytes, Leaf],
    created: list[Leaf],
    cache: dict[bytes, Directory],
) -> None:
    """``add_entry_to_filesystem``: entries are inserted (a repeated name is replaced). Every
    new leaf is appended to ``created`` (composefs-rs's leaves table). ``cache`` holds the
    directories of the previous line (its parent, itself): a line usually names one of them
    as its parent, which then is not looked up from the root again (a deep tree would cost
    its depth per line)."""
    path = entry.path
    if path == b"/":
        fs.root.stat = _checked(stat)
        return
    parent, _, name = path.rpartition(b"/")
    inode: Directory | Leaf
    ifmt = entry.mode & S_IFMT
    if entry.hardlink is not None:
        found = hardlinks.get(entry.hardlink)
        if found is None:
            raise _Error(f"Hardlink target not found: {_debug(entry.hardlink)}")
        inode = found
    elif ifmt == S_IFDIR:
        inode = Directory(_checked(stat))
    elif ifmt == S_IFREG:
        _checked(stat)
        if entry.payload is None:
            if not entry.data and entry.size > 0:
                inode = Leaf(FILE, stat, size=entry.size)
            else:
                inode = Leaf(FILE, stat, inline=entry.data, size=len(entry.data))
        elif entry.digest is not None:
            inode = Leaf(FILE, stat, digest=_hex_digest(entry.digest), size=entry.size)
        else:
            digest = _digest_from_object_path(entry.payload)
            inode = Leaf(FILE, stat, digest=digest, verity=False, size=entry.size)
    elif ifmt in (S_IFCHR, S_IFBLK):
        is_char = ifmt != S_IFBLK
        if is_char and entry.rdev == 0 and entry.nlink > 1:
            raise _Error(f"invalid dumpfile: whiteout entry {_debug(path)} has nlink > 1")
        inode = Leaf(CHAR if is_char else BLOCK, _checked(stat), rdev=entry.rdev)
    elif ifmt == S_IFLNK:
        assert entry.payload is not None
        inode = Leaf(SYMLINK, _checked(stat), target=entry.payload)
    elif ifmt == S_IFIFO:
        inode = Leaf(FIFO, _checked(stat))
    else:
        inode = Leaf(SOCKET, _checked(stat))
    if isinstance(inode, Leaf):
        if entry.hardlink is None:
            created.append(inode)
        hardlinks[path] = inode

    directory = cache.get(parent)
    if directory is None:
        directory = fs.root
    elif parent:
        parent = b""  # found
    if parent:
        for component in parent[1:].split(b"/"):
            child = directory.entries.get(component)
            if not isinstance(child, Directory):
                problem = "does not exist" if child is None else "is not a subdirectory"
                raise _Error(
                    f"Parent directory not found: {_debug(parent)}: "
                    f"Directory entry {_debug(component)} {problem}"
                )
            directory = child
    directory.entries[name] = inode
    # only this line's parent and itself: a directory it replaced may have held the others
    cache.clear()
    cache[path.rpartition(b"/")[0]] = directory
    if isinstance(inode, Directory):
        cache[path] = inode


def parse(data: bytes | bytearray | memoryview) -> FileSystem:
    """Parses a dumpfile (composefs-rs ``dumpfile_to_filesystem``, plus negative mtimes).
    Raises ``ValueError``."""
    return parse_with_leaves(data)[0]


def parse_with_leaves(data: bytes | bytearray | memoryview) -> tuple[FileSystem, list[Leaf]]:
    """:func:`parse`, also returning every leaf created, in creation order: composefs-rs's
    leaves table, which keeps the leaves a repeated path replaced (see :func:`orphans`)."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("stream did not contain valid UTF-8") from None
    lines = iter(_lines(text))
    created: list[Leaf] = []
    try:
        for line in lines:
            if _blank(line):
                continue
            entry, stat = _parse_entry(line)
            if entry.path != b"/":
                raise _Error(
                    f"Dumpfile must start with root directory entry, found: {_debug(entry.path)}"
                )
            fs = FileSystem(Directory(_checked(stat)))
            break
        else:
            raise _Error("Dumpfile is empty, expected root directory entry")
        hardlinks: dict[bytes, Leaf] = {}
        cache: dict[bytes, Directory] = {}
        for line in lines:
            if _blank(line):
                continue
            entry, stat = _parse_entry(line)
            _add_entry(fs, entry, stat, hardlinks, created, cache)
    except _Error as e:
        raise ValueError(str(e)) from None
    return fs, created


def orphans(fs: FileSystem, leaves: list[Leaf]) -> list[int]:
    """The indices in ``leaves`` (as :func:`parse_with_leaves` returns them) of the leaves no
    directory entry of ``fs`` refers to (composefs-rs ``validate_filesystem``'s orphans)."""
    used: set[int] = set()
    stack = [fs.root]
    while stack:
        for inode in stack.pop().entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            else:
                used.add(id(inode))
    return [i for i, leaf in enumerate(leaves) if id(leaf) not in used]
