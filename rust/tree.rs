//! The filesystem tree of a composefs image (composefs-rs `generic_tree`/`tree`): the model
//! every reader and writer shares. It depends on nothing else of this crate.
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
    External {
        id: Vec<u8>,
        size: u64,
    },
    /// composefs-rs `ExternalNoVerity`: object id without verity, and size.
    ExternalNoVerity {
        id: Vec<u8>,
        size: u64,
    },
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

#[derive(Debug, PartialEq, Eq)]
pub enum Inode {
    Directory(Box<Directory>),
    /// Index into [`FileSystem::leaves`].
    Leaf(usize),
}

/// `Debug` recurses (tests only); dropping and comparing do not.
#[derive(Debug, Default)]
pub struct Directory {
    pub stat: Stat,
    pub entries: BTreeMap<Vec<u8>, Inode>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileSystem {
    pub root: Directory,
    pub leaves: Vec<Leaf>,
}

impl FileSystem {
    /// Number of tree entries referring to each leaf (hard link count), by leaf index.
    pub fn nlinks(&self) -> Vec<u32> {
        let mut counts = vec![0; self.leaves.len()];
        for event in self.root.walk() {
            if let Walk::Leaf(_, _, i) = event {
                counts[i] += 1;
            }
        }
        counts
    }
}

/// One step of [`Directory::walk`].
#[derive(Clone, Copy, Debug)]
pub enum Walk<'a> {
    /// A sub-directory (the name in its parent, the directory), before its entries.
    Enter(&'a [u8], &'a Directory),
    /// A leaf entry: its name, the directory holding it, the leaf index.
    Leaf(&'a [u8], &'a Directory, usize),
    /// After the entries of the directory last entered.
    Leave(&'a Directory),
}

/// The iterator of [`Directory::walk`]: depth-first, entries in name order, without
/// recursion (one frame per level on the heap).
pub struct WalkIter<'a> {
    stack: Vec<(
        &'a Directory,
        std::collections::btree_map::Iter<'a, Vec<u8>, Inode>,
    )>,
}

impl<'a> Iterator for WalkIter<'a> {
    type Item = Walk<'a>;

    fn next(&mut self) -> Option<Walk<'a>> {
        let (dir, iter) = self.stack.last_mut()?;
        let dir = *dir;
        match iter.next() {
            Some((name, Inode::Directory(d))) => {
                self.stack.push((d, d.entries.iter()));
                Some(Walk::Enter(name, d))
            }
            Some((name, Inode::Leaf(i))) => Some(Walk::Leaf(name, dir, *i)),
            None => {
                self.stack.pop();
                // The walk's own root is not reported.
                (!self.stack.is_empty()).then_some(Walk::Leave(dir))
            }
        }
    }
}

/// Compares two trees without recursion.
impl PartialEq for Directory {
    fn eq(&self, other: &Self) -> bool {
        if self.stat != other.stat {
            return false;
        }
        let (mut a, mut b) = (self.walk(), other.walk());
        loop {
            let same = match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(Walk::Enter(n, d)), Some(Walk::Enter(m, e))) => n == m && d.stat == e.stat,
                (Some(Walk::Leaf(n, _, i)), Some(Walk::Leaf(m, _, j))) => n == m && i == j,
                (Some(Walk::Leave(_)), Some(Walk::Leave(_))) => true,
                _ => false,
            };
            if !same {
                return false;
            }
        }
    }
}

impl Eq for Directory {}

/// Drops the sub-directories one at a time: the derived drop of nested boxes would
/// recurse once per level and overflow the stack on a deep tree.
impl Drop for Directory {
    fn drop(&mut self) {
        fn take(entries: &mut BTreeMap<Vec<u8>, Inode>, stack: &mut Vec<Directory>) {
            if entries.values().any(|i| matches!(i, Inode::Directory(_))) {
                for (_, inode) in std::mem::take(entries) {
                    if let Inode::Directory(d) = inode {
                        stack.push(*d);
                    }
                }
            }
        }
        let mut stack: Vec<Directory> = Vec::new();
        take(&mut self.entries, &mut stack);
        while let Some(mut d) = stack.pop() {
            take(&mut d.entries, &mut stack);
            // `d` has no sub-directory left: dropping it does not recurse.
        }
    }
}

