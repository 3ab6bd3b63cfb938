"""The composefs EROFS image writer (V0, V1, V2), pure Python. Native twin: ``rust/erofs.rs``.

The output is byte-identical to composefs-rs 0.9 (``mkfs_erofs_versioned``); the format is
described in ``erofs-image.md`` (section 3). Summary of the two layout families:

* **Epoch 1** (V0, V1; the C ``mkcomposefs`` layout): 256 whiteout stubs ``00``..``ff`` in the
  root, breadth-first inode numbering (a hard-linked leaf is numbered in the directory of its
  first depth-first occurrence), compact inodes where they fit, user whiteouts (char 0/0)
  escaped to regular files with overlay xattrs, local xattrs sorted by full name, shared xattr
  table in descending order after the inode table, large inline files and long symlinks
  moved into data blocks.
* **Epoch 2** (V2): depth-first numbering, extended inodes only, everything inline, shared
  xattr table ascending, no whiteout handling.

The image is laid out in one arithmetic pass (inode offsets, table and block addresses), then
written into a preallocated buffer.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from typing import Final

from composefs import constants
from composefs._pure import dumpfile as _dumpfile
from composefs._pure import erofs_limits as _limits
from composefs._pure import tree as _tree
from composefs._pure.tree import Directory, FileSystem, Leaf, Stat
from composefs._pure.xxhash import xxh32
from composefs.erofs_format import (
    BLOCK_BITS,
    COMPACT_INODE,
    COMPACT_INODE_SIZE,
    COMPOSEFS_FLAGS_HAS_ACL,
    COMPOSEFS_HEADER,
    COMPOSEFS_HEADER_VERSION,
    COMPOSEFS_MAGIC,
    DIRENT,
    EROFS_MAGIC,
    EROFS_SUPER_OFFSET,
    EXTENDED_INODE,
    EXTENDED_INODE_SIZE,
    FEATURE_COMPAT,
    FT_BLK,
    FT_CHR,
    FT_DIR,
    FT_FIFO,
    FT_LNK,
    FT_REG,
    FT_SOCK,
    IFMT_OF_FT,
    INODE_SLOT_SIZE,
    LAYOUT_CHUNK_BASED,
    LAYOUT_FLAT_INLINE,
    LAYOUT_FLAT_PLAIN,
    SUPERBLOCK,
    SUPERBLOCK_SIZE,
    XATTR_ENTRY,
    XATTR_FILTER_SEED,
    XATTR_HEADER,
    XATTR_PREFIXES,
    inode_format,
)

# The backend contract (``write`` and ``xxh32`` are pure-only helpers, for the merge, the
# scanner and the tests).
__all__ = ["mkcomposefs", "mkfs"]

Buffer = bytes | bytearray | memoryview

# -- constants ----------------------------------------------------------------------------------

_BLOCK: Final = 1 << BLOCK_BITS
_SLOT: Final = INODE_SLOT_SIZE
_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF

_FT_OF_KIND: Final = {
    _tree.FILE: FT_REG,
    _tree.CHAR: FT_CHR,
    _tree.BLOCK: FT_BLK,
    _tree.FIFO: FT_FIFO,
    _tree.SOCKET: FT_SOCK,
    _tree.SYMLINK: FT_LNK,
}

_OVERLAY_PREFIX: Final = b"trusted.overlay."
_OVERLAY_ESCAPED_PREFIX: Final = b"trusted.overlay.overlay."
_SELINUX: Final = b"security.selinux"


# -- xattrs -------------------------------------------------------------------------------------

# An xattr as stored: (full name, prefix index, suffix, value). The full name is the name as
# added (prefix string + suffix), the sort key of Epoch 1.
_XAttr = tuple[bytes, int, bytes, bytes]


class _XattrNamer:
    """Splits names into (prefix index, suffix, filter bit), memoised per name."""

    def __init__(self, epoch1: bool) -> None:
        self._order = (6, 4, 3, 2, 1, 0) if epoch1 else (6, 5, 4, 3, 2, 1, 0)
        self._cache: dict[bytes, tuple[int, bytes, int]] = {}

    def split(self, name: bytes) -> tuple[int, bytes, int]:
        hit = self._cache.get(name)
        if hit is None:
            for idx in self._order:
                prefix = XATTR_PREFIXES[idx]
                if name.startswith(prefix):
                    suffix = name[len(prefix) :]
                    bit = 1 << (xxh32(suffix, XATTR_FILTER_SEED + idx) % 32)
                    hit = (idx, suffix, bit)
                    break
            assert hit is not None  # the empty prefix always matches
            self._cache[name] = hit
        return hit


# -- inodes -------------------------------------------------------------------------------------


class _DirEnt:
    """A directory entry; ``idx`` is None while a hard link waits for its canonical inode."""

    __slots__ = ("ftype", "idx", "leaf", "name")

    def __init__(self, name: bytes, idx: int | None, ftype: int, leaf: Leaf | None = None) -> None:
        self.name = name
        self.idx = idx
        self.ftype = ftype
        self.leaf = leaf


class _Inode:
    __slots__ = (
        "blocks",
        "data_blocks",
        "dir_blocks",
        "dir_nlink",
        "dir_tail",
        "entries",
        "escaped",
        "filter",
        "ftype",
        "leaf",
        "local",
        "nlink",
        "shared",
        "stat",
        "tail",
    )

    def __init__(self, stat: Stat, leaf: Leaf | None, ftype: int, nlink: int) -> None:
        self.stat = stat
        self.leaf = leaf  # None for directories
        self.ftype = ftype  # dirent file type (escaped whiteouts: regular)
        self.nlink = nlink
        self.local: list[_XAttr] = []
        self.shared: list[int] = []
        self.filter = 0
        self.escaped = False
        # leaves: full data blocks (Epoch 1 inline files, promoted symlinks/chunk maps) and
        # the size of the inline payload (file tail, symlink target, chunk map)
        self.data_blocks = 0
        self.tail = 0
        # directories
        self.entries: list[_DirEnt] = []
        self.dir_blocks: list[list[_DirEnt]] = []
        self.dir_tail: list[_DirEnt] = []
        self.dir_nlink = 0
        self.blocks = 0  # data blocks after the shared xattr table


def _chunk_bits(size: int) -> int:
    bits = (size - 1).bit_length() if size > 1 else 1
    return min(max(bits, 12), 12 + 31)


def _chunk_count(size: int) -> int:
    bits = _chunk_bits(size)
    return (size + (1 << bits) - 1) >> bits


def _object_path(digest: bytes) -> bytes:
    return b"/%02x/%s" % (digest[0], digest[1:].hex().encode())


def _kind_of(leaf: Leaf) -> str:
    """'inline', 'external', 'noverity' or 'sparse' for regular files."""
    if leaf.inline is not None:
        return "inline"
    if leaf.digest is not None:
        return "external" if leaf.verity else "noverity"
    return "sparse"


class _Collector:
    def __init__(self, fs: FileSystem, version: int, nlinks: dict[int, int]) -> None:
        self.fs = fs
        self.version = version
        self.epoch1 = version != 2
        self.namer = _XattrNamer(self.epoch1)
        self.nlinks = nlinks
        self.inodes: list[_Inode] = []
        self.hardlinks: dict[int, int] = {}

    def add_xattr(self, inode: _Inode, name: bytes, value: bytes) -> None:
        idx, suffix, bit = self.namer.split(name)
        inode.filter |= bit
        inode.local.append((name, idx, suffix, value))

    def push(self, stat: Stat, leaf: Leaf | None, ftype: int, nlink: int) -> int:
        inode = _Inode(stat, leaf, ftype, nlink)
        if leaf is not None and leaf.kind == _tree.FILE:
            kind = _kind_of(leaf)
            if kind == "external" or kind == "noverity":
                digest = leaf.digest
                assert digest is not None
                if kind == "external":
                    alg = 1 if len(digest) == 32 else 2
                    metacopy = bytes((0, 4 + len(digest), 0, alg)) + digest
                else:
                    metacopy = b""
                self.add_xattr(inode, b"trusted.overlay.metacopy", metacopy)
                self.add_xattr(inode, b"trusted.overlay.redirect", _object_path(digest))
            elif kind == "sparse":
                self.add_xattr(inode, b"trusted.overlay.metacopy", b"")
        for name in sorted(stat.xattrs):
            value = stat.xattrs[name]
            if name.startswith(_OVERLAY_PREFIX):
                self.add_xattr(inode, _OVERLAY_ESCAPED_PREFIX + name[16:], value)
            else:
                self.add_xattr(inode, name, value)
        self.inodes.append(inode)
        return len(self.inodes) - 1

    def leaf(self, leaf: Leaf) -> int:
        key = id(leaf)
        nlink = self.nlinks[key]
        if nlink > 1:
            known = self.hardlinks.get(key)
            if known is not None:
                return known
        idx = self.push(leaf.stat, leaf, _FT_OF_KIND[leaf.kind], nlink)
        inode = self.inodes[idx]
        kind = leaf.kind
        if kind == _tree.FILE:
            fkind = _kind_of(leaf)
            if fkind == "inline":
                data = leaf.inline
                assert data is not None
                n = len(data)
                if self.epoch1:
                    if n:
                        nb, tail = divmod(n, _BLOCK)
                        if tail > _BLOCK // 2:
                            nb += 1
                            tail = 0
                        inode.data_blocks = nb
                        inode.tail = tail
                else:
                    inode.tail = n
            elif self.epoch1:
                if leaf.size > 0:
                    inode.tail = _chunk_count(leaf.size) * 4
            elif fkind == "external":
                inode.tail = 4
        elif kind == _tree.SYMLINK and self.epoch1:
            inode.tail = len(leaf.target)  # V2: the target is inline too, never moved
        if nlink > 1:
            self.hardlinks[key] = idx
        return idx

    # V2: depth-first, pre-order
    def collect_dfs(self) -> None:
        root = self.fs.root
        me = self.push(root.stat, None, FT_DIR, 0)
        stack: list[tuple[int, Iterator[tuple[bytes, Directory | Leaf]], list[_DirEnt]]] = []
        entries: list[_DirEnt] = [
            _DirEnt(b".", me, FT_DIR, None),
            _DirEnt(b"..", me, FT_DIR, None),
        ]
        stack.append((me, _sorted_items(root), entries))
        while stack:
            me, it, entries = stack[-1]
            for name, child in it:
                if isinstance(child, Directory):
                    sub = self.push(child.stat, None, FT_DIR, 0)
                    entries.append(_DirEnt(name, sub, FT_DIR, None))
                    sub_entries: list[_DirEnt] = [
                        _DirEnt(b".", sub, FT_DIR, None),
                        _DirEnt(b"..", me, FT_DIR, None),
                    ]
                    stack.append((sub, _sorted_items(child), sub_entries))
                    break
                idx = self.leaf(child)
                entries.append(_DirEnt(name, idx, self.inodes[idx].ftype, None))
            else:
                stack.pop()
                self.inodes[me].entries = entries

    # Epoch 1: breadth-first, hard links numbered in their first depth-first directory
    def collect_bfs(self, root_entries: dict[bytes, Directory | Leaf]) -> None:
        root = self.fs.root
        canonical = _canonical_dirs(root, root_entries, self.nlinks)
        root_stat = root.stat
        selinux = root_stat.xattrs.get(_SELINUX)
        stub_xattrs = {_SELINUX: selinux} if selinux is not None else {}

        def is_stub(name: bytes, leaf: Leaf) -> bool:
            st = leaf.stat
            return (
                len(name) == 2
                and all(c in b"0123456789abcdef" for c in name)
                and st.mode == 0o644
                and st.uid == root_stat.uid
                and st.gid == root_stat.gid
                and st.mtime == root_stat.mtime
                and st.mtime_nsec == root_stat.mtime_nsec
                and st.xattrs == stub_xattrs
            )

        root_idx = self.push(root_stat, None, FT_DIR, 0)
        queue: deque[tuple[Directory, int, int]] = deque([(root, root_idx, root_idx)])
        deferred: list[_DirEnt] = []
        while queue:
            d, parent, me = queue.popleft()
            entries: list[_DirEnt] = [
                _DirEnt(b".", me, FT_DIR, None),
                _DirEnt(b"..", parent, FT_DIR, None),
            ]
            has_whiteout = False
            items = root_entries if me == root_idx else d.entries
            for name in sorted(items):
                child = items[name]
                if isinstance(child, Directory):
                    sub = self.push(child.stat, None, FT_DIR, 0)
                    queue.append((child, me, sub))
                    entries.append(_DirEnt(name, sub, FT_DIR, None))
                    continue
                key = id(child)
                nlink = self.nlinks[key]
                is_canonical = nlink <= 1 or canonical.get(key) is d
                idx = self.leaf(child) if is_canonical else self.hardlinks.get(key)
                if idx is None:
                    ent = _DirEnt(name, None, FT_REG, child)
                    deferred.append(ent)
                    entries.append(ent)
                    continue
                inode = self.inodes[idx]
                if (
                    is_canonical
                    and child.kind == _tree.CHAR
                    and child.rdev == 0
                    and not inode.escaped
                    and not (me == root_idx and is_stub(name, child))
                ):
                    inode.escaped = True
                    inode.ftype = FT_REG
                    self.add_xattr(inode, b"trusted.overlay.overlay.whiteout", b"")
                    self.add_xattr(inode, b"user.overlay.whiteout", b"")
                    has_whiteout = True
                entries.append(_DirEnt(name, idx, inode.ftype, None))
            if has_whiteout:
                dir_inode = self.inodes[me]
                self.add_xattr(dir_inode, b"trusted.overlay.overlay.whiteouts", b"")
                self.add_xattr(dir_inode, b"user.overlay.whiteouts", b"")
                if self.version == 1:
                    self.add_xattr(dir_inode, b"trusted.overlay.overlay.opaque", b"x")
                    self.add_xattr(dir_inode, b"user.overlay.opaque", b"x")
            self.inodes[me].entries = entries
        for ent in deferred:
            idx = self.hardlinks[id(ent.leaf)]
            ent.idx = idx
            ent.ftype = self.inodes[idx].ftype


def _sorted_items(d: Directory) -> Iterator[tuple[bytes, Directory | Leaf]]:
    entries = d.entries
    for name in sorted(entries):
        yield name, entries[name]


def _canonical_dirs(
    root: Directory, root_entries: dict[bytes, Directory | Leaf], nlinks: dict[int, int]
) -> dict[int, Directory]:
    """For every hard-linked leaf: the directory of its first depth-first occurrence."""
    found: dict[int, Directory] = {}
    stack: list[tuple[Directory, Iterator[bytes], dict[bytes, Directory | Leaf]]] = [
        (root, iter(sorted(root_entries)), root_entries)
    ]
    while stack:
        d, names, items = stack[-1]
        for name in names:
            child = items[name]
            if isinstance(child, Directory):
                stack.append((child, iter(sorted(child.entries)), child.entries))
                break
            key = id(child)
            if nlinks[key] > 1 and key not in found:
                found[key] = d
        else:
            stack.pop()
    return found


def _count_links(root: Directory) -> dict[int, int]:
    counts: dict[int, int] = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            else:
                key = id(child)
                counts[key] = counts.get(key, 0) + 1
    return counts


def _validate(root: Directory, nlinks: dict[int, int]) -> None:
    """composefs-rs ``validate_filesystem`` (no hard-linked whiteout), then what the writer
    cannot encode (a device number above u32, an object id of another size), in that order:
    the native writer's order."""
    leaves: list[Leaf] = []
    stack = [root]
    while stack:
        d = stack.pop()
        for child in d.entries.values():
            if isinstance(child, Directory):
                stack.append(child)
            else:
                leaves.append(child)
    for leaf in leaves:
        if leaf.kind == _tree.CHAR and leaf.rdev == 0 and nlinks[id(leaf)] > 1:
            raise ValueError("invalid composefs filesystem: whiteout inode has nlink > 1")
    for leaf in leaves:
        if leaf.kind in (_tree.CHAR, _tree.BLOCK) and not 0 <= leaf.rdev <= _M32:
            raise ValueError("device number exceeds EROFS u32 limit")
        digest = leaf.digest
        if leaf.kind == _tree.FILE and digest is not None and len(digest) not in (32, 64):
            raise ValueError(f"object id of {len(digest)} bytes (expected 32 or 64)")


