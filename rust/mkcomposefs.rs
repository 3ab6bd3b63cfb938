//! C mkcomposefs 1.0 (`mkcomposefs --from-file`): its dumpfile reader and its EROFS writer,
//! byte for byte. Pure-Python twin: `python/composefs/_pure/mkcomposefs.py` (same rules, same
//! messages; the module documentation there lists how libcomposefs's model differs from
//! composefs-rs's, which `erofs::writer` follows for OCI image ids).
//!
//! The tree is an arena of libcomposefs-like nodes: a leaf keeps the NLINK, SIZE, PAYLOAD,
//! CONTENT and DIGEST of its line, a hard link is a node bound to the node it names (resolved
//! after the whole file, last line first). Nothing recurses on the depth of the tree.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::erofs::xxh32;

const BLOCK: u64 = 4096;
const M32: u64 = 0xFFFF_FFFF;

const S_IFMT: u32 = 0o170000;
const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

const PATH_MAX: usize = 4096;
const INLINE_CONTENT_MAX: usize = 5000;
const NAME_MAX: usize = 255;
const XATTR_NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 0xFFFF;
const XATTR_BUDGET: u64 = 0xFFFF / 2;
const MAX_CHUNKS: u64 = 1024;
const MAX_SHARED_REFS: usize = 0x80;
const VERSION_MAX: i64 = 1;
const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;

const OVERLAY: &[u8] = b"trusted.overlay.";
const ESCAPED: &[u8] = b"trusted.overlay.overlay.";
const PREFIXES: [(&[u8], u8); 5] = [
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
];

type Res<T> = Result<T, String>;

#[derive(Clone, PartialEq)]
enum Digest {
    None,
    Raw([u8; 32]),
    /// Text C cannot decode into 32 bytes (refused if a file needs it).
    Bad(String),
}

enum Link {
    None,
    Pending,
    To(usize),
}

struct Node {
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    size: u64,
    mtime: i64,
    nsec: u32,
    payload: Option<Vec<u8>>,
    content: Option<Vec<u8>>,
    digest: Digest,
    /// name -> value; the order is irrelevant (sorted when written)
    xattrs: HashMap<Vec<u8>, Vec<u8>>,
    xsize: u64,
    children: BTreeMap<Vec<u8>, usize>,
    parent: Option<usize>,
    link: Link,
    // writer state
    index: u32,
    nid: u64,
    blocks: u64,
    tail: u64,
    ipad: u64,
    compact: bool,
}

impl Node {
    fn new(mode: u32) -> Self {
        Node {
            mode,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            mtime: 0,
            nsec: 0,
            payload: None,
            content: None,
            digest: Digest::None,
            xattrs: HashMap::new(),
            xsize: 0,
            children: BTreeMap::new(),
            parent: None,
            link: Link::None,
            index: 0,
            nid: 0,
            blocks: 0,
            tail: 0,
            ipad: 0,
            compact: false,
        }
    }

    fn ftype(&self) -> u32 {
        self.mode & S_IFMT
    }

    fn is_link(&self) -> bool {
        !matches!(self.link, Link::None)
    }
}

/// A path or name for a message (long ones cut at 256 characters).
fn show(data: &[u8]) -> String {
    let mut text = String::new();
    for chunk in data.utf8_chunks() {
        text.push_str(chunk.valid());
        for b in chunk.invalid() {
            text.push_str(&format!("\\x{b:02x}"));
        }
    }
    if text.chars().count() > 256 {
        let cut: String = text.chars().take(256).collect();
        return cut + "...";
    }
    text
}

fn set_xattr(node: &mut Node, name: &[u8], value: &[u8]) -> Res<()> {
    if name.is_empty() {
        return Err("Can't set xattr: empty name".into());
    }
    if name.len() > XATTR_NAME_MAX {
        return Err(format!(
            "Can't set xattr {}: name of {} bytes (the limit is {XATTR_NAME_MAX})",
            show(name),
            name.len()
        ));
    }
    if value.len() > XATTR_SIZE_MAX {
        return Err(format!(
            "Can't set xattr {}: value of {} bytes (the limit is {XATTR_SIZE_MAX})",
            show(name),
            value.len()
        ));
    }
    // the budget is a size_t: it wraps (below, in the writer's copy of the tree)
    if let Some(old) = node.xattrs.remove(name) {
        node.xsize = if node.xattrs.is_empty() {
            0
        } else {
            node.xsize
                .wrapping_sub(7 + name.len() as u64 + old.len() as u64)
        };
    }
    let entry = 7 + (name.len() + value.len()) as u64 + if node.xattrs.is_empty() { 12 } else { 0 };
    if node.xsize.wrapping_add(entry) > XATTR_BUDGET {
        return Err(format!(
            "Can't set xattr {}: the xattrs of one file exceed {XATTR_BUDGET} bytes",
            show(name)
        ));
    }
    node.xattrs.insert(name.to_vec(), value.to_vec());
    node.xsize = node.xsize.wrapping_add(entry);
    Ok(())
}

// -- reading -------------------------------------------------------------------------------

