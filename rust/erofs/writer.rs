//! The writer: collects the inodes of a [`FileSystem`], lays them out, fills the image.

use super::format::{
    i_format, BLOCK_BITS, BLOCK_SIZE, COMPACT_INODE_SIZE, COMPOSEFS_FLAGS_HAS_ACL,
    COMPOSEFS_HEADER_VERSION, COMPOSEFS_MAGIC, EROFS_MAGIC, EROFS_SUPER_OFFSET,
    EXTENDED_INODE_SIZE, FEATURE_COMPAT, FT_BLK, FT_CHR, FT_DIR, FT_FIFO, FT_LNK, FT_REG, FT_SOCK,
    INODE_SLOT_SIZE, LAYOUT_CHUNK_BASED, LAYOUT_FLAT_INLINE, LAYOUT_FLAT_PLAIN, SUPERBLOCK_SIZE,
    XATTR_FILTER_SEED, XATTR_INDEX_POSIX_ACL_ACCESS, XATTR_INDEX_POSIX_ACL_DEFAULT, XATTR_PREFIXES,
};
use super::limits::{self, fit};
use crate::tree::{Content, Directory, FileSystem, Inode, Stat, Walk};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

// The overlayfs xattrs composefs images carry.
const OVERLAY: &[u8] = b"trusted.overlay.";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";
const OVERLAY_ESCAPED: &[u8] = b"trusted.overlay.overlay.";

/// Content of the 256 whiteout stubs.
static STUB_CONTENT: Content = Content::CharacterDevice(0);

/// The stub names `00`..`ff`.
static STUB_NAMES: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut names = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        names[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    names
};

/// xxHash32 (the EROFS xattr name filter hash).
pub fn xxh32(data: &[u8], seed: u32) -> u32 {
    const P1: u32 = 0x9E37_79B1;
    const P2: u32 = 0x85EB_CA77;
    const P3: u32 = 0xC2B2_AE3D;
    const P4: u32 = 0x27D4_EB2F;
    const P5: u32 = 0x1656_67B1;
    fn round(acc: u32, lane: u32) -> u32 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    }
    fn word(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    let mut rest = data;
    let mut h = if data.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        while rest.len() >= 16 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, word(&rest[4 * i..]));
            }
            rest = &rest[16..];
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u32);
    while rest.len() >= 4 {
        h = h
            .wrapping_add(word(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &b in rest {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// One xattr as stored: prefix index, name without the prefix, value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct XAttr<'a> {
    prefix: u8,
    suffix: Cow<'a, [u8]>,
    value: Cow<'a, [u8]>,
}

impl XAttr<'_> {
    /// Bytes of the entry (header, name, value, padding to 4).
    fn size(&self) -> usize {
        round_up(4 + self.suffix.len() + self.value.len(), 4)
    }

    /// Epoch 1 order (C mkcomposefs): full name bytes, then value length, then value bytes.
    fn cmp_full(&self, other: &Self) -> std::cmp::Ordering {
        let names = if self.prefix == other.prefix {
            self.suffix.cmp(&other.suffix)
        } else {
            let a = XATTR_PREFIXES[self.prefix as usize]
                .iter()
                .chain(self.suffix.iter());
            let b = XATTR_PREFIXES[other.prefix as usize]
                .iter()
                .chain(other.suffix.iter());
            a.cmp(b)
        };
        names
            .then(self.value.len().cmp(&other.value.len()))
            .then_with(|| self.value.cmp(&other.value))
    }

    fn write(&self, out: &mut [u8]) -> Result<(), String> {
        out[0] = fit(self.suffix.len(), "xattr name length")?;
        out[1] = self.prefix;
        let value_len: u16 = fit(self.value.len(), "xattr value size")?;
        out[2..4].copy_from_slice(&value_len.to_le_bytes());
        let name_end = 4 + self.suffix.len();
        out[4..name_end].copy_from_slice(&self.suffix);
        out[name_end..name_end + self.value.len()].copy_from_slice(&self.value);
        Ok(())
    }
}

#[derive(Default)]
struct XAttrs<'a> {
    local: Vec<XAttr<'a>>,
    /// Indices into the shared table, in the order they are stored.
    shared: Vec<u32>,
    /// Name filter bits (stored inverted); nonzero iff the inode has xattrs.
    filter: u32,
}

impl<'a> XAttrs<'a> {
    fn add(&mut self, name: Cow<'a, [u8]>, value: Cow<'a, [u8]>, epoch1: bool) {
        let index = (0..XATTR_PREFIXES.len())
            .rev()
            .filter(|&i| !(epoch1 && i == 5))
            .find(|&i| name.starts_with(XATTR_PREFIXES[i]))
            .expect("the empty prefix always matches");
        let cut = XATTR_PREFIXES[index].len();
        let suffix = match name {
            Cow::Borrowed(n) => Cow::Borrowed(&n[cut..]),
            Cow::Owned(mut n) => {
                n.drain(..cut);
                Cow::Owned(n)
            }
        };
        self.filter |= 1 << (xxh32(&suffix, XATTR_FILTER_SEED.wrapping_add(index as u32)) % 32);
        self.local.push(XAttr {
            prefix: index as u8,
            suffix,
            value,
        });
    }

    /// Adds a name/value pair known at compile time.
    fn add_static(&mut self, name: &'static [u8], value: &'static [u8], epoch1: bool) {
        self.add(Cow::Borrowed(name), Cow::Borrowed(value), epoch1);
    }

    /// Size of the inline xattr area (0 when the inode has none).
    fn size(&self) -> usize {
        if self.filter == 0 {
            return 0;
        }
        12 + 4 * self.shared.len() + self.local.iter().map(XAttr::size).sum::<usize>()
    }
}

/// Where a directory entry points.
#[derive(Clone, Copy)]
enum Target {
    Known(usize),
    /// A hard link whose inode is created later in the breadth-first walk (leaf index).
    Deferred(usize),
}

struct DirEnt<'a> {
    name: &'a [u8],
    target: Target,
    file_type: u8,
}

/// A directory's entries split into full blocks and an inline tail.
#[derive(Default)]
struct DirData<'a> {
    entries: Vec<DirEnt<'a>>,
    /// End index (exclusive) of each full block in `entries`.
    block_ends: Vec<usize>,
    /// Bytes of the inline tail (entries from the last block end on).
    tail_bytes: usize,
    nlink: u32,
}

