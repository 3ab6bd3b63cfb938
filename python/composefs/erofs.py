"""Composefs EROFS images: writing them (:func:`mkfs`) and reading the object references out
of one (:func:`collect_objects`).

A composefs image is a metadata-only EROFS filesystem. Regular files whose content lives in the
repository carry two overlayfs xattrs that point at the object:

* ``trusted.overlay.metacopy``: ``00 len 00 alg`` followed by the raw fs-verity digest
  (36 bytes for SHA-256, 68 for SHA-512), empty for files without a known digest;
* ``trusted.overlay.redirect``: ``/xx/<rest of the hex digest>``, the object's path below
  ``objects/``.

:func:`collect_objects` walks the directory tree from the root inode and returns every digest
found in those two xattrs, the same set composefs-rs 0.9 (``cfsctl image-objects``) reports.
The three formats composefs-rs writes are understood: V0 and V1 (compact inodes where possible,
breadth-first numbering, 256 whiteout stubs in the root) and V2 (extended inodes, depth-first
numbering).

Every inconsistency in the image raises :class:`ErofsError`. The walk visits each inode and each
directory block at most once, so the time it takes is linear in the size of the image.
"""

from __future__ import annotations

import binascii
import struct
from typing import Final

from composefs import _backend, constants, fsverity
from composefs import erofs_format as _format
from composefs._record import record
from composefs.erofs_format import (
    BLOCK_BITS,
    BLOCK_SIZE,
    COMPACT_INODE,
    COMPACT_INODE_SIZE,
    COMPOSEFS_HEADER,
    COMPOSEFS_HEADER_VERSION,
    COMPOSEFS_MAGIC,
    DIRENT,
    DIRENT_SIZE,
    EROFS_MAGIC,
    EROFS_SUPER_OFFSET,
    EXTENDED_INODE,
    EXTENDED_INODE_SIZE,
    FEATURE_INCOMPAT_CHUNKED_FILE,
    FT_OF_IFMT,
    INODE_SLOT_SIZE,
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    LAYOUT_FLAT_PLAIN,
    SUPERBLOCK,
    SUPERBLOCK_SIZE,
    XATTR_ENTRY,
    XATTR_HEADER_SIZE,
    XATTR_PREFIX_TRUSTED,
    XATTR_PREFIXES,
    inode_layout,
)
from composefs.errors import ComposefsError
from composefs.fsverity import Algorithm

BufferLike = bytes | bytearray | memoryview

__all__ = [
    "DEFAULT_FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "ErofsError",
    "ImageInfo",
    "collect_objects",
    "image_id",
    "mkcomposefs",
    "mkfs",
    "parse_object_path",
    "read_image_info",
]


class ErofsError(ComposefsError):
    """A composefs EROFS image is malformed or not a composefs image."""


# -- on-disk constants (the layout itself is in composefs.erofs_format) ------------------------

MAX_IMAGE_SIZE: Final = 1 << 30
"""composefs-rs refuses to open larger images (they are metadata only)."""

_FEATURE_COMPAT_KNOWN: Final = (
    _format.FEATURE_COMPAT_SB_CHKSUM
    | _format.FEATURE_COMPAT_MTIME
    | _format.FEATURE_COMPAT_XATTR_FILTER
)

_S_IFMT: Final = 0o170000
_S_IFDIR: Final = 0o040000
_S_IFREG: Final = 0o100000
_S_IFCHR: Final = 0o020000
_S_IFLNK: Final = 0o120000

_METACOPY_SUFFIX: Final = b"overlay.metacopy"
_REDIRECT_SUFFIX: Final = b"overlay.redirect"
_ESCAPED_WHITEOUT: Final = b"trusted.overlay.overlay.whiteout"

_U32 = struct.Struct("<I")

# Where a directory's entries are: (layout, size, u, inline start, inline end).
_DirLocation = tuple[int, int, int, int, int]

