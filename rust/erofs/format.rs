//! The EROFS on-disk format as composefs images use it, stated once: the composefs header,
//! the superblock, inode layouts, directory entry file types and the xattr name prefixes.
//! Python twin: `python/composefs/erofs_format.py` (a test compares the values).

/// log2 of the block size (the superblock's `blkszbits`).
pub const BLOCK_BITS: u8 = 12;
pub const BLOCK_SIZE: usize = 1 << BLOCK_BITS;

/// The composefs header at offset 0: magic, header version, flags, image format version.
pub const COMPOSEFS_MAGIC: u32 = 0xD078_629A;
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
/// Header flag: some inode has a POSIX ACL xattr.
pub const COMPOSEFS_FLAGS_HAS_ACL: u32 = 1;

/// The EROFS superblock: its magic, where it starts and its size.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
pub const EROFS_SUPER_OFFSET: usize = 1024;
pub const SUPERBLOCK_SIZE: usize = 128;

/// `feature_compat` bits.
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;
/// What a composefs image sets: MTIME | XATTR_FILTER.
pub const FEATURE_COMPAT: u32 = FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER;
/// `feature_incompat` bit of chunk-based files.
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x4;

/// Inodes start on a multiple of the slot size (an inode number is `offset / 32`).
pub const INODE_SLOT_SIZE: usize = 32;
pub const COMPACT_INODE_SIZE: usize = 32;
pub const EXTENDED_INODE_SIZE: usize = 64;

/// Inode data layouts (bits 1-3 of the inode's `format` field).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// The inode `format` field: the data layout, and bit 0 set for an extended inode.
pub const fn i_format(layout: u16, extended: bool) -> u16 {
    (layout << 1) | extended as u16
}

/// Directory entry file types.
pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_LNK: u8 = 7;

/// Xattr name prefixes by index (0: no prefix).
pub const XATTR_PREFIXES: [&[u8]; 7] = [
    b"",
    b"user.",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
    b"trusted.",
    b"lustre.",
    b"security.",
];

/// Indexes into [`XATTR_PREFIXES`] of the POSIX ACL xattrs (the header's ACL flag).
pub const XATTR_INDEX_POSIX_ACL_ACCESS: u8 = 2;
pub const XATTR_INDEX_POSIX_ACL_DEFAULT: u8 = 3;

/// Seed of the xattr name filter hash (xxh32 of the name suffix, seed + prefix index).
pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;

#[cfg(feature = "python")]
pub(crate) mod py {
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyTuple};

    /// `composefs._native.erofs_format`: the constants above, by name.
    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        use super::*;
        m.add("BLOCK_BITS", BLOCK_BITS)?;
        m.add("BLOCK_SIZE", BLOCK_SIZE)?;
        m.add("COMPOSEFS_MAGIC", COMPOSEFS_MAGIC)?;
        m.add("COMPOSEFS_HEADER_VERSION", COMPOSEFS_HEADER_VERSION)?;
        m.add("COMPOSEFS_FLAGS_HAS_ACL", COMPOSEFS_FLAGS_HAS_ACL)?;
        m.add("EROFS_MAGIC", EROFS_MAGIC)?;
        m.add("EROFS_SUPER_OFFSET", EROFS_SUPER_OFFSET)?;
        m.add("SUPERBLOCK_SIZE", SUPERBLOCK_SIZE)?;
        m.add("FEATURE_COMPAT_SB_CHKSUM", FEATURE_COMPAT_SB_CHKSUM)?;
        m.add("FEATURE_COMPAT_MTIME", FEATURE_COMPAT_MTIME)?;
        m.add("FEATURE_COMPAT_XATTR_FILTER", FEATURE_COMPAT_XATTR_FILTER)?;
        m.add("FEATURE_COMPAT", FEATURE_COMPAT)?;
        m.add(
            "FEATURE_INCOMPAT_CHUNKED_FILE",
            FEATURE_INCOMPAT_CHUNKED_FILE,
        )?;
        m.add("INODE_SLOT_SIZE", INODE_SLOT_SIZE)?;
        m.add("COMPACT_INODE_SIZE", COMPACT_INODE_SIZE)?;
        m.add("EXTENDED_INODE_SIZE", EXTENDED_INODE_SIZE)?;
        m.add("LAYOUT_FLAT_PLAIN", LAYOUT_FLAT_PLAIN)?;
        m.add("LAYOUT_FLAT_INLINE", LAYOUT_FLAT_INLINE)?;
        m.add("LAYOUT_CHUNK_BASED", LAYOUT_CHUNK_BASED)?;
        m.add("FT_REG", FT_REG)?;
        m.add("FT_DIR", FT_DIR)?;
        m.add("FT_CHR", FT_CHR)?;
        m.add("FT_BLK", FT_BLK)?;
        m.add("FT_FIFO", FT_FIFO)?;
        m.add("FT_SOCK", FT_SOCK)?;
        m.add("FT_LNK", FT_LNK)?;
        let py = m.py();
        let prefixes = XATTR_PREFIXES.iter().map(|p| PyBytes::new(py, p));
        m.add("XATTR_PREFIXES", PyTuple::new(py, prefixes)?)?;
        m.add("XATTR_INDEX_POSIX_ACL_ACCESS", XATTR_INDEX_POSIX_ACL_ACCESS)?;
        m.add(
            "XATTR_INDEX_POSIX_ACL_DEFAULT",
            XATTR_INDEX_POSIX_ACL_DEFAULT,
        )?;
        m.add("XATTR_FILTER_SEED", XATTR_FILTER_SEED)?;
        Ok(())
    }
}