# -- sharing ------------------------------------------------------------------------------------


def _full_key(x: _XAttr) -> tuple[bytes, int, bytes]:
    return (x[0], len(x[3]), x[3])


def _share(inodes: list[_Inode], epoch1: bool) -> list[_XAttr]:
    counts: dict[tuple[bytes, bytes], int] = {}
    first: dict[tuple[bytes, bytes], _XAttr] = {}
    for inode in inodes:
        local = inode.local
        if not local:
            continue
        if epoch1 and len(local) > 1:
            local.sort(key=_full_key)
        for x in local:
            k = (x[0], x[3])
            n = counts.get(k)
            if n is None:
                counts[k] = 1
                first[k] = x
            else:
                counts[k] = n + 1
    shared_keys = [k for k, n in counts.items() if n > 1]
    if not shared_keys:
        return []
    table = [first[k] for k in shared_keys]
    index: dict[tuple[bytes, bytes], int] = {}
    if epoch1:
        table.sort(key=_full_key)
        table.reverse()
    else:
        table.sort(key=lambda x: (x[1], x[2], x[3]))
    for i, x in enumerate(table):
        index[(x[0], x[3])] = i
    for inode in inodes:
        if not inode.local:
            continue
        keep: list[_XAttr] = []
        for x in inode.local:
            ref = index.get((x[0], x[3]))
            if ref is None:
                keep.append(x)
            else:
                inode.shared.append(ref)
        inode.local = keep
    return table