_HEX_NAMES: Final = frozenset(f"{i:02x}".encode() for i in range(256))

# Per-inode flags remembered by the walk.
_IS_WHITEOUT: Final = 1  # character device 0:0 (an overlayfs whiteout)
_IS_ESCAPED_WHITEOUT: Final = 2  # regular file carrying trusted.overlay.overlay.whiteout


@record
class ImageInfo:
    """The composefs header and EROFS superblock fields of an image."""

    composefs_version: int
    """0, 1 or 2: the format version that wrote the image (V0, V1, V2)."""
    flags: int
    """composefs header flags (bit 0: the image has POSIX ACLs)."""
    feature_compat: int
    feature_incompat: int
    root_nid: int
    inos: int
    build_time: int
    build_time_nsec: int
    blocks: int
    xattr_blkaddr: int

    @property
    def epoch(self) -> int:
        """The layout family: 1 for V0/V1 (compact inodes, whiteout stubs), 2 for V2."""
        return 2 if self.composefs_version == 2 else 1


def read_image_info(data: BufferLike) -> ImageInfo:
    """Checks the composefs header and EROFS superblock of ``data`` and returns their fields.

    Raises :class:`ErofsError` unless the image is a composefs EROFS image of a kind composefs-rs
    0.9 reads: right magic numbers, 4 KiB blocks, no compression, no extra devices, no custom
    xattr prefixes, metadata starting at block 0.
    """
    return _parse_superblock(memoryview(data).cast("B"))


def _parse_superblock(buf: memoryview | bytes) -> ImageInfo:
    size = len(buf)
    if size > MAX_IMAGE_SIZE:
        raise ErofsError(f"image size {size} exceeds the maximum of {MAX_IMAGE_SIZE} bytes")
    if size < EROFS_SUPER_OFFSET + SUPERBLOCK_SIZE:
        raise ErofsError(f"image too small for a composefs header and superblock ({size} bytes)")
    magic, version, flags, composefs_version = COMPOSEFS_HEADER.unpack_from(buf, 0)
    if magic != COMPOSEFS_MAGIC:
        raise ErofsError(f"bad composefs magic: expected {COMPOSEFS_MAGIC:#x}, got {magic:#x}")
    if version != COMPOSEFS_HEADER_VERSION:
        raise ErofsError(
            f"bad EROFS format version in composefs header: expected "
            f"{COMPOSEFS_HEADER_VERSION}, got {version}"
        )
    if composefs_version not in constants.EROFS_VERSIONS:
        raise ErofsError(f"unknown composefs_version {composefs_version} (expected 0, 1, or 2)")
    (
        sb_magic,
        _checksum,
        feature_compat,
        blkszbits,
        extslots,
        root_nid,
        inos,
        build_time,
        build_time_nsec,
        blocks,
        meta_blkaddr,
        xattr_blkaddr,
        feature_incompat,
        compr_algs,
        extra_devices,
        _devt_slotoff,
        _dirblkbits,
        xattr_prefix_count,
        _xattr_prefix_start,
        packed_nid,
        _xattr_filter_reserved,
    ) = SUPERBLOCK.unpack_from(buf, EROFS_SUPER_OFFSET)
    if sb_magic != EROFS_MAGIC:
        raise ErofsError(f"bad EROFS magic: expected {EROFS_MAGIC:#x}, got {sb_magic:#x}")
    if blkszbits != BLOCK_BITS:
        raise ErofsError(f"composefs requires blkszbits={BLOCK_BITS}, got {blkszbits}")
    if feature_compat & ~_FEATURE_COMPAT_KNOWN:
        unknown = feature_compat & ~_FEATURE_COMPAT_KNOWN
        raise ErofsError(f"unsupported feature_compat flags: {unknown:#x}")
    if feature_incompat & ~FEATURE_INCOMPAT_CHUNKED_FILE:
        unknown = feature_incompat & ~FEATURE_INCOMPAT_CHUNKED_FILE
        raise ErofsError(f"unsupported feature_incompat flags: {unknown:#x}")
    if compr_algs:
        raise ErofsError("composefs does not support compression")
    if extra_devices:
        raise ErofsError(f"composefs does not support multi-device (extra_devices={extra_devices})")
    if extslots:
        raise ErofsError(f"composefs does not support extslots (extslots={extslots})")
    if packed_nid:
        raise ErofsError(f"composefs does not support packed inodes (packed_nid={packed_nid})")
    if meta_blkaddr:
        raise ErofsError(f"composefs requires meta_blkaddr=0, got {meta_blkaddr}")
    if xattr_prefix_count:
        raise ErofsError(
            f"composefs does not support custom xattr prefixes (count={xattr_prefix_count})"
        )
    if xattr_blkaddr * BLOCK_SIZE > size:
        raise ErofsError(f"xattr_blkaddr {xattr_blkaddr} lies past the end of the image")
    if blocks * BLOCK_SIZE > size:
        raise ErofsError(
            f"image is truncated: the superblock counts {blocks} blocks "
            f"({blocks * BLOCK_SIZE} bytes) but the image has {size} bytes"
        )
    return ImageInfo(
        composefs_version=composefs_version,
        flags=flags,
        feature_compat=feature_compat,
        feature_incompat=feature_incompat,
        root_nid=root_nid,
        inos=inos,
        build_time=build_time,
        build_time_nsec=build_time_nsec,
        blocks=blocks,
        xattr_blkaddr=xattr_blkaddr,
    )