impl<'a> DirData<'a> {
    fn new(mut entries: Vec<DirEnt<'a>>) -> Self {
        entries.sort_unstable_by(|a, b| a.name.cmp(b.name));
        let mut block_ends = Vec::new();
        let mut used = 0;
        let mut nlink = 0;
        for (i, e) in entries.iter().enumerate() {
            if e.file_type == FT_DIR {
                nlink += 1;
            }
            let cost = 12 + e.name.len();
            used += cost;
            if used > BLOCK_SIZE {
                block_ends.push(i);
                used = cost;
            }
        }
        if used > BLOCK_SIZE / 2 {
            block_ends.push(entries.len());
            used = 0;
        }
        Self {
            entries,
            block_ends,
            tail_bytes: used,
            nlink,
        }
    }

    fn size(&self) -> u64 {
        (BLOCK_SIZE * self.block_ends.len() + self.tail_bytes) as u64
    }

    fn tail(&self) -> &[DirEnt<'a>] {
        &self.entries[self.block_ends.last().copied().unwrap_or(0)..]
    }

    fn blocks(&self) -> impl Iterator<Item = &[DirEnt<'a>]> {
        let mut start = 0;
        self.block_ends.iter().map(move |&end| {
            let block = &self.entries[start..end];
            start = end;
            block
        })
    }
}

enum Body<'a> {
    Dir(DirData<'a>),
    Leaf { content: &'a Content, nlink: u32 },
}

struct Ino<'a> {
    stat: &'a Stat,
    body: Body<'a>,
    xattrs: XAttrs<'a>,
    /// Epoch 1: a user whiteout (char device 0/0) stored as a regular file.
    escaped: bool,
    /// Epoch 1 leaves: number of data blocks (inline file blocks, a symlink target or chunk
    /// indexes moved out of the inode).
    data_blocks: usize,
    /// Bytes stored inline after the xattrs (file tail, chunk indexes, symlink target); for
    /// directories, see `DirData::tail_bytes`.
    tail: usize,
}

impl Ino<'_> {
    fn file_type(&self) -> u8 {
        if self.escaped {
            return FT_REG;
        }
        match &self.body {
            Body::Dir(_) => FT_DIR,
            Body::Leaf { content, .. } => match content {
                Content::Inline(_)
                | Content::External { .. }
                | Content::ExternalNoVerity { .. }
                | Content::Sparse(_) => FT_REG,
                Content::CharacterDevice(_) => FT_CHR,
                Content::BlockDevice(_) => FT_BLK,
                Content::Fifo => FT_FIFO,
                Content::Socket => FT_SOCK,
                Content::Symlink(_) => FT_LNK,
            },
        }
    }

    fn mode(&self) -> u16 {
        const TYPE_BITS: [u16; 8] = [
            0, 0o100000, 0o040000, 0o020000, 0o060000, 0o010000, 0o140000, 0o120000,
        ];
        TYPE_BITS[self.file_type() as usize] | (self.stat.mode & 0o7777) as u16
    }

    fn nlink(&self) -> u32 {
        match &self.body {
            Body::Dir(d) => d.nlink,
            Body::Leaf { nlink, .. } => *nlink,
        }
    }

    fn is_chunked(&self) -> bool {
        matches!(
            self.body,
            Body::Leaf {
                content: Content::External { .. }
                    | Content::ExternalNoVerity { .. }
                    | Content::Sparse(_),
                ..
            }
        )
    }

    fn is_symlink(&self) -> bool {
        matches!(
            self.body,
            Body::Leaf {
                content: Content::Symlink(_),
                ..
            }
        )
    }

    /// `(layout, size)`; `i_u` is computed at write time (it may need the block address).
    fn layout(&self) -> (u16, u64) {
        match &self.body {
            Body::Dir(d) => {
                let layout = if d.tail_bytes == 0 {
                    LAYOUT_FLAT_PLAIN
                } else {
                    LAYOUT_FLAT_INLINE
                };
                (layout, d.size())
            }
            Body::Leaf { content, .. } => match content {
                Content::Inline(data) => {
                    let layout = if data.is_empty() || (self.data_blocks > 0 && self.tail == 0) {
                        LAYOUT_FLAT_PLAIN
                    } else {
                        LAYOUT_FLAT_INLINE
                    };
                    (layout, data.len() as u64)
                }
                Content::External { size, .. }
                | Content::ExternalNoVerity { size, .. }
                | Content::Sparse(size) => (LAYOUT_CHUNK_BASED, *size),
                Content::Symlink(target) => {
                    let layout = if self.data_blocks > 0 {
                        LAYOUT_FLAT_PLAIN
                    } else {
                        LAYOUT_FLAT_INLINE
                    };
                    (layout, target.len() as u64)
                }
                _ => (LAYOUT_FLAT_PLAIN, 0),
            },
        }
    }

    fn fits_compact(&self, min_mtime: (u64, u32), size: u64) -> bool {
        (self.stat.mtime as u64, self.stat.mtime_nsec) == min_mtime
            && self.nlink() <= 0xFFFF
            && self.stat.uid <= 0xFFFF
            && self.stat.gid <= 0xFFFF
            && size <= u64::from(u32::MAX)
    }

    /// Bytes written right after the xattr area.
    fn inline_len(&self) -> usize {
        match &self.body {
            Body::Dir(d) => d.tail_bytes,
            Body::Leaf { content, .. } => match content {
                Content::Symlink(t) if self.data_blocks == 0 => t.len(),
                Content::Symlink(_) => 0,
                _ => self.tail,
            },
        }
    }
}

/// `(chunk bits - 12, chunk count)` for a chunk-based file of `size` bytes.
fn chunk_format(size: u64) -> (u32, u64) {
    let bits = if size > 1 {
        64 - (size - 1).leading_zeros()
    } else {
        1
    };
    let bits = bits.clamp(12, 12 + 31);
    (bits - 12, size.div_ceil(1u64 << bits))
}

struct Collector<'a> {
    inodes: Vec<Ino<'a>>,
    epoch1: bool,
    /// V1 (not V0): directories with whiteouts are also marked opaque.
    v1: bool,
    nlinks: Vec<u32>,
    /// Inode of each hard-linked leaf once created (`usize::MAX` before).
    leaf_inode: Vec<usize>,
}