/// C `strtoull` of a whole field: None unless the field is one number (an overflow saturates,
/// a minus sign negates modulo 2**64).
fn strtoull(text: &[u8], base: u32) -> Option<u64> {
    let mut i = 0;
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
        i += 1;
    }
    let mut negative = false;
    if i < text.len() && (text[i] == b'+' || text[i] == b'-') {
        negative = text[i] == b'-';
        i += 1;
    }
    let digits = &text[i..];
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    let mut overflow = false;
    for &c in digits {
        let d = (c as char).to_digit(base)?;
        match value
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    if overflow {
        return Some(u64::MAX);
    }
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

fn int(field: &[u8], base: u32) -> Res<u64> {
    strtoull(field, base).ok_or_else(|| format!("Invalid integer {}", show(field)))
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unescape(text: &[u8]) -> Res<Vec<u8>> {
    if !text.contains(&b'\\') {
        return Ok(text.to_vec());
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = text.get(i) else {
            return Err("No character after escape".into());
        };
        i += 1;
        match e {
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'x' => {
                if i + 2 > text.len() {
                    return Err("No hex characters after hex escape".into());
                }
                match (hexval(text[i]), hexval(text[i + 1])) {
                    (Some(a), Some(b)) => out.push(a << 4 | b),
                    _ => return Err("Invalid hex characters after hex escape".into()),
                }
                i += 2;
            }
            other => return Err(format!("Unsupported escape type {}", other as char)),
        }
    }
    Ok(out)
}

/// What C sees of a string: up to its first NUL.
fn cstr(mut data: Vec<u8>) -> Vec<u8> {
    if let Some(end) = data.iter().position(|&b| b == 0) {
        data.truncate(end);
    }
    data
}

fn optional(field: &[u8]) -> Res<Option<Vec<u8>>> {
    if field == b"-" {
        Ok(None)
    } else {
        unescape(field).map(Some)
    }
}

fn valid_type(mode: u32) -> bool {
    matches!(
        mode & S_IFMT,
        S_IFSOCK | S_IFLNK | S_IFREG | S_IFBLK | S_IFDIR | S_IFCHR | S_IFIFO
    )
}

struct Reader {
    strict: bool,
    nodes: Vec<Node>,
    root: Option<usize>,
    fixups: Vec<(usize, Option<Vec<u8>>)>,
}

impl Reader {
    /// `tree_add_node`.
    fn add(&mut self, path: &[u8], id: usize) -> Res<()> {
        if path == b"/" {
            if self.nodes[id].ftype() != S_IFDIR {
                return Err("Root must be a directory".into());
            }
            if self.root.is_some() {
                return Err("Can't have multiple roots".into());
            }
            self.root = Some(id);
            return Ok(());
        }
        let Some(root) = self.root else {
            return Err("Root node not present".into());
        };
        let start = path.iter().position(|&b| b != b'/').unwrap_or(path.len());
        let rest = &path[start..];
        // components separated by runs of '/'; the last one (maybe empty) is the name
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut i = 0;
        loop {
            let end = rest[i..].iter().position(|&b| b == b'/').map(|p| i + p);
            match end {
                None => {
                    parts.push(&rest[i..]);
                    break;
                }
                Some(e) => {
                    parts.push(&rest[i..e]);
                    i = e;
                    while i < rest.len() && rest[i] == b'/' {
                        i += 1;
                    }
                }
            }
        }
        let (name, dirs) = parts.split_last().expect("at least one part");
        let mut parent = Some(root);
        for part in dirs {
            parent = parent.and_then(|p| self.nodes[p].children.get(*part).copied());
            if parent.is_none() {
                break;
            }
        }
        let Some(parent) = parent else {
            return Err(format!("Parent directory missing for {}", show(path)));
        };
        if self.nodes[parent].ftype() != S_IFDIR {
            return Err(format!("Parent must be a directory for {}", show(path)));
        }
        if *name == b"." || *name == b".." {
            return Err(format!("Invalid . or .. in path: {}", show(path)));
        }
        if name.is_empty() {
            return Err(format!("Can't add child {}: empty file name", show(path)));
        }
        if name.len() > NAME_MAX {
            return Err(format!(
                "Can't add child {}: file name of {} bytes (the limit is {NAME_MAX})",
                show(path),
                name.len()
            ));
        }
        if self.nodes[parent].children.contains_key(*name) {
            return Err(format!("Path {} already exist", show(path)));
        }
        self.nodes[parent].children.insert(name.to_vec(), id);
        self.nodes[id].parent = Some(parent);
        Ok(())
    }

    /// `tree_from_dump_line`.
    fn line(&mut self, line: &[u8]) -> Res<()> {
        if let Some(nul) = line.iter().position(|&b| b == 0) {
            return Err(format!("Invalid embedded NUL character at position {nul}"));
        }
        let mut fields: Vec<&[u8]> = Vec::with_capacity(11);
        let mut rest = line;
        for _ in 0..11 {
            match rest.iter().position(|&b| b == b' ') {
                None => {
                    fields.push(rest);
                    rest = &rest[rest.len()..];
                }
                Some(sp) => {
                    fields.push(&rest[..sp]);
                    rest = &rest[sp + 1..];
                }
            }
        }
        let path = cstr(unescape(fields[0])?);
        if path.is_empty() {
            return Err("Invalid empty path".into());
        }
        let mut mode_text = fields[2];
        let hardlink = mode_text.first() == Some(&b'@');
        if hardlink {
            mode_text = &mode_text[1..];
        }
        let mode = (int(mode_text, 8)? & M32) as u32;
        if !valid_type(mode) {
            return Err(format!("Invalid mode {mode:o}"));
        }
        let id = self.nodes.len();
        self.nodes.push(Node::new(mode));
        self.add(&path, id)?;
        if hardlink {
            if mode & S_IFMT == S_IFDIR {
                return Err("Directories can't be hardlinked".into());
            }
            let target = optional(fields[8])?.map(cstr);
            self.nodes[id].link = Link::Pending;
            self.fixups.push((id, target));
            return Ok(());
        }
        let size = int(fields[1], 10)?;
        let nlink = int(fields[3], 10)?;
        let uid = int(fields[4], 10)?;
        // C checks the uid's result again for gid and rdev: with a non-zero uid, an
        // unparsable gid or rdev is taken as 0
        let gid = match strtoull(fields[5], 10) {
            Some(v) => v,
            None if uid == 0 => return Err(format!("Invalid integer {}", show(fields[5]))),
            None => 0,
        };
        let rdev = match strtoull(fields[6], 10) {
            Some(v) => v,
            None if uid == 0 => return Err(format!("Invalid integer {}", show(fields[6]))),
            None => 0,
        };
        let mtime = fields[7];
        let (sec_text, nsec_text): (&[u8], &[u8]) = match mtime.iter().position(|&b| b == b'.') {
            Some(d) => (&mtime[..d], &mtime[d + 1..]),
            None => (mtime, b""),
        };
        let sec = int(sec_text, 10)?;
        let nsec = int(nsec_text, 10)?;
        let payload = optional(fields[8])?;
        let content = optional(fields[9])?;
        if let Some(c) = &content {
            if c.len() as u64 != size {
                return Err(format!(
                    "Invalid content size {}, must match size {}",
                    c.len(),
                    size as i64
                ));
            }
        }
        let digest = optional(fields[10])?;
        let strict = self.strict;
        let node = &mut self.nodes[id];
        let kind = mode & S_IFMT;
        if kind != S_IFLNK {
            node.size = size;
        }
        node.nlink = (nlink & M32) as u32;
        node.uid = (uid & M32) as u32;
        node.gid = (gid & M32) as u32;
        if kind == S_IFCHR || kind == S_IFBLK {
            node.rdev = (rdev & M32) as u32;
        } else if strict && rdev != 0 {
            return Err("Non-zero devnum on non-device".into());
        }
        node.mtime = sec as i64;
        node.nsec = (nsec & M32) as u32;
        if kind == S_IFLNK {
            let target = payload.map(cstr).unwrap_or_default();
            if target.is_empty() {
                return Err("Invalid symlink: empty target".into());
            }
            if target.len() >= PATH_MAX {
                return Err(format!(
                    "Invalid symlink: target of {} bytes (the limit is {})",
                    target.len(),
                    PATH_MAX - 1
                ));
            }
            node.size = target.len() as u64;
            if strict {
                if size != target.len() as u64 {
                    return Err(format!(
                        "Invalid symlink size {}, must match size {}",
                        target.len(),
                        size as i64
                    ));
                }
                if content.as_ref().is_some_and(|c| !c.is_empty()) {
                    return Err("Symlink cannot have content".into());
                }
            }
            node.payload = Some(target);
        } else {
            if let Some(p) = payload {
                let p = cstr(p);
                if p.len() >= PATH_MAX {
                    return Err(format!(
                        "Invalid payload: {} bytes (the limit is {})",
                        p.len(),
                        PATH_MAX - 1
                    ));
                }
                node.payload = Some(p);
            }
            if let Some(c) = content {
                if c.len() > INLINE_CONTENT_MAX {
                    return Err(format!(
                        "Inline content size {} exceeds maximum {INLINE_CONTENT_MAX}",
                        c.len()
                    ));
                }
                node.size = c.len() as u64;
                node.content = if c.is_empty() { None } else { Some(c) };
            }
        }
        if let Some(d) = digest {
            let text = cstr(d);
            let head = &text[..text.len().min(64)];
            node.digest = if head.len() == 64 && head.iter().all(|&b| hexval(b).is_some()) {
                let mut raw = [0u8; 32];
                for (i, pair) in head.chunks(2).enumerate() {
                    raw[i] = hexval(pair[0]).unwrap() << 4 | hexval(pair[1]).unwrap();
                }
                Digest::Raw(raw)
            } else {
                Digest::Bad(show(&text))
            };
        }
        if rest.len() > 0xFFFF {
            return Err("Too many xattrs".into());
        }
        if !rest.is_empty() {
            let body = rest.strip_suffix(b" ").unwrap_or(rest);
            for token in body.split(|&b| b == b' ') {
                let Some(eq) = token.iter().position(|&b| b == b'=') else {
                    return Err("Missing = in xattr".into());
                };
                let key = cstr(unescape(&token[..eq])?);
                let value = unescape(&token[eq + 1..])?;
                set_xattr(&mut self.nodes[id], &key, &value)?;
            }
        }
        Ok(())
    }

    /// `tree_resolve_hardlinks` (last line first).
    fn finish(mut self) -> Res<(Vec<Node>, usize)> {
        let Some(root) = self.root else {
            return Err("No files in dump file".into());
        };
        let fixups = std::mem::take(&mut self.fixups);
        for (id, target_path) in fixups.into_iter().rev() {
            let Some(target_path) = target_path else {
                return Err("No target path for the hardlink".into());
            };
            let mut target = Some(root);
            for part in target_path.split(|&b| b == b'/') {
                if !part.is_empty() {
                    target = target.and_then(|t| self.nodes[t].children.get(part).copied());
                }
            }
            let Some(target) = target else {
                return Err(format!("No target at {} for hardlink", show(&target_path)));
            };
            if target == id {
                return Err(format!("Self-referential hardlink {}", show(&target_path)));
            }
            self.nodes[id].link = Link::To(target);
        }
        Ok((self.nodes, root))
    }
}

/// The tree of a dumpfile, as `tree_from_dump` builds it.
fn read(data: &[u8], strict: bool) -> Res<(Vec<Node>, usize)> {
    let mut reader = Reader {
        strict,
        nodes: Vec::new(),
        root: None,
        fixups: Vec::new(),
    };
    let mut pieces: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = pieces.pop().unwrap_or_default();
    for (number, line) in pieces.iter().enumerate() {
        reader
            .line(line)
            .map_err(|e| format!("line {}: {e}", number + 1))?;
    }
    if !last.is_empty() {
        if strict {
            return Err("Missing trailing newline".into());
        }
        let number = pieces.len() + 1;
        reader
            .line(last)
            .map_err(|e| format!("line {number}: {e}"))?;
    }
    reader.finish()
}

// -- writing -------------------------------------------------------------------------------

fn path(nodes: &[Node], mut id: usize) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    while let Some(parent) = nodes[id].parent {
        let name = nodes[parent]
            .children
            .iter()
            .find(|(_, &c)| c == id)
            .map_or(&b""[..], |(n, _)| n.as_slice());
        parts.push(name);
        id = parent;
    }
    parts.reverse();
    [b"/".to_vec(), parts.join(&b"/"[..])].concat()
}

/// `follow_links` once the links are flattened (`flatten`).
fn target(nodes: &[Node], id: usize) -> usize {
    match nodes[id].link {
        Link::To(t) => t,
        _ => id,
    }
}

/// Points every hard link at the node its chain ends at (each chain walked once: a hostile
/// chain of n links costs n, not n squared); a loop is an error, as C's `follow_links` finds
/// it.
fn flatten(nodes: &mut [Node], order: &[usize]) -> Res<()> {
    let mut done = vec![false; nodes.len()];
    let mut on_chain = vec![false; nodes.len()];
    for &id in order {
        let children: Vec<usize> = nodes[id].children.values().copied().collect();
        for child in children {
            if !matches!(nodes[child].link, Link::To(_)) || done[child] {
                continue;
            }
            let mut chain = Vec::new();
            let mut cur = child;
            while let (Link::To(next), false) = (&nodes[cur].link, done[cur]) {
                if on_chain[cur] {
                    return Err("cannot write file: hard link loop".into());
                }
                on_chain[cur] = true;
                chain.push(cur);
                cur = *next;
            }
            let end = if done[cur] { target(nodes, cur) } else { cur };
            for link in chain {
                nodes[link].link = Link::To(end);
                done[link] = true;
                on_chain[link] = false;
            }
        }
    }
    Ok(())
}

fn chunk_bits(size: u64) -> u32 {
    let bits = 64 - (size.saturating_sub(1)).leading_zeros();
    bits.clamp(12, 12 + 31)
}

fn chunk_count(size: u64) -> u64 {
    let bits = chunk_bits(size);
    size.div_ceil(1u64 << bits)
}

/// Pre-order over the nodes that are not hard links (the C recursion's order).
fn walk(nodes: &[Node], root: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        out.push(id);
        if nodes[id].ftype() == S_IFDIR {
            for &c in nodes[id].children.values().rev() {
                if !nodes[c].is_link() {
                    stack.push(c);
                }
            }
        }
    }
    out
}

