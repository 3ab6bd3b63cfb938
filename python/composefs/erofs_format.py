"""The on-disk layout of composefs EROFS images, stated once.

Used by the reader (:mod:`composefs.erofs`) and the pure writer (``composefs._pure.erofs``). The
Rust twin is ``rust/erofs/format.rs``, exposed as ``composefs._native.erofs_format`` with the same
names; a test checks that the values agree. Facts from the Linux EROFS on-disk format
(``fs/erofs/erofs_fs.h``) and the composefs header that precedes the superblock. Nothing here
imports anything of ours.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "BLOCK_BITS",
    "BLOCK_SIZE",
    "COMPACT_INODE",
    "COMPACT_INODE_SIZE",
    "COMPOSEFS_FLAGS_HAS_ACL",
    "COMPOSEFS_HEADER",
    "COMPOSEFS_HEADER_VERSION",
    "COMPOSEFS_MAGIC",
    "DIRENT",
    "DIRENT_SIZE",
    "EROFS_MAGIC",
    "EROFS_SUPER_OFFSET",
    "EXTENDED_INODE",
    "EXTENDED_INODE_SIZE",
    "FEATURE_COMPAT",
    "FEATURE_COMPAT_MTIME",
    "FEATURE_COMPAT_SB_CHKSUM",
    "FEATURE_COMPAT_XATTR_FILTER",
    "FEATURE_INCOMPAT_CHUNKED_FILE",
    "FT_BLK",
    "FT_CHR",
    "FT_DIR",
    "FT_FIFO",
    "FT_LNK",
    "FT_OF_IFMT",
    "FT_REG",
    "FT_SOCK",
    "IFMT_OF_FT",
    "INODE_LAYOUT_EXTENDED",
    "INODE_SLOT_SIZE",
    "LAYOUT_CHUNK_BASED",
    "LAYOUT_FLAT_INLINE",
    "LAYOUT_FLAT_PLAIN",
    "SUPERBLOCK",
    "SUPERBLOCK_SIZE",
    "XATTR_ENTRY",
    "XATTR_ENTRY_SIZE",
    "XATTR_FILTER_SEED",
    "XATTR_HEADER",
    "XATTR_HEADER_SIZE",
    "XATTR_INDEX_POSIX_ACL_ACCESS",
    "XATTR_INDEX_POSIX_ACL_DEFAULT",
    "XATTR_PREFIXES",
    "XATTR_PREFIX_TRUSTED",
    "inode_format",
    "inode_layout",
]

# -- blocks and magic numbers -------------------------------------------------------------------

#: log2 of the block size; composefs images always use 4 KiB blocks.
BLOCK_BITS: Final = 12
BLOCK_SIZE: Final = 1 << BLOCK_BITS

#: The composefs header at offset 0: magic, version (COMPOSEFS_HEADER_VERSION), flags,
#: composefs_version (the image format 0, 1 or 2), 4 unused u32.
COMPOSEFS_HEADER: Final = struct.Struct("<IIII16x")
COMPOSEFS_MAGIC: Final = 0xD078629A
COMPOSEFS_HEADER_VERSION: Final = 1
#: composefs header flag: the image has POSIX ACLs.
COMPOSEFS_FLAGS_HAS_ACL: Final = 1

EROFS_MAGIC: Final = 0xE0F5E1E2
#: The EROFS superblock starts here (after the composefs header and padding).
EROFS_SUPER_OFFSET: Final = 1024
#: ``erofs_super_block``: magic, checksum, feature_compat, blkszbits, sb_extslots, root_nid,
#: inos, build_time, build_time_nsec, blocks, meta_blkaddr, xattr_blkaddr, (uuid, volume_name),
#: feature_incompat, available_compr_algs, extra_devices, devt_slotoff, dirblkbits,
#: xattr_prefix_count, xattr_prefix_start, packed_nid, xattr_filter_reserved, (reserved).
SUPERBLOCK: Final = struct.Struct("<IIIBBHQQIIII32xIHHHBBIQB23x")
SUPERBLOCK_SIZE: Final = 128

FEATURE_COMPAT_SB_CHKSUM: Final = 0x1
FEATURE_COMPAT_MTIME: Final = 0x2
FEATURE_COMPAT_XATTR_FILTER: Final = 0x4
#: The ``feature_compat`` flags a composefs image carries (mtime, xattr name filter).
FEATURE_COMPAT: Final = FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER
FEATURE_INCOMPAT_CHUNKED_FILE: Final = 0x4

# -- inodes -------------------------------------------------------------------------------------

#: Inodes are addressed in 32-byte slots: ``nid = byte offset / INODE_SLOT_SIZE``.
INODE_SLOT_SIZE: Final = 32
#: ``erofs_inode_compact``: format, xattr_icount, mode, nlink, size, (reserved), u, ino, uid,
#: gid, (reserved).
COMPACT_INODE: Final = struct.Struct("<HHHHIIIIHH4x")
COMPACT_INODE_SIZE: Final = 32
#: ``erofs_inode_extended``: format, xattr_icount, mode, (reserved), size, u, ino, uid, gid,
#: mtime, mtime_nsec, nlink, (reserved).
EXTENDED_INODE: Final = struct.Struct("<HHHHQIIIIQII16x")
EXTENDED_INODE_SIZE: Final = 64

#: Bit 0 of an inode's ``format`` field: 1 for an extended inode, 0 for a compact one.
INODE_LAYOUT_EXTENDED: Final = 1

#: Data layouts: bits 1-3 of an inode's ``format`` field (``EROFS_INODE_FLAT_PLAIN`` ...).
#: :func:`inode_format` shifts them into place, :func:`inode_layout` extracts them.
LAYOUT_FLAT_PLAIN: Final = 0
LAYOUT_FLAT_INLINE: Final = 2
LAYOUT_CHUNK_BASED: Final = 4


def inode_format(layout: int, extended: bool) -> int:
    """The ``format`` field of an inode with data layout ``layout`` (``LAYOUT_*``)."""
    return layout << 1 | (INODE_LAYOUT_EXTENDED if extended else 0)


def inode_layout(format_field: int) -> int:
    """The data layout (``LAYOUT_*``) of an inode's ``format`` field."""
    return (format_field >> 1) & 7