impl<'a> Collector<'a> {
    fn push(&mut self, stat: &'a Stat, body: Body<'a>) -> usize {
        let mut xattrs = XAttrs::default();
        if let Body::Leaf { content, .. } = &body {
            match content {
                Content::External { id, .. } => {
                    let mut metacopy = vec![0, 4 + id.len() as u8, 0, algorithm_id(id)];
                    metacopy.extend_from_slice(id);
                    xattrs.add(METACOPY.into(), metacopy.into(), self.epoch1);
                    xattrs.add(REDIRECT.into(), redirect(id).into(), self.epoch1);
                }
                Content::ExternalNoVerity { id, .. } => {
                    xattrs.add_static(METACOPY, b"", self.epoch1);
                    xattrs.add(REDIRECT.into(), redirect(id).into(), self.epoch1);
                }
                Content::Sparse(_) => xattrs.add_static(METACOPY, b"", self.epoch1),
                _ => {}
            }
        }
        for (name, value) in &stat.xattrs {
            match name.strip_prefix(OVERLAY) {
                Some(rest) => {
                    let escaped = [OVERLAY_ESCAPED, rest].concat();
                    xattrs.add(escaped.into(), value.as_slice().into(), self.epoch1);
                }
                None => xattrs.add(name.as_slice().into(), value.as_slice().into(), self.epoch1),
            }
        }
        self.inodes.push(Ino {
            stat,
            body,
            xattrs,
            escaped: false,
            data_blocks: 0,
            tail: 0,
        });
        self.inodes.len() - 1
    }

    /// The inode of a leaf (created on first use for hard-linked leaves). `id` is `None` for
    /// the whiteout stubs.
    fn leaf(&mut self, id: Option<usize>, stat: &'a Stat, content: &'a Content) -> usize {
        let nlink = id.map_or(1, |i| self.nlinks[i]);
        if let Some(i) = id {
            if nlink > 1 && self.leaf_inode[i] != usize::MAX {
                return self.leaf_inode[i];
            }
        }
        let (data_blocks, tail) = if self.epoch1 {
            match content {
                Content::Inline(data) if !data.is_empty() => {
                    let (blocks, tail) = (data.len() / BLOCK_SIZE, data.len() % BLOCK_SIZE);
                    if tail > BLOCK_SIZE / 2 {
                        (blocks + 1, 0)
                    } else {
                        (blocks, tail)
                    }
                }
                Content::Symlink(target) => (0, target.len()),
                Content::External { size, .. }
                | Content::ExternalNoVerity { size, .. }
                | Content::Sparse(size)
                    if *size > 0 =>
                {
                    (0, 4 * chunk_format(*size).1 as usize)
                }
                _ => (0, 0),
            }
        } else {
            match content {
                Content::Inline(data) => (0, data.len()),
                Content::External { .. } => (0, 4),
                _ => (0, 0),
            }
        };
        let idx = self.push(stat, Body::Leaf { content, nlink });
        self.inodes[idx].data_blocks = data_blocks;
        self.inodes[idx].tail = tail;
        if let Some(i) = id {
            if nlink > 1 {
                self.leaf_inode[i] = idx;
            }
        }
        idx
    }

    /// A directory's inode, with `.` and `..` as its first entries.
    fn dir_frame(&mut self, dir: &'a Directory, parent: Option<usize>) -> (usize, Vec<DirEnt<'a>>) {
        let me = self.push(&dir.stat, Body::Dir(DirData::default()));
        let mut entries = Vec::with_capacity(dir.entries.len() + 2);
        entries.push(DirEnt {
            name: b".",
            target: Target::Known(me),
            file_type: FT_DIR,
        });
        entries.push(DirEnt {
            name: b"..",
            target: Target::Known(parent.unwrap_or(me)),
            file_type: FT_DIR,
        });
        (me, entries)
    }

    /// V2: depth-first, a directory before its entries (without recursion: one frame of
    /// listing per open directory).
    fn collect_dfs(&mut self, fs: &'a FileSystem) {
        let mut stack = vec![self.dir_frame(&fs.root, None)];
        for event in fs.root.walk() {
            match event {
                Walk::Enter(name, d) => {
                    let parent = stack.last().map(|f| f.0);
                    let frame = self.dir_frame(d, parent);
                    if let Some((_, entries)) = stack.last_mut() {
                        entries.push(DirEnt {
                            name,
                            target: Target::Known(frame.0),
                            file_type: FT_DIR,
                        });
                    }
                    stack.push(frame);
                }
                Walk::Leaf(name, _, i) => {
                    let leaf = &fs.leaves[i];
                    let child = self.leaf(Some(i), &leaf.stat, &leaf.content);
                    let file_type = self.inodes[child].file_type();
                    if let Some((_, entries)) = stack.last_mut() {
                        entries.push(DirEnt {
                            name,
                            target: Target::Known(child),
                            file_type,
                        });
                    }
                }
                Walk::Leave(_) => self.close_dir(&mut stack),
            }
        }
        self.close_dir(&mut stack);
    }