def _xattr_entry_size(x: _XAttr) -> int:
    return (4 + len(x[2]) + len(x[3]) + 3) & ~3


def _xattr_area(inode: _Inode) -> int:
    if not inode.filter:
        return 0
    return 12 + 4 * len(inode.shared) + sum(_xattr_entry_size(x) for x in inode.local)


# -- directories --------------------------------------------------------------------------------


def _pack_dir(inode: _Inode) -> int:
    """Splits the entries into full blocks and an inline tail; returns the directory size."""
    entries = inode.entries
    entries.sort(key=lambda e: e.name)
    blocks: list[list[_DirEnt]] = []
    rest: list[_DirEnt] = []
    n = 0
    nlink = 0
    for e in entries:
        size = 12 + len(e.name)
        if e.ftype == FT_DIR:
            nlink += 1
        n += size
        if n <= _BLOCK:
            rest.append(e)
        else:
            blocks.append(rest)
            rest = [e]
            n = size
    if n > _BLOCK // 2:
        blocks.append(rest)
        rest = []
        n = 0
    inode.dir_blocks = blocks
    inode.dir_tail = rest
    inode.dir_nlink = nlink
    inode.blocks = len(blocks)
    return _BLOCK * len(blocks) + n


def _write_dir_block(out: bytearray, pos: int, block: list[_DirEnt], nids: list[int]) -> None:
    nameofs = DIRENT.size * len(block)
    for e in block:
        idx = e.idx
        assert idx is not None
        DIRENT.pack_into(out, pos, nids[idx], nameofs, e.ftype)
        pos += DIRENT.size
        nameofs += len(e.name)
    names = b"".join(e.name for e in block)
    out[pos : pos + len(names)] = names


