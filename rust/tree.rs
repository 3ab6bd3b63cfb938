//! The filesystem tree of a composefs image (composefs-rs `generic_tree`/`tree`) and the
//! OCI layer merge (composefs-rs `composefs_oci::image::create_filesystem`).
//!
//! Model: a [`Directory`] maps names (byte strings, iterated in byte order) to a
//! sub-directory or to a leaf index into [`FileSystem::leaves`]. Hard links are several
//! entries with the same leaf index. The pure-Python twin is `python/composefs/_pure/tree.py`.

use std::collections::BTreeMap;

/// `generic_tree::Stat`. `mode` is kept raw (a tar header's mode may carry type bits);
/// writers use `mode & 0o7777` plus the type of the content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Leaf content (composefs-rs `LeafContent` + `RegularFile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Regular file stored in the image (empty files too).
    Inline(Vec<u8>),
    /// Regular file stored as an object: fs-verity digest (32 or 64 bytes) and size.
    External { id: Vec<u8>, size: u64 },
    /// composefs-rs `ExternalNoVerity`: object id without verity, and size.
    ExternalNoVerity { id: Vec<u8>, size: u64 },
    /// A file of `size` bytes of holes.
    Sparse(u64),
    BlockDevice(u64),
    CharacterDevice(u64),
    Fifo,
    Socket,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub stat: Stat,
    pub content: Content,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inode {
    Directory(Box<Directory>),
    /// Index into [`FileSystem::leaves`].
    Leaf(usize),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    pub stat: Stat,
    pub entries: BTreeMap<Vec<u8>, Inode>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSystem {
    pub root: Directory,
    pub leaves: Vec<Leaf>,
}

impl FileSystem {
    /// Number of tree entries referring to each leaf (hard link count), by leaf index.
    pub fn nlinks(&self) -> Vec<u32> {
        fn walk(dir: &Directory, counts: &mut [u32]) {
            for inode in dir.entries.values() {
                match inode {
                    Inode::Directory(d) => walk(d, counts),
                    Inode::Leaf(i) => counts[*i] += 1,
                }
            }
        }
        let mut counts = vec![0; self.leaves.len()];
        walk(&self.root, &mut counts);
        counts
    }
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use pyo3::prelude::*;

    pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
        Ok(())
    }
}
