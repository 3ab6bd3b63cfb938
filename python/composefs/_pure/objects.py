"""Writing objects into a repository's ``objects/`` directory: the Python twin of
``rust/objects.rs``, used by the repository, the pure layer splitter and the pure directory
scanner.

* the content goes to an ``O_TMPFILE`` in ``objects/`` (mode 0644 & ~umask), or, where the
  filesystem has no ``O_TMPFILE``, to ``objects/.tmp-object-<12 alnum>`` (:class:`TmpFile`);
* its fs-verity digest is computed while it is written (:class:`ObjectWriter`);
* an object of the same name and size already there is kept (:attr:`Stored.PRESENT`); else
  the file is reopened read-only, fs-verity enabled on it and the kernel's measurement checked
  against our digest (a secure store requires that, an insecure one tolerates "not supported"),
  ``xx/`` is created (0755) and the file linked in through ``/proc/self/fd``, or renamed with
  ``RENAME_NOREPLACE`` for the named fallback (:attr:`Stored.WRITTEN`; ``EEXIST`` means
  another writer won the race: ``PRESENT``).

:meth:`ObjectStore.ensure` is the other path, for data whose id is known first (composefs-rs's
``ensure_object``): an existing object is verified rather than trusted by size, and the
temporary file is made in ``xx/`` (0777/0666 & ~umask).

Errors are those of the backends: :class:`OSError` for failed system calls, :class:`ValueError`
for a digest mismatch. The repository subclasses :class:`ObjectStore` to raise its own error
types from the fs-verity steps (the ``_enable_verity``/``_measure_verity``/``_mismatch``
hooks).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import secrets
import string
from typing import Protocol

from composefs._linux import rename_noreplace
from composefs._pure import fsverity
from composefs.object_ids import object_pathname

__all__ = ["ObjectStore", "ObjectWriter", "Stored", "TmpFile", "object_pathname", "open_tmpfile"]

Buffer = bytes | bytearray | memoryview

_TMP_ALPHABET = string.ascii_letters + string.digits
#: ``O_TMPFILE`` is not supported by the filesystem (or the kernel).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
#: fs-verity is not supported by the filesystem.
_NOT_SUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP)


class Stored(enum.Enum):
    """What happened to an object."""

    #: A new file was linked into ``objects/``.
    WRITTEN = "written"
    #: An object of that name (and size) was there already; ours was discarded.
    PRESENT = "present"


class _Hasher(Protocol):
    @property
    def size(self) -> int: ...

    def update(self, data: Buffer, /) -> None: ...

    def digest(self) -> bytes: ...


def random_suffix() -> str:
    """12 random alphanumeric characters (as composefs-rs' ``generate_tmpname``)."""
    return "".join(secrets.choice(_TMP_ALPHABET) for _ in range(12))


def write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def open_tmpfile(dir_fd: int, mode: int = 0o644) -> tuple[int, str | None]:
    """A new file in ``dir_fd``: anonymous (``O_TMPFILE``), else ``.tmp-object-XXXXXXXXXXXX``.

    Returns the read-write descriptor and the name (``None`` for an anonymous file).
    """
    try:
        return os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, mode, dir_fd=dir_fd), None
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
    for _ in range(16):
        name = ".tmp-object-" + random_suffix()
        try:
            fd = os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode, dir_fd=dir_fd
            )
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError(errno.EEXIST, "could not create a uniquely-named temporary file")


