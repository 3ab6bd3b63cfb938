//! What the EROFS format (and the kernel reading it) can hold, checked before an image is
//! written: a tree beyond these limits is refused with an error naming the path, never written
//! with a field that silently wraps (composefs-rs 0.9 and C mkcomposefs differ here; see
//! docs/differences.md, "EROFS limits"). Pure-Python twin: `python/composefs/_pure/erofs_limits.py`
//! (same checks, same order, same messages).
//!
//! * [`check_tree`] walks the tree (iteratively, depth-first in name order, the dumpfile order)
//!   before anything is collected: entry names, xattr names and values, symlink targets, file
//!   sizes, timestamps and link counts;
//! * [`check_xattr_area`] checks each inode's xattr area once the shared table is known;
//! * [`check_inline`] checks each inline tail once the inode's offset is known.

use super::format::{BLOCK_SIZE, XATTR_PREFIXES};
use crate::tree::{debug_bytes, Content, Directory, FileSystem, Inode, Stat};
use std::fmt::Display;

/// Longest entry name (`EROFS_NAME_LEN`, Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest xattr name after its prefix (`erofs_xattr_entry.e_name_len` is a u8).
pub const XATTR_SUFFIX_MAX: usize = 255;
/// Largest xattr value (`erofs_xattr_entry.e_value_size` is a u16).
pub const XATTR_VALUE_MAX: usize = 0xFFFF;
/// Most shared xattrs of one inode (`erofs_xattr_ibody_header.h_shared_count` is a u8).
pub const SHARED_XATTRS_MAX: usize = 0xFF;
/// Largest inline xattr area: `i_xattr_icount` is a u16 and the area is
/// `12 + 4 * (icount - 1)` bytes.
pub const XATTR_AREA_MAX: usize = 12 + 4 * (0xFFFF - 1);
/// Longest symlink target (Linux `PATH_MAX - 1`, as C mkcomposefs).
pub const SYMLINK_MAX: usize = 4095;
/// Largest chunk-based file: V0/V1 keep at most one block of 4-byte chunk indexes with
/// 2^43-byte chunks; V2 writes a single chunk index.
pub const FILE_SIZE_MAX_EPOCH1: u64 = (BLOCK_SIZE as u64 / 4) << 43;
pub const FILE_SIZE_MAX_V2: u64 = 1 << 43;

const OVERLAY: &[u8] = b"trusted.overlay.";
const OVERLAY_ESCAPED: &[u8] = b"trusted.overlay.overlay.";

fn at(path: &[u8]) -> String {
    debug_bytes(if path.is_empty() { b"/" } else { path })
}

/// The length of `name`'s suffix as the writer stores it (after the `trusted.overlay.`
/// escape and the prefix of `XATTR_PREFIXES`; `lustre.` is a prefix in V2 only).
fn stored_suffix_len(name: &[u8], epoch1: bool) -> usize {
    let full = match name.strip_prefix(OVERLAY) {
        Some(rest) => OVERLAY_ESCAPED.len() + rest.len(),
        None => name.len(),
    };
    let prefix = (1..XATTR_PREFIXES.len())
        .rev()
        .filter(|&i| !(epoch1 && i == 5))
        .map(|i| XATTR_PREFIXES[i])
        .find(|p| name.starts_with(p))
        .map_or(0, <[u8]>::len);
    full - prefix
}

fn check_stat(path: &[u8], stat: &Stat, epoch1: bool) -> Result<(), String> {
    if stat.mtime_nsec >= 1_000_000_000 {
        return Err(format!(
            "{}: mtime nanoseconds {} out of range (at most 999999999)",
            at(path),
            stat.mtime_nsec
        ));
    }
    for (name, value) in &stat.xattrs {
        if name.is_empty() {
            return Err(format!("{}: empty xattr name", at(path)));
        }
        let suffix = stored_suffix_len(name, epoch1);
        if suffix > XATTR_SUFFIX_MAX {
            return Err(format!(
                "{}: xattr name {} too long ({suffix} bytes after its prefix; EROFS allows \
                 {XATTR_SUFFIX_MAX})",
                at(path),
                debug_bytes(name)
            ));
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(format!(
                "{}: xattr {} value too large ({} bytes; EROFS allows {XATTR_VALUE_MAX})",
                at(path),
                debug_bytes(name),
                value.len()
            ));
        }
    }
    Ok(())
}

