//! The OCI layer merge (composefs-rs `composefs_oci::image::create_filesystem`, with our
//! whiteout rule): layer splitstreams, read back by [`tar_split::read_entries`], applied
//! bottom first to one [`FileSystem`], then written as dumpfile text or EROFS images.
//! Backend module `merge`; the pure-Python twin is `python/composefs/_pure/merge.py`.

use crate::tar_split::{self, Kind};
use crate::tree::{
    self, debug_bytes, join, normalize_into, not_found, Content, Directory, FileSystem, Inode,
    Leaf, Stat, XattrFiltering,
};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

fn is_whiteout(name: &[u8]) -> bool {
    name.starts_with(b".wh.")
}

fn entry_stat(e: &tar_split::Entry) -> Stat {
    Stat {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        xattrs: e.xattrs.iter().cloned().collect(),
    }
}

fn entry_content(e: &tar_split::Entry) -> Content {
    match e.kind {
        Kind::File => match &e.object_id {
            Some(id) => Content::External {
                id: id.clone(),
                size: e.size,
            },
            None => Content::Inline(e.inline.clone().unwrap_or_default()),
        },
        Kind::Symlink => Content::Symlink(e.link_target.clone().unwrap_or_default()),
        Kind::Char => Content::CharacterDevice(e.rdev),
        Kind::Block => Content::BlockDevice(e.rdev),
        Kind::Fifo => Content::Fifo,
        Kind::Dir | Kind::Hardlink => unreachable!("not a leaf"),
    }
}

/// The inode of a directory or leaf entry (a new leaf is added to `leaves`).
fn new_inode(leaves: &mut Vec<Leaf>, e: &tar_split::Entry) -> Inode {
    if e.kind == Kind::Dir {
        return Inode::Directory(Box::new(Directory::new(entry_stat(e))));
    }
    leaves.push(Leaf {
        stat: entry_stat(e),
        content: entry_content(e),
    });
    Inode::Leaf(leaves.len() - 1)
}

/// The paths of one layer, interned: node 0 is the root, every other node a name in its
/// parent node. A layer's members are stored as nodes rather than paths, so a deep tree
/// costs memory per entry, not per entry and level; consecutive members share the
/// components they have in common with the previous one without looking them up again.
struct Paths {
    nodes: Vec<PathNode>,
    /// Hash of (parent, name) -> the last node created with it (the others chained).
    index: HashMap<u64, u32>,
    /// The nodes of the previous path interned, root excluded.
    prev: Vec<u32>,
}

struct PathNode {
    parent: u32,
    name: Box<[u8]>,
    /// The previous node with the same hash (`NONE` for none).
    same_hash: u32,
}

const ROOT: u32 = 0;
const NONE: u32 = u32::MAX;

impl Paths {
    fn new() -> Self {
        Self {
            nodes: vec![PathNode {
                parent: NONE,
                name: Box::default(),
                same_hash: NONE,
            }],
            index: HashMap::new(),
            prev: Vec::new(),
        }
    }

    fn hash(parent: u32, name: &[u8]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parent.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }

    /// The node of the path made of `comps` (created as needed).
    fn intern(&mut self, comps: &[&[u8]]) -> Result<u32, String> {
        let mut same = 0;
        while same < comps.len()
            && same < self.prev.len()
            && *self.nodes[self.prev[same] as usize].name == *comps[same]
        {
            same += 1;
        }
        self.prev.truncate(same);
        let mut node = self.prev.last().copied().unwrap_or(ROOT);
        for &name in &comps[same..] {
            let h = Self::hash(node, name);
            let mut at = self.index.get(&h).copied().unwrap_or(NONE);
            while at != NONE {
                let n = &self.nodes[at as usize];
                if n.parent == node && *n.name == *name {
                    break;
                }
                at = n.same_hash;
            }
            if at == NONE {
                at = u32::try_from(self.nodes.len())
                    .ok()
                    .filter(|&n| n != NONE)
                    .ok_or("too many paths in one layer")?;
                let same_hash = self.index.insert(h, at).unwrap_or(NONE);
                self.nodes.push(PathNode {
                    parent: node,
                    name: name.into(),
                    same_hash,
                });
            }
            self.prev.push(at);
            node = at;
        }
        Ok(node)
    }

