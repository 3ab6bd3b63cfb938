"""The OCI layer merge (composefs-rs ``composefs_oci::image::create_filesystem``): layer
splitstream files -> one tree (:mod:`composefs._pure.tree`) -> dumpfile or EROFS images. The
pure twin of ``rust/merge.rs``, backend module ``merge``; :func:`transform_for_oci` is also
used by the directory scanner (:mod:`composefs._pure.fs`).

Above the model, the dumpfile writer, the EROFS writer and the layer reader (``tar_split``)
in the layering of ``docs/internals.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from composefs._contract import TarEntry
from composefs._pure import dumpfile, erofs, tar_split
from composefs._pure.tree import (
    BLOCK,
    CHAR,
    FIFO,
    FILE,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
)
from composefs.constants import ALLOWLIST_ONLY, EROFS_VERSIONS, KEEP_USER_XATTRS, XATTR_MODES

# The backend contract; ``merge``, ``transform_for_oci`` and the checks are pure-only helpers
# (used by the directory scanner and ``composefs.fs``).
__all__ = ["merge_layers", "merge_layers_to_fd", "mkfs_layers"]

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

#: The xattrs every mode keeps (composefs-rs ``transform_for_oci``).
CONTAINER_XATTR_ALLOWLIST = (b"security.capability",)
_WHITEOUT = b".wh."
_OPAQUE = b".wh..opq"  # after the ".wh." prefix


_debug = dumpfile.debug_bytes


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


def _stat(entry: TarEntry) -> Stat:
    return Stat(entry.mode, entry.uid, entry.gid, entry.mtime, entry.mtime_nsec, dict(entry.xattrs))


def _inode(root: Directory, entry: TarEntry, target: list[bytes] | None) -> Directory | Leaf:
    """Step 2 of ``process_entry``: the new inode (a hard link shares its target's leaf)."""
    kind = entry.kind
    if kind == "hardlink":
        return _hardlink_target(root, entry.link_target or b"", target or [])
    stat = _stat(entry)
    if kind == "dir":
        return Directory(stat)
    leaf_kind = _LEAF_KINDS.get(kind)
    if leaf_kind is None:
        raise ValueError(f"Unsupported entry type {kind}")
    if leaf_kind == FILE:
        if entry.object_id is not None:
            return Leaf(FILE, stat, digest=entry.object_id, size=entry.size)
        data = entry.inline or b""
        return Leaf(FILE, stat, inline=data, size=len(data))
    if leaf_kind == SYMLINK:
        return Leaf(SYMLINK, stat, target=entry.link_target or b"")
    return Leaf(leaf_kind, stat, rdev=entry.rdev)


def _normalized(path: bytes) -> bytes:
    """A member name as ``/c1/c2/...`` (``b""`` for the root), ``..`` resolved (see
    :func:`_components`); most names already are, and are returned as they are."""
    if (
        path.startswith(b"/")
        and not path.endswith((b"/", b"/.", b"/.."))
        and b"//" not in path
        and b"/./" not in path
        and b"/../" not in path
    ):
        return path
    components = _components(path)
    return b"/" + b"/".join(components) if components else b""


def _is_whiteout(path: bytes) -> bool:
    return path.rpartition(b"/")[2].startswith(_WHITEOUT)


def _apply_layer(fs: FileSystem, entries: Sequence[TarEntry]) -> None:
    root = fs.root
    # member names and hard link targets are resolved first, in stream order (errors before
    # any change); only the names are kept, not their components (a deep tree would make that
    # quadratic)
    named: list[bytes] = []
    for entry in entries:
        named.append(_normalized(entry.path))
        if entry.kind == "hardlink" and entry.link_target is not None:
            _normalized(entry.link_target)
    # pass 1: this layer's whiteouts, against the lower layers
    for path in named:
        if not path or not _is_whiteout(path):
            continue
        parent, _, name = path.rpartition(b"/")
        directory = _find_dir(root, parent.split(b"/")[1:])
        if directory is None:
            continue
        name = name[len(_WHITEOUT) :]
        if name == _OPAQUE:
            directory.entries.clear()
        else:
            directory.entries.pop(name, None)
    # pass 2: everything else, in stream order (process_entry); ``cache`` holds the previous
    # entry's parent directory and the entry itself when a directory: the next entry's parent
    # is usually one of them, found without a walk from the root
    cache: dict[bytes, Directory] = {}
    for path, entry in zip(named, entries, strict=True):
        if path and _is_whiteout(path):
            continue
        try:
            _process_entry(root, path, entry, cache)
        except ValueError as e:
            raise ValueError(f"Processing tar entry: {e}") from None


def _process_entry(
    root: Directory, path: bytes, entry: TarEntry, cache: dict[bytes, Directory]
) -> None:
    if not path:
        if entry.kind != "dir":
            raise ValueError(
                f"Unpacking layer tar: filename {_debug(entry.path)} must be a directory"
            )
        root.stat = _stat(entry)
        return
    target = None
    if entry.kind == "hardlink" and entry.link_target is not None:
        target = _components(entry.link_target)
    inode = _inode(root, entry, target)
    parent, _, name = path.rpartition(b"/")
    directory = cache.get(parent)
    if directory is None:
        try:
            directory = _get_dir(root, parent.split(b"/")[1:])
        except ValueError as e:
            raise ValueError(
                f"Error unpacking container layer file {_debug(entry.path)}: {e}"
            ) from None
    old = directory.entries.get(name)
    if isinstance(inode, Directory) and isinstance(old, Directory):
        old.stat = inode.stat
        inode = old
    else:
        directory.entries[name] = inode
    # only this entry's parent and itself: a directory it replaced may have held the others
    cache.clear()
    cache[parent] = directory
    if isinstance(inode, Directory):
        cache[path] = inode


def transform_for_oci(fs: FileSystem, xattrs: str) -> None:
    """``FileSystem::transform_for_oci``, in place: the root takes ``/usr``'s metadata,
    ``/run`` is emptied, xattrs are filtered (``xattrs``: one of ``XATTR_MODES``)."""
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


def check_xattrs_mode(xattrs: str) -> None:
    """Raises ``ValueError`` unless ``xattrs`` is one of ``XATTR_MODES``."""
    if xattrs not in XATTR_MODES:
        raise ValueError(
            f"invalid xattr filtering mode {_debug(str(xattrs).encode())} "
            f'(expected "{ALLOWLIST_ONLY}" or "{KEEP_USER_XATTRS}")'
        )


def merge(
    streams: Sequence[bytes | bytearray | memoryview], xattrs: str = ALLOWLIST_ONLY
) -> FileSystem:
    """Merges layer splitstream files (bottom first) into one tree, then applies
    ``transform_for_oci``. Raises ``ValueError``."""
    check_xattrs_mode(xattrs)
    fs = FileSystem(Directory(Stat()))
    for stream in streams:
        _apply_layer(fs, tar_split.read_entries(stream))
    transform_for_oci(fs, xattrs)
    return fs


def merge_layers(
    streams: Sequence[bytes | bytearray | memoryview],
    xattrs: str = ALLOWLIST_ONLY,
    raw_modes: bool = True,
) -> bytes:
    """The dumpfile of the merged layers, as ``cfsctl oci dump`` prints it (``raw_modes``
    False: MODE is ``type | (mode & 0o7777)``)."""
    return dumpfile.write(merge(streams, xattrs), raw_modes)


def merge_layers_to_fd(
    streams: Sequence[bytes | bytearray | memoryview],
    fd: int,
    xattrs: str = ALLOWLIST_ONLY,
    raw_modes: bool = True,
) -> int:
    """:func:`merge_layers`, written to the file descriptor ``fd`` as it is produced (in
    writes of about 1 MiB, whole lines); returns the number of bytes written. ``OSError``
    when a write fails."""
    return dumpfile.write_to_fd(merge(streams, xattrs), fd, raw_modes)


def mkfs_layers(
    streams: Sequence[bytes | bytearray | memoryview],
    xattrs: str = ALLOWLIST_ONLY,
    versions: Sequence[int] = (1,),
) -> list[bytes]:
    """Merges the layers and returns the EROFS image of each format in ``versions``, written
    straight from the merged tree."""
    check_versions(versions)
    fs = merge(streams, xattrs)
    return [erofs.write(fs, v) for v in versions]


def check_versions(versions: Iterable[int]) -> None:
    """Raises ``ValueError`` for a version not in ``EROFS_VERSIONS`` (before any work)."""
    for v in versions:
        if v not in EROFS_VERSIONS:
            raise ValueError(f"unsupported EROFS format version {v} (expected 0, 1 or 2)")