/// Rust's `Debug` rendering of a byte path (as composefs-rs's `{:?}` of a `Path`/`OsStr`).
pub fn debug_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    s.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\'' {
                s.push(c);
            } else {
                s.extend(c.escape_debug());
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02X}"));
        }
    }
    s.push('"');
    s
}

/// Which xattrs `transform_for_oci` keeps (composefs-rs `XattrFiltering`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrFiltering {
    /// Only `security.capability`.
    #[default]
    AllowlistOnly,
    /// `security.capability` and every `user.*` name.
    KeepUserXattrs,
}

impl XattrFiltering {
    /// Whether an xattr called `name` is kept.
    pub fn keeps(self, name: &[u8]) -> bool {
        name == b"security.capability"
            || (self == Self::KeepUserXattrs && name.starts_with(b"user."))
    }
}

/// composefs-rs `ImageError` texts.
pub fn not_found(name: &[u8]) -> String {
    format!("Directory entry {} does not exist", debug_bytes(name))
}

pub fn not_a_directory(name: &[u8]) -> String {
    format!(
        "Directory entry {} is not a subdirectory",
        debug_bytes(name)
    )
}

/// The components of a member name made absolute by `make_absolute_path`: empty and `.`
/// components dropped, `..` resolved lexically; climbing above the root is an error.
pub fn normalize_path(path: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out: Vec<&[u8]> = Vec::new();
    normalize_into(path, &mut out)?;
    Ok(out)
}

/// [`normalize_path`], appending the components to `out` (what was there is kept).
pub fn normalize_into<'a>(path: &'a [u8], out: &mut Vec<&'a [u8]>) -> Result<(), String> {
    let start = out.len();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.len() == start {
                    return Err(format!(
                        "path escapes the image root: {}",
                        String::from_utf8_lossy(path)
                    ));
                }
                out.pop();
            }
            _ => out.push(c),
        }
    }
    Ok(())
}

pub fn join(components: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for c in components {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    p
}

impl Directory {
    pub fn new(stat: Stat) -> Self {
        Self {
            stat,
            entries: BTreeMap::new(),
        }
    }

    /// The directory at `components`, or `None` when one is missing or not a directory.
    pub fn find_dir_mut(&mut self, components: &[&[u8]]) -> Option<&mut Directory> {
        let mut dir = self;
        for c in components {
            match dir.entries.get_mut(*c) {
                Some(Inode::Directory(d)) => dir = d,
                _ => return None,
            }
        }
        Some(dir)
    }

    /// composefs-rs `get_directory_mut`: errors name the failing component.
    pub fn dir_mut(&mut self, components: &[&[u8]]) -> Result<&mut Directory, String> {
        let mut dir = self;
        for c in components {
            dir = match dir.entries.get_mut(*c) {
                Some(Inode::Directory(d)) => d,
                Some(Inode::Leaf(_)) => return Err(not_a_directory(c)),
                None => return Err(not_found(c)),
            };
        }
        Ok(dir)
    }

    /// composefs-rs `get_directory` (via `get_directory_opt`): a missing component is
    /// reported with the whole `pathname`.
    pub fn dir_ref(&self, components: &[&[u8]], pathname: &[u8]) -> Result<&Directory, String> {
        let mut dir = self;
        for c in components {
            dir = match dir.entries.get(*c) {
                Some(Inode::Directory(d)) => d,
                Some(Inode::Leaf(_)) => return Err(not_a_directory(c)),
                None => return Err(not_found(pathname)),
            };
        }
        Ok(dir)
    }

    /// composefs-rs `Directory::merge`: a directory onto a directory replaces only the stat.
    pub fn merge(&mut self, name: &[u8], inode: Inode) {
        if let Inode::Directory(new) = &inode {
            if let Some(Inode::Directory(old)) = self.entries.get_mut(name) {
                old.stat = new.stat.clone();
                return;
            }
        }
        self.entries.insert(name.to_vec(), inode);
    }

    /// Depth-first walk of the entries below this directory in name order (the dumpfile
    /// order), without recursion.
    pub fn walk(&self) -> WalkIter<'_> {
        WalkIter {
            stack: vec![(self, self.entries.iter())],
        }
    }

    /// Calls `f` on the stat of this directory and of every directory below it.
    pub fn for_each_dir_stat(&mut self, f: &mut impl FnMut(&mut Stat)) {
        let mut stack: Vec<&mut Directory> = vec![self];
        while let Some(dir) = stack.pop() {
            f(&mut dir.stat);
            for inode in dir.entries.values_mut() {
                if let Inode::Directory(d) = inode {
                    stack.push(d);
                }
            }
        }
    }

    /// Replaces every leaf index `i` below this directory by `map[i]`.
    pub fn remap_leaves(&mut self, map: &[usize]) {
        let mut stack: Vec<&mut Directory> = vec![self];
        while let Some(dir) = stack.pop() {
            for inode in dir.entries.values_mut() {
                match inode {
                    Inode::Directory(d) => stack.push(d),
                    Inode::Leaf(i) => *i = map[*i],
                }
            }
        }
    }
}

