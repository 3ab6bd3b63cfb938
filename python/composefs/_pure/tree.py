"""The filesystem tree of a composefs image (composefs-rs ``generic_tree``/``tree``), and the
OCI layer merge (composefs-rs ``composefs_oci::image::create_filesystem``).

Model: a :class:`Directory` maps names (bytes) to :class:`Directory` or :class:`Leaf`
objects. Hard links are several entries holding the *same* :class:`Leaf` object (identity,
not equality). Names are iterated in byte order (``sorted(entries)``) by every writer.

The native twin is ``rust/tree.rs``; see ``docs/internals.md`` (section ``tree``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # (path, kind, mode, ...) as composefs._pure.tar_split.read_entries returns them
    from composefs._pure.tar_split import EntryTuple as _EntryTuple

__all__ = ["Directory", "FileSystem", "Leaf", "Stat", "equal", "merge", "merge_layers"]


@dataclass
class Stat:
    """``generic_tree::Stat``. ``mode`` is kept raw (a tar header's mode may carry type bits);
    writers use ``mode & 0o7777`` plus the type of the content."""

    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds, signed
    mtime_nsec: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    def copy(self) -> Stat:
        return Stat(self.mode, self.uid, self.gid, self.mtime, self.mtime_nsec, dict(self.xattrs))


# Leaf kinds
FILE = "file"
SYMLINK = "symlink"
BLOCK = "block"
CHAR = "char"
FIFO = "fifo"
SOCKET = "socket"


@dataclass(eq=False)
class Leaf:
    """A non-directory inode. For ``kind == "file"`` exactly one representation applies:

    - inline: ``inline`` is the content (``size == len(inline)``; ``b""`` for empty files)
    - external: ``digest`` is the fs-verity object id (32 or 64 bytes), ``size`` the size;
      ``verity`` False means composefs-rs ``ExternalNoVerity``
    - sparse: ``inline is None and digest is None``, ``size`` bytes of holes
    ``target`` is a symlink's target, ``rdev`` a device number (Linux ``makedev`` encoding).
    """

    kind: str
    stat: Stat
    inline: bytes | None = None
    digest: bytes | None = None
    verity: bool = True
    size: int = 0
    target: bytes = b""
    rdev: int = 0


@dataclass(eq=False)
class Directory:
    stat: Stat
    entries: dict[bytes, Directory | Leaf] = field(default_factory=dict)


@dataclass(eq=False)
class FileSystem:
    root: Directory


def equal(a: FileSystem, b: FileSystem) -> bool:
    """Whether two trees are the same: names, stats, contents, and which names share a leaf
    (hard links); the identity of the objects does not matter otherwise."""
    pairs: dict[int, int] = {}
    back: dict[int, int] = {}

    def same_leaf(x: Leaf, y: Leaf) -> bool:
        seen = pairs.get(id(x))
        if seen is not None or id(y) in back:
            return seen == id(y) and back.get(id(y)) == id(x)
        pairs[id(x)] = id(y)
        back[id(y)] = id(x)
        return (x.kind, x.stat, x.inline, x.digest, x.size, x.target, x.rdev) == (
            y.kind,
            y.stat,
            y.inline,
            y.digest,
            y.size,
            y.target,
            y.rdev,
        ) and (x.digest is None or x.verity == y.verity)

    def same_dir(x: Directory, y: Directory) -> bool:
        if x.stat != y.stat or x.entries.keys() != y.entries.keys():
            return False
        for name, xi in x.entries.items():
            yi = y.entries[name]
            if isinstance(xi, Directory):
                if not isinstance(yi, Directory) or not same_dir(xi, yi):
                    return False
            elif isinstance(yi, Directory) or not same_leaf(xi, yi):
                return False
        return True

    return same_dir(a.root, b.root)


# --------------------------------------------------------------------------------------------
# OCI layer merge (composefs-rs ``create_filesystem``: ``process_entry`` for every tar entry of
# every layer, then ``transform_for_oci``), with our deliberate differences:
#
# - whiteouts apply to the lower layers only. Each layer is applied in two passes: pass 1 runs
#   the layer's whiteout entries (basename ``.wh.NAME`` removes NAME, ``.wh..wh..opq`` empties
#   the directory) against the tree merged from the lower layers, a whiteout whose parent is
#   missing or not a directory doing nothing; pass 2 runs the other entries in stream order as
#   ``process_entry`` does (whiteout entries are skipped there, whatever their type).
#   Layers written markers-first give composefs-rs's tree.
# - member names: empty and ``.`` components are dropped, ``..`` removes the previous component
#   (an error when there is none); hard-link targets are resolved the same way. All names of a
#   layer are resolved before its first pass.
# - PAX global headers never reach us (``read_entries`` skips them).

ALLOWLIST_ONLY = "allowlist-only"
KEEP_USER_XATTRS = "keep-user-xattrs"
CONTAINER_XATTR_ALLOWLIST = (b"security.capability",)
_WHITEOUT = b".wh."
_OPAQUE = b".wh..opq"  # after the ".wh." prefix


def _debug(value: bytes) -> str:
    """Rust's ``{:?}`` of a path or name, exactly (see ``dumpfile.debug_bytes``)."""
    from composefs._pure.dumpfile import debug_bytes

    return debug_bytes(value)


def _components(path: bytes) -> list[bytes]:
    """The components of a member name, ``..`` resolved lexically."""
    parts: list[bytes] = []
    for component in path.split(b"/"):
        if component in (b"", b"."):
            continue
        if component == b"..":
            if not parts:
                raise ValueError(f"path escapes the image root: {path.decode('utf-8', 'replace')}")
            parts.pop()
        else:
            parts.append(component)
    return parts


def _find_dir(root: Directory, components: Iterable[bytes]) -> Directory | None:
    """The directory at ``components``, or None when it is missing or not a directory."""
    directory = root
    for component in components:
        child = directory.entries.get(component)
        if not isinstance(child, Directory):
            return None
        directory = child
    return directory


def _get_dir(root: Directory, components: Sequence[bytes]) -> Directory:
    """``Directory::get_directory``: errors name the failing component."""
    directory = root
    for component in components:
        child = directory.entries.get(component)
        if child is None:
            raise ValueError(f"Directory entry {_debug(component)} does not exist")
        if not isinstance(child, Directory):
            raise ValueError(f"Directory entry {_debug(component)} is not a subdirectory")
        directory = child
    return directory


def _hardlink_target(root: Directory, link: bytes, components: list[bytes]) -> Leaf:
    """The leaf a hard link names (composefs-rs ``Directory::split`` + ``leaf_id``)."""
    if not components:
        raise ValueError(f"Invalid filename {_debug(link)}")
    directory = root
    for component in components[:-1]:
        child = directory.entries.get(component)
        if child is None:
            # get_directory names the whole parent path here
            raise ValueError(
                f"Directory entry {_debug(b'/' + b'/'.join(components[:-1]))} does not exist"
            )
        if not isinstance(child, Directory):
            raise ValueError(f"Directory entry {_debug(component)} is not a subdirectory")
        directory = child
    found = directory.entries.get(components[-1])
    if found is None:
        raise ValueError(f"Directory entry {_debug(components[-1])} does not exist")
    if isinstance(found, Directory):
        raise ValueError(f"Directory entry {_debug(components[-1])} is a directory")
    return found


_LEAF_KINDS = {"file": FILE, "symlink": SYMLINK, "char": CHAR, "block": BLOCK, "fifo": FIFO}


def _inode(root: Directory, entry: _EntryTuple, target: list[bytes] | None) -> Directory | Leaf:
    """Step 2 of ``process_entry``: the new inode (a hard link shares its target's leaf)."""
    _, kind, mode, uid, gid, mtime, nsec, size, link, rdev, xattrs, inline, object_id = entry
    if kind == "hardlink":
        return _hardlink_target(root, link or b"", target or [])
    stat = Stat(mode, uid, gid, mtime, nsec, dict(xattrs))
    if kind == "dir":
        return Directory(stat)
    leaf_kind = _LEAF_KINDS.get(kind)
    if leaf_kind is None:
        raise ValueError(f"Unsupported entry type {kind}")
    if leaf_kind == FILE:
        if object_id is not None:
            return Leaf(FILE, stat, digest=object_id, size=size)
        data = inline or b""
        return Leaf(FILE, stat, inline=data, size=len(data))
    if leaf_kind == SYMLINK:
        return Leaf(SYMLINK, stat, target=link or b"")
    return Leaf(leaf_kind, stat, rdev=rdev)


def _apply_layer(fs: FileSystem, entries: Sequence[_EntryTuple]) -> None:
    root = fs.root
    # member names and hard link targets are resolved first, in stream order
    named = []
    for entry in entries:
        link = entry[8]
        target = _components(link) if entry[1] == "hardlink" and link is not None else None
        named.append((_components(entry[0]), target, entry))
    # pass 1: this layer's whiteouts, against the lower layers
    for components, _, _ in named:
        if not components or not components[-1].startswith(_WHITEOUT):
            continue
        directory = _find_dir(root, components[:-1])
        if directory is None:
            continue
        name = components[-1][len(_WHITEOUT) :]
        if name == _OPAQUE:
            directory.entries.clear()
        else:
            directory.entries.pop(name, None)
    # pass 2: everything else, in stream order (process_entry)
    for components, target, entry in named:
        if components and components[-1].startswith(_WHITEOUT):
            continue
        try:
            _process_entry(root, components, target, entry)
        except ValueError as e:
            raise ValueError(f"Processing tar entry: {e}") from None


def _process_entry(
    root: Directory, components: list[bytes], target: list[bytes] | None, entry: _EntryTuple
) -> None:
    if not components:
        if entry[1] != "dir":
            raise ValueError(
                f"Unpacking layer tar: filename {_debug(entry[0])} must be a directory"
            )
        root.stat = Stat(entry[2], entry[3], entry[4], entry[5], entry[6], dict(entry[10]))
        return
    inode = _inode(root, entry, target)
    try:
        directory = _get_dir(root, components[:-1])
    except ValueError as e:
        raise ValueError(f"Error unpacking container layer file {_debug(entry[0])}: {e}") from None
    name = components[-1]
    old = directory.entries.get(name)
    if isinstance(inode, Directory) and isinstance(old, Directory):
        old.stat = inode.stat
    else:
        directory.entries[name] = inode


def _transform_for_oci(fs: FileSystem, xattrs: str) -> None:
    """``FileSystem::transform_for_oci``."""
    root = fs.root
    usr = _get_dir(root, [b"usr"])
    root.stat = usr.stat.copy()
    run = root.entries.get(b"run")
    if run is not None:
        if not isinstance(run, Directory):
            raise ValueError(f"Directory entry {_debug(b'run')} is not a subdirectory")
        run.stat.mtime = usr.stat.mtime
        run.stat.mtime_nsec = usr.stat.mtime_nsec
        run.entries.clear()
    keep_user = xattrs == KEEP_USER_XATTRS

    def keep(name: bytes) -> bool:
        return name in CONTAINER_XATTR_ALLOWLIST or (keep_user and name.startswith(b"user."))

    stack = [root]
    while stack:
        directory = stack.pop()
        stat = directory.stat
        if stat.xattrs:
            stat.xattrs = {k: v for k, v in stat.xattrs.items() if keep(k)}
        for inode in directory.entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            elif inode.stat.xattrs:
                inode.stat.xattrs = {k: v for k, v in inode.stat.xattrs.items() if keep(k)}


def _check_xattrs_mode(xattrs: str) -> None:
    if xattrs not in (ALLOWLIST_ONLY, KEEP_USER_XATTRS):
        raise ValueError(
            f"invalid xattr filtering mode {_debug(str(xattrs).encode())} "
            f'(expected "{ALLOWLIST_ONLY}" or "{KEEP_USER_XATTRS}")'
        )


def merge(
    streams: Sequence[bytes | bytearray | memoryview], xattrs: str = ALLOWLIST_ONLY
) -> FileSystem:
    """Merges layer splitstream files (bottom first) into one tree, then applies
    ``transform_for_oci``. Raises ``ValueError``."""
    from composefs._pure import tar_split

    _check_xattrs_mode(xattrs)
    fs = FileSystem(Directory(Stat()))
    for stream in streams:
        _apply_layer(fs, tar_split.read_entries(stream))
    _transform_for_oci(fs, xattrs)
    return fs


def merge_layers(
    streams: Sequence[bytes | bytearray | memoryview],
    xattrs: str = ALLOWLIST_ONLY,
    raw_modes: bool = True,
) -> bytes:
    """The dumpfile of the merged layers, as ``cfsctl oci dump`` prints it (``raw_modes``
    False: MODE is ``type | (mode & 0o7777)``)."""
    from composefs._pure import dumpfile

    return dumpfile.write(merge(streams, xattrs), raw_modes)


def mkfs_layers(
    streams: Sequence[bytes | bytearray | memoryview],
    xattrs: str = ALLOWLIST_ONLY,
    versions: Sequence[int] = (1,),
) -> list[bytes]:
    """Merges the layers and returns the EROFS image of each format in ``versions``, written
    straight from the merged tree."""
    from composefs._pure import erofs

    for v in versions:
        if v not in (0, 1, 2):
            raise ValueError(f"unsupported EROFS format version {v} (expected 0, 1 or 2)")
    fs = merge(streams, xattrs)
    return [erofs.write(fs, v) for v in versions]


# Reading a directory on disk (composefs-rs ``read_filesystem``): see ``_pure/fs.py``.
from composefs._pure.fs import mkfs_directory as mkfs_directory  # noqa: E402
from composefs._pure.fs import scan_directory as scan_directory  # noqa: E402
