"""Reading a directory on disk into the composefs tree model (composefs-rs ``fs.rs``
``read_filesystem``), and the OCI transform applied before an image is built from it
(composefs-rs ``FileSystem::transform_for_oci``).

:func:`read_directory` follows composefs-rs 0.9 exactly:

* every entry is examined with its own descriptor (``O_NOFOLLOW``); directories depth-first,
  their entries in byte order of the names; mount points are crossed like any directory;
* ``Stat``: ``st_mode & 0o7777``, uid, gid, mtime seconds and nanoseconds, and every extended
  attribute (read through ``/proc/self/fd/N``, so a symlink's own xattrs);
* every non-directory is keyed by ``(st_dev, st_ino)``, whatever its link count: a second
  name for the same inode gets the *same* :class:`Leaf` (a hard link);
* regular files of at most ``INLINE_CONTENT_MAX`` (64) bytes are stored inline; larger ones
  are external, named by their fs-verity digest, and copied into the repository's object
  store when a repository is given;
* symlinks keep their target, devices their ``st_rdev``; fifos and sockets are kept.

:func:`oci_transform` then makes the tree what ``cfsctl create-image`` commits by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat as statmod
from collections.abc import Iterator
from typing import Any

from composefs import fsverity
from composefs._pure.fs import _read_small
from composefs._pure.merge import CONTAINER_XATTR_ALLOWLIST, transform_for_oci
from composefs._pure.tree import Directory, FileSystem, Leaf, Stat
from composefs.constants import ALLOWLIST_ONLY, INLINE_CONTENT_MAX, XATTR_MODES
from composefs.errors import ComposefsError, FilesystemError
from composefs.fsverity import AlgorithmLike
from composefs.repository import Repository

__all__ = [
    "CONTAINER_XATTR_ALLOWLIST",
    "FilesystemError",
    "oci_transform",
    "read_directory",
]


def _xattrs(fd: int) -> dict[bytes, bytes]:
    # like composefs-rs: through the magic link, which also works for O_PATH descriptors and
    # reaches a symlink's own attributes
    path = f"/proc/self/fd/{fd}"
    names = sorted(os.fsencode(name) for name in os.listxattr(path))
    return {name: os.getxattr(path, name) for name in names}


def _stat(fd: int, st: os.stat_result) -> Stat:
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    return Stat(
        mode=st.st_mode & 0o7777,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=sec,
        mtime_nsec=nsec,
        xattrs=_xattrs(fd),
    )


class _Scanner:
    def __init__(self, repo: Repository | None, algorithm: AlgorithmLike) -> None:
        self.repo = repo
        self.algorithm = algorithm
        self.inodes: dict[tuple[int, int], Leaf] = {}

    def directory(self, name: bytes, where: bytes) -> Directory:
        """The tree at ``where``, depth-first in name order, without recursion: one frame per
        open directory (``[fd, key, directory, entries left, name, path]``); at most
        ``_MAX_OPEN_DIRS`` keep their descriptor, the others are opened again through
        ``..`` (checked to be the same directory) when the scan comes back to them."""
        stack = [self._open(None, name, where)]
        try:
            while True:
                top = stack[-1]
                fd, _, directory, children, _, path = top
                child = next(children, None)
                if child is None:
                    stack.pop()
                    if not stack:
                        root: Directory = directory
                        return root
                    parent = stack[-1]
                    if parent[0] is None:
                        with _scanning("directory", parent[5]):
                            parent[0] = _reopen(fd, parent[1], parent[5])
                    os.close(fd)
                    top[0] = None
                    parent[2].entries[top[4]] = directory
                    continue
                child_name, is_dir = child
                sub = os.path.join(path, child_name)
                if is_dir:
                    stack.append(self._open(fd, child_name, sub))
                    if len(stack) > _MAX_OPEN_DIRS:
                        old = stack[-1 - _MAX_OPEN_DIRS]
                        if old[0] is not None:
                            os.close(old[0])
                            old[0] = None
                else:
                    directory.entries[child_name] = self.leaf(fd, child_name, sub)
        finally:
            for frame in stack:
                if frame[0] is not None:
                    os.close(frame[0])

    def _open(self, parent: int | None, name: bytes, where: bytes) -> list[Any]:
        with _scanning("directory", where):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(os.fsdecode(name), flags, dir_fd=parent)
            try:
                st = os.fstat(fd)
                if not statmod.S_ISDIR(st.st_mode):  # pragma: no cover - O_DIRECTORY: always
                    raise FilesystemError(
                        f"{_show(where)}: File type changed between readdir() and fstat()"
                    )
                directory = Directory(_stat(fd, st))
                children = iter(sorted(_list(fd)))
            except BaseException:
                os.close(fd)
                raise
        return [fd, (st.st_dev, st.st_ino), directory, children, name, where]

    def leaf(self, parent: int, name: bytes, where: bytes) -> Leaf:
        with _scanning("leaf", where):
            return self._leaf(parent, name, where)

    def _leaf(self, parent: int, name: bytes, where: bytes) -> Leaf:
        st = os.stat(os.fsdecode(name), dir_fd=parent, follow_symlinks=False)
        regular = statmod.S_ISREG(st.st_mode)
        # O_NONBLOCK: an entry that turned into a fifo since the lstat must not block us
        flags = (os.O_RDONLY | os.O_NONBLOCK) if regular else os.O_PATH
        fd = os.open(os.fsdecode(name), flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if statmod.S_ISREG(st.st_mode) != regular or statmod.S_ISDIR(st.st_mode):
                raise FilesystemError(
                    f"{_show(where)}: File type changed between readdir() and fstat()"
                )
            key = (st.st_dev, st.st_ino)
            known = self.inodes.get(key)
            if known is not None:
                return known
            leaf = self.content(fd, st, _stat(fd, st))
            self.inodes[key] = leaf
            return leaf
        finally:
            os.close(fd)

    def content(self, fd: int, st: os.stat_result, stat: Stat) -> Leaf:
        mode = st.st_mode
        if statmod.S_ISREG(mode):
            size = st.st_size
            if size <= INLINE_CONTENT_MAX:
                return Leaf("file", stat, inline=_read_small(fd, size), size=size)
            if self.repo is not None:
                os.set_blocking(fd, True)
                with os.fdopen(os.dup(fd), "rb") as f:
                    digest = self.repo.ensure_object_from_stream(f, size)
            else:
                digest = fsverity.digest_fd(fd, self.algorithm)
            return Leaf("file", stat, digest=digest, size=size)
        if statmod.S_ISLNK(mode):
            return Leaf("symlink", stat, target=os.readlink(b"", dir_fd=fd))
        if statmod.S_ISCHR(mode):
            return Leaf("char", stat, rdev=st.st_rdev)
        if statmod.S_ISBLK(mode):
            return Leaf("block", stat, rdev=st.st_rdev)
        if statmod.S_ISFIFO(mode):
            return Leaf("fifo", stat)
        if statmod.S_ISSOCK(mode):
            return Leaf("socket", stat)
        raise FilesystemError(f"unknown file type {mode:o}")  # pragma: no cover


#: directories a scan keeps open at once (see :meth:`_Scanner.directory`)
_MAX_OPEN_DIRS = 64


def _reopen(child_fd: int, key: tuple[int, int], where: bytes) -> int:
    """A directory again, through ``..`` of its child: it must be the one first opened."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("..", flags, dir_fd=child_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != key:
        os.close(fd)
        raise FilesystemError(f"{_show(where)}: directory moved during the scan")
    return fd


