//! The OCI layer merge (composefs-rs `composefs_oci::image::create_filesystem`, with our
//! whiteout rule): layer splitstreams, read back by [`tar_split::read_entries`], applied
//! bottom first to one [`FileSystem`], then written as dumpfile text or EROFS images.
//! Backend module `merge`; the pure-Python twin is `python/composefs/_pure/merge.py`.

use crate::tar_split::{self, Kind};
use crate::tree::{
    debug_bytes, join, normalize_into, not_found, Content, Directory, FileSystem, Inode, Leaf,
    Stat, XattrFiltering,
};

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

fn unpack_error(e: &tar_split::Entry, m: &str) -> String {
    format!(
        "Error unpacking container layer file {}: {m}",
        debug_bytes(&e.path)
    )
}

fn apply_layer(fs: &mut FileSystem, entries: &[tar_split::Entry]) -> Result<(), String> {
    // Member names and hard link targets are resolved first, in stream order: the
    // components of all of them in `arena`, each name's as a range of it.
    let mut arena: Vec<&[u8]> = Vec::with_capacity(entries.len() * 4);
    let mut spans = Vec::with_capacity(entries.len());
    for e in entries {
        let start = arena.len();
        normalize_into(&e.path, &mut arena)?;
        let mid = arena.len();
        let target = match (e.kind, &e.link_target) {
            (Kind::Hardlink, Some(t)) => {
                normalize_into(t, &mut arena)?;
                Some(arena.len())
            }
            _ => None,
        };
        spans.push((start, mid, target));
    }
    let comps_of = |i: usize| {
        let (a, b, _) = spans[i];
        &arena[a..b]
    };
    let target_of = |i: usize| {
        let (_, b, t) = spans[i];
        t.map(|t| &arena[b..t])
    };
    // Pass 1: the whiteouts, against the tree of the lower layers.
    for comps in (0..entries.len()).map(comps_of) {
        let Some((name, parent)) = comps.split_last() else {
            continue;
        };
        if !is_whiteout(name) {
            continue;
        }
        if let Some(dir) = fs.root.find_dir_mut(parent) {
            if *name == b".wh..wh..opq" {
                dir.entries.clear();
            } else {
                dir.entries.remove(&name[4..]);
            }
        }
    }
    // Pass 2: the other entries, in stream order. After an entry that is not a hard
    // link, the following such entries in the same directory are added to it without
    // looking it up again (nothing they do can move it).
    let mut i = 0;
    while i < entries.len() {
        let (e, comps) = (&entries[i], comps_of(i));
        i += 1;
        if comps.last().is_some_and(|n| is_whiteout(n)) {
            continue;
        }
        let Some((name, parent)) = comps.split_last() else {
            process_entry(fs, e, comps, None).map_err(|m| format!("Processing tar entry: {m}"))?;
            continue;
        };
        if e.kind == Kind::Hardlink {
            process_entry(fs, e, comps, target_of(i - 1))
                .map_err(|m| format!("Processing tar entry: {m}"))?;
            continue;
        }
        let FileSystem { root, leaves } = fs;
        let inode = new_inode(leaves, e);
        let dir = root
            .dir_mut(parent)
            .map_err(|m| format!("Processing tar entry: {}", unpack_error(e, &m)))?;
        dir.merge(name, inode);
        while i < entries.len() {
            let (e, comps) = (&entries[i], comps_of(i));
            if comps.last().is_some_and(|n| is_whiteout(n)) {
                i += 1;
                continue;
            }
            let Some((name, p)) = comps.split_last() else {
                break;
            };
            if e.kind == Kind::Hardlink || p != parent {
                break;
            }
            dir.merge(name, new_inode(leaves, e));
            i += 1;
        }
    }
    Ok(())
}

/// composefs-rs `process_entry` for an entry that is not a whiteout.
fn process_entry(
    fs: &mut FileSystem,
    e: &tar_split::Entry,
    comps: &[&[u8]],
    target: Option<&[&[u8]]>,
) -> Result<(), String> {
    let Some((name, parent)) = comps.split_last() else {
        if e.kind != Kind::Dir {
            return Err(format!(
                "Unpacking layer tar: filename {} must be a directory",
                debug_bytes(&e.path)
            ));
        }
        fs.root.stat = entry_stat(e);
        return Ok(());
    };
    let inode = match e.kind {
        Kind::Dir => Inode::Directory(Box::new(Directory::new(entry_stat(e)))),
        Kind::Hardlink => {
            let raw = e.link_target.as_deref().unwrap_or_default();
            let Some((tname, tparent)) = target.unwrap_or_default().split_last() else {
                return Err(format!("Invalid filename {}", debug_bytes(raw)));
            };
            let dir = fs.root.dir_ref(tparent, &join(tparent))?;
            match dir.entries.get(*tname) {
                Some(Inode::Leaf(id)) => Inode::Leaf(*id),
                Some(Inode::Directory(_)) => {
                    return Err(format!(
                        "Directory entry {} is a directory",
                        debug_bytes(tname)
                    ))
                }
                None => return Err(not_found(tname)),
            }
        }
        _ => new_inode(&mut fs.leaves, e),
    };
    let dir = fs.root.dir_mut(parent).map_err(|m| unpack_error(e, &m))?;
    dir.merge(name, inode);
    Ok(())
}

/// Merges layer splitstream files (bottom first) into one tree and applies
/// `transform_for_oci` (composefs-rs `create_filesystem`, with our whiteout rule).
pub fn merge(streams: &[&[u8]], xattrs: XattrFiltering) -> Result<FileSystem, String> {
    let mut fs = FileSystem::default();
    for stream in streams {
        let entries = tar_split::read_entries(stream).map_err(|e| e.to_string())?;
        apply_layer(&mut fs, &entries)?;
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
        let inputs = streams
            .try_iter()?
            .map(|item| input(&item?))
            .collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = inputs
            .iter()
            .map(|i| match i {
                Input::Borrowed(b) => b.as_slice(),
                Input::Copied(v) => v.as_slice(),
            })
            .collect();
        let out = py
            .allow_threads(|| super::merge_layers(&slices, mode, raw_modes))
            .map_err(Error::Invalid)?;
        Ok(PyBytes::new(py, &out))
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
        let inputs = streams
            .try_iter()?
            .map(|item| input(&item?))
            .collect::<PyResult<Vec<_>>>()?;
        let slices: Vec<&[u8]> = inputs
            .iter()
            .map(|i| match i {
                Input::Borrowed(b) => b.as_slice(),
                Input::Copied(v) => v.as_slice(),
            })
            .collect();
        let images = py
            .allow_threads(|| super::mkfs_layers(&slices, mode, &versions))
            .map_err(Error::Invalid)?;
        Ok(images.iter().map(|i| PyBytes::new(py, i)).collect())
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(merge_layers, m)?)?;
        m.add_function(wrap_pyfunction!(mkfs_layers, m)?)?;
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
