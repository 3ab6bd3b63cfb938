"""C mkcomposefs 1.0 (``mkcomposefs --from-file``), pure Python: its dumpfile reader and its
EROFS writer, byte for byte. Native twin: ``rust/mkcomposefs.rs``.

This is a model of libcomposefs's own tree, not of composefs-rs's: a leaf keeps the NLINK,
SIZE, PAYLOAD, CONTENT and DIGEST fields as the dumpfile gives them (the redirect xattr is
``/`` + PAYLOAD, whatever its form; inline files up to 5000 bytes; symlinks up to 4095
bytes), a hard link is a name bound to the entry it names (resolved after the whole file is
read, in reverse order), a repeated path is an error, and the image is written the C way
(``.``/``..`` sorted among the names, whiteouts escaped before the 256 stubs are added, at
most 128 shared xattr references per inode). The facts come from reading libcomposefs
1.0.8 (``tools/mkcomposefs.c``, ``libcomposefs/lcfs-writer.c``, ``lcfs-writer-erofs.c``);
the EROFS image of composefs-rs (``composefs._pure.erofs``) is a separate writer, kept for
OCI image ids.

Where C's result depends on memory it never wrote (a DIGEST that is not 64 hex digits on a
file that uses it) or on a negative version, we refuse instead (see docs/differences.md).
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Iterator
from typing import Final

from composefs._pure.xxhash import xxh32
from composefs.erofs_format import (
    COMPACT_INODE,
    COMPOSEFS_HEADER,
    COMPOSEFS_HEADER_VERSION,
    COMPOSEFS_MAGIC,
    DIRENT,
    EROFS_MAGIC,
    EROFS_SUPER_OFFSET,
    EXTENDED_INODE,
    FEATURE_COMPAT,
    SUPERBLOCK,
    XATTR_ENTRY,
    XATTR_FILTER_SEED,
    XATTR_HEADER,
)

__all__ = ["mkcomposefs"]

Buffer = bytes | bytearray | memoryview

_BLOCK: Final = 4096
_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF

S_IFMT: Final = 0o170000
S_IFSOCK: Final = 0o140000
S_IFLNK: Final = 0o120000
S_IFREG: Final = 0o100000
S_IFBLK: Final = 0o060000
S_IFDIR: Final = 0o040000
S_IFCHR: Final = 0o020000
S_IFIFO: Final = 0o010000
_TYPES: Final = frozenset((S_IFSOCK, S_IFLNK, S_IFREG, S_IFBLK, S_IFDIR, S_IFCHR, S_IFIFO))
_FT: Final = {S_IFREG: 1, S_IFDIR: 2, S_IFCHR: 3, S_IFBLK: 4, S_IFIFO: 5, S_IFSOCK: 6, S_IFLNK: 7}

PATH_MAX: Final = 4096
INLINE_CONTENT_MAX: Final = 5000  # LCFS_INLINE_CONTENT_MAX
NAME_MAX: Final = 255
XATTR_NAME_MAX: Final = 255
XATTR_SIZE_MAX: Final = 0xFFFF
XATTR_BUDGET: Final = 0xFFFF // 2  # LCFS_INODE_EXTERNAL_XATTR_MAX
MAX_CHUNKS: Final = 1024  # LCFS_MAX_NONINLINE_CHUNKS
MAX_SHARED_REFS: Final = 0x80  # EROFS_XATTR_LONG_PREFIX
VERSION_MAX: Final = 1

_OVERLAY: Final = b"trusted.overlay."
_ESCAPED: Final = b"trusted.overlay.overlay."
_PREFIXES: Final = (
    (b"user.", 1),
    (b"system.posix_acl_access", 2),
    (b"system.posix_acl_default", 3),
    (b"trusted.", 4),
    (b"security.", 6),
)


class MkcomposefsError(ValueError):
    """An input C mkcomposefs refuses (or one whose image C cannot reproduce)."""


# -- the tree -------------------------------------------------------------------------------


class _Node:
    __slots__ = (
        "blocks",
        "children",
        "compact",
        "content",
        "digest",
        "gid",
        "index",
        "ipad",
        "link",
        "mode",
        "mtime",
        "name",
        "nid",
        "nlink",
        "nsec",
        "parent",
        "payload",
        "rdev",
        "shared",
        "size",
        "tail",
        "uid",
        "xattrs",
        "xsize",
    )

    def __init__(self, mode: int) -> None:
        self.mode = mode
        self.nlink = 1
        self.uid = 0
        self.gid = 0
        self.rdev = 0
        self.size = 0
        self.mtime = 0
        self.nsec = 0
        self.payload: bytes | None = None
        self.content: bytes | None = None
        self.digest: bytes | str | None = None  # raw, or the text C cannot decode
        self.xattrs: dict[bytes, bytes] = {}
        self.xsize = 0  # libcomposefs's running xattr budget
        self.children: dict[bytes, _Node] = {}
        self.name = b""
        self.parent: _Node | None = None
        self.link: _Node | bool | None = None  # target; True: a "@" line not resolved yet
        # writer state
        self.index = 0
        self.nid = 0
        self.blocks = 0
        self.tail = 0
        self.ipad = 0
        self.compact = False
        self.shared: list[int] = []

    @property
    def ftype(self) -> int:
        return self.mode & S_IFMT


def _set_xattr(node: _Node, name: bytes, value: bytes) -> None:
    """``lcfs_node_set_xattr`` (limits of external input)."""
    if not name:
        raise MkcomposefsError("Can't set xattr: empty name")
    if len(name) > XATTR_NAME_MAX:
        raise MkcomposefsError(
            f"Can't set xattr {_show(name)}: name of {len(name)} bytes (the limit is "
            f"{XATTR_NAME_MAX})"
        )
    if len(value) > XATTR_SIZE_MAX:
        raise MkcomposefsError(
            f"Can't set xattr {_show(name)}: value of {len(value)} bytes (the limit is "
            f"{XATTR_SIZE_MAX})"
        )
    # the budget is a size_t: it wraps (below, in the writer's copy of the tree)
    old = node.xattrs.pop(name, None)
    if old is not None:
        node.xsize = (node.xsize - (7 + len(name) + len(old))) & _M64 if node.xattrs else 0
    entry = 7 + len(name) + len(value) + (12 if not node.xattrs else 0)
    if (node.xsize + entry) & _M64 > XATTR_BUDGET:
        raise MkcomposefsError(
            f"Can't set xattr {_show(name)}: the xattrs of one file exceed {XATTR_BUDGET} bytes"
        )
    node.xattrs[name] = value
    node.xsize = (node.xsize + entry) & _M64


# -- reading --------------------------------------------------------------------------------

_SPACE = b" \t\n\v\f\r"
_NUMBER = {
    8: re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-7]+)"),
    10: re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)"),
}


def _strtoull(text: bytes, base: int) -> int | None:
    """C ``strtoull`` of a whole field: None unless the field is one number (an overflow
    saturates, a minus sign negates modulo 2**64)."""
    m = _NUMBER[base].fullmatch(text)
    if m is None:
        return None
    value = int(m.group(2), base)
    if value > _M64:
        return _M64
    return (-value) & _M64 if m.group(1) == b"-" else value


def _unescape(text: bytes) -> bytes:
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        i += 1
        if c != 0x5C:
            out.append(c)
            continue
        if i >= n:
            raise MkcomposefsError("No character after escape")
        c = text[i]
        i += 1
        if c == 0x5C:
            out.append(0x5C)
        elif c == 0x6E:
            out.append(0x0A)
        elif c == 0x72:
            out.append(0x0D)
        elif c == 0x74:
            out.append(0x09)
        elif c == 0x78:
            if i + 2 > n:
                raise MkcomposefsError("No hex characters after hex escape")
            pair = text[i : i + 2]
            i += 2
            if not _is_hex(pair):
                raise MkcomposefsError("Invalid hex characters after hex escape")
            out.append(int(pair, 16))
        else:
            raise MkcomposefsError(f"Unsupported escape type {chr(c)}")
    return bytes(out)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _is_hex(data: bytes) -> bool:
    return all(b in _HEX for b in data)


def _cstr(data: bytes) -> bytes:
    """What C sees of a string: up to its first NUL."""
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


def _optional(field: bytes) -> bytes | None:
    return None if field == b"-" else _unescape(field)


def _show(path: bytes) -> str:
    """A path or name for a message (long ones cut at 256 characters)."""
    text = path.decode("utf-8", "backslashreplace")
    return text if len(text) <= 256 else text[:256] + "..."


class _Reader:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.root: _Node | None = None
        self.fixups: list[tuple[_Node, bytes | None]] = []

    def _add(self, path: bytes, node: _Node) -> None:
        """``tree_add_node``."""
        if path == b"/":
            if node.ftype != S_IFDIR:
                raise MkcomposefsError("Root must be a directory")
            if self.root is not None:
                raise MkcomposefsError("Can't have multiple roots")
            self.root = node
            return
        if self.root is None:
            raise MkcomposefsError("Root node not present")
        parts = re.split(rb"/+", path.lstrip(b"/"))
        parent: _Node | None = self.root
        for part in parts[:-1]:
            assert parent is not None
            parent = parent.children.get(part)
            if parent is None:
                break
        if parent is None:
            raise MkcomposefsError(f"Parent directory missing for {_show(path)}")
        if parent.ftype != S_IFDIR:
            raise MkcomposefsError(f"Parent must be a directory for {_show(path)}")
        name = parts[-1]
        if name in (b".", b".."):
            raise MkcomposefsError(f"Invalid . or .. in path: {_show(path)}")
        if not name:
            raise MkcomposefsError(f"Can't add child {_show(path)}: empty file name")
        if len(name) > NAME_MAX:
            raise MkcomposefsError(
                f"Can't add child {_show(path)}: file name of {len(name)} bytes (the limit is "
                f"{NAME_MAX})"
            )
        if name in parent.children:
            raise MkcomposefsError(f"Path {_show(path)} already exist")
        parent.children[name] = node
        node.name = name
        node.parent = parent

    def line(self, line: bytes) -> None:
        """``tree_from_dump_line``."""
        nul = line.find(b"\0")
        if nul >= 0:
            raise MkcomposefsError(f"Invalid embedded NUL character at position {nul}")
        fields: list[bytes] = []
        rest = line
        for _ in range(11):
            space = rest.find(b" ")
            if space < 0:
                fields.append(rest)
                rest = b""
            else:
                fields.append(rest[:space])
                rest = rest[space + 1 :]
        path = _cstr(_unescape(fields[0]))
        if not path:
            raise MkcomposefsError("Invalid empty path")
        mode_text = fields[2]
        hardlink = mode_text.startswith(b"@")
        if hardlink:
            mode_text = mode_text[1:]
        mode = _int(mode_text, 8)
        mode &= _M32
        if mode & S_IFMT not in _TYPES:
            raise MkcomposefsError(f"Invalid mode {mode:o}")
        node = _Node(mode)
        self._add(path, node)
        if hardlink:
            if node.ftype == S_IFDIR:
                raise MkcomposefsError("Directories can't be hardlinked")
            target = _optional(fields[8])
            node.link = True
            self.fixups.append((node, None if target is None else _cstr(target)))
            return
        size = _int(fields[1], 10)
        nlink = _int(fields[3], 10)
        uid = _int(fields[4], 10)
        # C checks the uid's result again for gid and rdev: with a non-zero uid, an
        # unparsable gid or rdev is taken as 0
        gid = _strtoull(fields[5], 10)
        if gid is None:
            if uid == 0:
                raise MkcomposefsError(f"Invalid integer {_show(fields[5])}")
            gid = 0
        rdev = _strtoull(fields[6], 10)
        if rdev is None:
            if uid == 0:
                raise MkcomposefsError(f"Invalid integer {_show(fields[6])}")
            rdev = 0
        mtime = fields[7]
        dot = mtime.find(b".")
        sec = _int(mtime if dot < 0 else mtime[:dot], 10)
        nsec = _int(b"" if dot < 0 else mtime[dot + 1 :], 10)
        payload = _optional(fields[8])
        content = _optional(fields[9])
        if content is not None and len(content) != size:
            raise MkcomposefsError(
                f"Invalid content size {len(content)}, must match size {_signed(size)}"
            )
        digest = _optional(fields[10])
        kind = mode & S_IFMT
        if kind != S_IFLNK:
            node.size = size
        node.nlink = nlink & _M32
        node.uid = uid & _M32
        node.gid = gid & _M32
        if kind in (S_IFCHR, S_IFBLK):
            node.rdev = rdev & _M32
        elif self.strict and rdev != 0:
            raise MkcomposefsError("Non-zero devnum on non-device")
        node.mtime = sec - (1 << 64) if sec >> 63 else sec
        node.nsec = nsec & _M32
        if kind == S_IFLNK:
            target = None if payload is None else _cstr(payload)
            if not target:
                raise MkcomposefsError("Invalid symlink: empty target")
            if len(target) >= PATH_MAX:
                raise MkcomposefsError(
                    f"Invalid symlink: target of {len(target)} bytes (the limit is {PATH_MAX - 1})"
                )
            node.payload = target
            node.size = len(target)
            if self.strict:
                if size != len(target):
                    raise MkcomposefsError(
                        f"Invalid symlink size {len(target)}, must match size {_signed(size)}"
                    )
                if content:
                    raise MkcomposefsError("Symlink cannot have content")
        else:
            if payload is not None:
                payload = _cstr(payload)
                if len(payload) >= PATH_MAX:
                    raise MkcomposefsError(
                        f"Invalid payload: {len(payload)} bytes (the limit is {PATH_MAX - 1})"
                    )
            node.payload = payload
            if content is not None:
                if len(content) > INLINE_CONTENT_MAX:
                    raise MkcomposefsError(
                        f"Inline content size {len(content)} exceeds maximum {INLINE_CONTENT_MAX}"
                    )
                node.content = content or None
                node.size = len(content)
        if digest is not None:
            text = _cstr(digest)
            head = text[:64]
            if len(head) == 64 and _is_hex(head):
                node.digest = bytes.fromhex(head.decode("ascii"))
            else:  # C would read memory it never wrote: refused if the file needs it
                node.digest = _show(text)
        if len(rest) > 0xFFFF:
            raise MkcomposefsError("Too many xattrs")
        if rest:
            tokens = rest.split(b" ")
            if rest.endswith(b" "):
                tokens.pop()
            for token in tokens:
                eq = token.find(b"=")
                if eq < 0:
                    raise MkcomposefsError("Missing = in xattr")
                key = _cstr(_unescape(token[:eq]))
                value = _unescape(token[eq + 1 :])
                _set_xattr(node, key, value)

    def finish(self) -> _Node:
        """``tree_resolve_hardlinks`` (last line first)."""
        root = self.root
        if root is None:
            raise MkcomposefsError("No files in dump file")
        for node, target_path in reversed(self.fixups):
            if target_path is None:
                raise MkcomposefsError("No target path for the hardlink")
            target: _Node | None = root
            for part in target_path.split(b"/"):
                if part and target is not None:
                    target = target.children.get(part)
            if target is None:
                raise MkcomposefsError(f"No target at {_show(target_path)} for hardlink")
            if target is node:
                raise MkcomposefsError(f"Self-referential hardlink {_show(target_path)}")
            node.link = target
        return root


def _int(field: bytes, base: int) -> int:
    value = _strtoull(field, base)
    if value is None:
        raise MkcomposefsError(f"Invalid integer {_show(field)}")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _lines(data: bytes, strict: bool) -> Iterator[bytes]:
    pieces = data.split(b"\n")
    last = pieces.pop()
    yield from pieces
    if last:
        if strict:
            raise MkcomposefsError("Missing trailing newline")
        yield last


def read(data: Buffer, strict: bool) -> _Node:
    """The tree of a dumpfile, as ``tree_from_dump`` builds it."""
    reader = _Reader(strict)
    for number, line in enumerate(_lines(bytes(data), strict), 1):
        try:
            reader.line(line)
        except MkcomposefsError as e:
            raise MkcomposefsError(f"line {number}: {e}") from None
    return reader.finish()


# -- writing --------------------------------------------------------------------------------


def _path(node: _Node) -> bytes:
    parts = []
    while node.parent is not None:
        parts.append(node.name)
        node = node.parent
    return b"/" + b"/".join(reversed(parts))


def _target(node: _Node) -> _Node:
    """``follow_links`` once the links are flattened (:func:`_flatten`)."""
    link = node.link
    return link if isinstance(link, _Node) else node


def _flatten(order: list[_Node]) -> None:
    """Points every hard link at the entry its chain ends at (each chain walked once: a
    hostile chain of n links costs n, not n squared); a loop is an error, as C's
    ``follow_links`` finds it."""
    done: set[int] = set()
    for node in order:
        for child in node.children.values():
            if not isinstance(child.link, _Node) or id(child) in done:
                continue
            chain: list[_Node] = []
            on_chain: set[int] = set()
            cur = child
            while isinstance(cur.link, _Node) and id(cur) not in done:
                if id(cur) in on_chain:
                    raise MkcomposefsError("cannot write file: hard link loop")
                on_chain.add(id(cur))
                chain.append(cur)
                cur = cur.link
            end = _target(cur) if id(cur) in done else cur
            for link in chain:
                link.link = end
                done.add(id(link))


def _children(node: _Node) -> list[tuple[bytes, _Node]]:
    return sorted(node.children.items())


def _chunk_count(size: int) -> int:
    bits = max((size - 1).bit_length(), 12)
    bits = min(bits, 12 + 31)
    return (size + (1 << bits) - 1) >> bits


def _chunk_bits(size: int) -> int:
    return min(max((size - 1).bit_length(), 12), 12 + 31)


def _walk(root: _Node) -> Iterator[_Node]:
    """Pre-order over the entries that are not hard links (the C recursion's order)."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if node.ftype == S_IFDIR:
            stack.extend(c for _, c in reversed(_children(node)) if c.link is None)


def _split_name(name: bytes) -> tuple[int, bytes]:
    for prefix, index in _PREFIXES:
        if name.startswith(prefix):
            return index, name[len(prefix) :]
    return 0, name


def _entry_size(name: bytes, value: bytes) -> int:
    _, suffix = _split_name(name)
    return (4 + len(suffix) + len(value) + 3) & ~3


def _rewrite(root: _Node, version: int) -> None:
    """``rewrite_tree_for_erofs``: validation, overlay xattrs, ``.``/``..``, the stubs.
    C works on a copy of the tree whose nodes start with an xattr budget of 0 (the copy does
    not carry it over), so the xattrs the writer adds are counted from 0."""
    for node in _walk(root):
        node.xsize = 0
        kind = node.ftype
        external = kind == S_IFREG and node.size > 0 and node.content is None
        if external and _chunk_count(node.size) > MAX_CHUNKS:
            raise MkcomposefsError(f"cannot write file: File too large ({node.size} bytes)")
        if any(k.startswith(_OVERLAY) for k in node.xattrs):
            node.xattrs = {
                (_ESCAPED + k[len(_OVERLAY) :] if k.startswith(_OVERLAY) else k): v
                for k, v in node.xattrs.items()
            }
        if external:
            digest = node.digest
            if isinstance(digest, str):
                raise MkcomposefsError(
                    f"cannot write file: the DIGEST {digest} of {_show(_path(node))} is not "
                    "64 hex digits"
                )
            metacopy = b"" if digest is None else b"\x00\x24\x00\x01" + digest
            _set_xattr(node, b"trusted.overlay.metacopy", metacopy)
            if node.payload:
                _set_xattr(node, b"trusted.overlay.redirect", b"/" + node.payload)
        if kind == S_IFCHR and node.rdev == 0:
            parent = node.parent
            assert parent is not None
            node.size = 0
            node.mode = S_IFREG | (node.mode & ~S_IFMT & _M32)
            _set_xattr(node, b"trusted.overlay.overlay.whiteout", b"")
            _set_xattr(node, b"user.overlay.whiteout", b"")
            _set_xattr(parent, b"trusted.overlay.overlay.whiteouts", b"")
            _set_xattr(parent, b"user.overlay.whiteouts", b"")
            if version >= 1:
                _set_xattr(parent, b"trusted.overlay.overlay.opaque", b"x")
                _set_xattr(parent, b"user.overlay.opaque", b"x")
        if kind == S_IFDIR:
            dot = _Node(0)
            dot.link = node
            dotdot = _Node(0)
            dotdot.link = node.parent if node.parent is not None else node
            node.children[b"."] = dot
            node.children[b".."] = dotdot
    _set_xattr(root, b"trusted.overlay.opaque", b"y")
    selinux = root.xattrs.get(b"security.selinux")
    for i in range(256):
        name = b"%02x" % i
        if name in root.children:
            continue
        stub = _Node(S_IFCHR | 0o644)
        stub.uid, stub.gid, stub.mtime, stub.nsec = root.uid, root.gid, root.mtime, root.nsec
        if selinux is not None:
            _set_xattr(stub, b"security.selinux", selinux)
        stub.name = name
        stub.parent = root
        root.children[name] = stub


def _bfs(root: _Node) -> list[_Node]:
    """``lcfs_compute_tree``: breadth-first, names in byte order, hard links skipped."""
    order: list[_Node] = []
    queue = deque([root])
    while queue:
        node = queue.popleft()
        node.index = len(order)
        order.append(node)
        if node.ftype == S_IFDIR:
            children = _children(node)
            node.nlink = 2 + sum(1 for _, c in children if c.ftype == S_IFDIR)
            for _, child in children:
                if child.link is None:
                    queue.append(child)
    _flatten(order)
    return order


def _update_version(root: _Node, version: int, max_version: int) -> int:
    if version < 1 <= max_version:
        for node in _walk(root):
            if node.ftype == S_IFCHR and node.rdev == 0:
                return 1
    return version


def write(root: _Node, min_version: int, max_version: int) -> bytes:
    """``lcfs_write_to`` with the EROFS format."""
    if min_version < 0 or max_version < 0:
        raise MkcomposefsError("cannot write file: a negative format version")
    if min_version > VERSION_MAX or max_version > VERSION_MAX:
        raise MkcomposefsError("cannot write file: Invalid argument (version above 1)")
    max_version = max(max_version, min_version)
    version = _update_version(root, min_version, max_version)
    _rewrite(root, version)
    nodes = _bfs(root)

    min_mtime = min((n.mtime, n.nsec) for n in nodes)
    has_acl = any(
        b"system.posix_acl_access" in n.xattrs or b"system.posix_acl_default" in n.xattrs
        for n in nodes
    )

    # shared xattrs: every (name, value) used by two inodes or more, in descending order
    counts: dict[tuple[bytes, bytes], int] = {}
    for n in nodes:
        for item in n.xattrs.items():
            counts[item] = counts.get(item, 0) + 1
    table = sorted((k for k, c in counts.items() if c > 1), key=_desc_key, reverse=True)
    offsets: dict[tuple[bytes, bytes], int] = {}
    shared_size = 0
    for name, value in table:
        offsets[(name, value)] = shared_size
        shared_size += _entry_size(name, value)

    # inode placement
    pos = EROFS_SUPER_OFFSET + 128
    n_data_blocks = 0
    layout: list[tuple[list[tuple[bytes, bytes]], list[int], int]] = []
    for n in nodes:
        items = sorted(n.xattrs.items())
        shared: list[int] = []
        local: list[tuple[bytes, bytes]] = []
        for item in items:
            off = offsets.get(item)
            if off is not None and len(shared) < MAX_SHARED_REFS:
                shared.append(off)
            else:
                local.append(item)
        _inode_size(n)
        n.compact = _fits_compact(n, min_mtime)
        isize = 32 if n.compact else 64
        unshared = sum(_entry_size(k, v) for k, v in local)
        xsize = (12 + 4 * len(shared) + unshared + 3) & ~3 if shared or unshared else 0
        start = (pos + 31) & ~31
        ipad = start - pos
        extra = _tail_padding(n, start, isize, xsize)
        n.ipad = ipad + extra
        pos = start + extra
        n_data_blocks += n.blocks
        n.nid = pos // 32
        pos += isize + xsize + n.tail
        layout.append((local, shared, xsize))
    inodes_end = (pos + 31) & ~31
    data_start = (inodes_end + shared_size + _BLOCK - 1) & ~(_BLOCK - 1)
    total = data_start + n_data_blocks * _BLOCK

    out = bytearray(total)
    COMPOSEFS_HEADER.pack_into(
        out, 0, COMPOSEFS_MAGIC, COMPOSEFS_HEADER_VERSION, 1 if has_acl else 0, version
    )
    SUPERBLOCK.pack_into(
        out,
        EROFS_SUPER_OFFSET,
        EROFS_MAGIC,
        0,
        FEATURE_COMPAT,
        12,
        0,
        nodes[0].nid,
        len(nodes),
        min_mtime[0] & _M64,
        min_mtime[1],
        total // _BLOCK,
        0,
        inodes_end // _BLOCK,
        *(0,) * 9,
    )
    current = data_start
    pos = EROFS_SUPER_OFFSET + 128
    blocks_of: list[int] = []
    for n, (local, shared, xsize) in zip(nodes, layout, strict=True):
        pos += n.ipad
        kind = n.ftype
        layout_kind = 2 if n.tail > 0 else 0
        chunk_format = 0
        chunk_count = 0
        if kind == S_IFDIR:
            size = n.blocks * _BLOCK + n.tail
        elif kind == S_IFREG:
            size = n.size
            if size > 0 and n.content is None:
                chunk_count = _chunk_count(size)
                layout_kind = 4
                chunk_format = _chunk_bits(size) - 12
        elif kind == S_IFLNK:
            size = n.tail if n.blocks == 0 else n.size
        else:
            size = 0
        i_u = 0
        blkaddr = 0
        if kind in (S_IFCHR, S_IFBLK):
            i_u = n.rdev
        elif kind in (S_IFDIR, S_IFREG, S_IFLNK):
            if n.blocks > 0:
                blkaddr = current // _BLOCK
                i_u = blkaddr & _M32
                current += n.blocks * _BLOCK
            if layout_kind == 4:
                i_u = (i_u & 0xFFFF0000) | chunk_format
        blocks_of.append(blkaddr)
        icount = (xsize - 12) // 4 + 1 if xsize else 0
        fmt = layout_kind << 1 | (0 if n.compact else 1)
        if n.compact:
            COMPACT_INODE.pack_into(
                out,
                pos,
                fmt,
                icount,
                n.mode & 0xFFFF,
                n.nlink & 0xFFFF,
                size & _M32,
                0,
                i_u,
                n.index,
                n.uid & 0xFFFF,
                n.gid & 0xFFFF,
            )
            pos += 32
        else:
            EXTENDED_INODE.pack_into(
                out,
                pos,
                fmt,
                icount,
                n.mode & 0xFFFF,
                0,
                size & _M64,
                i_u,
                n.index,
                n.uid,
                n.gid,
                n.mtime & _M64,
                n.nsec,
                n.nlink,
            )
            pos += 64
        if xsize:
            bits = 0
            for name in n.xattrs:
                index, suffix = _split_name(name)
                bits |= 1 << (xxh32(suffix, XATTR_FILTER_SEED + index) & 31)
            XATTR_HEADER.pack_into(out, pos, ~bits & _M32, len(shared))
            pos += 12
            for off in shared:
                struct.pack_into("<I", out, pos, ((inodes_end % _BLOCK + off) // 4) & _M32)
                pos += 4
            for name, value in local:
                pos = _put_xattr(out, pos, name, value)
        if kind == S_IFDIR:
            tail = _dir_chunks(n)[1]
            if tail:
                pos = _put_dirents(out, pos, tail)
        elif kind == S_IFLNK:
            if n.blocks == 0:
                assert n.payload is not None
                out[pos : pos + len(n.payload)] = n.payload
                pos += len(n.payload)
        elif kind == S_IFREG and n.tail > 0:
            if n.content is not None:
                piece = n.content[len(n.content) - n.tail :]
                out[pos : pos + len(piece)] = piece
                pos += len(piece)
            else:
                out[pos : pos + 4 * chunk_count] = b"\xff" * (4 * chunk_count)
                pos += 4 * chunk_count
    pos = (pos + 31) & ~31
    assert pos == inodes_end
    for name, value in table:
        pos = _put_xattr(out, pos, name, value)
    pos = data_start
    for n, blkaddr in zip(nodes, blocks_of, strict=True):
        kind = n.ftype
        if kind == S_IFDIR:
            for block in _dir_chunks(n)[0]:
                _put_dirents(out, pos, block)
                pos += _BLOCK
            continue
        if n.blocks == 0:
            continue
        assert blkaddr * _BLOCK == pos
        if kind == S_IFREG:
            if n.content is None:
                out[pos : pos + _BLOCK] = b"\xff" * _BLOCK
            else:
                piece = n.content[:_BLOCK]
                out[pos : pos + len(piece)] = piece
        elif kind == S_IFLNK:
            assert n.payload is not None
            out[pos : pos + len(n.payload)] = n.payload
        pos += _BLOCK * n.blocks
    assert pos == total
    return bytes(out)


def _desc_key(item: tuple[bytes, bytes]) -> tuple[bytes, int, bytes]:
    return (item[0], len(item[1]), item[1])


def _put_xattr(out: bytearray, pos: int, name: bytes, value: bytes) -> int:
    index, suffix = _split_name(name)
    XATTR_ENTRY.pack_into(out, pos, len(suffix), index, len(value))
    pos += 4
    out[pos : pos + len(suffix)] = suffix
    pos += len(suffix)
    out[pos : pos + len(value)] = value
    pos += len(value)
    return (pos + 3) & ~3


def _dir_chunks(n: _Node) -> tuple[list[list[tuple[bytes, _Node]]], list[tuple[bytes, _Node]]]:
    """The directory's full blocks and its inline tail (``write_erofs_dentries``)."""
    children = _children(n)
    blocks: list[list[tuple[bytes, _Node]]] = []
    current: list[tuple[bytes, _Node]] = []
    used = 0
    for item in children:
        size = 12 + len(item[0])
        if used + size > _BLOCK:
            blocks.append(current)
            current = []
            used = 0
        current.append(item)
        used += size
    if len(blocks) < n.blocks:
        blocks.append(current)
        current = []
    return blocks, current


def _put_dirents(out: bytearray, pos: int, entries: list[tuple[bytes, _Node]]) -> int:
    nameoff = 12 * len(entries)
    for name, child in entries:
        target = _target(child)
        DIRENT.pack_into(out, pos, target.nid, nameoff & 0xFFFF, _FT.get(target.ftype, 0))
        pos += 12
        nameoff += len(name)
    for name, _ in entries:
        out[pos : pos + len(name)] = name
        pos += len(name)
    return pos


def _inode_size(n: _Node) -> None:
    kind = n.ftype
    n.blocks = 0
    n.tail = 0
    if kind == S_IFDIR:
        used = 0
        for name in sorted(n.children):
            size = 12 + len(name)
            if used + size > _BLOCK:
                n.blocks += 1
                used = 0
            used += size
        if used > _BLOCK // 2:
            n.blocks += 1
            used = 0
        n.tail = used
    elif kind == S_IFLNK:
        assert n.payload is not None
        n.tail = len(n.payload)
    elif kind == S_IFREG and n.size > 0:
        if n.content is not None:
            n.blocks, n.tail = divmod(n.size, _BLOCK)
            if n.tail > _BLOCK // 2:
                n.blocks += 1
                n.tail = 0
        else:
            n.tail = _chunk_count(n.size) * 4


def _fits_compact(n: _Node, min_mtime: tuple[int, int]) -> bool:
    if (n.mtime, n.nsec) != min_mtime:
        return False
    if n.nlink > 0xFFFF or n.uid > 0xFFFF or n.gid > 0xFFFF:
        return False
    size = n.blocks * _BLOCK + n.tail if n.ftype == S_IFDIR else n.size
    return size <= _M32


def _tail_padding(n: _Node, pos: int, isize: int, xsize: int) -> int:
    """``compute_erofs_inode_padding_for_tail``: padding before the inode so that its inline
    tail does not cross a block (may move the tail to a data block instead)."""
    non_tail = isize + xsize
    if n.ftype == S_IFLNK:
        total = non_tail + n.tail
        if total // _BLOCK > 0:
            n.blocks += 1
            n.tail = 0
        if pos // _BLOCK != (pos + total - 1) // _BLOCK:
            return ((pos + _BLOCK - 1) & ~(_BLOCK - 1)) - pos
        return 0
    remainder = _BLOCK - (pos + non_tail) % _BLOCK
    if remainder < n.tail:
        extra = (remainder + 31) & ~31
        remainder = _BLOCK - (pos + non_tail + extra) % _BLOCK
        if n.tail <= remainder:
            return extra
        n.blocks += 1
        n.tail = 0
        return ((pos + _BLOCK - 1) & ~(_BLOCK - 1)) - pos
    return 0


def mkcomposefs(dumpfile: Buffer, min_version: int, max_version: int, strict: bool) -> bytes:
    """C ``mkcomposefs --min-version=MIN --max-version=MAX --from-file`` (``strict``: with
    ``CFS_PARSE_STRICT`` set): the image of a dumpfile. Raises :class:`MkcomposefsError`."""
    return write(read(dumpfile, strict), min_version, max_version)