fn check_content(path: &[u8], content: &Content, epoch1: bool) -> Result<(), String> {
    match content {
        Content::Symlink(target) if target.len() > SYMLINK_MAX => Err(format!(
            "{}: symlink target too long ({} bytes; EROFS allows {SYMLINK_MAX})",
            at(path),
            target.len()
        )),
        Content::External { size, .. }
        | Content::ExternalNoVerity { size, .. }
        | Content::Sparse(size) => {
            let max = if epoch1 {
                FILE_SIZE_MAX_EPOCH1
            } else {
                FILE_SIZE_MAX_V2
            };
            if *size > max {
                let version = if epoch1 { "V0/V1" } else { "V2" };
                return Err(format!(
                    "{}: file too large ({size} bytes; EROFS format {version} allows {max})",
                    at(path)
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_name(path: &[u8], name: &[u8]) -> Result<(), String> {
    if name.len() > NAME_MAX {
        return Err(format!(
            "{}: file name too long ({} bytes; EROFS allows {NAME_MAX})",
            at(path),
            name.len()
        ));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(format!(
            "{}: invalid file name (empty, \".\", \"..\" or containing '/' or NUL)",
            at(path)
        ));
    }
    Ok(())
}

/// Every per-entry limit, depth-first in name order (iteratively: no recursion on depth).
/// Run after composefs-rs's `validate_filesystem` (leaf indexes are known to be valid).
pub fn check_tree(fs: &FileSystem, version: u8) -> Result<(), String> {
    let epoch1 = version < 2;
    check_stat(b"/", &fs.root.stat, epoch1)?;
    let mut links = vec![0u64; fs.leaves.len()];
    let mut path: Vec<u8> = Vec::new();
    type Entries<'a> = std::collections::btree_map::Iter<'a, Vec<u8>, Inode>;
    // (entries left, length of `path` for this directory)
    let mut stack: Vec<(Entries<'_>, usize)> = vec![(fs.root.entries.iter(), 0)];
    while let Some((entries, len)) = stack.last_mut() {
        let Some((name, inode)) = entries.next() else {
            stack.pop();
            continue;
        };
        path.truncate(*len);
        path.push(b'/');
        path.extend_from_slice(name);
        check_name(&path, name)?;
        match inode {
            Inode::Directory(d) => {
                let d: &Directory = d;
                check_stat(&path, &d.stat, epoch1)?;
                stack.push((d.entries.iter(), path.len()));
            }
            Inode::Leaf(i) => {
                let Some(count) = links.get_mut(*i) else {
                    continue; // reported by the writer's validation
                };
                *count += 1;
                if *count == 1 {
                    let leaf = &fs.leaves[*i];
                    check_stat(&path, &leaf.stat, epoch1)?;
                    check_content(&path, &leaf.content, epoch1)?;
                } else if *count > u64::from(u32::MAX) {
                    return Err(format!(
                        "{}: too many hard links (EROFS allows {})",
                        at(&path),
                        u32::MAX
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The path of the first entry (depth-first in name order) whose stat is `stat` (a hard
/// link's first name); `None` for an inode the writer made (a whiteout stub).
fn path_of(fs: &FileSystem, stat: &Stat) -> Option<Vec<u8>> {
    if std::ptr::eq(&fs.root.stat, stat) {
        return Some(b"/".to_vec());
    }
    let mut path: Vec<u8> = Vec::new();
    type Entries<'a> = std::collections::btree_map::Iter<'a, Vec<u8>, Inode>;
    let mut stack: Vec<(Entries<'_>, usize)> = vec![(fs.root.entries.iter(), 0)];
    while let Some((entries, len)) = stack.last_mut() {
        let Some((name, inode)) = entries.next() else {
            stack.pop();
            continue;
        };
        path.truncate(*len);
        path.push(b'/');
        path.extend_from_slice(name);
        let found = match inode {
            Inode::Directory(d) => {
                let hit = std::ptr::eq(&d.stat, stat);
                stack.push((d.entries.iter(), path.len()));
                hit
            }
            Inode::Leaf(i) => fs
                .leaves
                .get(*i)
                .is_some_and(|l| std::ptr::eq(&l.stat, stat)),
        };
        if found {
            return Some(path);
        }
    }
    None
}

fn inode_at(fs: &FileSystem, stat: &Stat) -> String {
    path_of(fs, stat).map_or_else(|| "a whiteout stub".to_string(), |p| at(&p))
}

/// The xattr area of the inode whose stat is `stat`: `size` bytes, `shared` of them shared.
pub fn check_xattr_area(
    fs: &FileSystem,
    stat: &Stat,
    size: usize,
    shared: usize,
) -> Result<(), String> {
    if shared > SHARED_XATTRS_MAX {
        return Err(format!(
            "{}: too many shared xattrs ({shared}; EROFS allows {SHARED_XATTRS_MAX})",
            inode_at(fs, stat)
        ));
    }
    if size > XATTR_AREA_MAX {
        return Err(format!(
            "{}: xattrs too large ({size} bytes; EROFS allows {XATTR_AREA_MAX} per inode)",
            inode_at(fs, stat)
        ));
    }
    Ok(())
}

/// An inline tail of `len` bytes starting at image offset `start` must lie within one block
/// (the kernel refuses inline data crossing a block boundary).
pub fn check_inline(fs: &FileSystem, stat: &Stat, start: usize, len: usize) -> Result<(), String> {
    if len >= BLOCK_SIZE || start % BLOCK_SIZE + len > BLOCK_SIZE {
        return Err(format!(
            "{}: inline data of {len} bytes does not fit in one {BLOCK_SIZE}-byte EROFS block \
             after the inode and its xattrs",
            inode_at(fs, stat)
        ));
    }
    Ok(())
}

/// `v` as the narrower type of an on-disk field, checked (the limits above make a failure a
/// bug, reported rather than written wrapped).
pub fn fit<T: TryFrom<U>, U: Copy + Display>(v: U, field: &str) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("internal error: EROFS {field} {v} out of range"))
}

#[cfg(test)]
mod tests {
    use crate::erofs::write;
    use crate::tree::{Content, Directory, FileSystem, Inode, Leaf, Stat};

    fn fs_with(name: &[u8], stat: Stat, content: Content) -> FileSystem {
        let mut fs = FileSystem::default();
        fs.root.stat.mode = 0o755;
        fs.leaves.push(Leaf { stat, content });
        fs.root.entries.insert(name.to_vec(), Inode::Leaf(0));
        fs
    }

    fn err(fs: &FileSystem, version: u8) -> String {
        write(fs, version).unwrap_err()
    }

    #[test]
    fn names() {
        let long = vec![b'n'; 300];
        let fs = fs_with(&long, Stat::default(), Content::Inline(vec![]));
        let want = format!(
            "\"/{}\": file name too long (300 bytes; EROFS allows 255)",
            "n".repeat(300)
        );
        for version in 0..3 {
            assert_eq!(err(&fs, version), want);
        }
        assert!(write(&fs_with(&[b'n'; 255], Stat::default(), Content::Fifo), 1).is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            let fs = fs_with(bad, Stat::default(), Content::Fifo);
            assert!(err(&fs, 1)
                .ends_with(": invalid file name (empty, \".\", \"..\" or containing '/' or NUL)"));
        }
    }

    #[test]
    fn stats_and_contents() {
        let stat = Stat {
            mtime_nsec: 1_000_000_000,
            ..Stat::default()
        };
        let fs = fs_with(b"f", stat, Content::Fifo);
        assert_eq!(
            err(&fs, 1),
            "\"/f\": mtime nanoseconds 1000000000 out of range (at most 999999999)"
        );
        let stat = Stat {
            xattrs: [(Vec::new(), b"v".to_vec())].into_iter().collect(),
            ..Stat::default()
        };
        assert_eq!(
            err(&fs_with(b"f", stat, Content::Fifo), 2),
            "\"/f\": empty xattr name"
        );
        let stat = Stat {
            xattrs: [(b"user.x".to_vec(), vec![b'v'; 65_536])]
                .into_iter()
                .collect(),
            ..Stat::default()
        };
        assert_eq!(
            err(&fs_with(b"f", stat, Content::Fifo), 0),
            "\"/f\": xattr \"user.x\" value too large (65536 bytes; EROFS allows 65535)"
        );
        let fs = fs_with(b"s", Stat::default(), Content::Symlink(vec![b't'; 4096]));
        assert_eq!(
            err(&fs, 1),
            "\"/s\": symlink target too long (4096 bytes; EROFS allows 4095)"
        );
        let fs = fs_with(b"f", Stat::default(), Content::Sparse((1 << 43) + 1));
        assert!(write(&fs, 1).is_ok());
        assert_eq!(
            err(&fs, 2),
            "\"/f\": file too large (8796093022209 bytes; EROFS format V2 allows 8796093022208)"
        );
        let fs = fs_with(b"f", Stat::default(), Content::Sparse((1 << 53) + 1));
        assert!(err(&fs, 0)
            .starts_with("\"/f\": file too large (9007199254740993 bytes; EROFS format V0/V1"));
    }

    #[test]
    fn xattr_suffixes() {
        let cases: [(&[u8], usize, u8, bool); 5] = [
            (b"user.", 255, 1, true),
            (b"user.", 256, 1, false),
            (b"trusted.overlay.", 239, 1, true),
            (b"trusted.overlay.", 240, 1, false),
            (b"lustre.", 255, 2, true),
        ];
        for (prefix, n, version, fits) in cases {
            let name = [prefix, &vec![b'x'; n]].concat();
            let stat = Stat {
                xattrs: [(name, b"v".to_vec())].into_iter().collect(),
                ..Stat::default()
            };
            let fs = fs_with(b"f", stat, Content::Fifo);
            assert_eq!(write(&fs, version).is_ok(), fits, "{n}");
        }
    }

    #[test]
    fn hard_link_reported_at_first_name() {
        let stat = Stat {
            xattrs: [(b"user.x".to_vec(), vec![b'v'; 65_536])]
                .into_iter()
                .collect(),
            ..Stat::default()
        };
        let mut fs = fs_with(b"b", stat, Content::Fifo);
        let sub = Directory {
            stat: Stat::default(),
            entries: [(b"z".to_vec(), Inode::Leaf(0))].into_iter().collect(),
        };
        fs.root
            .entries
            .insert(b"a".to_vec(), Inode::Directory(Box::new(sub)));
        assert!(err(&fs, 1).starts_with("\"/a/z\": xattr"));
    }

    #[test]
    fn xattr_area_and_shared_count() {
        let many: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = (0..5)
            .map(|i| (format!("user.x{i}").into_bytes(), vec![b'v'; 60_000]))
            .collect();
        let stat = Stat {
            xattrs: many,
            ..Stat::default()
        };
        assert_eq!(
            err(&fs_with(b"f", stat, Content::Fifo), 1),
            "\"/f\": xattrs too large (300052 bytes; EROFS allows 262148 per inode)"
        );
        let shared: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = (0..256)
            .map(|i| (format!("user.s{i:03}").into_bytes(), b"v".to_vec()))
            .collect();
        let stat = Stat {
            xattrs: shared,
            ..Stat::default()
        };
        let mut fs = fs_with(b"a", stat.clone(), Content::Fifo);
        fs.leaves.push(Leaf {
            stat,
            content: Content::Fifo,
        });
        fs.root.entries.insert(b"b".to_vec(), Inode::Leaf(1));
        assert_eq!(
            err(&fs, 2),
            "\"/a\": too many shared xattrs (256; EROFS allows 255)"
        );
    }
}
