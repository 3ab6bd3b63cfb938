"""Reading a directory on disk into the tree model (composefs-rs 0.9 ``fs.rs``
``read_filesystem``) and returning its dumpfile or EROFS images: the pure twin of
``rust/fs.rs``, backend module ``fs`` (``scan_directory``, ``mkfs_directory``).

The rules are those of ``python/composefs/fs.py``: the root opened ``O_NOFOLLOW``, entries in
byte order, ``st_mode & 0o7777``, every xattr (a symlink's own too), every non-directory keyed
by ``(st_dev, st_ino)`` (hard links), files of at most ``INLINE_CONTENT_MAX`` bytes inline,
larger ones hashed with fs-verity and, with ``objects_fd``, stored as objects exactly as a layer
import stores them. System call failures raise ``OSError`` naming the entry's path; anything
else raises ``ValueError``. ``threads`` is accepted for the native twin's sake: this one reads
the files one after another.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import stat as statmod
from collections.abc import Iterator, Sequence

from composefs._pure import dumpfile, erofs, fsverity
from composefs._pure.merge import check_versions, check_xattrs_mode, transform_for_oci
from composefs._pure.objects import ObjectStore
from composefs._pure.tree import (
    BLOCK,
    CHAR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
)
from composefs.constants import ALLOWLIST_ONLY, INLINE_CONTENT_MAX

# The backend contract (``read_filesystem`` is a pure-only helper).
__all__ = ["mkfs_directory", "scan_directory"]

_CHUNK = 128 << 10
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _failed(e: OSError, path: bytes) -> OSError:
    """``e`` again, naming ``path`` (the entry being scanned)."""
    return OSError(e.errno, e.strerror or os.strerror(e.errno or 0), os.fsdecode(path))


def _join(base: bytes, name: bytes) -> bytes:
    return os.path.join(base, name)


def _xattrs(source: bytes | int) -> dict[bytes, bytes]:
    """An entry's xattrs: through its descriptor, or its path (not following a symlink)."""
    if isinstance(source, int):
        names = sorted(os.fsencode(n) for n in os.listxattr(source))
        return {n: os.getxattr(source, n) for n in names}
    names = sorted(os.fsencode(n) for n in os.listxattr(source, follow_symlinks=False))
    return {n: os.getxattr(source, n, follow_symlinks=False) for n in names}


def _stat(st: os.stat_result, xattr_source: bytes | int) -> Stat:
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    return Stat(st.st_mode & 0o7777, st.st_uid, st.st_gid, sec, nsec, _xattrs(xattr_source))


