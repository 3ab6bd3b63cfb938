"""What the EROFS format (and the kernel reading it) can hold, checked before an image is
written: a tree beyond these limits is refused with an error naming the path, never written
with a field that silently wraps (see docs/differences.md, "EROFS limits"). Native twin:
``rust/erofs/limits.rs`` (same checks, same order, same messages).

* :func:`check_tree` walks the tree (iteratively, depth-first in name order, the dumpfile
  order) before anything is collected: entry names, xattr names and values, symlink targets,
  file sizes, timestamps, link counts and (the native tree's field types) integer ranges;
* :func:`check_xattr_area` checks each inode's xattr area once the shared table is known;
* :func:`check_inline` checks each inline tail once the inode's offset is known.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from composefs._pure import tree as _tree
from composefs._pure.dumpfile import debug_bytes
from composefs._pure.tree import Directory, FileSystem, Leaf, Stat
from composefs.erofs_format import BLOCK_SIZE, XATTR_PREFIXES

#: Longest entry name (``EROFS_NAME_LEN``, Linux ``NAME_MAX``).
NAME_MAX: Final = 255
#: Longest xattr name after its prefix (``erofs_xattr_entry.e_name_len`` is a u8).
XATTR_SUFFIX_MAX: Final = 255
#: Largest xattr value (``erofs_xattr_entry.e_value_size`` is a u16).
XATTR_VALUE_MAX: Final = 0xFFFF
#: Most shared xattrs of one inode (``h_shared_count`` is a u8).
SHARED_XATTRS_MAX: Final = 0xFF
#: Largest inline xattr area (``i_xattr_icount`` is a u16; the area is 12 + 4 * (icount - 1)).
XATTR_AREA_MAX: Final = 12 + 4 * (0xFFFF - 1)
#: Longest symlink target (Linux ``PATH_MAX - 1``, as C mkcomposefs).
SYMLINK_MAX: Final = 4095
#: Largest chunk-based file: V0/V1 keep one block of chunk indexes (2^43-byte chunks), V2 one
#: chunk index.
FILE_SIZE_MAX_EPOCH1: Final = (BLOCK_SIZE // 4) << 43
FILE_SIZE_MAX_V2: Final = 1 << 43

_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1

_OVERLAY: Final = b"trusted.overlay."
_OVERLAY_ESCAPED: Final = b"trusted.overlay.overlay."


def _at(path: bytes) -> str:
    return debug_bytes(path or b"/")


def _stored_suffix_len(name: bytes, epoch1: bool) -> int:
    full = len(name)
    if name.startswith(_OVERLAY):
        full += len(_OVERLAY_ESCAPED) - len(_OVERLAY)
    for i in range(len(XATTR_PREFIXES) - 1, 0, -1):
        if epoch1 and i == 5:
            continue
        if name.startswith(XATTR_PREFIXES[i]):
            return full - len(XATTR_PREFIXES[i])
    return full


def _check_range(path: bytes, what: str, value: int, low: int, high: int) -> None:
    # the native tree's field types make these unreachable there
    if not low <= value <= high:
        raise ValueError(f"{_at(path)}: {what} {value} out of range ({low}..={high})")


def _check_stat(path: bytes, stat: Stat, epoch1: bool) -> None:
    _check_range(path, "mode", stat.mode, 0, _U32)
    _check_range(path, "uid", stat.uid, 0, _U32)
    _check_range(path, "gid", stat.gid, 0, _U32)
    _check_range(path, "mtime", stat.mtime, _I64_MIN, _I64_MAX)
    _check_range(path, "mtime nanoseconds", stat.mtime_nsec, 0, _U32)
    if stat.mtime_nsec >= 1_000_000_000:
        raise ValueError(
            f"{_at(path)}: mtime nanoseconds {stat.mtime_nsec} out of range (at most 999999999)"
        )
    for name in sorted(stat.xattrs):
        value = stat.xattrs[name]
        if not name:
            raise ValueError(f"{_at(path)}: empty xattr name")
        suffix = _stored_suffix_len(name, epoch1)
        if suffix > XATTR_SUFFIX_MAX:
            raise ValueError(
                f"{_at(path)}: xattr name {debug_bytes(name)} too long ({suffix} bytes after "
                f"its prefix; EROFS allows {XATTR_SUFFIX_MAX})"
            )
        if len(value) > XATTR_VALUE_MAX:
            raise ValueError(
                f"{_at(path)}: xattr {debug_bytes(name)} value too large ({len(value)} bytes; "
                f"EROFS allows {XATTR_VALUE_MAX})"
            )


def _check_leaf(path: bytes, leaf: Leaf, epoch1: bool) -> None:
    kind = leaf.kind
    if kind == _tree.SYMLINK and len(leaf.target) > SYMLINK_MAX:
        raise ValueError(
            f"{_at(path)}: symlink target too long ({len(leaf.target)} bytes; "
            f"EROFS allows {SYMLINK_MAX})"
        )
    if kind == _tree.FILE and leaf.inline is None:
        _check_range(path, "file size", leaf.size, 0, _U64)
        limit = FILE_SIZE_MAX_EPOCH1 if epoch1 else FILE_SIZE_MAX_V2
        if leaf.size > limit:
            version = "V0/V1" if epoch1 else "V2"
            raise ValueError(
                f"{_at(path)}: file too large ({leaf.size} bytes; "
                f"EROFS format {version} allows {limit})"
            )


def _check_name(path: bytes, name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise ValueError(
            f"{_at(path)}: file name too long ({len(name)} bytes; EROFS allows {NAME_MAX})"
        )
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ValueError(
            f'{_at(path)}: invalid file name (empty, ".", ".." or containing \'/\' or NUL)'
        )


def check_tree(fs: FileSystem, version: int) -> None:
    """Every per-entry limit, depth-first in name order (iteratively). Raises ``ValueError``."""
    epoch1 = version != 2
    _check_stat(b"/", fs.root.stat, epoch1)
    links: dict[int, int] = {}
    stack: list[tuple[bytes, Directory, Iterator[bytes]]] = [
        (b"", fs.root, iter(sorted(fs.root.entries)))
    ]
    while stack:
        base, d, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = base + b"/" + name
        _check_name(path, name)
        child = d.entries[name]
        if isinstance(child, Directory):
            _check_stat(path, child.stat, epoch1)
            stack.append((path, child, iter(sorted(child.entries))))
            continue
        key = id(child)
        count = links.get(key, 0) + 1
        links[key] = count
        if count == 1:
            _check_stat(path, child.stat, epoch1)
            _check_leaf(path, child, epoch1)
        elif count > _U32:
            raise ValueError(f"{_at(path)}: too many hard links (EROFS allows {_U32})")


def _path_of(fs: FileSystem, stat: Stat) -> bytes | None:
    """The first entry (depth-first in name order) whose stat is ``stat``."""
    if fs.root.stat is stat:
        return b"/"
    stack: list[tuple[bytes, Directory, Iterator[bytes]]] = [
        (b"", fs.root, iter(sorted(fs.root.entries)))
    ]
    while stack:
        base, d, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = base + b"/" + name
        child = d.entries[name]
        if isinstance(child, Directory):
            stack.append((path, child, iter(sorted(child.entries))))
        if child.stat is stat:
            return path
    return None


def _inode_at(fs: FileSystem, stat: Stat) -> str:
    path = _path_of(fs, stat)
    return "a whiteout stub" if path is None else _at(path)


def check_xattr_area(fs: FileSystem, stat: Stat, size: int, shared: int) -> None:
    """The xattr area of the inode whose stat is ``stat``: ``size`` bytes, ``shared`` of its
    xattrs in the shared table."""
    if shared > SHARED_XATTRS_MAX:
        raise ValueError(
            f"{_inode_at(fs, stat)}: too many shared xattrs ({shared}; "
            f"EROFS allows {SHARED_XATTRS_MAX})"
        )
    if size > XATTR_AREA_MAX:
        raise ValueError(
            f"{_inode_at(fs, stat)}: xattrs too large ({size} bytes; "
            f"EROFS allows {XATTR_AREA_MAX} per inode)"
        )


def check_inline(fs: FileSystem, stat: Stat, start: int, length: int) -> None:
    """An inline tail of ``length`` bytes at image offset ``start`` lies within one block."""
    if length >= BLOCK_SIZE or start % BLOCK_SIZE + length > BLOCK_SIZE:
        raise ValueError(
            f"{_inode_at(fs, stat)}: inline data of {length} bytes does not fit in one "
            f"{BLOCK_SIZE}-byte EROFS block after the inode and its xattrs"
        )