def collect_objects(data: BufferLike, algorithm: Algorithm, *, strict: bool = False) -> set[bytes]:
    """Every object (raw fs-verity digest) that the composefs image ``data`` references.

    This is the set composefs-rs 0.9 computes for garbage collection, fsck and
    ``cfsctl image-objects`` (``erofs::reader::collect_objects``): for every inode reachable
    from the root directory, the digest of a well-formed ``trusted.overlay.metacopy`` of
    ``algorithm`` and the digest named by a ``trusted.overlay.redirect`` that ends in an object
    path (``xx/<hex>``) of ``algorithm``'s length. Like composefs-rs, metacopy and redirect values
    that are not references of this algorithm (an empty metacopy, a path of another length) are
    not references and are skipped; with ``strict=True`` they raise :class:`ErofsError` instead,
    except the empty metacopy that marks a file without a known digest.

    The image must pass the checks composefs-rs applies first (header, superblock, V1 inline
    symlinks within a block, the whiteout-stub invariants of each format) and must be
    structurally consistent: every offset inside the image, valid directory blocks and xattr
    areas, directory entry types matching their inodes, no directory reachable twice (a loop or
    a hardlinked directory), no block claimed by two directories. Anything else raises
    :class:`ErofsError`; no other exception escapes for malformed input.
    """
    buf = data if isinstance(data, bytes) else memoryview(data).cast("B").tobytes()
    info = _parse_superblock(buf)
    walker = _Walker(buf, info, algorithm.digest_size, algorithm.kernel_id, strict)
    walker.walk()
    return walker.objects


