"""Reading a composefs EROFS image back into a filesystem tree (composefs-rs 0.9's
``erofs_to_filesystem``): what ``dump-files`` and ``composefs-info`` print.

The image is first checked whole by :func:`composefs.erofs.collect_objects` (strict): every
inode and directory block is visited once, loops, shared blocks, overlapping inodes and bad
offsets are errors, so the walk here is linear in the size of the image and needs no further
structural checks beyond bounds (every read is a slice of the image).

The tree is what the writer was given: the V0/V1 whiteout stubs of the root (two hex digits,
a whiteout) are left out, escaped whiteouts become character devices 0:0, the composefs
overlay xattrs (``metacopy``, ``redirect``, the V1 whiteout markers, any other
``trusted.overlay.*``) are dropped and ``trusted.overlay.overlay.X`` becomes
``trusted.overlay.X``; a file with a metacopy xattr is external (its digest), one with only a
redirect is external without verity, a chunk-based one without either is sparse, any other is
inline. Compact inodes take the superblock's build time as their mtime. Link counts must match
the tree, as composefs-rs checks them.
"""

from __future__ import annotations

import struct

from composefs import erofs
from composefs._pure.tree import (
    BLOCK,
    CHAR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
)
from composefs.erofs import ErofsError, parse_object_path, read_image_info
from composefs.erofs_format import (
    BLOCK_SIZE,
    COMPACT_INODE,
    COMPACT_INODE_SIZE,
    DIRENT,
    DIRENT_SIZE,
    EXTENDED_INODE,
    EXTENDED_INODE_SIZE,
    INODE_SLOT_SIZE,
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    LAYOUT_FLAT_PLAIN,
    XATTR_ENTRY,
    XATTR_HEADER_SIZE,
    XATTR_PREFIXES,
    inode_layout,
)
from composefs.fsverity import Algorithm

__all__ = ["read_filesystem", "read_image_file"]

_S_IFMT = 0o170000
_KIND = {
    0o100000: FILE,
    0o120000: SYMLINK,
    0o060000: BLOCK,
    0o020000: CHAR,
    0o010000: FIFO,
    0o140000: SOCKET,
}
_S_IFDIR = 0o040000
_U32 = struct.Struct("<I")

