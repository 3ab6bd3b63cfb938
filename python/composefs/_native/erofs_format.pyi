"""The EROFS on-disk format constants of the native writer (``rust/erofs/format.rs``), by
name, which must equal those of :mod:`composefs.erofs_format` (a test compares them)."""

__all__ = [
    "BLOCK_BITS",
    "BLOCK_SIZE",
    "COMPACT_INODE_SIZE",
    "COMPOSEFS_FLAGS_HAS_ACL",
    "COMPOSEFS_HEADER_VERSION",
    "COMPOSEFS_MAGIC",
    "EROFS_MAGIC",
    "EROFS_SUPER_OFFSET",
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
    "FT_REG",
    "FT_SOCK",
    "INODE_SLOT_SIZE",
    "LAYOUT_CHUNK_BASED",
    "LAYOUT_FLAT_INLINE",
    "LAYOUT_FLAT_PLAIN",
    "SUPERBLOCK_SIZE",
    "XATTR_FILTER_SEED",
    "XATTR_INDEX_POSIX_ACL_ACCESS",
    "XATTR_INDEX_POSIX_ACL_DEFAULT",
    "XATTR_PREFIXES",
]

BLOCK_BITS: int
"""log2 of the block size."""
BLOCK_SIZE: int
"""The block size."""
COMPOSEFS_MAGIC: int
"""Magic of the composefs header at offset 0."""
COMPOSEFS_HEADER_VERSION: int
"""Version of the composefs header."""
COMPOSEFS_FLAGS_HAS_ACL: int
"""composefs header flag: some inode has a POSIX ACL."""
EROFS_MAGIC: int
"""Magic of the EROFS superblock."""
EROFS_SUPER_OFFSET: int
"""Offset of the EROFS superblock."""
SUPERBLOCK_SIZE: int
"""Size of the EROFS superblock."""
FEATURE_COMPAT_SB_CHKSUM: int
"""``feature_compat`` bit: superblock checksum."""
FEATURE_COMPAT_MTIME: int
"""``feature_compat`` bit: per-inode mtime."""
FEATURE_COMPAT_XATTR_FILTER: int
"""``feature_compat`` bit: xattr name filter."""
FEATURE_COMPAT: int
"""The ``feature_compat`` of a composefs image."""
FEATURE_INCOMPAT_CHUNKED_FILE: int
"""``feature_incompat`` bit: chunk-based files."""
INODE_SLOT_SIZE: int
"""Inodes start on multiples of this size."""
COMPACT_INODE_SIZE: int
"""Size of a compact inode."""
EXTENDED_INODE_SIZE: int
"""Size of an extended inode."""
LAYOUT_FLAT_PLAIN: int
"""Data layout: plain blocks."""
LAYOUT_FLAT_INLINE: int
"""Data layout: blocks and an inline tail."""
LAYOUT_CHUNK_BASED: int
"""Data layout: chunk-based."""
FT_REG: int
"""Directory entry type: regular file."""
FT_DIR: int
"""Directory entry type: directory."""
FT_CHR: int
"""Directory entry type: character device."""
FT_BLK: int
"""Directory entry type: block device."""
FT_FIFO: int
"""Directory entry type: fifo."""
FT_SOCK: int
"""Directory entry type: socket."""
FT_LNK: int
"""Directory entry type: symlink."""
XATTR_PREFIXES: tuple[bytes, ...]
"""Xattr name prefixes by index (0: none)."""
XATTR_FILTER_SEED: int
"""Seed of the xattr name filter hash."""
XATTR_INDEX_POSIX_ACL_ACCESS: int
"""Index in ``XATTR_PREFIXES`` of ``system.posix_acl_access``."""
XATTR_INDEX_POSIX_ACL_DEFAULT: int
"""Index in ``XATTR_PREFIXES`` of ``system.posix_acl_default``."""