# -- directories --------------------------------------------------------------------------------

#: ``erofs_dirent``: nid, nameoff, file_type, (reserved).
DIRENT: Final = struct.Struct("<QHBx")
DIRENT_SIZE: Final = 12

#: Directory entry file types (``EROFS_FT_*``).
FT_REG: Final = 1
FT_DIR: Final = 2
FT_CHR: Final = 3
FT_BLK: Final = 4
FT_FIFO: Final = 5
FT_SOCK: Final = 6
FT_LNK: Final = 7
#: ``S_IFMT`` bits of a mode -> directory entry file type, and back.
FT_OF_IFMT: Final = {
    0o100000: FT_REG,
    0o040000: FT_DIR,
    0o020000: FT_CHR,
    0o060000: FT_BLK,
    0o010000: FT_FIFO,
    0o140000: FT_SOCK,
    0o120000: FT_LNK,
}
IFMT_OF_FT: Final = {ft: ifmt for ifmt, ft in FT_OF_IFMT.items()}

# -- extended attributes ------------------------------------------------------------------------

#: ``erofs_xattr_ibody_header``: name_filter, h_shared_count, (reserved); then the shared xattr
#: ids (u32 each) and the inline entries.
XATTR_HEADER: Final = struct.Struct("<IB7x")
XATTR_HEADER_SIZE: Final = 12
#: ``erofs_xattr_entry``: name_len, name_index, value_size; then the name suffix and the value,
#: padded to 4 bytes.
XATTR_ENTRY: Final = struct.Struct("<BBH")
XATTR_ENTRY_SIZE: Final = 4

#: The built-in xattr name prefixes, by ``name_index``.
XATTR_PREFIXES: Final = (
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
)
#: The ``name_index`` of ``system.posix_acl_access`` and ``system.posix_acl_default`` (the
#: composefs header's ACL flag is set when an image has one).
XATTR_INDEX_POSIX_ACL_ACCESS: Final = 2
XATTR_INDEX_POSIX_ACL_DEFAULT: Final = 3
#: The ``name_index`` of ``trusted.``.
XATTR_PREFIX_TRUSTED: Final = 4
#: The xattr name filter (bloom filter in ``name_filter``) hashes a name suffix with
#: ``xxh32(suffix, XATTR_FILTER_SEED + name_index)``.
XATTR_FILTER_SEED: Final = 0x25BBE08F