class _Walker:
    """One walk over an image: visits every reachable inode once, collecting references."""

    def __init__(
        self, buf: bytes, info: ImageInfo, digest_size: int, kernel_id: int, strict: bool
    ) -> None:
        self.buf = buf
        self.size = len(buf)
        self.info = info
        self.epoch1 = info.epoch == 1
        self.xattr_base = info.xattr_blkaddr * BLOCK_SIZE
        self.digest_size = digest_size
        self.metacopy_len = 4 + digest_size
        self.metacopy_head = bytes((0, 4 + digest_size, 0, kernel_id))
        self.strict = strict
        self.objects: set[bytes] = set()
        # nid -> (inode type bits, _IS_* flags), for every inode parsed so far
        self.inodes: dict[int, tuple[int, int]] = {}
        # shared xattr id -> _IS_ESCAPED_WHITEOUT or 0 (its references are already collected)
        self.shared: dict[int, int] = {}
        # one byte per block: claimed by a directory already
        self.dir_blocks = bytearray(self.size // BLOCK_SIZE)
        # one byte per 32-byte inode slot: covered by an inode (header, xattrs, inline data)
        # already; overlapping inodes would let a crafted image make the walk quadratic
        self.slots = bytearray(-(-self.size // 32))

    # -- traversal ---------------------------------------------------------------------------

    def walk(self) -> None:
        root = self.info.root_nid
        root_type, _flags, root_dir = self._visit(root)
        if root_dir is None:
            raise ErofsError(f"root inode {root} is not a directory (type {root_type:#o})")
        # directories still to read: (nid, (layout, size, u, inline start, inline end))
        stack: list[tuple[int, _DirLocation]] = [(root, root_dir)]
        root_hex_names: set[bytes] = set()
        inodes = self.inodes
        while stack:
            nid, location = stack.pop()
            is_root = nid == root
            for name, child, ftype in self._entries(nid, *location):
                if name == b"." or name == b"..":
                    continue
                known = inodes.get(child)
                if known is None:
                    itype, flags, subdir = self._visit(child)
                    if subdir is not None:
                        stack.append((child, subdir))
                elif known[0] == _S_IFDIR:
                    raise ErofsError(
                        f"directory inode {child} is reachable twice (a loop or a hardlinked "
                        f"directory), the second time as {name!r} in directory inode {nid}"
                    )
                else:
                    itype, flags = known
                if ftype != FT_OF_IFMT[itype]:
                    raise ErofsError(
                        f"directory entry {name!r} in inode {nid} has file type {ftype}, "
                        f"but inode {child} has mode {itype:#o}"
                    )
                if self.epoch1:
                    if is_root:
                        if name in _HEX_NAMES:
                            root_hex_names.add(name)
                    elif flags & _IS_WHITEOUT:
                        raise ErofsError(
                            f"V0/V1 image contains a whiteout device {name!r} outside the root "
                            "whiteout stubs"
                        )
                elif flags & _IS_ESCAPED_WHITEOUT:
                    raise ErofsError(f"V2 image contains an escaped whiteout {name!r}")
        if self.epoch1 and len(root_hex_names) != 256:
            raise ErofsError(
                f"V0/V1 image has {len(root_hex_names)} hex-named root entries, "
                "expected 256 (00-ff)"
            )

    def _visit(self, nid: int) -> tuple[int, int, _DirLocation | None]:
        """Parses inode ``nid`` and collects the references in its xattrs.

        Returns its type bits, its ``_IS_*`` flags and, for a directory, the fields needed to
        read its entries later: (layout, size, u, inline start, inline end).
        """
        buf = self.buf
        off = nid * INODE_SLOT_SIZE
        if off >= self.size:
            raise ErofsError(f"inode {nid} lies past the end of the image")
        if buf[off] & 1:
            hsize = EXTENDED_INODE_SIZE
            if off + hsize > self.size:
                raise ErofsError(f"inode {nid} lies past the end of the image")
            fmt, icount, mode, _, size, u = EXTENDED_INODE.unpack_from(buf, off)[:6]
        else:
            hsize = COMPACT_INODE_SIZE
            if off + hsize > self.size:
                raise ErofsError(f"inode {nid} lies past the end of the image")
            fmt, icount, mode, _, size, _, u = COMPACT_INODE.unpack_from(buf, off)[:7]
        layout = inode_layout(fmt)
        itype = mode & _S_IFMT
        if itype not in FT_OF_IFMT:
            raise ErofsError(f"inode {nid} has an invalid file type in mode {mode:#o}")
        xattr_start = off + hsize
        xattr_size = XATTR_HEADER_SIZE + 4 * (icount - 1) if icount else 0
        inline_start = xattr_start + xattr_size
        if layout == LAYOUT_FLAT_PLAIN:
            inline_end = inline_start
        elif layout == LAYOUT_FLAT_INLINE:
            inline_end = inline_start + size % BLOCK_SIZE
        elif layout == LAYOUT_CHUNK_BASED:
            inline_end = inline_start + 4
        else:
            raise ErofsError(f"inode {nid} has an invalid data layout in format {fmt:#x}")
        if inline_end > self.size:
            raise ErofsError(f"inode {nid} (with its xattrs and inline data) exceeds the image")
        if layout != LAYOUT_CHUNK_BASED:
            self._check_blocks(nid, layout, size, u)
        # the chunk index may be absent (files without chunks), so it is not claimed here
        last = (inline_end if layout != LAYOUT_CHUNK_BASED else inline_start) - 1
        slots = self.slots
        if slots.find(1, nid, last // 32 + 1) >= 0:
            raise ErofsError(f"inode {nid} overlaps another inode")
        slots[nid : last // 32 + 1] = b"\x01" * (last // 32 + 1 - nid)

        flags = 0
        if icount:
            flags = self._xattrs(nid, xattr_start, inline_start)
        if itype != _S_IFREG:
            flags &= ~_IS_ESCAPED_WHITEOUT
        if itype == _S_IFCHR and u == 0:
            flags |= _IS_WHITEOUT
        if (
            itype == _S_IFLNK
            and layout == LAYOUT_FLAT_INLINE
            and self.info.composefs_version < 2
            and size % BLOCK_SIZE
            and off % BLOCK_SIZE + (inline_end - off) > BLOCK_SIZE
        ):
            raise ErofsError(
                f"symlink inode {nid} has inline data crossing a block boundary "
                "(kernels older than 6.12 reject it)"
            )
        self.inodes[nid] = (itype, flags)
        if itype == _S_IFDIR:
            return itype, flags, (layout, size, u, inline_start, inline_end)
        return itype, flags, None

    def _check_blocks(self, nid: int, layout: int, size: int, u: int) -> None:
        if size > self.size:
            raise ErofsError(f"inode {nid} size {size} exceeds the image size {self.size}")
        nblocks = -(-size // BLOCK_SIZE) if layout == LAYOUT_FLAT_PLAIN else size // BLOCK_SIZE
        if nblocks and (u + nblocks) * BLOCK_SIZE > self.size:
            raise ErofsError(
                f"inode {nid} data blocks {u}..{u + nblocks} lie past the end of the image "
                f"({self.size // BLOCK_SIZE} blocks)"
            )

    # -- directories ---------------------------------------------------------------------------

    def _entries(
        self, nid: int, layout: int, size: int, u: int, inline_start: int, inline_end: int
    ) -> list[tuple[bytes, int, int]]:
        if layout == LAYOUT_CHUNK_BASED:
            raise ErofsError(f"directory inode {nid} has a chunk-based layout")
        entries: list[tuple[bytes, int, int]] = []
        nblocks = -(-size // BLOCK_SIZE) if layout == LAYOUT_FLAT_PLAIN else size // BLOCK_SIZE
        owners = self.dir_blocks
        for block in range(u, u + nblocks):
            if owners[block]:
                raise ErofsError(f"directory block {block} is shared by two directories")
            owners[block] = 1
            start = block * BLOCK_SIZE
            self._block_entries(nid, start, start + BLOCK_SIZE, entries)
        if inline_end > inline_start:
            self._block_entries(nid, inline_start, inline_end, entries)
        return entries

    def _block_entries(
        self, nid: int, start: int, end: int, out: list[tuple[bytes, int, int]]
    ) -> None:
        """Appends the (name, nid, file type) entries of one directory block or inline tail."""
        buf = self.buf
        if end - start < DIRENT_SIZE:
            raise ErofsError(f"directory inode {nid}: block at {start} too short for an entry")
        first = DIRENT.unpack_from(buf, start)[1]
        if first == 0 or first % DIRENT_SIZE:
            raise ErofsError(
                f"directory inode {nid}: invalid name offset {first} of the first entry at {start}"
            )
        headers_end = start + first
        if headers_end > end:
            raise ErofsError(
                f"directory inode {nid}: {first // DIRENT_SIZE} entries do not fit the block "
                f"at {start}"
            )
        headers = list(DIRENT.iter_unpack(buf[start:headers_end]))
        last = len(headers) - 1
        for i, (child, name_off, ftype) in enumerate(headers):
            name_start = start + name_off
            if i < last:
                name_end = start + headers[i + 1][1]
            else:
                name_end = buf.find(b"\0", name_start, end)
                if name_end < 0:
                    name_end = end
            if not name_start < name_end <= end or name_start < headers_end:
                raise ErofsError(
                    f"directory inode {nid}: entry {i} of the block at {start} has a bad "
                    "name offset"
                )
            name = buf[name_start:name_end]
            if len(name) > 255 or b"/" in name:
                raise ErofsError(f"directory inode {nid}: invalid entry name {name!r}")
            out.append((name, child, ftype))

    # -- xattrs --------------------------------------------------------------------------------

    def _xattrs(self, nid: int, start: int, end: int) -> int:
        """Collects the references in the xattr area ``[start, end)`` of inode ``nid``.

        Returns _IS_ESCAPED_WHITEOUT when the inode has trusted.overlay.overlay.whiteout.
        """
        buf = self.buf
        shared_count = buf[start + 4]
        pos = start + XATTR_HEADER_SIZE
        local = pos + 4 * shared_count
        if local > end:
            raise ErofsError(
                f"inode {nid}: {shared_count} shared xattr references overflow its xattr area"
            )
        flags = 0
        for (ref,) in _U32.iter_unpack(buf[pos:local]):
            known = self.shared.get(ref)
            if known is None:
                entry = self.xattr_base + 4 * ref
                known = self._xattr(nid, entry, self.size, shared=True)[1]
                self.shared[ref] = known
            flags |= known
        pos = local
        while pos < end:
            pos, found = self._xattr(nid, pos, end, shared=False)
            flags |= found
        return flags

    def _xattr(self, nid: int, pos: int, end: int, shared: bool) -> tuple[int, int]:
        """Reads the xattr entry at ``pos`` (which must end by ``end``); returns its end."""
        if pos + 4 > end:
            where = "shared xattr" if shared else "xattr"
            raise ErofsError(f"inode {nid}: {where} entry at {pos} exceeds its area")
        name_len, index, value_size = XATTR_ENTRY.unpack_from(self.buf, pos)
        name_start = pos + 4
        value_start = name_start + name_len
        value_end = value_start + value_size
        next_pos = name_start + ((name_len + value_size + 3) & ~3)
        if next_pos > end:
            where = "shared xattr" if shared else "xattr"
            raise ErofsError(f"inode {nid}: {where} entry at {pos} exceeds its area")
        if index >= len(XATTR_PREFIXES):
            raise ErofsError(f"inode {nid}: xattr name index {index} out of range")
        if index == XATTR_PREFIX_TRUSTED:
            suffix = self.buf[name_start:value_start]
            if suffix == _METACOPY_SUFFIX:
                self._metacopy(nid, self.buf[value_start:value_end])
            elif suffix == _REDIRECT_SUFFIX:
                self._redirect(nid, self.buf[value_start:value_end])
            elif suffix == b"overlay.overlay.whiteout":
                return next_pos, _IS_ESCAPED_WHITEOUT
        elif index == 0 and self.buf[name_start:value_start] == _ESCAPED_WHITEOUT:
            return next_pos, _IS_ESCAPED_WHITEOUT
        return next_pos, 0

    def _metacopy(self, nid: int, value: bytes) -> None:
        if len(value) == self.metacopy_len and value[:4] == self.metacopy_head:
            self.objects.add(value[4:])
        elif self.strict and value:
            raise ErofsError(
                f"inode {nid}: trusted.overlay.metacopy is not a metacopy of this algorithm "
                f"(value {value.hex()})"
            )

    def _redirect(self, nid: int, value: bytes) -> None:
        digest = parse_object_path(value, self.digest_size)
        if digest is not None:
            self.objects.add(digest)
        elif self.strict:
            raise ErofsError(
                f"inode {nid}: trusted.overlay.redirect {value!r} is not an object path of "
                f"{self.digest_size}-byte digests"
            )


def parse_object_path(path: bytes, digest_size: int) -> bytes | None:
    """The digest named by an object path ``…/xx/<hex>``, or None if ``path`` does not end in one.

    Like composefs-rs, only the trailing ``2 * digest_size + 1`` bytes count (one leading ``/``
    or any other leading directories are ignored); hex digits of either case are accepted.
    """
    tail = path[-(2 * digest_size + 1) :]
    if len(tail) != 2 * digest_size + 1 or tail[2:3] != b"/":
        return None
    try:
        return binascii.unhexlify(tail[:2] + tail[3:])
    except binascii.Error:
        return None


# -- writing ------------------------------------------------------------------------------------

#: The EROFS formats composefs-rs 0.9 writes and the default one (``cfsctl init``), from
#: :mod:`composefs.constants`.
FORMAT_VERSIONS: Final = constants.EROFS_VERSIONS
DEFAULT_FORMAT_VERSION: Final = constants.DEFAULT_EROFS_VERSION


def mkfs(dumpfile: BufferLike, version: int = DEFAULT_FORMAT_VERSION) -> bytes:
    """The composefs EROFS image (format ``version``: 0, 1 or 2) of the tree a composefs
    dumpfile describes; byte-identical to composefs-rs 0.9 (V0 and V1 follow C mkcomposefs's
    layout for the trees composefs-rs can describe; :func:`mkcomposefs` is C mkcomposefs
    itself, with its own dumpfile rules). Runs in the active backend; raises
    :class:`ErofsError` for a dumpfile that is malformed or describes a tree no image can
    hold."""
    if version not in FORMAT_VERSIONS:
        raise ErofsError(f"unsupported EROFS format version {version} (expected 0, 1 or 2)")
    try:
        return bytes(_backend.backend().erofs.mkfs(dumpfile, version))
    except ValueError as e:
        raise ErofsError(str(e)) from None


def mkcomposefs(
    dumpfile: BufferLike, *, min_version: int = 0, max_version: int = 1, strict: bool = False
) -> bytes:
    """The image C ``mkcomposefs --from-file`` 1.0 writes for a dumpfile, byte for byte: C's
    dumpfile rules (``strict``: as with ``CFS_PARSE_STRICT`` set) and C's writer. The format
    is ``min_version`` (0 or 1), raised to 1 when the tree holds a whiteout and
    ``max_version`` allows it. This is not :func:`mkfs`: C keeps each line's NLINK, PAYLOAD and
    inline CONTENT (up to 5000 bytes) as written, refuses repeated paths, and more (see
    docs/differences.md). Runs in the active backend; raises :class:`ErofsError` for an input
    C refuses, with the line number."""
    try:
        return bytes(
            _backend.backend().erofs.mkcomposefs(dumpfile, min_version, max_version, strict)
        )
    except ValueError as e:
        raise ErofsError(str(e)) from None


def image_id(data: BufferLike, algorithm: Algorithm | str) -> bytes:
    """An image's id: the fs-verity digest of its bytes."""
    return fsverity.digest(data, algorithm)