@contextlib.contextmanager
def _scanning(kind: str, where: bytes) -> Iterator[None]:
    """Names the entry an ``OSError`` (or a repository error) happened on, once."""
    try:
        yield
    except FilesystemError:
        raise
    except (OSError, ComposefsError) as e:
        raise FilesystemError(f"Scanning {kind} {_show(where)}") from e


def _list(fd: int) -> Iterator[tuple[bytes, bool]]:
    with os.scandir(fd) as it:
        for entry in it:
            yield os.fsencode(entry.name), entry.is_dir(follow_symlinks=False)


def _show(path: bytes) -> str:
    return os.fsdecode(path)


def read_directory(
    path: str | os.PathLike[str] | bytes,
    repo: Repository | None = None,
    *,
    algorithm: AlgorithmLike | None = None,
) -> FileSystem:
    """Reads the directory tree at ``path`` into a :class:`FileSystem` (composefs-rs
    ``read_filesystem``).

    Files larger than 64 bytes become external: their fs-verity digest is computed with
    ``algorithm`` (default: the repository's, else SHA-256) and, when ``repo`` is given, the
    content is stored as an object of that repository. ``path`` itself must be a directory,
    not a symlink to one (``O_NOFOLLOW``, as composefs-rs).

    Raises :class:`FilesystemError` chained to the failing system call.
    """
    if repo is not None:
        if algorithm is not None and fsverity._name(algorithm) != repo.algorithm.hash_name:
            raise ValueError(
                f"algorithm {fsverity._name(algorithm)} does not match the repository's "
                f"({repo.algorithm})"
            )
        alg: AlgorithmLike = repo.algorithm
    else:
        alg = algorithm if algorithm is not None else "sha256"
        fsverity._name(alg)  # validates
    raw = os.fsencode(path)
    scanner = _Scanner(repo, alg)
    try:
        root = scanner.directory(raw, raw)
    except FilesystemError as e:
        raise FilesystemError(f"Reading filesystem from {os.fsdecode(raw)}") from e
    return FileSystem(root)