fn split_name(name: &[u8]) -> (u8, &[u8]) {
    for (prefix, index) in PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            return (index, rest);
        }
    }
    (0, name)
}

fn entry_size(name: &[u8], value: &[u8]) -> u64 {
    let (_, suffix) = split_name(name);
    ((4 + suffix.len() + value.len() + 3) & !3) as u64
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// `rewrite_tree_for_erofs`: validation, overlay xattrs, `.`/`..`, the stubs (the walk is
/// listed first: the loop adds nodes).
///
/// C works on a copy of the tree whose nodes start with an xattr budget of 0 (the copy does
/// not carry it over), so the xattrs the writer adds are counted from 0.
fn rewrite(nodes: &mut Vec<Node>, root: usize, version: i64) -> Res<()> {
    for id in walk(nodes, root) {
        nodes[id].xsize = 0;
        let kind = nodes[id].ftype();
        let external = kind == S_IFREG && nodes[id].size > 0 && nodes[id].content.is_none();
        if external && chunk_count(nodes[id].size) > MAX_CHUNKS {
            return Err(format!(
                "cannot write file: File too large ({} bytes)",
                nodes[id].size
            ));
        }
        if let (true, Digest::Bad(text)) = (external, &nodes[id].digest) {
            return Err(format!(
                "cannot write file: the DIGEST {text} of {} is not 64 hex digits",
                show(&path(nodes, id))
            ));
        }
        let node = &mut nodes[id];
        if node.xattrs.keys().any(|k| k.starts_with(OVERLAY)) {
            node.xattrs = std::mem::take(&mut node.xattrs)
                .into_iter()
                .map(|(k, v)| match k.strip_prefix(OVERLAY) {
                    Some(rest) => ([ESCAPED, rest].concat(), v),
                    None => (k, v),
                })
                .collect();
        }
        if external {
            let metacopy = match &node.digest {
                Digest::Bad(_) | Digest::None => Vec::new(),
                Digest::Raw(raw) => [&[0u8, 0x24, 0, 1][..], raw].concat(),
            };
            set_xattr(node, b"trusted.overlay.metacopy", &metacopy)?;
            if let Some(p) = node.payload.clone().filter(|p| !p.is_empty()) {
                set_xattr(node, b"trusted.overlay.redirect", &[b"/", &p[..]].concat())?;
            }
        }
        if kind == S_IFCHR && node.rdev == 0 {
            node.size = 0;
            node.mode = S_IFREG | (node.mode & !S_IFMT);
            set_xattr(node, b"trusted.overlay.overlay.whiteout", b"")?;
            set_xattr(node, b"user.overlay.whiteout", b"")?;
            let parent = node.parent.expect("a whiteout has a parent");
            let p = &mut nodes[parent];
            set_xattr(p, b"trusted.overlay.overlay.whiteouts", b"")?;
            set_xattr(p, b"user.overlay.whiteouts", b"")?;
            if version >= 1 {
                set_xattr(p, b"trusted.overlay.overlay.opaque", b"x")?;
                set_xattr(p, b"user.overlay.opaque", b"x")?;
            }
        }
        if kind == S_IFDIR {
            let parent = nodes[id].parent.unwrap_or(id);
            for (name, to) in [(&b"."[..], id), (&b".."[..], parent)] {
                let mut link = Node::new(0);
                link.link = Link::To(to);
                let lid = nodes.len();
                nodes.push(link);
                nodes[id].children.insert(name.to_vec(), lid);
            }
        }
    }
    set_xattr(&mut nodes[root], b"trusted.overlay.opaque", b"y")?;
    let selinux = nodes[root].xattrs.get(&b"security.selinux"[..]).cloned();
    for i in 0..256u32 {
        let name = format!("{i:02x}").into_bytes();
        if nodes[root].children.contains_key(&name) {
            continue;
        }
        let r = &nodes[root];
        let mut stub = Node::new(S_IFCHR | 0o644);
        (stub.uid, stub.gid, stub.mtime, stub.nsec) = (r.uid, r.gid, r.mtime, r.nsec);
        if let Some(s) = &selinux {
            set_xattr(&mut stub, b"security.selinux", s)?;
        }
        stub.parent = Some(root);
        let sid = nodes.len();
        nodes.push(stub);
        nodes[root].children.insert(name, sid);
    }
    Ok(())
}

/// `lcfs_compute_tree`: breadth-first, names in byte order, hard links skipped.
fn bfs(nodes: &mut [Node], root: usize) -> Res<Vec<usize>> {
    let mut order = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(id) = queue.pop_front() {
        nodes[id].index = order.len() as u32;
        order.push(id);
        if nodes[id].ftype() == S_IFDIR {
            let children: Vec<usize> = nodes[id].children.values().copied().collect();
            let subdirs = children
                .iter()
                .filter(|&&c| nodes[c].ftype() == S_IFDIR)
                .count();
            nodes[id].nlink = (2 + subdirs) as u32;
            for c in children {
                if !nodes[c].is_link() {
                    queue.push_back(c);
                }
            }
        }
    }
    flatten(nodes, &order)?;
    Ok(order)
}

fn update_version(nodes: &[Node], root: usize, version: i64, max_version: i64) -> i64 {
    if version < 1 && max_version >= 1 {
        for id in walk(nodes, root) {
            if nodes[id].ftype() == S_IFCHR && nodes[id].rdev == 0 {
                return 1;
            }
        }
    }
    version
}

fn inode_size(node: &mut Node) {
    let kind = node.ftype();
    node.blocks = 0;
    node.tail = 0;
    if kind == S_IFDIR {
        let mut used = 0u64;
        for name in node.children.keys() {
            let size = 12 + name.len() as u64;
            if used + size > BLOCK {
                node.blocks += 1;
                used = 0;
            }
            used += size;
        }
        if used > BLOCK / 2 {
            node.blocks += 1;
            used = 0;
        }
        node.tail = used;
    } else if kind == S_IFLNK {
        node.tail = node.payload.as_ref().map_or(0, |p| p.len() as u64);
    } else if kind == S_IFREG && node.size > 0 {
        if node.content.is_some() {
            node.blocks = node.size / BLOCK;
            node.tail = node.size % BLOCK;
            if node.tail > BLOCK / 2 {
                node.blocks += 1;
                node.tail = 0;
            }
        } else {
            node.tail = chunk_count(node.size) * 4;
        }
    }
}

fn fits_compact(node: &Node, min_mtime: (i64, u32)) -> bool {
    if (node.mtime, node.nsec) != min_mtime {
        return false;
    }
    if node.nlink > 0xFFFF || node.uid > 0xFFFF || node.gid > 0xFFFF {
        return false;
    }
    let size = if node.ftype() == S_IFDIR {
        node.blocks * BLOCK + node.tail
    } else {
        node.size
    };
    size <= M32
}

/// `compute_erofs_inode_padding_for_tail`.
fn tail_padding(node: &mut Node, pos: u64, isize: u64, xsize: u64) -> u64 {
    let non_tail = isize + xsize;
    if node.ftype() == S_IFLNK {
        let total = non_tail + node.tail;
        if total / BLOCK > 0 {
            node.blocks += 1;
            node.tail = 0;
        }
        if pos / BLOCK != (pos + total - 1) / BLOCK {
            return round_up(pos, BLOCK) - pos;
        }
        return 0;
    }
    let remainder = BLOCK - (pos + non_tail) % BLOCK;
    if remainder < node.tail {
        let extra = round_up(remainder, 32);
        let remainder = BLOCK - (pos + non_tail + extra) % BLOCK;
        if node.tail <= remainder {
            return extra;
        }
        node.blocks += 1;
        node.tail = 0;
        return round_up(pos, BLOCK) - pos;
    }
    0
}

type XAttr = (Vec<u8>, Vec<u8>);

struct Placed {
    local: Vec<XAttr>,
    shared: Vec<u64>,
    xsize: u64,
}

fn put(out: &mut [u8], pos: &mut usize, data: &[u8]) {
    out[*pos..*pos + data.len()].copy_from_slice(data);
    *pos += data.len();
}

fn put_xattr(out: &mut [u8], pos: &mut usize, name: &[u8], value: &[u8]) {
    let (index, suffix) = split_name(name);
    put(out, pos, &[suffix.len() as u8, index]);
    put(out, pos, &(value.len() as u16).to_le_bytes());
    put(out, pos, suffix);
    put(out, pos, value);
    *pos = (*pos + 3) & !3;
}

/// The directory's full blocks and its inline tail (`write_erofs_dentries`).
type Dirents = Vec<(Vec<u8>, usize)>;

fn dir_chunks(node: &Node) -> (Vec<Dirents>, Dirents) {
    let mut blocks = Vec::new();
    let mut current: Dirents = Vec::new();
    let mut used = 0u64;
    for (name, &c) in &node.children {
        let size = 12 + name.len() as u64;
        if used + size > BLOCK {
            blocks.push(std::mem::take(&mut current));
            used = 0;
        }
        current.push((name.clone(), c));
        used += size;
    }
    if (blocks.len() as u64) < node.blocks {
        blocks.push(std::mem::take(&mut current));
    }
    (blocks, current)
}

fn file_type(mode: u32) -> u8 {
    match mode & S_IFMT {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        S_IFBLK => 4,
        S_IFIFO => 5,
        S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}

fn put_dirents(nodes: &[Node], out: &mut [u8], pos: &mut usize, entries: &Dirents) -> Res<()> {
    let mut nameoff = 12 * entries.len();
    for (name, c) in entries {
        let t = &nodes[target(nodes, *c)];
        put(out, pos, &t.nid.to_le_bytes());
        put(out, pos, &(nameoff as u16).to_le_bytes());
        put(out, pos, &[file_type(t.mode), 0]);
        nameoff += name.len();
    }
    for (name, _) in entries {
        put(out, pos, name);
    }
    Ok(())
}

/// `lcfs_write_to` with the EROFS format.
fn write(mut nodes: Vec<Node>, root: usize, min_version: i64, max_version: i64) -> Res<Vec<u8>> {
    if min_version < 0 || max_version < 0 {
        return Err("cannot write file: a negative format version".into());
    }
    if min_version > VERSION_MAX || max_version > VERSION_MAX {
        return Err("cannot write file: Invalid argument (version above 1)".into());
    }
    let max_version = max_version.max(min_version);
    let version = update_version(&nodes, root, min_version, max_version);
    rewrite(&mut nodes, root, version)?;
    let order = bfs(&mut nodes, root)?;

    let min_mtime = order
        .iter()
        .map(|&id| (nodes[id].mtime, nodes[id].nsec))
        .min()
        .expect("the root");
    let has_acl = order.iter().any(|&id| {
        let x = &nodes[id].xattrs;
        x.contains_key(&b"system.posix_acl_access"[..])
            || x.contains_key(&b"system.posix_acl_default"[..])
    });

    // shared xattrs: every (name, value) used by two inodes or more, in descending order
    let mut counts: HashMap<(&[u8], &[u8]), u32> = HashMap::new();
    for &id in &order {
        for (k, v) in &nodes[id].xattrs {
            *counts.entry((k.as_slice(), v.as_slice())).or_default() += 1;
        }
    }
    let mut table: Vec<XAttr> = counts
        .into_iter()
        .filter(|&(_, c)| c > 1)
        .map(|((k, v), _)| (k.to_vec(), v.to_vec()))
        .collect();
    table.sort_by(|a, b| (&b.0, b.1.len(), &b.1).cmp(&(&a.0, a.1.len(), &a.1)));
    let mut offsets: HashMap<XAttr, u64> = HashMap::new();
    let mut shared_size = 0u64;
    for (k, v) in &table {
        offsets.insert((k.clone(), v.clone()), shared_size);
        shared_size += entry_size(k, v);
    }

    // inode placement
    let mut pos = 1024 + 128u64;
    let mut n_data_blocks = 0u64;
    let mut placed = Vec::with_capacity(order.len());
    for &id in &order {
        let mut items: Vec<XAttr> = nodes[id]
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        items.sort();
        let mut shared = Vec::new();
        let mut local = Vec::new();
        for item in items {
            match offsets.get(&item) {
                Some(&off) if shared.len() < MAX_SHARED_REFS => shared.push(off),
                _ => local.push(item),
            }
        }
        let node = &mut nodes[id];
        inode_size(node);
        node.compact = fits_compact(node, min_mtime);
        let isize = if node.compact { 32 } else { 64 };
        let unshared: u64 = local.iter().map(|(k, v)| entry_size(k, v)).sum();
        let xsize = if shared.is_empty() && unshared == 0 {
            0
        } else {
            round_up(12 + 4 * shared.len() as u64 + unshared, 4)
        };
        let start = round_up(pos, 32);
        let extra = tail_padding(node, start, isize, xsize);
        node.ipad = start - pos + extra;
        pos = start + extra;
        n_data_blocks += node.blocks;
        node.nid = pos / 32;
        pos += isize + xsize + node.tail;
        placed.push(Placed {
            local,
            shared,
            xsize,
        });
    }
    let inodes_end = round_up(pos, 32);
    let data_start = round_up(inodes_end + shared_size, BLOCK);
    let total = data_start + n_data_blocks * BLOCK;
    let mut out = vec![0u8; usize::try_from(total).map_err(|_| "image too large".to_string())?];

    let mut p = 0usize;
    for v in [0xD078_629A_u32, 1, u32::from(has_acl), version as u32] {
        put(&mut out, &mut p, &v.to_le_bytes());
    }
    let mut p = 1024usize;
    put(&mut out, &mut p, &0xE0F5_E1E2_u32.to_le_bytes());
    put(&mut out, &mut p, &0u32.to_le_bytes());
    put(&mut out, &mut p, &6u32.to_le_bytes()); // MTIME | XATTR_FILTER
    put(&mut out, &mut p, &[12, 0]);
    put(&mut out, &mut p, &(nodes[root].nid as u16).to_le_bytes());
    put(&mut out, &mut p, &(order.len() as u64).to_le_bytes());
    put(&mut out, &mut p, &(min_mtime.0 as u64).to_le_bytes());
    put(&mut out, &mut p, &min_mtime.1.to_le_bytes());
    put(&mut out, &mut p, &((total / BLOCK) as u32).to_le_bytes());
    put(&mut out, &mut p, &0u32.to_le_bytes());
    put(
        &mut out,
        &mut p,
        &((inodes_end / BLOCK) as u32).to_le_bytes(),
    );

    let mut current = data_start;
    let mut pos = 1024 + 128usize;
    for (&id, pl) in order.iter().zip(&placed) {
        let n = &nodes[id];
        pos += n.ipad as usize;
        let kind = n.ftype();
        let mut layout: u16 = if n.tail > 0 { 2 } else { 0 };
        let mut chunk_format = 0u32;
        let mut chunks = 0u64;
        let size = match kind {
            S_IFDIR => n.blocks * BLOCK + n.tail,
            S_IFREG => {
                if n.size > 0 && n.content.is_none() {
                    chunks = chunk_count(n.size);
                    layout = 4;
                    chunk_format = chunk_bits(n.size) - 12;
                }
                n.size
            }
            S_IFLNK if n.blocks == 0 => n.tail,
            S_IFLNK => n.size,
            _ => 0,
        };
        let mut i_u = 0u32;
        if kind == S_IFCHR || kind == S_IFBLK {
            i_u = n.rdev;
        } else if kind == S_IFDIR || kind == S_IFREG || kind == S_IFLNK {
            if n.blocks > 0 {
                i_u = ((current / BLOCK) & M32) as u32;
                current += n.blocks * BLOCK;
            }
            if layout == 4 {
                i_u = (i_u & 0xFFFF_0000) | chunk_format;
            }
        }
        let icount: u16 = if pl.xsize > 0 {
            ((pl.xsize - 12) / 4 + 1) as u16
        } else {
            0
        };
        let format = layout << 1 | u16::from(!n.compact);
        put(&mut out, &mut pos, &format.to_le_bytes());
        put(&mut out, &mut pos, &icount.to_le_bytes());
        put(&mut out, &mut pos, &(n.mode as u16).to_le_bytes());
        if n.compact {
            put(&mut out, &mut pos, &(n.nlink as u16).to_le_bytes());
            put(&mut out, &mut pos, &(size as u32).to_le_bytes());
            put(&mut out, &mut pos, &0u32.to_le_bytes());
            put(&mut out, &mut pos, &i_u.to_le_bytes());
            put(&mut out, &mut pos, &n.index.to_le_bytes());
            put(&mut out, &mut pos, &(n.uid as u16).to_le_bytes());
            put(&mut out, &mut pos, &(n.gid as u16).to_le_bytes());
            pos += 4;
        } else {
            put(&mut out, &mut pos, &0u16.to_le_bytes());
            put(&mut out, &mut pos, &size.to_le_bytes());
            put(&mut out, &mut pos, &i_u.to_le_bytes());
            put(&mut out, &mut pos, &n.index.to_le_bytes());
            put(&mut out, &mut pos, &n.uid.to_le_bytes());
            put(&mut out, &mut pos, &n.gid.to_le_bytes());
            put(&mut out, &mut pos, &(n.mtime as u64).to_le_bytes());
            put(&mut out, &mut pos, &n.nsec.to_le_bytes());
            put(&mut out, &mut pos, &n.nlink.to_le_bytes());
            pos += 16;
        }
        if pl.xsize > 0 {
            let mut bits = 0u32;
            for name in n.xattrs.keys() {
                let (index, suffix) = split_name(name);
                bits |= 1 << (xxh32(suffix, XATTR_FILTER_SEED + u32::from(index)) & 31);
            }
            put(&mut out, &mut pos, &(!bits).to_le_bytes());
            put(&mut out, &mut pos, &[pl.shared.len() as u8]);
            pos += 7;
            for &off in &pl.shared {
                let v = (((inodes_end % BLOCK) + off) / 4) as u32;
                put(&mut out, &mut pos, &v.to_le_bytes());
            }
            for (k, v) in &pl.local {
                put_xattr(&mut out, &mut pos, k, v);
            }
        }
        if kind == S_IFDIR {
            let (_, tail) = dir_chunks(n);
            if !tail.is_empty() {
                put_dirents(&nodes, &mut out, &mut pos, &tail)?;
            }
        } else if kind == S_IFLNK {
            if n.blocks == 0 {
                let payload = n.payload.as_deref().unwrap_or_default();
                put(&mut out, &mut pos, payload);
            }
        } else if kind == S_IFREG && n.tail > 0 {
            match &n.content {
                Some(c) => put(&mut out, &mut pos, &c[c.len() - n.tail as usize..]),
                None => {
                    let len = 4 * chunks as usize;
                    out[pos..pos + len].fill(0xFF);
                    pos += len;
                }
            }
        }
    }
    let mut pos = round_up(pos as u64, 32) as usize;
    debug_assert_eq!(pos as u64, inodes_end);
    for (k, v) in &table {
        put_xattr(&mut out, &mut pos, k, v);
    }
    let mut pos = data_start as usize;
    for &id in &order {
        let n = &nodes[id];
        let kind = n.ftype();
        if kind == S_IFDIR {
            for block in dir_chunks(n).0 {
                let mut p = pos;
                put_dirents(&nodes, &mut out, &mut p, &block)?;
                pos += BLOCK as usize;
            }
            continue;
        }
        if n.blocks == 0 {
            continue;
        }
        if kind == S_IFREG {
            match &n.content {
                None => out[pos..pos + BLOCK as usize].fill(0xFF),
                Some(c) => {
                    let piece = &c[..c.len().min(BLOCK as usize)];
                    out[pos..pos + piece.len()].copy_from_slice(piece);
                }
            }
        } else if kind == S_IFLNK {
            let payload = n.payload.as_deref().unwrap_or_default();
            out[pos..pos + payload.len()].copy_from_slice(payload);
        }
        pos += (BLOCK * n.blocks) as usize;
    }
    debug_assert_eq!(pos as u64, total);
    Ok(out)
}

/// C `mkcomposefs --min-version=MIN --max-version=MAX --from-file` (`strict`: with
/// `CFS_PARSE_STRICT` set): the image of a dumpfile.
pub fn mkcomposefs(
    dumpfile: &[u8],
    min_version: i64,
    max_version: i64,
    strict: bool,
) -> Res<Vec<u8>> {
    let (nodes, root) = read(dumpfile, strict)?;
    write(nodes, root, min_version, max_version)
}

#[cfg(feature = "python")]
pub(crate) mod py {
    use crate::error::Error;
    use crate::pybuf::ByteBuf;
    use pyo3::prelude::*;
    use pyo3::types::PyBytes;

    /// C mkcomposefs's image of a dumpfile (see the module documentation).
    #[pyfunction]
    #[pyo3(signature = (dumpfile, min_version, max_version, strict))]
    pub(crate) fn mkcomposefs<'py>(
        py: Python<'py>,
        dumpfile: &Bound<'py, PyAny>,
        min_version: i64,
        max_version: i64,
        strict: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let buf = ByteBuf::get(dumpfile)?;
        let copy = buf.as_slice().to_vec();
        let image = py
            .allow_threads(|| super::mkcomposefs(&copy, min_version, max_version, strict))
            .map_err(Error::Invalid)?;
        Ok(PyBytes::new(py, &image))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};
    use std::io::Read;
    use std::path::PathBuf;

    fn assets() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/mkcomposefs")
    }

    fn read_asset(name: &str) -> Vec<u8> {
        let raw = std::fs::read(assets().join(name)).unwrap();
        if name.ends_with(".gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            raw
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// C's test-checksums.sh over its assets (tests/data/mkcomposefs/README.md).
    #[test]
    fn c_checksum_assets() {
        let mut seen = 0;
        for entry in std::fs::read_dir(assets()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(asset) = name.strip_suffix(".sha256") else {
                continue;
            };
            let (low, high) =
                match std::fs::read_to_string(assets().join(format!("{asset}.version"))) {
                    Ok(v) => {
                        let v: i64 = v.trim().parse().unwrap();
                        (v, v)
                    }
                    Err(_) => (0, 1),
                };
            let strict = !matches!(
                asset,
                "no-newline.dump" | "longlink.dump" | "honggfuzz-longlink-unterminated.dump"
            );
            let image = mkcomposefs(&read_asset(asset), low, high, strict).unwrap();
            let expected = std::fs::read_to_string(assets().join(&name)).unwrap();
            assert_eq!(hex(&Sha256::digest(&image)), expected.trim(), "{asset}");
            seen += 1;
        }
        assert_eq!(seen, 14);
    }

    #[test]
    fn c_should_fail_assets() {
        let mut seen = 0;
        for entry in std::fs::read_dir(assets()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.starts_with("should-fail-") {
                assert!(
                    mkcomposefs(&read_asset(&name), 0, 1, false).is_err(),
                    "{name}"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 14);
    }

    #[test]
    fn numbers_the_c_way() {
        assert_eq!(strtoull(b"+7", 10), Some(7));
        assert_eq!(strtoull(b"\t 7", 10), Some(7));
        assert_eq!(strtoull(b"-1", 10), Some(u64::MAX));
        assert_eq!(strtoull(b"99999999999999999999", 10), Some(u64::MAX));
        assert_eq!(strtoull(b"0755", 8), Some(0o755));
        assert_eq!(strtoull(b"8", 8), None);
        assert_eq!(strtoull(b"", 10), None);
        assert_eq!(strtoull(b"+", 10), None);
        assert_eq!(strtoull(b"7 ", 10), None);
    }

    #[test]
    fn hard_link_loops_and_chains() {
        let root = b"/ 0 40755 2 0 0 0 0.0 - - -\n";
        let cycle = [
            &root[..],
            b"/a 0 @100644 0 0 0 0 0.0 /b - -\n/b 0 @100644 0 0 0 0 0.0 /a - -\n",
        ]
        .concat();
        assert_eq!(
            mkcomposefs(&cycle, 0, 1, false).unwrap_err(),
            "cannot write file: hard link loop"
        );
        let chain = [&root[..], b"/a 0 @100644 0 0 0 0 0.0 /b - -\n/b 0 @100644 0 0 0 0 0.0 /t - -\n/t 1 100644 1 0 0 0 0.0 - x -\n"].concat();
        assert!(mkcomposefs(&chain, 0, 1, false).is_ok());
    }
}