# -- the writer ---------------------------------------------------------------------------------


def _fits_compact(stat: Stat, min_mtime: tuple[int, int], size: int, nlink: int) -> bool:
    return (
        (stat.mtime & _M64, stat.mtime_nsec) == min_mtime
        and nlink <= 0xFFFF
        and (stat.uid & _M32) <= 0xFFFF
        and (stat.gid & _M32) <= 0xFFFF
        and size <= _M32
    )


def _check_version(version: int) -> None:
    if version not in constants.EROFS_VERSIONS:
        raise ValueError(f"unsupported EROFS format version {version} (expected 0, 1 or 2)")


def write(fs: FileSystem, version: int) -> bytes:
    """The EROFS image of ``fs`` in format ``version`` (0, 1 or 2)."""
    _check_version(version)
    epoch1 = version != 2
    root = fs.root
    nlinks = _count_links(root)
    _validate(root, nlinks)
    _limits.check_tree(fs, version)

    root_entries = root.entries
    if epoch1:
        root_entries = dict(root_entries)
        rs = root.stat
        selinux = rs.xattrs.get(_SELINUX)
        for i in range(256):
            name = b"%02x" % i
            if name not in root_entries:
                stub = Leaf(
                    _tree.CHAR,
                    Stat(
                        0o644,
                        rs.uid,
                        rs.gid,
                        rs.mtime,
                        rs.mtime_nsec,
                        {_SELINUX: selinux} if selinux is not None else {},
                    ),
                )
                nlinks[id(stub)] = 1
                root_entries[name] = stub

    col = _Collector(fs, version, nlinks)
    if epoch1:
        col.collect_bfs(root_entries)
    else:
        col.collect_dfs()
    inodes = col.inodes

    flags = 0
    if epoch1:
        col.add_xattr(inodes[0], b"trusted.overlay.opaque", b"y")
        if any(x[1] in (2, 3) for inode in inodes for x in inode.local):
            flags = COMPOSEFS_FLAGS_HAS_ACL
    shared = _share(inodes, epoch1)
    min_mtime = min((i.stat.mtime & _M64, i.stat.mtime_nsec) for i in inodes)

    # per inode: layout, i_u (without block address), size, nlink, xattr area size
    n_inodes = len(inodes)
    xsizes = [_xattr_area(inode) for inode in inodes]
    for inode, x in zip(inodes, xsizes, strict=True):
        _limits.check_xattr_area(fs, inode.stat, x, len(inode.shared))
    layouts = [0] * n_inodes
    sizes = [0] * n_inodes
    for i, inode in enumerate(inodes):
        leaf = inode.leaf
        if leaf is None:
            sizes[i] = _pack_dir(inode)
            inode.nlink = inode.dir_nlink
            if not inode.dir_tail:
                layouts[i] = LAYOUT_FLAT_PLAIN
            else:
                layouts[i] = LAYOUT_FLAT_INLINE
            continue
        kind = leaf.kind
        if kind == _tree.FILE:
            fkind = _kind_of(leaf)
            if fkind == "inline":
                assert leaf.inline is not None
                sizes[i] = len(leaf.inline)
                plain = not leaf.inline or (inode.data_blocks and not inode.tail)
                layouts[i] = LAYOUT_FLAT_PLAIN if plain else LAYOUT_FLAT_INLINE
                inode.blocks = inode.data_blocks
            else:
                sizes[i] = leaf.size
                layouts[i] = LAYOUT_CHUNK_BASED
                if epoch1 and inode.tail and inode.tail + xsizes[i] % _SLOT > _BLOCK:
                    inode.data_blocks = 1
                    inode.tail = 0
                    inode.blocks = 1
        elif kind == _tree.SYMLINK:
            sizes[i] = len(leaf.target)
            layouts[i] = LAYOUT_FLAT_INLINE
            if epoch1 and inode.tail:
                compact_fits = _fits_compact(inode.stat, min_mtime, inode.tail, inode.nlink)
                h = COMPACT_INODE_SIZE if compact_fits else EXTENDED_INODE_SIZE
                if h + xsizes[i] + inode.tail >= _BLOCK:
                    inode.data_blocks = 1
                    inode.tail = 0
                    inode.blocks = 1
                    layouts[i] = LAYOUT_FLAT_PLAIN
        else:
            layouts[i] = LAYOUT_FLAT_PLAIN

    # layout pass: inode offsets
    compact = [False] * n_inodes
    offsets = [0] * n_inodes
    pos = EROFS_SUPER_OFFSET + SUPERBLOCK_SIZE
    for i, inode in enumerate(inodes):
        size = sizes[i]
        layout = layouts[i]
        x = xsizes[i]
        use_compact = epoch1 and _fits_compact(inode.stat, min_mtime, size, inode.nlink)
        compact[i] = use_compact
        h = COMPACT_INODE_SIZE if use_compact else EXTENDED_INODE_SIZE
        pos = (pos + 31) & ~31
        leaf = inode.leaf
        if leaf is not None:
            is_symlink = leaf.kind == _tree.SYMLINK and not inode.escaped
            if epoch1 and layout == LAYOUT_FLAT_PLAIN and is_symlink:
                total = h + x + size
                if pos // _BLOCK != (pos + total - 1) // _BLOCK and pos % _BLOCK:
                    pos += _BLOCK - pos % _BLOCK
            if epoch1 and layout == LAYOUT_CHUNK_BASED:
                if inode.tail == 0 and inode.data_blocks:
                    if pos % _BLOCK:
                        pos += _BLOCK - pos % _BLOCK
                elif inode.tail:
                    start = pos + h + x
                    if start % _BLOCK and _BLOCK - start % _BLOCK < inode.tail:
                        pos += (_BLOCK - start % _BLOCK + 31) & ~31
        else:
            is_symlink = False
        if layout == LAYOUT_FLAT_INLINE:
            inline_size = size % _BLOCK
            if epoch1:
                if is_symlink:
                    if pos % _BLOCK + h + x + inline_size > _BLOCK and pos % _BLOCK:
                        pos += _BLOCK - pos % _BLOCK
                else:
                    start = pos + h + x
                    if start % _BLOCK and _BLOCK - start % _BLOCK < inline_size:
                        pos += (_BLOCK - start % _BLOCK + 31) & ~31
            else:
                start = pos + h + x
                if (start - 1) // _BLOCK != (start + inline_size) // _BLOCK:
                    pos += _BLOCK - (start - 1) % _BLOCK
                    pos = (pos + 31) & ~31
        if layout == LAYOUT_FLAT_INLINE:
            _limits.check_inline(fs, inode.stat, pos + h + x, _inline_len(inode))
        offsets[i] = pos
        pos += h + x + _inline_len(inode)
    pos = (pos + 31) & ~31
    inodes_end = pos
    xattr_offsets = []
    for sx in shared:
        xattr_offsets.append(pos)
        pos += _xattr_entry_size(sx)
    pos = (pos + _BLOCK - 1) & ~(_BLOCK - 1)
    block_offsets = [0] * n_inodes
    for i, inode in enumerate(inodes):
        block_offsets[i] = pos
        pos += inode.blocks * _BLOCK
    end = pos

    nids = [o >> 5 for o in offsets]
    if epoch1:
        xattr_blkaddr = inodes_end // _BLOCK
        base = xattr_blkaddr * _BLOCK
        shared_refs = [(o - base) // 4 for o in xattr_offsets]
    else:
        xattr_blkaddr = 0
        shared_refs = [o // 4 for o in xattr_offsets]

    out = bytearray(end)
    COMPOSEFS_HEADER.pack_into(out, 0, COMPOSEFS_MAGIC, COMPOSEFS_HEADER_VERSION, flags, version)
    build_time, build_nsec = min_mtime if epoch1 else (0, 0)
    SUPERBLOCK.pack_into(
        out,
        EROFS_SUPER_OFFSET,
        EROFS_MAGIC,
        0,
        FEATURE_COMPAT,
        BLOCK_BITS,
        0,
        nids[0],
        n_inodes,
        build_time,
        build_nsec,
        end // _BLOCK,
        0,
        xattr_blkaddr,
        *(0,) * 9,  # feature_incompat .. xattr_filter_reserved
    )

    for i, inode in enumerate(inodes):
        pos = offsets[i]
        leaf = inode.leaf
        layout = layouts[i]
        size = sizes[i]
        blkaddr = block_offsets[i] // _BLOCK
        if leaf is None:
            i_u = blkaddr if inode.dir_blocks else 0
        else:
            i_u = _leaf_iu(inode, leaf, version, blkaddr)
        x = xsizes[i]
        icount = 1 + (x - 12) // 4 if x else 0
        mode = IFMT_OF_FT[inode.ftype] | (inode.stat.mode & 0o7777)
        st = inode.stat
        if compact[i]:
            COMPACT_INODE.pack_into(
                out,
                pos,
                inode_format(layout, extended=False),
                icount,
                mode,
                inode.nlink,
                size,
                0,
                i_u,
                i,
                st.uid,
                st.gid,
            )
            pos += COMPACT_INODE_SIZE
        else:
            EXTENDED_INODE.pack_into(
                out,
                pos,
                inode_format(layout, extended=True),
                icount,
                mode,
                0,
                size,
                i_u,
                i if epoch1 else nids[i],
                st.uid,
                st.gid,
                st.mtime & _M64,  # a negative mtime as its two's complement (composefs-rs)
                st.mtime_nsec if epoch1 else 0,
                inode.nlink,
            )
            pos += EXTENDED_INODE_SIZE
        if x:
            XATTR_HEADER.pack_into(out, pos, ~inode.filter & _M32, len(inode.shared))
            pos += XATTR_HEADER.size
            for ref in inode.shared:
                struct.pack_into("<I", out, pos, shared_refs[ref])
                pos += 4
            for xa in inode.local:
                pos = _write_xattr(out, pos, xa)
        if leaf is None:
            if inode.dir_tail:
                _write_dir_block(out, pos, inode.dir_tail, nids)
        else:
            payload = _inline_payload(inode, leaf)
            if payload:
                out[pos : pos + len(payload)] = payload

    pos = inodes_end
    for sx in shared:
        pos = _write_xattr(out, pos, sx)

    for i, inode in enumerate(inodes):
        if not inode.blocks:
            continue
        pos = block_offsets[i]
        leaf = inode.leaf
        if leaf is None:
            for block in inode.dir_blocks:
                _write_dir_block(out, pos, block, nids)
                pos += _BLOCK
        elif leaf.kind == _tree.SYMLINK:
            target = leaf.target[:_BLOCK]
            out[pos : pos + len(target)] = target
        elif leaf.inline is not None:
            data = leaf.inline[: inode.data_blocks * _BLOCK]
            out[pos : pos + len(data)] = data
        else:
            out[pos : pos + _BLOCK] = b"\xff" * _BLOCK
    return bytes(out)


def _write_xattr(out: bytearray, pos: int, x: _XAttr) -> int:
    _, prefix, suffix, value = x
    XATTR_ENTRY.pack_into(out, pos, len(suffix), prefix, len(value))
    pos += 4
    out[pos : pos + len(suffix)] = suffix
    pos += len(suffix)
    out[pos : pos + len(value)] = value
    pos += len(value)
    return (pos + 3) & ~3


def _inline_len(inode: _Inode) -> int:
    leaf = inode.leaf
    if leaf is None:
        return sum(12 + len(e.name) for e in inode.dir_tail)
    if leaf.kind == _tree.SYMLINK:
        return len(leaf.target) if not inode.data_blocks else 0
    if leaf.kind == _tree.FILE:
        return inode.tail
    return 0


def _inline_payload(inode: _Inode, leaf: Leaf) -> bytes:
    kind = leaf.kind
    if kind == _tree.SYMLINK:
        return leaf.target if not inode.data_blocks else b""
    if kind != _tree.FILE or not inode.tail:
        return b""
    if leaf.inline is not None:
        return leaf.inline[len(leaf.inline) - inode.tail :]
    return b"\xff\xff\xff\xff" * (inode.tail // 4)


def _leaf_iu(inode: _Inode, leaf: Leaf, version: int, blkaddr: int) -> int:
    kind = leaf.kind
    if kind == _tree.FILE:
        if leaf.inline is not None:
            return blkaddr if inode.data_blocks else 0
        fmt = _chunk_bits(leaf.size) - 12 if version != 2 else 31
        if inode.data_blocks:
            return ((blkaddr & 0xFFFF0000) | fmt) & _M32
        return fmt
    if kind in (_tree.CHAR, _tree.BLOCK):
        return leaf.rdev
    if kind == _tree.SYMLINK:
        return blkaddr if inode.data_blocks else 0
    return 0


def mkfs(dumpfile: Buffer, version: int) -> bytes:
    """Parses a dumpfile and writes its EROFS image in format ``version`` (``cfsctl
    mkcomposefs``: the version is checked first, and a leaf the dumpfile replaced by a later
    line of the same path is an orphan, an error)."""
    _check_version(version)
    fs, leaves = _dumpfile.parse_with_leaves(bytes(dumpfile))
    orphaned = _dumpfile.orphans(fs, leaves)
    if orphaned:
        listed = ", ".join(map(str, orphaned))
        raise ValueError(f"invalid composefs filesystem: Orphaned leaves at indices [{listed}]")
    return write(fs, version)


def mkcomposefs(dumpfile: Buffer, min_version: int, max_version: int, strict: bool) -> bytes:
    """C mkcomposefs 1.0's image of a dumpfile (:mod:`composefs._pure.mkcomposefs`)."""
    from composefs._pure import mkcomposefs as _c

    return _c.mkcomposefs(dumpfile, min_version, max_version, strict)