impl FileSystem {
    /// composefs-rs `transform_for_oci`: root metadata from `/usr`, `/run` emptied, xattrs
    /// filtered, unreferenced leaves dropped.
    pub fn transform_for_oci(&mut self, xattrs: XattrFiltering) -> Result<(), String> {
        let usr = match self.root.entries.get(b"usr".as_slice()) {
            Some(Inode::Directory(d)) => d.stat.clone(),
            Some(Inode::Leaf(_)) => return Err(not_a_directory(b"usr")),
            None => return Err(not_found(b"usr")),
        };
        match self.root.entries.get_mut(b"run".as_slice()) {
            Some(Inode::Directory(run)) => {
                run.stat.mtime = usr.mtime;
                run.stat.mtime_nsec = usr.mtime_nsec;
                run.entries.clear();
            }
            Some(Inode::Leaf(_)) => return Err(not_a_directory(b"run")),
            None => {}
        }
        self.root.stat = usr;
        let mut filter = |stat: &mut Stat| stat.xattrs.retain(|k, _| xattrs.keeps(k));
        self.root.for_each_dir_stat(&mut filter);
        for leaf in &mut self.leaves {
            filter(&mut leaf.stat);
        }
        self.compact();
        Ok(())
    }

    /// Drops leaves no entry refers to, keeping the order of the others.
    pub fn compact(&mut self) {
        let counts = self.nlinks();
        let mut map = vec![usize::MAX; counts.len()];
        let mut next = 0;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 {
                map[i] = next;
                next += 1;
            }
        }
        if next == counts.len() {
            return;
        }
        let old = std::mem::take(&mut self.leaves);
        self.leaves = old
            .into_iter()
            .zip(&counts)
            .filter(|(_, &n)| n > 0)
            .map(|(l, _)| l)
            .collect();
        self.root.remap_leaves(&map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn debug_rendering() {
        assert_eq!(debug_bytes(b"a\"b\\c'\n\x01"), "\"a\\\"b\\\\c'\\n\\u{1}\"");
        assert_eq!(debug_bytes(b"\xff\xc3\xa9"), "\"\\xFF\u{e9}\"");
    }

    /// A chain of `depth` directories `d`, a leaf at the bottom.
    fn deep(depth: usize) -> FileSystem {
        let mut fs = FileSystem::default();
        fs.leaves.push(Leaf {
            stat: Stat::default(),
            content: Content::Fifo,
        });
        let mut dir = Directory::new(Stat::default());
        dir.entries.insert(b"f".to_vec(), Inode::Leaf(0));
        for _ in 0..depth {
            let mut up = Directory::new(Stat::default());
            up.entries
                .insert(b"d".to_vec(), Inode::Directory(Box::new(dir)));
            dir = up;
        }
        fs.root = dir;
        fs
    }

    #[test]
    fn deep_trees_do_not_recurse() {
        // Run on a small stack: any recursion per level would overflow it.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let mut fs = deep(200_000);
                assert_eq!(fs.nlinks(), vec![1]);
                let events = fs.root.walk().count();
                assert_eq!(events, 2 * 200_000 + 1);
                let mut dirs = 0;
                fs.root.for_each_dir_stat(&mut |_| dirs += 1);
                assert_eq!(dirs, 200_001);
                fs.root.remap_leaves(&[0]);
                assert!(fs == deep(200_000));
                assert!(fs != deep(199_999));
                fs.compact();
                drop(fs);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