    fn parent(&self, node: u32) -> u32 {
        self.nodes[node as usize].parent
    }

    fn name(&self, node: u32) -> &[u8] {
        &self.nodes[node as usize].name
    }

    /// The nodes from below `top` down to `node` (in that order), if `top` is an ancestor
    /// of `node` (or `node` itself: then empty); else those from below the root.
    fn chain_from(&self, top: u32, node: u32, out: &mut Vec<u32>) -> bool {
        out.clear();
        let mut n = node;
        while n != top && n != ROOT {
            out.push(n);
            n = self.parent(n);
        }
        out.reverse();
        n == top
    }

    /// The components of a node's path.
    fn components(&self, node: u32) -> Vec<&[u8]> {
        let mut chain = Vec::new();
        self.chain_from(ROOT, node, &mut chain);
        chain.iter().map(|&n| self.name(n)).collect()
    }
}

/// Whether `path` is exactly `/c1/c2/...` (then it need not be kept: it can be rebuilt).
fn is_joined(path: &[u8], comps: &[&[u8]]) -> bool {
    let mut rest = path;
    for c in comps {
        match rest
            .strip_prefix(b"/".as_slice())
            .and_then(|r| r.strip_prefix(*c))
        {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// A layer member once read: the entry (its path and hard link target dropped when they
/// can be rebuilt from their nodes), the node of its path, that of a hard link's target.
struct Member {
    entry: tar_split::Entry,
    node: u32,
    target: Option<u32>,
    path_dropped: bool,
}

/// Receives the members of a layer from the splitstream reader.
struct Layer {
    paths: Paths,
    members: Vec<Member>,
    /// The first member name that could not be resolved (reported once the stream is
    /// read: stream errors come first).
    error: Option<String>,
}

impl Layer {
    fn new() -> Self {
        Self {
            paths: Paths::new(),
            members: Vec::new(),
            error: None,
        }
    }

    fn member(&mut self, mut entry: tar_split::Entry) -> Result<Member, String> {
        let mut comps: Vec<&[u8]> = Vec::new();
        normalize_into(&entry.path, &mut comps)?;
        let node = self.paths.intern(&comps)?;
        let path_dropped = !comps.is_empty() && is_joined(&entry.path, &comps);
        let mut target = None;
        if entry.kind == Kind::Hardlink {
            if let Some(t) = &entry.link_target {
                comps.clear();
                normalize_into(t, &mut comps)?;
                target = Some(self.paths.intern(&comps)?);
            }
        }
        if path_dropped {
            entry.path = Vec::new();
        }
        Ok(Member {
            entry,
            node,
            target,
            path_dropped,
        })
    }

    /// The member's path as read (`make_absolute_path`).
    fn path(&self, m: &Member) -> Vec<u8> {
        if m.path_dropped {
            join(&self.paths.components(m.node))
        } else {
            m.entry.path.clone()
        }
    }
}

impl tar_split::EntrySink for Layer {
    fn restart(&mut self) {
        *self = Self::new();
    }

    fn entry(&mut self, entry: tar_split::Entry) {
        if self.error.is_some() {
            return;
        }
        match self.member(entry) {
            Ok(m) => self.members.push(m),
            Err(e) => self.error = Some(e),
        }
    }
}

/// The directory at `node`, from `dir` (the directory at `from`) along `chain` (the nodes
/// below `from` down to `node`, from [`Paths::chain_from`]). Errors name the failing
/// component (composefs-rs `get_directory_mut`).
fn descend<'t>(
    paths: &Paths,
    mut dir: &'t mut Directory,
    chain: &[u32],
) -> Result<&'t mut Directory, String> {
    for &n in chain {
        let name = paths.name(n);
        dir = match dir.entries.get_mut(name) {
            Some(Inode::Directory(d)) => d,
            Some(Inode::Leaf(_)) => return Err(tree::not_a_directory(name)),
            None => return Err(not_found(name)),
        };
    }
    Ok(dir)
}

/// The start of a lookup of `node`: the cursor (the directory at a node, which stays valid
/// while the tree changes only through it) when it is an ancestor, else the root.
macro_rules! start {
    ($paths:expr, $root:expr, $cursor:expr, $node:expr, $chain:expr) => {
        match $cursor.take() {
            Some((at, dir)) if $paths.chain_from(at, $node, $chain) => dir,
            _ => {
                $paths.chain_from(ROOT, $node, $chain);
                &mut *$root
            }
        }
    };
}

fn apply_layer(fs: &mut FileSystem, layer: &Layer) -> Result<(), String> {
    let paths = &layer.paths;
    let mut chain = Vec::new();
    // Pass 1: the whiteouts, against the tree of the lower layers.
    let mut cursor: Option<(u32, &mut Directory)> = None;
    for m in &layer.members {
        if m.node == ROOT || !is_whiteout(paths.name(m.node)) {
            continue;
        }
        let (name, parent) = (paths.name(m.node), paths.parent(m.node));
        let from = start!(paths, &mut fs.root, cursor, parent, &mut chain);
        match descend(paths, from, &chain) {
            Ok(dir) => {
                if name == b".wh..wh..opq" {
                    dir.entries.clear();
                } else {
                    dir.entries.remove(&name[4..]);
                }
                cursor = Some((parent, dir));
            }
            Err(_) => cursor = None,
        }
    }
    // Pass 2: the other entries, in stream order.
    let FileSystem { root, leaves } = fs;
    let mut cursor: Option<(u32, &mut Directory)> = None;
    for m in &layer.members {
        let e = &m.entry;
        if m.node == ROOT {
            if e.kind != Kind::Dir {
                return Err(format!(
                    "Processing tar entry: Unpacking layer tar: filename {} must be a directory",
                    debug_bytes(&e.path)
                ));
            }
            cursor = None;
            root.stat = entry_stat(e);
            continue;
        }
        let (name, parent) = (paths.name(m.node), paths.parent(m.node));
        if is_whiteout(name) {
            continue;
        }
        let inode = match e.kind {
            Kind::Hardlink => {
                cursor = None;
                hardlink_target(root, layer, m).map_err(|m| format!("Processing tar entry: {m}"))?
            }
            _ => new_inode(leaves, e),
        };
        let from = start!(paths, root, cursor, parent, &mut chain);
        let dir = descend(paths, from, &chain).map_err(|msg| {
            format!(
                "Processing tar entry: Error unpacking container layer file {}: {msg}",
                debug_bytes(&layer.path(m))
            )
        })?;
        dir.merge(name, inode);
        cursor = Some((parent, dir));
    }
    Ok(())
}

/// The leaf a hard link member points at (composefs-rs `process_entry`).
fn hardlink_target(root: &Directory, layer: &Layer, m: &Member) -> Result<Inode, String> {
    let raw = m.entry.link_target.as_deref().unwrap_or_default();
    let comps = m
        .target
        .map(|t| layer.paths.components(t))
        .unwrap_or_default();
    let Some((tname, tparent)) = comps.split_last() else {
        return Err(format!("Invalid filename {}", debug_bytes(raw)));
    };
    let dir = root.dir_ref(tparent, &join(tparent))?;
    match dir.entries.get(*tname) {
        Some(Inode::Leaf(id)) => Ok(Inode::Leaf(*id)),
        Some(Inode::Directory(_)) => Err(format!(
            "Directory entry {} is a directory",
            debug_bytes(tname)
        )),
        None => Err(not_found(tname)),
    }
}

/// Merges layer splitstream files (bottom first) into one tree and applies
/// `transform_for_oci` (composefs-rs `create_filesystem`, with our whiteout rule).
pub fn merge(streams: &[&[u8]], xattrs: XattrFiltering) -> Result<FileSystem, String> {
    let mut fs = FileSystem::default();
    for stream in streams {
        let mut layer = Layer::new();
        tar_split::visit_entries(stream, &mut layer).map_err(|e| e.to_string())?;
        if let Some(e) = layer.error.take() {
            return Err(e);
        }
        apply_layer(&mut fs, &layer)?;
    }
    fs.transform_for_oci(xattrs)?;
    Ok(fs)
}

/// [`merge`], returned as dumpfile text (`cfsctl oci dump` when `raw_modes`).
pub fn merge_layers(
    streams: &[&[u8]],
    xattrs: XattrFiltering,
    raw_modes: bool,
) -> Result<Vec<u8>, String> {
    Ok(crate::dumpfile::write(&merge(streams, xattrs)?, raw_modes))
}

/// [`merge_layers`], streamed to `sink` as it is produced ([`crate::dumpfile::write_to`]):
/// returns the number of bytes written. The same bytes as [`merge_layers`].
pub fn merge_layers_to<W: std::io::Write>(
    streams: &[&[u8]],
    xattrs: XattrFiltering,
    raw_modes: bool,
    sink: W,
) -> crate::error::Result<u64> {
    let fs = merge(streams, xattrs)?;
    Ok(crate::dumpfile::write_to(&fs, raw_modes, sink)?)
}

/// A borrowed file descriptor as a [`std::io::Write`]: one `write(2)` per call (a partial
/// write is what `write_all` continues after; `EINTR` is `ErrorKind::Interrupted`, which
/// `write_all` retries). The descriptor is neither owned nor closed.
pub struct FdSink(pub std::os::fd::RawFd);

impl std::io::Write for FdSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes; a bad descriptor is an EBADF error.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Merges layer splitstream files and writes the EROFS image of each of `versions` straight
/// from the merged tree.
pub fn mkfs_layers(
    streams: &[&[u8]],
    xattrs: XattrFiltering,
    versions: &[u8],
) -> Result<Vec<Vec<u8>>, String> {
    let fs = merge(streams, xattrs)?;
    versions
        .iter()
        .map(|v| crate::erofs::write(&fs, *v))
        .collect()
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use crate::constants::{xattr_filtering, ALLOWLIST_ONLY, DEFAULT_EROFS_VERSION};
    use crate::error::Error;
    use crate::pybuf::ByteBuf;
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyMemoryView};

    /// A borrowed view when the content cannot change (bytes), else a copy.
    enum Input {
        Borrowed(ByteBuf),
        Copied(Vec<u8>),
    }

    fn input(obj: &Bound<'_, PyAny>) -> PyResult<Input> {
        let buf = ByteBuf::get(obj)?;
        let immutable = obj.is_instance_of::<PyBytes>()
            || (obj.is_instance_of::<PyMemoryView>()
                && obj
                    .getattr("obj")
                    .is_ok_and(|base| base.is_instance_of::<PyBytes>()));
        Ok(if immutable {
            Input::Borrowed(buf)
        } else {
            Input::Copied(buf.as_slice().to_vec())
        })
    }

    /// Merges layer splitstream files (bottom layer first) and returns the dumpfile text.
    #[pyfunction]
    #[pyo3(signature = (streams, xattrs=ALLOWLIST_ONLY, raw_modes=true),
        text_signature = "(streams, xattrs='allowlist-only', raw_modes=True)")]
    fn merge_layers<'py>(
        py: Python<'py>,
        streams: &Bound<'py, PyAny>,
        xattrs: &str,
        raw_modes: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mode = xattr_filtering(xattrs).map_err(Error::Invalid)?;
        let inputs = inputs_of(streams)?;
        let slices = slices_of(&inputs);
        let out = py
            .allow_threads(|| super::merge_layers(&slices, mode, raw_modes))
            .map_err(Error::Invalid)?;
        Ok(PyBytes::new(py, &out))
    }

    /// The layer streams given from Python, each borrowed or copied ([`input`]).
    fn inputs_of(streams: &Bound<'_, PyAny>) -> PyResult<Vec<Input>> {
        streams.try_iter()?.map(|item| input(&item?)).collect()
    }

    /// The bytes of each input, for the merge (which runs without the GIL).
    fn slices_of(inputs: &[Input]) -> Vec<&[u8]> {
        inputs
            .iter()
            .map(|i| match i {
                Input::Borrowed(b) => b.as_slice(),
                Input::Copied(v) => v.as_slice(),
            })
            .collect()
    }

    /// Merges layer splitstream files (bottom layer first) and writes the dumpfile text to
    /// the file descriptor `fd` as it is produced; returns the number of bytes written.
    #[pyfunction]
    #[pyo3(signature = (streams, fd, xattrs=ALLOWLIST_ONLY, raw_modes=true),
        text_signature = "(streams, fd, xattrs='allowlist-only', raw_modes=True)")]
    fn merge_layers_to_fd(
        py: Python<'_>,
        streams: &Bound<'_, PyAny>,
        fd: std::os::fd::RawFd,
        xattrs: &str,
        raw_modes: bool,
    ) -> PyResult<u64> {
        let mode = xattr_filtering(xattrs).map_err(Error::Invalid)?;
        let inputs = inputs_of(streams)?;
        let slices = slices_of(&inputs);
        Ok(py.allow_threads(|| {
            super::merge_layers_to(&slices, mode, raw_modes, super::FdSink(fd))
        })?)
    }

    /// Merges layer splitstream files and returns the EROFS image of each format in
    /// `versions`, without a dumpfile in between.
    #[pyfunction]
    #[pyo3(signature = (streams, xattrs=ALLOWLIST_ONLY, versions=vec![DEFAULT_EROFS_VERSION.into()]),
        text_signature = "(streams, xattrs='allowlist-only', versions=[1])")]
    fn mkfs_layers<'py>(
        py: Python<'py>,
        streams: &Bound<'py, PyAny>,
        xattrs: &str,
        versions: Vec<i64>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mode = xattr_filtering(xattrs).map_err(Error::Invalid)?;
        let versions = versions
            .into_iter()
            .map(crate::erofs::check_version)
            .collect::<Result<Vec<u8>, String>>()
            .map_err(Error::Invalid)?;
        let inputs = inputs_of(streams)?;
        let slices = slices_of(&inputs);
        let images = py
            .allow_threads(|| super::mkfs_layers(&slices, mode, &versions))
            .map_err(Error::Invalid)?;
        Ok(images.iter().map(|i| PyBytes::new(py, i)).collect())
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(merge_layers, m)?)?;
        m.add_function(wrap_pyfunction!(mkfs_layers, m)?)?;
        m.add_function(wrap_pyfunction!(merge_layers_to_fd, m)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsverity::Algorithm;
    use crate::splitstream::Writer;

    /// A minimal ustar member: (name, typeflag, body, linkname).
    fn member(out: &mut Vec<u8>, name: &str, flag: u8, body: &[u8], link: &str, mode: u32) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, mode as u64);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, body.len() as u64);
        octal(&mut h, 136, 12, 1000);
        h[156] = flag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    enum M<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Sym(&'a str, &'a str),
        Global,
    }

    fn layer(members: &[M<'_>]) -> Vec<u8> {
        let mut tar = Vec::new();
        for m in members {
            match m {
                M::Dir(n) => member(&mut tar, n, b'5', b"", "", 0o755),
                M::File(n, b) => member(&mut tar, n, b'0', b, "", 0o644),
                M::Link(n, t) => member(&mut tar, n, b'1', b"", t, 0o644),
                M::Sym(n, t) => member(&mut tar, n, b'2', b"", t, 0o777),
                M::Global => member(&mut tar, "pax_global_header", b'g', b"9 a=bcd\n", "", 0o644),
            }
        }
        tar.extend_from_slice(&[0u8; 1024]);
        let mut w = Writer::new(Algorithm::Sha256, crate::constants::LAYER_CONTENT_TYPE);
        w.write_inline(&tar);
        w.finish()
    }

    fn dump(layers: &[Vec<u8>]) -> Result<String, String> {
        let streams: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        merge_layers(&streams, XattrFiltering::AllowlistOnly, true)
            .map(|d| String::from_utf8(d).unwrap())
    }

    /// The dump without the root line, paths only.
    fn paths(layers: &[Vec<u8>]) -> Vec<String> {
        dump(layers)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect()
    }

    /// Streamed to a pipe (read by another thread) or a file: [`merge_layers`]'s bytes.
    #[test]
    fn merge_layers_to_a_pipe_and_a_file() {
        use std::io::{Read, Seek};
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut members = vec![M::Dir("usr")];
        let names: Vec<String> = (0..3000).map(|i| format!("usr/file-{i:05}")).collect();
        members.extend(names.iter().map(|n| M::File(n, b"content")));
        let layers = [layer(&members)];
        let streams: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let mode = XattrFiltering::AllowlistOnly;
        let whole = merge_layers(&streams, mode, true).unwrap();
        assert!(whole.len() > 100_000);

        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors, each owned by one File below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (mut rd, wr) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).unwrap();
            got
        });
        let n = merge_layers_to(&streams, mode, true, FdSink(wr.as_raw_fd())).unwrap();
        drop(wr);
        assert_eq!(n, whole.len() as u64);
        assert_eq!(reader.join().unwrap(), whole);

        let mut file = tempfile_in_tmp();
        let n = merge_layers_to(&streams, mode, false, FdSink(file.as_raw_fd())).unwrap();
        let mut got = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut got).unwrap();
        assert_eq!(n, got.len() as u64);
        assert_eq!(got, merge_layers(&streams, mode, false).unwrap());

        match merge_layers_to(&streams, mode, true, FdSink(-1)) {
            Err(crate::error::Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::EBADF)),
            other => panic!("{other:?}"),
        }
    }

    /// An unnamed temporary file (`O_TMPFILE` in the temporary directory).
    fn tempfile_in_tmp() -> std::fs::File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(std::env::temp_dir())
            .unwrap()
    }

    #[test]
    fn whiteouts_apply_to_lower_layers_only() {
        let base = layer(&[
            M::Dir("usr"),
            M::Dir("d"),
            M::File("d/a", b"a"),
            M::File("d/b", b"b"),
            M::File("x", b"x"),
        ]);
        // markers first (the usual order): same as composefs-rs
        let top = layer(&[
            M::Dir("d"),
            M::File("d/.wh..wh..opq", b""),
            M::File(".wh.x", b""),
            M::File("d/c", b"c"),
        ]);
        assert_eq!(paths(&[base.clone(), top]), ["/d", "/d/c", "/usr"]);
        // markers after this layer's own entries: they do not hide them
        let top = layer(&[
            M::Dir("d"),
            M::File("d/c", b"c"),
            M::File("x", b"new"),
            M::File("d/.wh..wh..opq", b""),
            M::File(".wh.x", b""),
        ]);
        assert_eq!(paths(&[base.clone(), top]), ["/d", "/d/c", "/usr", "/x"]);
        // a whiteout whose parent is missing or not a directory is a no-op
        let top = layer(&[M::File("nope/.wh.a", b""), M::File("x/.wh.y", b"")]);
        assert_eq!(paths(&[base, top]), ["/d", "/d/a", "/d/b", "/usr", "/x"]);
    }

    #[test]
    fn merge_rules() {
        let base = layer(&[
            M::Global,
            M::Dir("./usr/"),
            M::Dir("usr/lib"),
            M::File("usr/lib/f", b"data"),
            M::Dir("run"),
            M::File("run/stale", b"s"),
            M::Dir("etc"),
            M::File("etc/a/../b", b"dotdot"),
        ]);
        let top = layer(&[
            M::Global,
            M::Link("etc/h", "usr/lib/f"),
            M::Dir("usr/lib"),
            M::Sym("usr/lib", "elsewhere"),
            M::Dir("/"),
        ]);
        let out = dump(&[base, top]).unwrap();
        let expected = "\
/ 0 40755 5 0 0 0 1000.0 - - -
/etc 0 40755 2 0 0 0 1000.0 - - -
/etc/b 6 100644 1 0 0 0 1000.0 - dotdot -
/etc/h 4 100644 1 0 0 0 1000.0 - data -
/run 0 40755 2 0 0 0 1000.0 - - -
/usr 0 40755 2 0 0 0 1000.0 - - -
/usr/lib 9 120777 1 0 0 0 1000.0 elsewhere - -
";
        assert_eq!(out, expected);
    }

    #[test]
    fn runs_in_one_directory() {
        // entries of one directory in a row, mixed with replacements, a new sibling, a hard
        // link and a whiteout (its own layer: whiteouts apply to lower layers only)
        let l = layer(&[
            M::Dir("usr"),
            M::File("usr/a", b"1"),
            M::Dir("usr/b"),
            M::Dir("usr/a"),
            M::File("usr/a/x", b"2"),
            M::File("usr/c", b"3"),
            M::Link("usr/h", "usr/c"),
            M::File("usr/b", b"4"),
            M::File("usr/.wh.c", b""),
            M::File("usr/d", b"5"),
        ]);
        assert_eq!(
            paths(&[l]),
            ["/usr", "/usr/a", "/usr/a/x", "/usr/b", "/usr/c", "/usr/d", "/usr/h"]
        );
        let d = dump(&[layer(&[
            M::Dir("usr"),
            M::Dir("usr/b"),
            M::File("usr/b", b"x"),
        ])]);
        assert!(d.unwrap().contains("/usr/b 1 100644 1 "));
        assert_eq!(
            dump(&[layer(&[M::Dir("usr"), M::File("usr/f", b""), M::File("usr/f/x", b"")])])
                .unwrap_err(),
            "Processing tar entry: Error unpacking container layer file \"/usr/f/x\": Directory entry \"f\" is not a subdirectory"
        );
    }

    #[test]
    fn merge_errors() {
        let usr = || M::Dir("usr");
        assert_eq!(
            dump(&[layer(&[M::Dir("etc")])]).unwrap_err(),
            "Directory entry \"usr\" does not exist"
        );
        assert_eq!(
            dump(&[layer(&[M::File("usr", b"")])]).unwrap_err(),
            "Directory entry \"usr\" is not a subdirectory"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::File("run", b"")])]).unwrap_err(),
            "Directory entry \"run\" is not a subdirectory"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::File("a/b", b"")])]).unwrap_err(),
            "Processing tar entry: Error unpacking container layer file \"/a/b\": Directory entry \"a\" does not exist"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::Link("h", "a/b/c")])]).unwrap_err(),
            "Processing tar entry: Directory entry \"/a/b\" does not exist"
        );
        // a whiteout is never built: a whiteout hard link to a missing target is no error
        // (composefs-rs: "Directory entry \"missing\" does not exist")
        assert!(dump(&[layer(&[usr(), M::Link(".wh.x", "missing")])]).is_ok());
        assert_eq!(
            dump(&[layer(&[usr(), M::File("nodir/.wh.x", b"")])]).unwrap(),
            "/ 0 40755 3 0 0 0 1000.0 - - -\n/usr 0 40755 2 0 0 0 1000.0 - - -\n"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::Link("h", "usr")])]).unwrap_err(),
            "Processing tar entry: Directory entry \"usr\" is a directory"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::Link("h", "nothing")])]).unwrap_err(),
            "Processing tar entry: Directory entry \"nothing\" does not exist"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::Link("h", "/")])]).unwrap_err(),
            "Processing tar entry: Invalid filename \"\""
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::File("./", b"")])]).unwrap_err(),
            "Processing tar entry: Unpacking layer tar: filename \"/.\" must be a directory"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::File("a/../../b", b"")])]).unwrap_err(),
            "path escapes the image root: /a/../../b"
        );
        assert_eq!(
            dump(&[layer(&[usr(), M::Link("h", "../x")])]).unwrap_err(),
            "path escapes the image root: /../x"
        );
    }

    #[test]
    fn compact_keeps_order() {
        let base = layer(&[
            M::Dir("usr"),
            M::File("usr/a", b"1"),
            M::File("usr/b", b"2"),
            M::File("usr/c", b"3"),
        ]);
        let top = layer(&[M::File("usr/.wh.b", b"")]);
        let streams = [base.as_slice(), top.as_slice()];
        let fs = merge(&streams, XattrFiltering::AllowlistOnly).unwrap();
        assert_eq!(fs.leaves.len(), 2);
        assert_eq!(fs.leaves[0].content, Content::Inline(b"1".to_vec()));
        assert_eq!(fs.leaves[1].content, Content::Inline(b"3".to_vec()));
        assert_eq!(fs.nlinks(), [1, 1]);
    }
}