_METACOPY = b"trusted.overlay.metacopy"
_REDIRECT = b"trusted.overlay.redirect"
_ESCAPED_WHITEOUT = b"trusted.overlay.overlay.whiteout"
_DROPPED = frozenset(
    {
        _METACOPY,
        _REDIRECT,
        _ESCAPED_WHITEOUT,
        b"trusted.overlay.overlay.whiteouts",
        b"trusted.overlay.overlay.opaque",
        b"user.overlay.whiteout",
        b"user.overlay.whiteouts",
        b"user.overlay.opaque",
    }
)
_ESCAPED_PREFIX = b"trusted.overlay.overlay."
_OVERLAY_PREFIX = b"trusted.overlay."
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _Inode:
    __slots__ = ("inline", "layout", "mode", "nlink", "size", "stat", "u", "xattrs")

    def __init__(self, reader: _Reader, nid: int) -> None:
        buf = reader.buf
        off = nid * INODE_SLOT_SIZE
        if buf[off] & 1:
            fmt, icount, mode, _, size, u, _ino, uid, gid, mtime, nsec, nlink = (
                EXTENDED_INODE.unpack_from(buf, off)
            )
            hsize = EXTENDED_INODE_SIZE
        else:
            fmt, icount, mode, nlink, size, _, u, _ino, uid, gid = COMPACT_INODE.unpack_from(
                buf, off
            )
            mtime, nsec = reader.info.build_time, reader.info.build_time_nsec
            hsize = COMPACT_INODE_SIZE
        self.layout = inode_layout(fmt)
        self.mode = mode
        self.nlink = nlink
        self.size = size
        self.u = u
        start = off + hsize
        end = start + (XATTR_HEADER_SIZE + 4 * (icount - 1) if icount else 0)
        self.xattrs = reader.xattrs(start, end) if icount else []
        tail = size % BLOCK_SIZE if self.layout == LAYOUT_FLAT_INLINE else 0
        self.inline = bytes(buf[end : end + tail])
        self.stat = Stat(mode & 0o7777, uid, gid, mtime, nsec, {})
        for name, value in self.xattrs:
            if name in _DROPPED:
                continue
            if name.startswith(_ESCAPED_PREFIX):
                name = _OVERLAY_PREFIX + name[len(_ESCAPED_PREFIX) :]
            elif name.startswith(_OVERLAY_PREFIX):
                continue
            self.stat.xattrs[name] = value

    def data(self, buf: bytes) -> bytes:
        """The inode's bytes: its blocks, then its inline tail (at most its size)."""
        if self.layout == LAYOUT_CHUNK_BASED:
            return b""
        nblocks = self.size // BLOCK_SIZE
        if self.layout == LAYOUT_FLAT_PLAIN:
            nblocks = -(-self.size // BLOCK_SIZE)
        start = self.u * BLOCK_SIZE
        return (bytes(buf[start : start + nblocks * BLOCK_SIZE]) + self.inline)[: self.size]

    def has(self, name: bytes) -> bool:
        return any(n == name for n, _ in self.xattrs)


class _Reader:
    def __init__(self, data: bytes, algorithm: Algorithm) -> None:
        self.buf = data
        self.info = read_image_info(data)
        self.algorithm = algorithm
        self.digest_size = algorithm.digest_size
        self.xattr_base = self.info.xattr_blkaddr * BLOCK_SIZE

    def xattrs(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        buf = self.buf
        shared = buf[start + 4]
        pos = start + XATTR_HEADER_SIZE
        out = []
        for i in range(shared):
            (ref,) = _U32.unpack_from(buf, pos + 4 * i)
            out.append(self._entry(self.xattr_base + 4 * ref)[0])
        pos += 4 * shared
        while pos < end:
            entry, pos = self._entry(pos)
            out.append(entry)
        return out

    def _entry(self, pos: int) -> tuple[tuple[bytes, bytes], int]:
        name_len, index, value_size = XATTR_ENTRY.unpack_from(self.buf, pos)
        name_start = pos + 4
        value_start = name_start + name_len
        name = XATTR_PREFIXES[index] + bytes(self.buf[name_start:value_start])
        value = bytes(self.buf[value_start : value_start + value_size])
        return (name, value), name_start + ((name_len + value_size + 3) & ~3)

    def entries(self, nid: int, inode: _Inode) -> list[tuple[bytes, int]]:
        buf = self.buf
        out: list[tuple[bytes, int]] = []
        nblocks = inode.size // BLOCK_SIZE
        if inode.layout == LAYOUT_FLAT_PLAIN:
            nblocks = -(-inode.size // BLOCK_SIZE)
        blocks = [
            bytes(buf[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE])
            for b in range(inode.u, inode.u + nblocks)
        ]
        if inode.inline:
            blocks.append(inode.inline)
        for block in blocks:
            first = DIRENT.unpack_from(block, 0)[1]
            headers = [DIRENT.unpack_from(block, i) for i in range(0, first, DIRENT_SIZE)]
            for i, (child, name_off, _ftype) in enumerate(headers):
                if i + 1 < len(headers):
                    name_end = headers[i + 1][1]
                else:
                    name_end = block.find(b"\0", name_off)
                    if name_end < 0:
                        name_end = len(block)
                out.append((block[name_off:name_end], child))
        return out

    def metacopy(self, inode: _Inode) -> bytes | None:
        for name, value in inode.xattrs:
            if name != _METACOPY or not value:
                continue
            head = bytes((0, 4 + self.digest_size, 0, self.algorithm.kernel_id))
            if len(value) != 4 + self.digest_size or value[:4] != head:
                raise ErofsError(
                    f"invalid trusted.overlay.metacopy ({len(value)} bytes: {value[:4].hex()}…)"
                )
            return value[4:]
        return None

    def redirect(self, inode: _Inode) -> bytes | None:
        for name, value in inode.xattrs:
            if name == _REDIRECT:
                found = parse_object_path(value, self.digest_size)
                if found is not None:
                    return found
        return None


def read_image_file(fd: int) -> bytes:
    """The bytes of the image open at ``fd``: a regular file of at most
    :data:`composefs.erofs.MAX_IMAGE_SIZE` bytes (composefs-rs's limit for images it opens),
    else :class:`~composefs.erofs.ErofsError` (a FIFO or ``/dev/zero`` is never read)."""
    import os
    import stat

    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ErofsError("not a regular file")
    if st.st_size > erofs.MAX_IMAGE_SIZE:
        raise ErofsError(
            f"the image is too large ({st.st_size} bytes, the limit is {erofs.MAX_IMAGE_SIZE})"
        )
    chunks = []
    left = erofs.MAX_IMAGE_SIZE + 1
    while left:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if not left:
        raise ErofsError(f"the image is too large (the limit is {erofs.MAX_IMAGE_SIZE} bytes)")
    return b"".join(chunks)


def read_filesystem(data: bytes, algorithm: Algorithm) -> FileSystem:
    """The tree of the composefs image ``data`` (objects named with ``algorithm``); raises
    :class:`~composefs.erofs.ErofsError` for a malformed image."""
    data = bytes(data)
    erofs.collect_objects(data, algorithm, strict=True)  # the whole structure, once
    reader = _Reader(data, algorithm)
    root_nid = reader.info.root_nid
    root_inode = _Inode(reader, root_nid)
    root = Directory(root_inode.stat)
    hardlinks: dict[int, Leaf] = {}
    expected: dict[int, tuple[int, Leaf]] = {}
    refs: dict[int, int] = {}
    stack: list[tuple[int, int, _Inode, Directory, bytes]] = [
        (root_nid, root_nid, root_inode, root, b"/")
    ]
    while stack:
        nid, parent, inode, directory, path = stack.pop()
        subdirs = 0
        dot = dotdot = None
        for name, child in reader.entries(nid, inode):
            if name == b".":
                dot = child
                continue
            if name == b"..":
                dotdot = child
                continue
            child_inode = _Inode(reader, child)
            kind_bits = child_inode.mode & _S_IFMT
            escaped = kind_bits == 0o100000 and child_inode.has(_ESCAPED_WHITEOUT)
            whiteout = kind_bits == 0o020000 and child_inode.u == 0
            if (
                nid == root_nid
                and (whiteout or escaped)
                and len(name) == 2
                and all(c in _HEX for c in name)
            ):
                continue
            if name in directory.entries:
                raise ErofsError(f"duplicate directory entry {name!r} in {path!r}")
            if kind_bits == _S_IFDIR:
                subdirs += 1
                sub = Directory(child_inode.stat)
                directory.entries[name] = sub
                stack.append((child, nid, child_inode, sub, path.rstrip(b"/") + b"/" + name))
                continue
            if child in hardlinks:
                directory.entries[name] = hardlinks[child]
                refs[child] += 1
                continue
            leaf = _leaf(reader, child_inode, escaped, name)
            if child_inode.nlink > 1:
                if leaf.kind == CHAR and leaf.rdev == 0:
                    raise ErofsError(
                        f"invalid composefs image: whiteout inode {name!r} has nlink > 1"
                    )
                hardlinks[child] = leaf
            expected[child] = (child_inode.nlink, leaf)
            refs[child] = 1
            directory.entries[name] = leaf
        if dot != nid or dotdot != parent:
            which = "'.'" if dot != nid else "'..'"
            raise ErofsError(f"directory {path!r}: {which} does not point where it should")
        if inode.nlink != subdirs + 2:
            raise ErofsError(
                f"directory nlink mismatch: on-disk nlink is {inode.nlink}, expected "
                f"{subdirs + 2} (2 + {subdirs} subdirectories)"
            )
    for child, (nlink, _leaf_obj) in expected.items():
        if nlink != refs[child]:
            raise ErofsError(
                f"nlink mismatch for inode nid {child}: on-disk nlink is {nlink}, but found "
                f"{refs[child]} reference(s) in the directory tree"
            )
    return FileSystem(root)


def _leaf(reader: _Reader, inode: _Inode, escaped: bool, name: bytes) -> Leaf:
    bits = inode.mode & _S_IFMT
    if escaped:
        return Leaf(CHAR, inode.stat, rdev=0)
    kind = _KIND.get(bits)
    if kind is None:
        raise ErofsError(f"unknown file type {bits:#o} for {name!r}")
    if kind == FILE:
        digest = reader.metacopy(inode)
        if digest is not None:
            return Leaf(FILE, inode.stat, digest=digest, size=inode.size)
        digest = reader.redirect(inode)
        if digest is not None:
            return Leaf(FILE, inode.stat, digest=digest, verity=False, size=inode.size)
        if inode.layout == LAYOUT_CHUNK_BASED:
            return Leaf(FILE, inode.stat, size=inode.size)
        data = inode.data(reader.buf)
        return Leaf(FILE, inode.stat, inline=data, size=len(data))
    if kind == SYMLINK:
        return Leaf(SYMLINK, inode.stat, target=inode.data(reader.buf))
    if kind in (BLOCK, CHAR):
        return Leaf(kind, inode.stat, rdev=inode.u)
    return Leaf(kind, inode.stat)