def _read_small(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        data = os.read(fd, remaining)
        if not data:
            break
        chunks.append(data)
        remaining -= len(data)
    return b"".join(chunks)


def _changed(path: bytes) -> ValueError:
    return ValueError(f"{os.fsdecode(path)}: File type changed between readdir() and fstat()")


#: directories a scan keeps open at once (see :meth:`_Scanner.directory`)
_MAX_OPEN_DIRS = 64


@dataclasses.dataclass
class _Frame:
    """A directory being read: its descriptor (None while closed), its identity, the tree
    built so far, the entries left to read, its name and path."""

    fd: int | None
    key: tuple[int, int]
    directory: Directory
    children: Iterator[tuple[bytes, bool]]
    name: bytes
    path: bytes


def _reopen_parent(child_fd: int, parent: _Frame) -> int:
    """``parent``'s directory again, through ``..`` of its child: it must be the same."""
    try:
        fd = os.open(b"..", _DIR_FLAGS, dir_fd=child_fd)
    except OSError as e:
        raise _failed(e, parent.path) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != parent.key:
        os.close(fd)
        raise ValueError(f"{os.fsdecode(parent.path)}: directory moved during the scan")
    return fd


class _Scanner:
    def __init__(self, algorithm: str, store: ObjectStore | None) -> None:
        self.algorithm = algorithm
        self.store = store
        self.inodes: dict[tuple[int, int], Leaf] = {}

    def _open(self, parent: int | None, name: bytes, path: bytes) -> _Frame:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise _failed(e, path) from None
        try:
            st = os.fstat(fd)
            directory = Directory(_stat(st, fd))
            children = sorted(_list(fd))
        except OSError as e:
            os.close(fd)
            raise _failed(e, path) from None
        return _Frame(fd, (st.st_dev, st.st_ino), directory, iter(children), name, path)

    def directory(self, name: bytes, path: bytes) -> Directory:
        """The tree at ``path``, depth-first in name order, without recursion: one frame per
        open directory; at most ``_MAX_OPEN_DIRS`` of them keep their descriptor (the others
        are opened again through ``..``, checked to be the same directory)."""
        stack = [self._open(None, name, path)]
        try:
            while True:
                top = stack[-1]
                fd = top.fd
                assert fd is not None
                child = next(top.children, None)
                if child is None:
                    done = stack.pop()
                    if not stack:
                        return done.directory
                    parent = stack[-1]
                    if parent.fd is None:
                        parent.fd = _reopen_parent(fd, parent)
                    os.close(fd)
                    done.fd = None
                    parent.directory.entries[done.name] = done.directory
                    continue
                child_name, is_dir = child
                sub = _join(top.path, child_name)
                if is_dir:
                    stack.append(self._open(fd, child_name, sub))
                    if len(stack) > _MAX_OPEN_DIRS:
                        old = stack[-1 - _MAX_OPEN_DIRS]
                        if old.fd is not None:
                            os.close(old.fd)
                            old.fd = None
                else:
                    top.directory.entries[child_name] = self.leaf(fd, child_name, sub)
        finally:
            for frame in stack:
                if frame.fd is not None:
                    os.close(frame.fd)

    def leaf(self, parent: int, name: bytes, path: bytes) -> Leaf:
        try:
            return self._leaf(parent, name, path)
        except OSError as e:
            raise _failed(e, path) from None

    def _leaf(self, parent: int, name: bytes, path: bytes) -> Leaf:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        mode = st.st_mode
        if statmod.S_ISDIR(mode):
            raise _changed(path)
        if statmod.S_ISREG(mode):
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
            try:
                st = os.fstat(fd)
                if not statmod.S_ISREG(st.st_mode):
                    raise _changed(path)
                key = (st.st_dev, st.st_ino)
                known = self.inodes.get(key)
                if known is not None:
                    return known
                stat = _stat(st, fd)
                size = st.st_size
                if size <= INLINE_CONTENT_MAX:
                    leaf = Leaf(FILE, stat, inline=_read_small(fd, size), size=size)
                else:
                    leaf = Leaf(FILE, stat, digest=self._external(fd), size=size)
            finally:
                os.close(fd)
            self.inodes[key] = leaf
            return leaf
        key = (st.st_dev, st.st_ino)
        known = self.inodes.get(key)
        if known is not None:
            return known
        stat = _stat(st, b"/proc/self/fd/%d/%s" % (parent, name))
        if statmod.S_ISLNK(mode):
            leaf = Leaf(SYMLINK, stat, target=os.readlink(name, dir_fd=parent))
        elif statmod.S_ISCHR(mode):
            leaf = Leaf(CHAR, stat, rdev=st.st_rdev)
        elif statmod.S_ISBLK(mode):
            leaf = Leaf(BLOCK, stat, rdev=st.st_rdev)
        elif statmod.S_ISFIFO(mode):
            leaf = Leaf(FIFO, stat)
        elif statmod.S_ISSOCK(mode):
            leaf = Leaf(SOCKET, stat)
        else:  # pragma: no cover - no other file types exist
            raise ValueError(f"unknown file type {mode:o}")
        self.inodes[key] = leaf
        return leaf

    def _external(self, fd: int) -> bytes:
        """The file's fs-verity digest (read with ``pread`` from 0 to end of file), the
        content stored as an object when there is a store."""
        if self.store is None:
            hasher = fsverity.Hasher(self.algorithm)
            offset = 0
            while True:
                data = os.pread(fd, _CHUNK, offset)
                if not data:
                    return hasher.digest()
                hasher.update(data)
                offset += len(data)
        writer = self.store.create()
        try:
            offset = 0
            while True:
                data = os.pread(fd, _CHUNK, offset)
                if not data:
                    break
                writer.write(memoryview(data))
                offset += len(data)
            return writer.finish()[0]
        finally:
            writer.discard()


def _list(fd: int) -> list[tuple[bytes, bool]]:
    with os.scandir(fd) as it:
        return [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]


def read_filesystem(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None = None,
    *,
    secure: bool = False,
) -> FileSystem:
    """Reads the directory tree at ``path`` (composefs-rs ``read_filesystem``)."""
    fsverity.Hasher(algorithm)  # validates the name
    raw = os.fsencode(path)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    store = None
    if objects_fd is not None:
        objects_fd = operator.index(objects_fd)
        if objects_fd < 0:
            raise ValueError("objects_fd must be a file descriptor")
        store = ObjectStore(objects_fd, algorithm, bool(secure))
    return FileSystem(_Scanner(algorithm, store).directory(raw, raw))


def _scan(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None,
    transform: bool,
    xattrs: str,
    threads: int,
    secure: bool,
) -> FileSystem:
    check_xattrs_mode(xattrs)
    if operator.index(threads) < 0:
        raise ValueError("threads must not be negative")
    fs = read_filesystem(path, algorithm, objects_fd, secure=secure)
    if transform:
        transform_for_oci(fs, xattrs)
    return fs


def scan_directory(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None = None,
    transform: bool = True,
    xattrs: str = ALLOWLIST_ONLY,
    threads: int = 0,
    secure: bool = False,
) -> bytes:
    """The dumpfile of the directory tree at ``path``, as ``cfsctl create-dumpfile`` prints
    it (with ``transform`` False: ``--no-propagate-usr-to-root``)."""
    fs = _scan(path, algorithm, objects_fd, transform, xattrs, threads, secure)
    return dumpfile.write(fs, raw_modes=True)


def mkfs_directory(
    path: str | bytes,
    algorithm: str,
    objects_fd: int | None = None,
    transform: bool = True,
    xattrs: str = ALLOWLIST_ONLY,
    versions: Sequence[int] = (1,),
    threads: int = 0,
    secure: bool = False,
) -> list[bytes]:
    """The EROFS image of each format in ``versions`` of the directory tree at ``path``,
    written straight from the scanned tree."""
    check_versions(versions)
    fs = _scan(path, algorithm, objects_fd, transform, xattrs, threads, secure)
    return [erofs.write(fs, v) for v in versions]