# -- the OCI transform ---------------------------------------------------------------------


def _walk_stats(fs: FileSystem) -> Iterator[Stat]:
    """Every directory's stat, then each leaf's stat once (hard links share one)."""
    seen: set[int] = set()
    leaves: list[Leaf] = []
    stack = [fs.root]
    while stack:
        directory = stack.pop()
        yield directory.stat
        for entry in directory.entries.values():
            if isinstance(entry, Directory):
                stack.append(entry)
            elif id(entry) not in seen:
                seen.add(id(entry))
                leaves.append(entry)
    for leaf in leaves:
        yield leaf.stat


def oci_transform(fs: FileSystem, xattrs: str = ALLOWLIST_ONLY) -> FileSystem:
    """composefs-rs ``transform_for_oci``, in place (``fs`` is also returned):

    1. the root directory takes ``/usr``'s mode, uid, gid, mtime and xattrs (``/usr`` must
       exist and be a directory);
    2. ``/run``, if present, is emptied and gets ``/usr``'s mtime (a non-directory ``/run``
       is an error);
    3. xattrs are filtered on every inode: ``allowlist-only`` keeps ``security.capability``
       only, ``keep-user-xattrs`` also keeps ``user.*``.
    """
    if xattrs not in XATTR_MODES:
        raise ValueError(f"unknown xattr filtering mode {xattrs!r} (expected one of {XATTR_MODES})")
    try:
        transform_for_oci(fs, xattrs)  # the layer merge's own transform
    except ValueError as e:
        raise FilesystemError(str(e)) from None
    return fs


# -- mkcomposefs's options -----------------------------------------------------------------


def break_hardlinks(fs: FileSystem) -> FileSystem:
    """Gives every name of a hard-linked file its own inode (C mkcomposefs's default for a
    directory source), in place; ``fs`` is also returned."""
    seen: set[int] = set()
    # depth-first, entries in the directories' order (iterative: no recursion on the depth)
    stack = [(fs.root, iter(list(fs.root.entries.items())))]
    while stack:
        d, items = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        name, inode = item
        if isinstance(inode, Directory):
            stack.append((inode, iter(list(inode.entries.items()))))
        elif id(inode) in seen:
            d.entries[name] = dataclasses.replace(inode, stat=inode.stat.copy())
        else:
            seen.add(id(inode))
    return fs


def mkcomposefs_transform(
    fs: FileSystem,
    *,
    skip_xattrs: bool = False,
    user_xattrs: bool = False,
    use_epoch: bool = False,
    skip_devices: bool = False,
) -> FileSystem:
    """C mkcomposefs's ``--skip-xattrs``, ``--user-xattrs``, ``--use-epoch`` and
    ``--skip-devices``, in place; ``fs`` is also returned."""
    if skip_xattrs or user_xattrs or use_epoch:
        for st in _walk_stats(fs):
            if skip_xattrs:
                st.xattrs = {}
            elif user_xattrs:
                st.xattrs = {k: v for k, v in st.xattrs.items() if k.startswith(b"user.")}
            if use_epoch:
                st.mtime, st.mtime_nsec = 0, 0
    if skip_devices:
        stack = [fs.root]
        while stack:
            d = stack.pop()
            for name in list(d.entries):
                inode = d.entries[name]
                if isinstance(inode, Directory):
                    stack.append(inode)
                elif inode.kind in ("block", "char"):
                    del d.entries[name]
    return fs