    fn close_dir(&mut self, stack: &mut Vec<(usize, Vec<DirEnt<'a>>)>) {
        if let Some((me, entries)) = stack.pop() {
            self.inodes[me].body = Body::Dir(DirData::new(entries));
        }
    }

    /// V0/V1: breadth-first as C mkcomposefs, with the whiteout stubs in the root.
    fn collect_bfs(&mut self, fs: &'a FileSystem, stub_stat: &'a Stat) {
        // The directory holding the first depth-first occurrence of each hard-linked leaf
        // (C mkcomposefs makes that occurrence the inode, the others hard links to it).
        let mut canonical: Vec<*const Directory> = vec![std::ptr::null(); fs.leaves.len()];
        find_canonical(&fs.root, &self.nlinks, &mut canonical);

        let root_selinux = fs.root.stat.xattrs.get(b"security.selinux".as_slice());
        let mut listing: Vec<(&'a [u8], Option<&'a Inode>)> = Vec::new();
        let mut queue: VecDeque<(&'a Directory, usize, usize)> = VecDeque::new();
        let root = self.push(&fs.root.stat, Body::Dir(DirData::default()));
        queue.push_back((&fs.root, root, root));
        let mut listings: Vec<(usize, Vec<DirEnt<'a>>)> = Vec::new();
        while let Some((dir, parent, me)) = queue.pop_front() {
            listing.clear();
            listing.extend(dir.entries.iter().map(|(n, i)| (n.as_slice(), Some(i))));
            if me == root {
                for name in &STUB_NAMES {
                    if !dir.entries.contains_key(name.as_slice()) {
                        listing.push((name.as_slice(), None));
                    }
                }
                listing.sort_unstable_by(|a, b| a.0.cmp(b.0));
            }
            let mut entries = Vec::with_capacity(listing.len() + 2);
            entries.push(DirEnt {
                name: b".",
                target: Target::Known(me),
                file_type: FT_DIR,
            });
            entries.push(DirEnt {
                name: b"..",
                target: Target::Known(parent),
                file_type: FT_DIR,
            });
            let mut has_whiteout = false;
            for &(name, inode) in &listing {
                let (id, stat, content) = match inode {
                    Some(Inode::Directory(d)) => {
                        let child = self.push(&d.stat, Body::Dir(DirData::default()));
                        queue.push_back((d, me, child));
                        entries.push(DirEnt {
                            name,
                            target: Target::Known(child),
                            file_type: FT_DIR,
                        });
                        continue;
                    }
                    Some(Inode::Leaf(i)) => (Some(*i), &fs.leaves[*i].stat, &fs.leaves[*i].content),
                    None => (None, stub_stat, &STUB_CONTENT),
                };
                let is_stub = me == root
                    && (id.is_none() || looks_like_stub(name, stat, &fs.root.stat, root_selinux));
                let is_canonical = match id {
                    Some(i) if self.nlinks[i] > 1 => std::ptr::eq(canonical[i], dir),
                    _ => true,
                };
                let target = if is_canonical {
                    Target::Known(self.leaf(id, stat, content))
                } else {
                    let i = id.expect("stubs are never hard links");
                    match self.leaf_inode[i] {
                        usize::MAX => Target::Deferred(i),
                        idx => Target::Known(idx),
                    }
                };
                if let Target::Known(child) = target {
                    if is_canonical
                        && !is_stub
                        && matches!(content, Content::CharacterDevice(0))
                        && !self.inodes[child].escaped
                    {
                        let ino = &mut self.inodes[child];
                        ino.escaped = true;
                        ino.xattrs
                            .add_static(b"trusted.overlay.overlay.whiteout", b"", true);
                        ino.xattrs.add_static(b"user.overlay.whiteout", b"", true);
                        has_whiteout = true;
                    }
                }
                let file_type = match target {
                    Target::Known(child) => self.inodes[child].file_type(),
                    Target::Deferred(_) => FT_REG,
                };
                entries.push(DirEnt {
                    name,
                    target,
                    file_type,
                });
            }
            if has_whiteout {
                let xattrs = &mut self.inodes[me].xattrs;
                xattrs.add_static(b"trusted.overlay.overlay.whiteouts", b"", true);
                xattrs.add_static(b"user.overlay.whiteouts", b"", true);
                if self.v1 {
                    xattrs.add_static(b"trusted.overlay.overlay.opaque", b"x", true);
                    xattrs.add_static(b"user.overlay.opaque", b"x", true);
                }
            }
            listings.push((me, entries));
        }
        for (me, mut entries) in listings {
            for e in &mut entries {
                if let Target::Deferred(i) = e.target {
                    let idx = self.leaf_inode[i];
                    e.target = Target::Known(idx);
                    e.file_type = self.inodes[idx].file_type();
                }
            }
            self.inodes[me].body = Body::Dir(DirData::new(entries));
        }
    }
}

/// Depth-first in name order (the dumpfile order): records the directory of the first
/// occurrence of every hard-linked leaf.
fn find_canonical(root: &Directory, nlinks: &[u32], canonical: &mut [*const Directory]) {
    for event in root.walk() {
        if let Walk::Leaf(_, dir, i) = event {
            if nlinks[i] > 1 && canonical[i].is_null() {
                canonical[i] = dir;
            }
        }
    }
}

/// composefs-rs's test for "this root entry is one of the whiteout stubs": a two-digit
/// lowercase hex name whose stat is exactly the one the stubs get. Such user entries are not
/// escaped.
fn looks_like_stub(name: &[u8], stat: &Stat, root: &Stat, root_selinux: Option<&Vec<u8>>) -> bool {
    name.len() == 2
        && name.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && stat.mode == 0o644
        && stat.uid == root.uid
        && stat.gid == root.gid
        && stat.mtime == root.mtime
        && stat.mtime_nsec == root.mtime_nsec
        && stat.xattrs.len() == usize::from(root_selinux.is_some())
        && root_selinux.is_none_or(|v| stat.xattrs.get(b"security.selinux".as_slice()) == Some(v))
}

/// The fs-verity algorithm id of a digest (1 SHA-256, 2 SHA-512).
fn algorithm_id(id: &[u8]) -> u8 {
    if id.len() == 64 {
        2
    } else {
        1
    }
}

/// `/xx/rest-of-hex`, the object path the overlay redirect points at.
fn redirect(id: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 + 2 * id.len());
    out.push(b'/');
    for (i, b) in id.iter().enumerate() {
        if i == 1 {
            out.push(b'/');
        }
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out
}

/// composefs-rs `validate_filesystem`: every leaf index valid and used, no hard-linked
/// whiteouts; also what the writer cannot encode. Returns the link count of each leaf.
fn validate(fs: &FileSystem) -> Result<Vec<u32>, String> {
    let mut nlinks = vec![0u32; fs.leaves.len()];
    for event in fs.root.walk() {
        if let Walk::Leaf(_, _, i) = event {
            match nlinks.get_mut(i) {
                Some(c) => *c += 1,
                None => {
                    return Err(format!(
                        "invalid composefs filesystem: LeafId {i} is out of bounds \
                         (leaves table has {} entries)",
                        nlinks.len()
                    ))
                }
            }
        }
    }
    let orphans: Vec<usize> = (0..nlinks.len()).filter(|&i| nlinks[i] == 0).collect();
    if !orphans.is_empty() {
        return Err(format!(
            "invalid composefs filesystem: Orphaned leaves at indices {orphans:?}"
        ));
    }
    let hard_linked_whiteout = fs
        .leaves
        .iter()
        .zip(&nlinks)
        .any(|(leaf, &n)| n > 1 && matches!(leaf.content, Content::CharacterDevice(0)));
    if hard_linked_whiteout {
        return Err("invalid composefs filesystem: whiteout inode has nlink > 1".into());
    }
    // What composefs-rs checks only while writing (it panics): after the checks above.
    for leaf in &fs.leaves {
        match &leaf.content {
            Content::CharacterDevice(rdev) | Content::BlockDevice(rdev)
                if *rdev > u64::from(u32::MAX) =>
            {
                return Err("device number exceeds EROFS u32 limit".into());
            }
            Content::External { id, .. } | Content::ExternalNoVerity { id, .. }
                if id.len() != 32 && id.len() != 64 =>
            {
                return Err(format!(
                    "object id of {} bytes (expected 32 or 64)",
                    id.len()
                ));
            }
            _ => {}
        }
    }
    Ok(nlinks)
}

/// Moves the xattrs that occur more than once (same name and value) to the shared table and
/// returns the table in stored order.
fn share_xattrs<'a>(inodes: &mut [Ino<'a>], epoch1: bool) -> Vec<XAttr<'a>> {
    if epoch1 {
        for ino in inodes.iter_mut() {
            ino.xattrs.local.sort_by(XAttr::cmp_full);
        }
    }
    // Number the distinct xattrs (one hash lookup per xattr) and count their uses.
    let mut keys: Vec<u32> = Vec::new();
    let mut distinct: Vec<(&XAttr<'a>, u32)> = Vec::new();
    {
        let mut ids: HashMap<&XAttr<'a>, u32> = HashMap::new();
        for x in inodes.iter().flat_map(|i| &i.xattrs.local) {
            let next = distinct.len() as u32;
            let id = *ids.entry(x).or_insert(next);
            if id == next {
                distinct.push((x, 0));
            }
            distinct[id as usize].1 += 1;
            keys.push(id);
        }
    }
    let mut table: Vec<(&XAttr<'a>, u32)> = distinct
        .iter()
        .zip(0..)
        .filter(|((_, n), _)| *n > 1)
        .map(|((x, _), id)| (*x, id))
        .collect();
    if table.is_empty() {
        return Vec::new();
    }
    if epoch1 {
        // C mkcomposefs writes the table in descending order.
        table.sort_by(|a, b| b.0.cmp_full(a.0));
    } else {
        table.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
    let mut position = vec![u32::MAX; distinct.len()];
    for (pos, (_, id)) in table.iter().enumerate() {
        position[*id as usize] = pos as u32;
    }
    let table: Vec<XAttr<'a>> = table.into_iter().map(|(x, _)| x.clone()).collect();
    let mut keys = keys.into_iter();
    for ino in inodes.iter_mut() {
        let XAttrs { local, shared, .. } = &mut ino.xattrs;
        local.retain(|_| {
            let pos = position[keys.next().expect("one key per xattr") as usize];
            if pos == u32::MAX {
                return true;
            }
            shared.push(pos);
            false
        });
    }
    table
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes directory entries (headers, then names) at `at`; returns the bytes written.
fn write_dirents(
    buf: &mut [u8],
    at: usize,
    entries: &[DirEnt<'_>],
    offsets: &[usize],
) -> Result<usize, String> {
    let mut name_at = 12 * entries.len();
    for (k, e) in entries.iter().enumerate() {
        let Target::Known(idx) = e.target else {
            unreachable!("hard links are resolved after the walk")
        };
        let h = at + 12 * k;
        put64(buf, h, (offsets[idx] / INODE_SLOT_SIZE) as u64);
        put16(buf, h + 8, fit(name_at, "directory entry name offset")?);
        buf[h + 10] = e.file_type;
        buf[at + name_at..at + name_at + e.name.len()].copy_from_slice(e.name);
        name_at += e.name.len();
    }
    Ok(name_at)
}

/// Builds the EROFS image of `fs` in format `version` (0, 1 or 2).
pub fn write(fs: &FileSystem, version: u8) -> Result<Vec<u8>, String> {
    super::check_version(i64::from(version))?;
    let epoch1 = version < 2;
    let nlinks = validate(fs)?;
    limits::check_tree(fs, version)?;
    let leaf_count = fs.leaves.len();
    let mut c = Collector {
        inodes: Vec::with_capacity(leaf_count + 64 + if epoch1 { 256 } else { 0 }),
        epoch1,
        v1: version == 1,
        nlinks,
        leaf_inode: vec![usize::MAX; leaf_count],
    };

    // The stubs' stat: root's owner and mtime, mode 0644, only root's SELinux label.
    let root = &fs.root.stat;
    let stub_stat = Stat {
        mode: 0o644,
        uid: root.uid,
        gid: root.gid,
        mtime: root.mtime,
        mtime_nsec: root.mtime_nsec,
        xattrs: root
            .xattrs
            .get(b"security.selinux".as_slice())
            .map(|v| (b"security.selinux".to_vec(), v.clone()))
            .into_iter()
            .collect(),
    };

    let mut flags = 0;
    if epoch1 {
        c.collect_bfs(fs, &stub_stat);
        c.inodes[0]
            .xattrs
            .add_static(b"trusted.overlay.opaque", b"y", true);
        let acl = c.inodes.iter().any(|i| {
            i.xattrs.local.iter().any(|x| {
                x.prefix == XATTR_INDEX_POSIX_ACL_ACCESS
                    || x.prefix == XATTR_INDEX_POSIX_ACL_DEFAULT
            })
        });
        if acl {
            flags |= COMPOSEFS_FLAGS_HAS_ACL;
        }
    } else {
        c.collect_dfs(fs);
    }
    let mut inodes = c.inodes;
    let shared = share_xattrs(&mut inodes, epoch1);
    for ino in &inodes {
        limits::check_xattr_area(fs, ino.stat, ino.xattrs.size(), ino.xattrs.shared.len())?;
    }
    let min_mtime = inodes
        .iter()
        .map(|i| (i.stat.mtime as u64, i.stat.mtime_nsec))
        .min()
        .unwrap_or((0, 0));

    if epoch1 {
        // Move what would not fit in the inode's block into a data block.
        for ino in inodes.iter_mut().filter(|i| i.tail > 0) {
            if ino.is_symlink() {
                let header = if ino.fits_compact(min_mtime, ino.tail as u64) {
                    COMPACT_INODE_SIZE
                } else {
                    EXTENDED_INODE_SIZE
                };
                if header + ino.xattrs.size() + ino.tail >= BLOCK_SIZE {
                    ino.data_blocks += 1;
                    ino.tail = 0;
                }
            } else if ino.is_chunked()
                && ino.tail + ino.xattrs.size() % INODE_SLOT_SIZE > BLOCK_SIZE
            {
                ino.data_blocks = 1;
                ino.tail = 0;
            }
        }
    }

    // Layout: the offset of every inode, shared xattr and data block.
    let n = inodes.len();
    let mut offsets = Vec::with_capacity(n);
    let mut compact = Vec::with_capacity(n);
    let mut pos = EROFS_SUPER_OFFSET + SUPERBLOCK_SIZE;
    for ino in &inodes {
        pos = round_up(pos, INODE_SLOT_SIZE);
        let (layout, size) = ino.layout();
        let x = ino.xattrs.size();
        let small = epoch1 && ino.fits_compact(min_mtime, size);
        let h = if small {
            COMPACT_INODE_SIZE
        } else {
            EXTENDED_INODE_SIZE
        };
        let size = size as usize;
        if epoch1 {
            if ino.is_symlink() && layout == LAYOUT_FLAT_PLAIN {
                let end = pos + h + x + size - 1;
                if pos / BLOCK_SIZE != end / BLOCK_SIZE {
                    pos = round_up(pos, BLOCK_SIZE);
                }
            } else if layout == LAYOUT_CHUNK_BASED && ino.tail == 0 && ino.data_blocks > 0 {
                pos = round_up(pos, BLOCK_SIZE);
            } else if layout == LAYOUT_CHUNK_BASED && ino.tail > 0 {
                let start = pos + h + x;
                let room = BLOCK_SIZE - start % BLOCK_SIZE;
                if !start.is_multiple_of(BLOCK_SIZE) && room < ino.tail {
                    pos += round_up(room, INODE_SLOT_SIZE);
                }
            }
        }
        if layout == LAYOUT_FLAT_INLINE {
            let inline = size % BLOCK_SIZE;
            let start = pos + h + x;
            if !epoch1 {
                if (start - 1) / BLOCK_SIZE != (start + inline) / BLOCK_SIZE {
                    pos = round_up(pos + BLOCK_SIZE - (start - 1) % BLOCK_SIZE, INODE_SLOT_SIZE);
                }
            } else if ino.is_symlink() {
                if !pos.is_multiple_of(BLOCK_SIZE) && pos % BLOCK_SIZE + h + x + inline > BLOCK_SIZE
                {
                    pos = round_up(pos, BLOCK_SIZE);
                }
            } else {
                let room = BLOCK_SIZE - start % BLOCK_SIZE;
                if !start.is_multiple_of(BLOCK_SIZE) && room < inline {
                    pos += round_up(room, INODE_SLOT_SIZE);
                }
            }
        }
        if layout == LAYOUT_FLAT_INLINE {
            limits::check_inline(fs, ino.stat, pos + h + x, ino.inline_len())?;
        }
        offsets.push(pos);
        compact.push(small);
        pos += h + x + ino.inline_len();
    }
    let inodes_end = round_up(pos, INODE_SLOT_SIZE);
    let xattr_blkaddr = if epoch1 { inodes_end / BLOCK_SIZE } else { 0 };
    let mut pos = inodes_end;
    let mut xattr_offsets = Vec::with_capacity(shared.len());
    for x in &shared {
        xattr_offsets.push(pos);
        pos += x.size();
    }
    let mut pos = round_up(pos, BLOCK_SIZE);
    let mut block_starts = Vec::with_capacity(n);
    for ino in &inodes {
        block_starts.push(pos);
        let blocks = match &ino.body {
            Body::Dir(d) => d.block_ends.len(),
            Body::Leaf { .. } => ino.data_blocks,
        };
        pos += blocks * BLOCK_SIZE;
    }
    let end = pos;

    // Emit.
    let mut buf = vec![0u8; end];
    put32(&mut buf, 0, COMPOSEFS_MAGIC);
    put32(&mut buf, 4, COMPOSEFS_HEADER_VERSION);
    put32(&mut buf, 8, flags);
    put32(&mut buf, 12, u32::from(version));
    let sb = EROFS_SUPER_OFFSET;
    put32(&mut buf, sb, EROFS_MAGIC);
    put32(&mut buf, sb + 8, FEATURE_COMPAT);
    buf[sb + 12] = BLOCK_BITS;
    put16(
        &mut buf,
        sb + 14,
        fit(offsets[0] / INODE_SLOT_SIZE, "root nid")?,
    );
    put64(&mut buf, sb + 16, n as u64);
    if epoch1 {
        put64(&mut buf, sb + 24, min_mtime.0);
        put32(&mut buf, sb + 32, min_mtime.1);
    }
    put32(&mut buf, sb + 36, fit(end / BLOCK_SIZE, "block count")?);
    put32(
        &mut buf,
        sb + 44,
        fit(xattr_blkaddr, "xattr block address")?,
    );

    for (idx, ino) in inodes.iter().enumerate() {
        let at = offsets[idx];
        let (layout, size) = ino.layout();
        let blkaddr: u32 = fit(block_starts[idx] / BLOCK_SIZE, "block address")?;
        let i_u = match &ino.body {
            Body::Dir(d) => {
                if d.block_ends.is_empty() && layout == LAYOUT_FLAT_INLINE {
                    0
                } else {
                    blkaddr
                }
            }
            Body::Leaf { content, .. } => match content {
                Content::Inline(_) | Content::Symlink(_) if ino.data_blocks > 0 => blkaddr,
                Content::Inline(_) | Content::Symlink(_) => 0,
                Content::External { .. }
                | Content::ExternalNoVerity { .. }
                | Content::Sparse(_) => {
                    let format = if epoch1 { chunk_format(size).0 } else { 31 };
                    if ino.data_blocks > 0 {
                        (blkaddr & 0xFFFF_0000) | format
                    } else {
                        format
                    }
                }
                Content::CharacterDevice(rdev) | Content::BlockDevice(rdev) => {
                    fit(*rdev, "device number")?
                }
                Content::Fifo | Content::Socket => 0,
            },
        };
        let x = ino.xattrs.size();
        let icount: u16 = fit(if x == 0 { 0 } else { 1 + (x - 12) / 4 }, "xattr_icount")?;
        let stat = ino.stat;
        let h = if compact[idx] {
            put16(&mut buf, at, i_format(layout, false));
            put16(&mut buf, at + 2, icount);
            put16(&mut buf, at + 4, ino.mode());
            put16(&mut buf, at + 6, fit(ino.nlink(), "compact nlink")?);
            put32(&mut buf, at + 8, fit(size, "compact size")?);
            put32(&mut buf, at + 16, i_u);
            put32(&mut buf, at + 20, fit(idx, "inode number")?);
            put16(&mut buf, at + 24, fit(stat.uid, "compact uid")?);
            put16(&mut buf, at + 26, fit(stat.gid, "compact gid")?);
            COMPACT_INODE_SIZE
        } else {
            put16(&mut buf, at, i_format(layout, true));
            put16(&mut buf, at + 2, icount);
            put16(&mut buf, at + 4, ino.mode());
            put64(&mut buf, at + 8, size);
            put32(&mut buf, at + 16, i_u);
            let ino_nr = if epoch1 { idx } else { at / INODE_SLOT_SIZE };
            put32(&mut buf, at + 20, fit(ino_nr, "inode number")?);
            put32(&mut buf, at + 24, stat.uid);
            put32(&mut buf, at + 28, stat.gid);
            put64(&mut buf, at + 32, stat.mtime as u64);
            if epoch1 {
                put32(&mut buf, at + 40, stat.mtime_nsec);
            }
            put32(&mut buf, at + 44, ino.nlink());
            EXTENDED_INODE_SIZE
        };
        let mut p = at + h;
        if x > 0 {
            put32(&mut buf, p, !ino.xattrs.filter);
            buf[p + 4] = fit(ino.xattrs.shared.len(), "shared xattr count")?;
            p += 12;
            for &s in &ino.xattrs.shared {
                let off = xattr_offsets[s as usize];
                let slot = (off - xattr_blkaddr * BLOCK_SIZE) / 4;
                put32(&mut buf, p, fit(slot, "shared xattr index")?);
                p += 4;
            }
            for l in &ino.xattrs.local {
                l.write(&mut buf[p..])?;
                p += l.size();
            }
        }
        match &ino.body {
            Body::Dir(d) => {
                write_dirents(&mut buf, p, d.tail(), &offsets)?;
            }
            Body::Leaf { content, .. } => match content {
                Content::Inline(data) => {
                    let tail = &data[data.len() - ino.tail..];
                    buf[p..p + tail.len()].copy_from_slice(tail);
                }
                Content::Symlink(t) if ino.data_blocks == 0 => {
                    buf[p..p + t.len()].copy_from_slice(t);
                }
                Content::External { .. }
                | Content::ExternalNoVerity { .. }
                | Content::Sparse(_) => buf[p..p + ino.tail].fill(0xFF),
                _ => {}
            },
        }
    }
    for (x, &at) in shared.iter().zip(&xattr_offsets) {
        x.write(&mut buf[at..])?;
    }
    for (ino, &start) in inodes.iter().zip(&block_starts) {
        match &ino.body {
            Body::Dir(d) => {
                for (k, block) in d.blocks().enumerate() {
                    write_dirents(&mut buf, start + k * BLOCK_SIZE, block, &offsets)?;
                }
            }
            Body::Leaf { content, .. } if ino.data_blocks > 0 => match content {
                Content::Inline(data) => {
                    let len = (ino.data_blocks * BLOCK_SIZE).min(data.len());
                    buf[start..start + len].copy_from_slice(&data[..len]);
                }
                Content::Symlink(t) => {
                    let len = t.len().min(BLOCK_SIZE);
                    buf[start..start + len].copy_from_slice(&t[..len]);
                }
                _ => buf[start..start + BLOCK_SIZE].fill(0xFF),
            },
            Body::Leaf { .. } => {}
        }
    }
    Ok(buf)
}

/// Parses a dumpfile and writes its EROFS image (`mkcomposefs --from-file`).
pub fn mkfs(dumpfile: &[u8], version: u8) -> Result<Vec<u8>, String> {
    write(&crate::dumpfile::parse(dumpfile)?, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsverity::{digest, Algorithm};
    use crate::tree::Leaf;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn id(image: &[u8]) -> String {
        hex(&digest(Algorithm::Sha256, image))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn dir_stat() -> Stat {
        Stat {
            mode: 0o755,
            ..Stat::default()
        }
    }

    fn add_leaf(fs: &mut FileSystem, name: &str, content: Content) {
        fs.leaves.push(Leaf {
            stat: Stat::default(),
            content,
        });
        fs.root
            .entries
            .insert(name.as_bytes().to_vec(), Inode::Leaf(fs.leaves.len() - 1));
    }

    /// composefs-rs tests/mkfs.rs `empty`.
    fn empty() -> FileSystem {
        FileSystem {
            root: Directory {
                stat: dir_stat(),
                entries: Default::default(),
            },
            leaves: vec![],
        }
    }

    /// composefs-rs tests/mkfs.rs `simple`.
    fn simple() -> FileSystem {
        let mut fs = empty();
        add_leaf(&mut fs, "fifo", Content::Fifo);
        add_leaf(&mut fs, "regular-inline", Content::Inline(b"hihi".to_vec()));
        add_leaf(
            &mut fs,
            "regular-external",
            Content::External {
                id: vec![0x5a; 32],
                size: 1234,
            },
        );
        add_leaf(&mut fs, "chrdev", Content::CharacterDevice(123));
        add_leaf(&mut fs, "blkdev", Content::BlockDevice(123));
        add_leaf(&mut fs, "socket", Content::Socket);
        add_leaf(&mut fs, "symlink", Content::Symlink(b"/target".to_vec()));
        fs
    }

    #[test]
    fn xxh32_vectors() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }

    /// composefs-rs tests/mkfs.rs `test_erofs_digest_stability`.
    #[test]
    fn pinned_digests() {
        let cases = [
            (
                "empty",
                empty(),
                [
                    "8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682",
                    "14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63",
                    "086b702a519b57d6ef5aea6f8b3f2be24355cd1fb835cd80fb4e3d388b24d5a5",
                ],
            ),
            (
                "simple",
                simple(),
                [
                    "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01",
                    "ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5",
                    "a8fcd41f8b313bede69f462f2af0a38d64b99a6333f5df884ea9ab4037fac722",
                ],
            ),
        ];
        for (name, fs, ids) in cases {
            for (version, want) in ids.iter().enumerate() {
                let image = write(&fs, version as u8).unwrap();
                let size = if version == 2 { 4096 } else { 16384 };
                assert_eq!(image.len(), size, "{name} V{version}");
                assert_eq!(id(&image), *want, "{name} V{version}");
            }
        }
    }

    /// The V2 layout facts of composefs-rs's `mkfs__simple` snapshot.
    #[test]
    fn v2_simple_layout() {
        let img = write(&simple(), 2).unwrap();
        assert_eq!(u32_at(&img, 0), COMPOSEFS_MAGIC);
        assert_eq!(u32_at(&img, 12), 2);
        let sb = EROFS_SUPER_OFFSET;
        assert_eq!(u32_at(&img, sb), EROFS_MAGIC);
        assert_eq!(u16_at(&img, sb + 14), 36);
        assert_eq!(u64_at(&img, sb + 16), 8);
        assert_eq!(u32_at(&img, sb + 36), 1);
        assert_eq!(u32_at(&img, sb + 44), 0);
        // Root: extended, LAYOUT_FLAT_INLINE, 9 entries + 62 name bytes, nlink 2.
        let root = 0x480;
        assert_eq!(u16_at(&img, root), 5);
        assert_eq!(u64_at(&img, root + 8), 170);
        assert_eq!(u32_at(&img, root + 44), 2);
        assert_eq!(u32_at(&img, root + 20), 36);
        let nid = |k: usize| u64_at(&img, root + 64 + 12 * k);
        let names = [
            ".",
            "..",
            "blkdev",
            "chrdev",
            "fifo",
            "regular-external",
            "regular-inline",
            "socket",
            "symlink",
        ];
        let nids = [36, 36, 44, 46, 48, 50, 57, 60, 62];
        for (k, want) in nids.iter().enumerate() {
            assert_eq!(nid(k), *want, "{}", names[k]);
        }
        // blkdev: i_u = rdev.
        assert_eq!(u32_at(&img, 44 * 32 + 16), 123);
        // regular-external: chunk-based, 37 xattr words, i_u 31, the null chunk at +0xDC.
        let ext = 50 * 32;
        assert_eq!(u16_at(&img, ext), 9);
        assert_eq!(u16_at(&img, ext + 2), 37);
        assert_eq!(u64_at(&img, ext + 8), 1234);
        assert_eq!(u32_at(&img, ext + 16), 31);
        assert_eq!(u32_at(&img, ext + 64), 0x7FFD_FFFF);
        assert_eq!(&img[ext + 0xDC..ext + 0xE0], &[0xFF; 4]);
        let redirect = format!("/5a/{}", "5a".repeat(31));
        let found = img[ext..ext + 0xDC]
            .windows(redirect.len())
            .any(|w| w == redirect.as_bytes());
        assert!(found);
        // regular-inline and symlink content inline.
        assert_eq!(&img[57 * 32 + 64..57 * 32 + 68], b"hihi");
        assert_eq!(&img[62 * 32 + 64..62 * 32 + 71], b"/target");
        assert_eq!(62 * 32 + 71, 0x807);
    }

    /// The V1 `empty` image: root compact with the opaque xattr, 256 stubs, one dir block.
    #[test]
    fn v1_empty_layout() {
        let img = write(&empty(), 1).unwrap();
        assert_eq!(img.len(), 16384);
        let sb = EROFS_SUPER_OFFSET;
        assert_eq!(u64_at(&img, sb + 16), 257);
        assert_eq!(u32_at(&img, sb + 44), 2);
        let root = 1152;
        assert_eq!(u16_at(&img, root), 0); // compact, LAYOUT_FLAT_PLAIN
        assert_eq!(u32_at(&img, root + 8), 4096);
        assert_eq!(u32_at(&img, root + 16), 3);
        // 256 stubs of 32 bytes after the root's 32 + 32 bytes: inodes end at 9408.
        let last_stub = root + 64 + 255 * 32;
        assert_eq!(u16_at(&img, last_stub + 4), 0o020644);
        assert_eq!(last_stub + 32, 9408);
    }

    #[test]
    fn validation_errors() {
        let mut fs = empty();
        fs.leaves.push(Leaf {
            stat: Stat::default(),
            content: Content::Fifo,
        });
        assert_eq!(
            write(&fs, 1).unwrap_err(),
            "invalid composefs filesystem: Orphaned leaves at indices [0]"
        );
        fs.root.entries.insert(b"x".to_vec(), Inode::Leaf(3));
        assert_eq!(
            write(&fs, 1).unwrap_err(),
            "invalid composefs filesystem: LeafId 3 is out of bounds (leaves table has 1 entries)"
        );
        let mut fs = empty();
        add_leaf(&mut fs, "wh", Content::CharacterDevice(0));
        fs.root.entries.insert(b"wh2".to_vec(), Inode::Leaf(0));
        assert_eq!(
            write(&fs, 2).unwrap_err(),
            "invalid composefs filesystem: whiteout inode has nlink > 1"
        );
        assert!(write(&empty(), 3).is_err());
    }

    /// Whiteout escaping (V0/V1) versus plain character device (V2), and hard links sharing
    /// one inode.
    #[test]
    fn whiteouts_and_hardlinks() {
        let mut fs = simple();
        add_leaf(&mut fs, "wh", Content::CharacterDevice(0));
        let sub = Directory {
            stat: dir_stat(),
            entries: [(b"link".to_vec(), Inode::Leaf(1))].into_iter().collect(),
        };
        fs.root
            .entries
            .insert(b"a".to_vec(), Inode::Directory(Box::new(sub)));
        for version in 0..3u8 {
            let img = write(&fs, version).unwrap();
            assert_eq!(img.len() % BLOCK_SIZE, 0);
            let has = |s: &[u8]| img.windows(s.len()).any(|w| w == s);
            assert_eq!(has(b"overlay.whiteouts"), version < 2, "V{version}");
            assert_eq!(has(b"overlay.overlay.opaque"), version == 1, "V{version}");
        }
    }

    /// A large tree is written quickly (the real target is well under 100 ms in release).
    #[test]
    fn many_files() {
        let mut fs = empty();
        let mut subdirs = Vec::new();
        for d in 0..100 {
            let mut dir = Directory {
                stat: dir_stat(),
                entries: Default::default(),
            };
            for f in 0..500 {
                fs.leaves.push(Leaf {
                    stat: Stat {
                        mode: 0o644,
                        mtime: f,
                        ..Stat::default()
                    },
                    content: if f % 2 == 0 {
                        Content::Inline(vec![b'x'; (f % 64) as usize])
                    } else {
                        Content::External {
                            id: (0..32).map(|k| (d * 7 + f * 13 + k * 31) as u8).collect(),
                            size: 1000 + f as u64,
                        }
                    },
                });
                dir.entries.insert(
                    format!("file-{f:04}").into_bytes(),
                    Inode::Leaf(fs.leaves.len() - 1),
                );
            }
            subdirs.push((format!("d{d:03}").into_bytes(), dir));
        }
        for (name, dir) in subdirs {
            fs.root
                .entries
                .insert(name, Inode::Directory(Box::new(dir)));
        }
        for version in 0..3u8 {
            let mut best = std::time::Duration::MAX;
            let mut img = Vec::new();
            for _ in 0..5 {
                let t = std::time::Instant::now();
                img = write(&fs, version).unwrap();
                best = best.min(t.elapsed());
            }
            eprintln!("V{version}: {} bytes in {best:?}", img.len());
            assert_eq!(
                u64_at(&img, 1024 + 16) as usize,
                50_101 + if version < 2 { 256 } else { 0 }
            );
        }
    }
}

#[cfg(test)]
mod dumpfile_tests {
    use crate::fsverity::{digest, Algorithm};

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// composefs-rs tests/special_v1.dump (whiteouts, shared xattrs, `trusted.overlay.*`
    /// escaping, hard links): its V1 image id (`test_vs_mkcomposefs_min_version_1`).
    #[test]
    fn special_v1() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/special_v1.dump");
        let dump = std::fs::read(path).unwrap();
        let image = super::mkfs(&dump, 1).unwrap();
        assert_eq!(
            hex(&digest(Algorithm::Sha256, &image)),
            "b1c78c25db8638be5b9b483472d32ee9624d8d32ded626a91cd536116e8df97c"
        );
    }
}