class TmpFile:
    """An anonymous (``O_TMPFILE``) or, where unsupported, named temporary file in a directory.

    ``fd`` is the file's only open descriptor: read-write at first, read-only after
    :meth:`reopen_readonly` (fs-verity can only be enabled with no writable fd open).
    """

    __slots__ = ("dir_fd", "fd", "name")

    def __init__(self, dir_fd: int, mode: int = 0o644) -> None:
        self.dir_fd = dir_fd
        self.fd, self.name = open_tmpfile(dir_fd, mode)

    def reopen_readonly(self) -> int:
        ro = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(self.fd)
        self.fd = ro
        return ro

    def link_new(self, name: str, dir_fd: int) -> None:
        """Gives the file its final name; ``FileExistsError`` if the name is taken."""
        if self.name is None:
            os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        else:
            rename_noreplace(self.dir_fd, self.name, dir_fd, name)
            self.name = None

    def link(self, name: str, dir_fd: int) -> Stored:
        """Gives the file its final name; an existing file of that name wins (dedup)."""
        try:
            self.link_new(name, dir_fd)
        except FileExistsError:
            return Stored.PRESENT
        return Stored.WRITTEN

    def discard(self) -> None:
        """Closes the file; a named one that was not linked is removed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            self.name = None


class ObjectStore:
    """An ``objects/`` directory to store objects in (the descriptor stays the caller's).

    ``written``, ``written_bytes`` and ``present`` count what :meth:`ObjectWriter.finish` did.
    """

    __slots__ = ("_algorithm", "_dir_fd", "_secure", "present", "written", "written_bytes")

    def __init__(self, objects_fd: int, algorithm: str, secure: bool) -> None:
        self._dir_fd = objects_fd
        self._algorithm = algorithm
        self._secure = secure
        self.written = 0
        self.written_bytes = 0
        self.present = 0

    @property
    def algorithm(self) -> str:
        """The fs-verity algorithm of the repository (``sha256`` or ``sha512``)."""
        return self._algorithm

    @property
    def secure(self) -> bool:
        return self._secure

    @property
    def dir_fd(self) -> int:
        return self._dir_fd

    # -- the streaming path -------------------------------------------------------------------

    def create(self) -> ObjectWriter:
        """Starts a new object."""
        return ObjectWriter(self, TmpFile(self._dir_fd), self._new_hasher())

    def store(self, data: Buffer) -> tuple[bytes, Stored]:
        """Stores ``data`` as one object; returns its id and what happened."""
        writer = self.create()
        try:
            writer.write(data)
            return writer.finish()
        finally:
            writer.discard()

    def _finish(self, tmp: TmpFile, object_id: bytes, size: int) -> Stored:
        """Links ``tmp`` in as ``object_id`` unless an object of that name and size exists."""
        dir_fd = self._dir_fd
        path = object_pathname(object_id)
        try:
            st = os.stat(path, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            pass
        else:
            if st.st_size == size:
                self.present += 1
                return Stored.PRESENT
        # fs-verity can only be enabled with no writable descriptor open
        self._check_verity(tmp.reopen_readonly(), object_id)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path[:2], 0o755, dir_fd=dir_fd)
        stored = tmp.link(path, dir_fd)
        if stored is Stored.PRESENT:
            self.present += 1  # a concurrent writer won
        else:
            self.written += 1
            self.written_bytes += size
        return stored

    # -- the id-first path --------------------------------------------------------------------

    def ensure(self, object_id: bytes, data: Buffer) -> Stored:
        """Stores ``data``, whose id the caller computed, unless the object exists (then it is
        verified: fs-verity, if any, must match; a secure store requires it)."""
        dir_fd = self._dir_fd
        name = object_pathname(object_id)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        else:
            try:
                self._check_existing(fd, object_id)
            finally:
                os.close(fd)
            return Stored.PRESENT
        subdir = name[:2]
        with contextlib.suppress(FileExistsError):
            os.mkdir(subdir, 0o777, dir_fd=dir_fd)
        sub_fd = os.open(subdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            tmp = TmpFile(sub_fd, 0o666)
            try:
                write_all(tmp.fd, data)
                self._check_verity(tmp.reopen_readonly(), object_id)
                return tmp.link(name[3:], sub_fd)
            finally:
                tmp.discard()
        finally:
            os.close(sub_fd)

    # -- fs-verity (hooks the repository overrides to raise its own errors) -----------------

    def _new_hasher(self) -> _Hasher:
        return fsverity.Hasher(self._algorithm)

    def _check_verity(self, ro_fd: int, object_id: bytes) -> None:
        """Enables fs-verity on a new object and double-checks the kernel's digest."""
        if not self._enable_verity(ro_fd):
            return
        measured = self._measure_verity(ro_fd)
        if measured is not None and measured != object_id:
            raise self._mismatch("Double-checking verity digest", object_id, measured)

    def _check_existing(self, fd: int, object_id: bytes) -> None:
        """An object already stored: its fs-verity digest (if any) must be its name."""
        measured = self._measure_verity(fd)
        if measured is not None and measured != object_id:
            raise self._mismatch("Verifying existing object integrity", object_id, measured)

    def _enable_verity(self, fd: int) -> bool:
        """Enables fs-verity on ``fd``; ``False`` when an insecure store's filesystem does
        not support it."""
        try:
            fsverity.enable_verity(fd, self._algorithm)
        except OSError as e:
            if e.errno in _NOT_SUPPORTED and not self._secure:
                return False
            if e.errno != errno.EEXIST:
                raise
        return True

    def _measure_verity(self, fd: int) -> bytes | None:
        """The kernel's digest; ``None`` (insecure stores only) when fs-verity is off."""
        try:
            _, measured = fsverity.measure_verity(fd, self._algorithm)
        except OSError as e:
            if e.errno in (errno.ENODATA, *_NOT_SUPPORTED) and not self._secure:
                return None
            raise
        return measured

    def _mismatch(self, what: str, expected: bytes, found: bytes) -> Exception:
        return ValueError(f"{what}: Expected digest {expected.hex()} but found {found.hex()}")


class ObjectWriter:
    """One object being written: :meth:`write` its content, then :meth:`finish`; a writer not
    finished must be :meth:`discard`-ed (a finished one may be: that does nothing)."""

    __slots__ = ("_hasher", "_store", "_tmp")

    def __init__(self, store: ObjectStore, tmp: TmpFile, hasher: _Hasher) -> None:
        self._store = store
        self._tmp = tmp
        self._hasher = hasher

    def write(self, data: Buffer) -> None:
        """Appends ``data`` (written, then hashed)."""
        write_all(self._tmp.fd, data)
        self._hasher.update(data)

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._hasher.size

    def finish(self) -> tuple[bytes, Stored]:
        """Completes the object: enables fs-verity if possible, links it in; returns its id
        and what happened."""
        object_id = self._hasher.digest()
        try:
            return object_id, self._store._finish(self._tmp, object_id, self._hasher.size)
        finally:
            self._tmp.discard()

    def discard(self) -> None:
        self._tmp.discard()
