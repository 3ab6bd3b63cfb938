"""A composefs repository, on disk exactly as composefs-rs 0.9 (cfsctl) lays it out.

::

    <repo>/meta.json                      format version, algorithm, features, EROFS formats
    <repo>/objects/xx/<rest of hex>       content-addressed objects (named by fs-verity digest)
    <repo>/streams/<id> -> ../objects/..  splitstreams, by content identifier
    <repo>/streams/refs/<name> -> ../<id> named stream refs (GC roots)
    <repo>/images/<hex> -> ../objects/..  EROFS images
    <repo>/images/refs/<name> -> ../<hex> named image refs (GC roots)

An open :class:`Repository` holds a shared ``flock`` on the repository directory; garbage
collection takes it exclusively. Objects are written atomically (``O_TMPFILE`` then
``linkat``, or a named temporary file then ``renameat2(RENAME_NOREPLACE)``), so writers never
need a lock. A repository is *secure* when ``meta.json`` has fs-verity enabled: then every
object must have fs-verity too. Otherwise it is *insecure* and digests are computed in
userspace (this is what runs on filesystems without fs-verity).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from typing import IO, BinaryIO

from composefs import fsverity, splitstream
from composefs._linux import syncfs
from composefs._pure.objects import ObjectStore, random_suffix
from composefs._text import printable
from composefs.constants import DEFAULT_EROFS_VERSION, EROFS_VERSIONS
from composefs.errors import (
    ComposefsError,
    FsVerityError,
    InvalidName,
    ObjectDigestMismatch,
    RepositoryError,
    RepositoryEscape,
    RepositoryNotWritable,
    SplitStreamError,
    VerityAlreadyEnabled,
    VerityMissing,
    VerityNotSupported,
)
from composefs.fsck import FsckResult, fsck
from composefs.fsverity import Algorithm, AlgorithmLike
from composefs.object_ids import (
    object_pathname,
    parse_hex,
    parse_hex_id,
    parse_object_pathname,
    to_id,
)
from composefs.repo_metadata import (
    METADATA_FILENAME,
    REPO_FORMAT_VERSION,
    V1_EROFS,
    RepoMetadata,
    read_metadata,
    write_metadata,
)

__all__ = [
    "REPO_FORMAT_VERSION",
    "FsckResult",
    "GcResult",
    "RepoMetadata",
    "Repository",
    "check_name",
    "object_pathname",
    "parse_hex_id",
    "parse_object_pathname",
    "to_id",
]

_COPY_CHUNK = 1 << 20
#: symlinks followed while resolving one name inside the repository (the kernel's limit)
_MAX_LINKS = 40


def check_name(name: str, what: str = "name") -> str:
    """Returns ``name`` if it names something inside the repository, else :class:`InvalidName`.

    Stream, image and ref names are relative paths below ``streams/``, ``images/`` or their
    ``refs/``: ``/`` separates components (``refs/oci/tag``), but a name must not be empty or
    absolute, nor contain a NUL, an empty component (``a//b``, a trailing ``/``), ``.`` or
    ``..``. This is checked before anything is opened.
    """
    if not isinstance(name, str):
        raise InvalidName(f"invalid {what}: expected a string, got {type(name).__name__}")
    why = None
    if not name:
        why = "it is empty"
    elif "\0" in name:
        why = "it contains a NUL character"
    elif name.startswith("/"):
        why = "it is an absolute path"
    else:
        parts = name.split("/")
        if ".." in parts:
            why = "a '..' component would leave the repository"
        elif "." in parts:
            why = "it has a '.' component"
        elif "" in parts:
            why = "it has an empty component"
    if why is not None:
        raise InvalidName(f"invalid {what} {printable(repr(name))}: {why}")
    return name


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class GcResult:
    """What garbage collection removed (or would remove, in a dry run)."""

    objects_removed: int = 0
    objects_bytes: int = 0
    images_pruned: int = 0
    streams_pruned: int = 0
    #: referrer links dropped because their subject manifest is gone (:func:`composefs.oci.gc`)
    referrers_pruned: int = 0
    #: problems cfsctl treats as fatal and we report and step over (dangling refs, stray files)
    warnings: list[str] = dataclasses.field(default_factory=list)


# -- the repository ------------------------------------------------------------------------


class Repository:
    """An open composefs repository; use :meth:`open` or :meth:`init`.

    It holds a shared lock on the repository until :meth:`close` (or the end of a ``with``
    block). Methods are safe to call from several threads.
    """

    def __init__(self, path: str, fd: int, metadata: RepoMetadata, *, secure: bool) -> None:
        self.path = path
        self._fd = fd
        self.metadata = metadata
        self.algorithm = metadata.algorithm
        self._secure = secure
        self._objects_fd: int | None = None
        self._object_store: _RepoObjectStore | None = None

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        algorithm: AlgorithmLike | None = None,
        *,
        insecure: bool = False,
        require_verity: bool = False,
    ) -> Repository:
        """Opens an initialized repository (shared lock held until :meth:`close`)."""
        path = os.fspath(path)
        expected = None if algorithm is None else Algorithm(fsverity._name(algorithm))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            metadata, secure = read_metadata(fd, expected)
            repo = cls(path, fd, metadata, secure=secure and not insecure)
            if require_verity and not repo.secure:
                raise RepositoryError(
                    "repository was not initialized with fs-verity (hint: re-create with "
                    "`composefs init` on a verity-capable filesystem)"
                )
            return repo
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        algorithm: AlgorithmLike = Algorithm.SHA512,
        *,
        insecure: bool = False,
        erofs_version: int = DEFAULT_EROFS_VERSION,
    ) -> tuple[Repository, bool]:
        """Creates a repository (or opens an identical existing one).

        Returns the open repository and whether it was created. ``algorithm`` defaults to
        SHA-512, as ``cfsctl init`` does. Without ``insecure``, ``meta.json`` gets fs-verity,
        which fails on filesystems without it.
        """
        path = os.fspath(path)
        alg = Algorithm(fsverity._name(algorithm))
        wanted = RepoMetadata.new(alg, erofs_version)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise RepositoryError(f"creating the repository directory {path}") from e
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # an existing meta.json is only read (init of a repository we may not write, e.g.
            # a root-owned one, is then the same answer as for any other)
            created = not os.path.lexists(os.path.join(path, METADATA_FILENAME))
            try:
                if created:
                    write_metadata(dfd, wanted, insecure=insecure)
            except FileExistsError:
                created = False
            except PermissionError as e:
                raise RepositoryNotWritable(
                    f"cannot initialize the repository at {path}: not writable"
                ) from e
            except ComposefsError:
                # like composefs-rs: an existing identical meta.json makes init idempotent
                if not os.path.exists(os.path.join(path, METADATA_FILENAME)):
                    raise
                created = False
            if not created:
                with open(os.path.join(path, METADATA_FILENAME), "rb") as f:
                    existing = RepoMetadata.from_json(f.read())
                if not existing.same_config(wanted):
                    raise RepositoryError(
                        "repository already initialized with different configuration "
                        f"(algorithm: {existing.algorithm}, erofs_version: "
                        f"V{existing.format_config[0]}); cannot re-initialize with "
                        f"(algorithm: {alg}, erofs_version: V{erofs_version})"
                    )
        finally:
            os.close(dfd)
        return cls.open(path, alg, insecure=insecure), created

    def duplicate(self) -> Repository:
        """Another handle on this repository, with its own descriptors (the directory's is a
        ``dup``: the same shared lock) and the same settings: for a thread that may outlive
        this handle. Close it when done."""
        fd = os.dup(self.fd)
        return Repository(self.path, fd, self.metadata, secure=self._secure)

    def close(self) -> None:
        if self._objects_fd is not None:
            os.close(self._objects_fd)
            self._objects_fd = None
            self._object_store = None
        if self._fd >= 0:
            os.close(self._fd)  # releases the flock
            self._fd = -1

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "secure" if self._secure else "insecure"
        return f"<Repository {self.path!r} {self.algorithm} {mode}>"

    @property
    def fd(self) -> int:
        """The repository directory's file descriptor."""
        if self._fd < 0:
            raise RepositoryError("repository is closed")
        return self._fd

    @property
    def secure(self) -> bool:
        """Whether fs-verity is required on every object."""
        return self._secure

    def set_insecure(self) -> None:
        """Stops requiring fs-verity for this session (cfsctl's ``--insecure``)."""
        self._secure = False

    @property
    def erofs_version(self) -> int:
        """The default EROFS format of the images this repository writes."""
        return self.metadata.format_config[0]

    def override_erofs_version(self, version: int) -> None:
        """Writes and computes images in format ``version`` only, for this handle (cfsctl's
        global ``--erofs-version``); ``meta.json`` is not changed."""
        if version not in EROFS_VERSIONS:
            raise ValueError(f"unsupported EROFS format version {version}")
        ro = tuple(f for f in self.metadata.read_only_compatible if f != V1_EROFS)
        self.metadata = dataclasses.replace(
            self.metadata,
            erofs_default=version,
            erofs_extra=(),
            has_erofs_formats=True,
            read_only_compatible=ro + ((V1_EROFS,) if version == 1 else ()),
        )

    # -- writability -----------------------------------------------------------------------

    def ensure_writable(self) -> None:
        """Fails with cfsctl's messages when the repository cannot be written."""
        st = os.fstatvfs(self.fd)
        if st.f_flag & os.ST_RDONLY:
            raise RepositoryNotWritable("Repository is not writable: read-only file system")
        if not os.access(".", os.W_OK, dir_fd=self.fd):
            raise RepositoryNotWritable("Repository is not writable") from PermissionError(
                errno.EACCES, os.strerror(errno.EACCES)
            )
        unknown = self.metadata.unknown_ro_compat
        if unknown:
            # composefs-rs 0.9 computes this but does not enforce it; we do (docs/differences.md)
            raise RepositoryNotWritable(
                "Repository is not writable: it requires unknown read-only-compatible "
                f"features {unknown}"
            )

    # -- objects ---------------------------------------------------------------------------

    def _objects(self) -> int:
        if self._objects_fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir("objects", 0o777, dir_fd=self.fd)
            self._objects_fd = os.open(
                "objects", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd
            )
        return self._objects_fd

    def objects_fd(self) -> int:
        """The ``objects/`` directory's file descriptor (created on first use)."""
        return self._objects()

    def object_path(self, object_id: bytes) -> str:
        """Absolute path of an object's file."""
        return os.path.join(self.path, "objects", object_pathname(object_id))

    def has_object(self, object_id: bytes) -> bool:
        try:
            os.stat(f"objects/{object_pathname(object_id)}", dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def open_object(self, object_id: bytes) -> int:
        """Opens an object read-only; when secure, its fs-verity digest must match."""
        fd = os.open(
            f"objects/{object_pathname(object_id)}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd
        )
        try:
            self._check_verity(fd, object_id)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_verity(self, fd: int, expected: bytes) -> None:
        measured: bytes | None
        if self._secure:
            measured = fsverity.measure_verity(fd, self.algorithm)
        else:
            measured = fsverity.measure_verity_opt(fd, self.algorithm)
            if measured is None:
                return
        if measured != expected:
            raise ObjectDigestMismatch(
                f"Expected digest {expected.hex()} but found {measured.hex()}"
            )

    def read_object(self, object_id: bytes) -> bytes:
        fd = self.open_object(object_id)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def object_size(self, object_id: bytes) -> int:
        return os.stat(f"objects/{object_pathname(object_id)}", dir_fd=self.fd).st_size

    def _store(self) -> _RepoObjectStore:
        if self._object_store is None:
            self._object_store = _RepoObjectStore(self)
        return self._object_store

    def ensure_object(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stores ``data`` as an object (if absent) and returns its id."""
        self.ensure_writable()
        object_id = fsverity.digest(data, self.algorithm)
        self._store().ensure(object_id, data)
        return object_id

    def ensure_object_from_stream(self, reader: IO[bytes], size: int | None = None) -> bytes:
        """Stores everything ``reader`` yields as an object, streaming (constant memory)."""
        self.ensure_writable()
        writer = self._store().create()
        try:
            while True:
                chunk = reader.read(_COPY_CHUNK)
                if not chunk:
                    break
                writer.write(chunk)
            if size is not None and writer.size != size:
                raise RepositoryError(f"Expected {size} bytes, got {writer.size}")
            # an object of the same name and size is kept (trusted by size, like composefs-rs)
            object_id, _ = writer.finish()
            return object_id
        finally:
            writer.discard()

    def ensure_object_from_file(self, path: str | os.PathLike[str]) -> bytes:
        with open(path, "rb") as f:
            return self.ensure_object_from_stream(f)

    # -- symlinks --------------------------------------------------------------------------

    def symlink(self, name: str, target: str) -> None:
        """Creates or atomically replaces the repo-relative symlink ``name`` -> ``target``.

        The link's content is relative: one ``..`` per directory of ``name`` beyond the part
        it shares with ``target``.
        """
        check_name(name, "symlink name")
        check_name(target, "symlink target")
        self.ensure_writable()
        self._symlink(name, target)

    def _symlink(self, name: str, target: str) -> None:
        name_parts = name.split("/")
        target_parts = target.split("/")
        common = 0
        while (
            common < len(name_parts) - 1
            and common < len(target_parts) - 1
            and name_parts[common] == target_parts[common]
        ):
            common += 1
        dirs = name_parts[:-1]
        for i in range(1, len(dirs) + 1):
            with contextlib.suppress(FileExistsError):
                os.mkdir("/".join(dirs[:i]), 0o755, dir_fd=self.fd)
        up = len(dirs) - common
        link = "/".join([".."] * up + target_parts[common:])
        _replace_symlink(self.fd, name, link)

    def _readlink(self, name: str) -> str | None:
        """The content of the symlink ``name`` (repo-relative; its directories resolved inside
        the repository), or ``None`` when absent."""
        parent, _, leaf = name.rpartition("/")
        try:
            where = self.resolve(parent) if parent else "."
            return os.readlink(leaf if where == "." else f"{where}/{leaf}", dir_fd=self.fd)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_link(self, name: str) -> str | None:
        """The target of the repo-relative symlink ``name`` (``None`` when absent)."""
        return self._readlink(check_name(name))

    def resolve(self, path: str) -> str:
        """``path`` (repo-relative) with every symlink resolved *inside* the repository.

        Symlinks are followed one component at a time from the repository's directory
        descriptor, as the kernel would, except that an absolute target, or a ``..`` that
        would climb above the repository's root, raises :class:`RepositoryEscape` instead of
        being followed. Missing components raise :class:`FileNotFoundError`. The result names
        no symlink and can be opened with ``O_NOFOLLOW`` relative to :attr:`fd`.
        """
        pending = [p for p in path.split("/") if p not in ("", ".")]
        pending.reverse()
        resolved: list[str] = []
        links = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if not resolved:
                    raise RepositoryEscape(
                        f"{printable(path)}: a symlink leads out of the repository (..)"
                    )
                resolved.pop()
                continue
            here = "/".join([*resolved, part])
            try:
                target = os.readlink(here, dir_fd=self.fd)
            except OSError as e:
                if e.errno == errno.EINVAL:  # not a symlink
                    resolved.append(part)
                    continue
                raise
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            if target.startswith("/") or "\0" in target:
                raise RepositoryEscape(
                    f"{printable(path)}: symlink {printable(here)} points outside the "
                    f"repository ({printable(target)})"
                )
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
        return "/".join(resolved) or "."

    def _open_beneath(self, path: str, flags: int = os.O_RDONLY) -> int:
        """Opens the repo-relative ``path``, following symlinks only inside the repository."""
        return os.open(self.resolve(path), flags | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.fd)

    # -- streams ---------------------------------------------------------------------------

    def has_stream(self, identifier: str) -> bytes | None:
        """The object id of ``streams/<identifier>``, or ``None`` when absent."""
        check_name(identifier, "stream name")
        target = self._readlink(f"streams/{identifier}")
        if target is None:
            return None
        if not target.startswith("../"):
            raise RepositoryError("stream symlink has incorrect prefix")
        return parse_object_pathname(target, self.algorithm)

    def write_stream(
        self, writer: splitstream.Writer, identifier: str | None = None, ref: str | None = None
    ) -> bytes:
        """Stores a finished splitstream and links ``streams/<identifier>`` (and a ref) to it."""
        object_id = self.ensure_object(writer.finish())
        if identifier is not None:
            self.register_stream(object_id, identifier, ref)
        return object_id

    def register_stream(self, object_id: bytes, identifier: str, ref: str | None = None) -> None:
        """Links ``streams/<identifier>`` to a stored stream object, after syncing the repo."""
        if "/" in identifier:
            raise InvalidName(f"invalid stream identifier {printable(repr(identifier))}")
        check_name(identifier, "stream identifier")
        self.ensure_writable()
        self.sync()
        self._symlink(f"streams/{identifier}", f"objects/{object_pathname(object_id)}")
        if ref is not None:
            self._symlink(f"streams/refs/{check_name(ref, 'ref name')}", f"streams/{identifier}")

    def name_stream(self, identifier: str, name: str) -> None:
        """Creates the ref ``streams/refs/<name>`` -> ``streams/<identifier>``."""
        check_name(identifier, "stream name")
        check_name(name, "ref name")
        self.ensure_writable()
        self._symlink(f"streams/refs/{name}", f"streams/{identifier}")

    def open_stream(
        self,
        identifier: str,
        content_type: int | None = None,
        verity: bytes | None = None,
    ) -> splitstream.SplitStream:
        """Reads and parses ``streams/<identifier>`` (``identifier`` may be ``refs/<name>``)."""
        check_name(identifier, "stream name")
        if verity is not None:
            data = self.read_object(verity)
        else:
            try:
                fd = self._open_beneath(f"streams/{identifier}")
            except (FileNotFoundError, NotADirectoryError):
                raise RepositoryError(f"stream not found: {printable(identifier)}") from None
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        with _ctx(f"Opening stream {printable(identifier)}", SplitStreamError):
            return splitstream.parse(data, self.algorithm, content_type)

    def cat(self, identifier: str, out: BinaryIO) -> int:
        """Writes the reassembled stream to ``out``; returns the number of bytes."""
        stream = self.open_stream(identifier)
        return self.write_stream_content(stream, out)

    def write_stream_content(self, stream: splitstream.SplitStream, out: BinaryIO) -> int:
        total = 0
        for chunk in stream.iter_chunks():
            if isinstance(chunk, tuple):
                fd = self.open_object(chunk[0])
                with os.fdopen(fd, "rb") as f:
                    while block := f.read(_COPY_CHUNK):
                        out.write(block)
                        total += len(block)
            else:
                out.write(chunk)
                total += len(chunk)
        return total

    def list_stream_refs(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(name, target)`` of every ref below ``streams/refs/<prefix>``, sorted by name."""
        if prefix:
            check_name(prefix.rstrip("/"), "ref prefix")
        return self._list_refs(f"streams/refs/{prefix}".rstrip("/"))

    def list_image_refs(self, prefix: str = "") -> list[tuple[str, str]]:
        if prefix:
            check_name(prefix.rstrip("/"), "ref prefix")
        return self._list_refs(f"images/refs/{prefix}".rstrip("/"))

    def _list_refs(self, path: str) -> list[tuple[str, str]]:
        return sorted(self._walk_symlinks(path))

    def _walk_symlinks(self, base: str, rel: str = "") -> Iterator[tuple[str, str]]:
        path = f"{base}/{rel}" if rel else base
        try:
            # a directory that is a symlink (possibly leading out) is not walked into
            fd = os.open(
                path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd
            )
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            if e.errno == errno.ELOOP:
                return
            raise
        try:
            entries = sorted(os.scandir(fd), key=lambda e: e.name)
        finally:
            os.close(fd)
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_symlink():
                yield sub, os.readlink(f"{base}/{sub}", dir_fd=self.fd)
            elif entry.is_dir(follow_symlinks=False):
                yield from self._walk_symlinks(base, sub)

    # -- images ----------------------------------------------------------------------------

    def write_image(self, name: str | None, data: bytes) -> bytes:
        """Stores an EROFS image: the object, ``images/<hex>`` and optionally a ref."""
        object_id = self.ensure_object(data)
        self._symlink(f"images/{object_id.hex()}", f"objects/{object_pathname(object_id)}")
        if name is not None:
            self._symlink(
                f"images/refs/{check_name(name, 'ref name')}", f"images/{object_id.hex()}"
            )
        return object_id

    def has_image(self, name: str) -> bytes | None:
        check_name(name, "image name")
        target = self._readlink(f"images/{name}")
        if target is None:
            return None
        return parse_object_pathname(target, self.algorithm)

    def open_image(self, name: str) -> tuple[int, bool]:
        """Opens an image by hex id, ``refs/<name>`` or bare ref name.

        Returns the fd and whether verity must be required when mounting it.
        """
        check_name(name, "image name")
        missing = (FileNotFoundError, NotADirectoryError)
        if "/" in name:
            try:
                fd = self._open_beneath(f"images/{name}")
            except missing:
                raise RepositoryError(f"image not found: {printable(name)}") from None
            return fd, self._secure
        try:
            fd = self._open_beneath(f"images/{name}")
        except missing:
            try:
                fd = self._open_beneath(f"images/refs/{name}")
            except missing:
                raise RepositoryError(f"image not found: {printable(name)}") from None
            return fd, self._secure
        try:
            expected = parse_hex_id(name, self.algorithm)
            measured = fsverity.measure_verity_opt(fd, self.algorithm)
            if measured is None:
                if self._secure:
                    raise VerityMissing("fs-verity is not enabled on file")
                return fd, False
            if measured != expected:
                raise FsVerityError("fs-verity content mismatch")
        except BaseException:
            os.close(fd)
            raise
        return fd, True

    # -- durability ------------------------------------------------------------------------

    def sync(self) -> None:
        """``syncfs`` on the repository's filesystem."""
        syncfs(self.fd)

    # -- garbage collection ----------------------------------------------------------------

    def gc(self, roots: Iterable[str] = (), *, dry_run: bool = False) -> GcResult:
        """Removes objects not reachable from any ref (or from ``roots``) and dangling links.

        Unlike cfsctl, a dangling ref or an unexpected file is reported in
        ``GcResult.warnings`` and stepped over instead of aborting the collection.
        """
        roots = [check_name(r, "GC root") for r in roots]
        if not dry_run:
            self.ensure_writable()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            return self._gc(roots, dry_run)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_SH)

    def _gc(self, roots: list[str], dry_run: bool) -> GcResult:
        result = GcResult()
        live: set[bytes] = set()

        # images: refs (and named roots) keep the image and every object it references
        for image_id in self._gc_roots("images", roots, result):
            live.add(image_id)
            live.update(self._image_objects(image_id))

        # streams: refs keep the stream, its objects and the streams its named refs point at
        by_object: dict[bytes, str] = {}
        for name, target in self._first_level("streams"):
            with contextlib.suppress(RepositoryError):
                by_object.setdefault(parse_object_pathname(target, self.algorithm), name)
        pending = list(self._gc_roots("streams", roots, result))
        visited: set[bytes] = set()
        while pending:
            stream_id = pending.pop()
            if stream_id in visited:
                continue
            visited.add(stream_id)
            live.add(stream_id)
            try:
                stream = splitstream.parse(self._read_object_unchecked(stream_id), self.algorithm)
            except (OSError, SplitStreamError) as e:
                result.warnings.append(
                    f"cannot read stream object {object_pathname(stream_id)}: {e}"
                )
                continue
            live.update(stream.object_refs)
            for ref_id in stream.stream_refs:
                live.add(ref_id)
                if ref_id in by_object:
                    pending.append(ref_id)

        # sweep
        objects = self._objects()
        for first in range(256):
            sub = f"{first:02x}"
            try:
                dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=objects)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                for entry in list(os.scandir(dfd)):
                    try:
                        object_id = bytes([first]) + parse_hex(
                            entry.name, self.algorithm.digest_size - 1
                        )
                    except ValueError:
                        result.warnings.append(f"unexpected file objects/{sub}/{entry.name}")
                        continue
                    if object_id in live:
                        continue
                    size = entry.stat(follow_symlinks=False).st_size
                    if not dry_run:
                        os.unlink(entry.name, dir_fd=dfd)
                    result.objects_removed += 1
                    result.objects_bytes += size
            finally:
                os.close(dfd)

        # prune dangling links
        result.images_pruned = self._prune("images", dry_run)
        result.streams_pruned = self._prune("streams", dry_run)
        return result

    def _read_object_unchecked(self, object_id: bytes) -> bytes:
        with open(f"/proc/self/fd/{self._objects()}/{object_pathname(object_id)}", "rb") as f:
            return f.read()

    def _first_level(self, category: str) -> list[tuple[str, str]]:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(category, flags, dir_fd=self.fd)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            if e.errno == errno.ELOOP:  # a symlink: never followed
                return []
            raise
        try:
            entries = list(os.scandir(fd))
        finally:
            os.close(fd)
        out = []
        for entry in entries:
            if entry.name != "refs" and entry.is_symlink():
                out.append((entry.name, os.readlink(f"{category}/{entry.name}", dir_fd=self.fd)))
        return out

    def _gc_roots(self, category: str, roots: list[str], result: GcResult) -> Iterator[bytes]:
        names: list[tuple[str, str]] = []
        for rel, target in self._walk_symlinks(f"{category}/refs"):
            names.append((f"{category}/refs/{rel}", os.path.basename(target)))
        first = {name for name, _ in self._first_level(category)}
        for root in roots:
            if root in first:
                names.append((f"{category}/{root}", root))
        for ref, base in names:
            link = self._readlink(f"{category}/{base}")
            if link is None:
                result.warnings.append(f"dangling ref {ref} (no {category}/{base})")
                continue
            try:
                yield parse_object_pathname(link, self.algorithm)
            except RepositoryError as e:
                result.warnings.append(f"bad link {category}/{base}: {e}")

    def _image_objects(self, image_id: bytes) -> set[bytes]:
        from composefs import erofs

        data = self._read_object_unchecked(image_id)
        return erofs.collect_objects(data, self.algorithm)

    def image_objects(self, name: str) -> set[bytes]:
        """Every object an image references (``cfsctl image-objects``)."""
        from composefs import erofs

        fd, _ = self.open_image(name)
        with os.fdopen(fd, "rb") as f:
            return erofs.collect_objects(f.read(), self.algorithm)

    def _prune(self, category: str, dry_run: bool) -> int:
        pruned = 0
        for name, _target in self._first_level(category):
            path = f"{category}/{name}"
            if not _exists(self.fd, path):
                if not dry_run:
                    os.unlink(path, dir_fd=self.fd)
                pruned += 1
        for rel, _target in list(self._walk_symlinks(f"{category}/refs")):
            path = f"{category}/refs/{rel}"
            if not _exists(self.fd, path):
                if not dry_run:
                    os.unlink(path, dir_fd=self.fd)
                pruned += 1
        return pruned

    # -- fsck ------------------------------------------------------------------------------

    def fsck(self, *, check_objects: bool = True) -> FsckResult:
        """Checks the repository the way ``cfsctl fsck`` does (read-only)."""
        return fsck(self, check_objects=check_objects)


# -- helpers -------------------------------------------------------------------------------


def _exists(dir_fd: int, path: str) -> bool:
    try:
        os.stat(path, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


@contextlib.contextmanager
def _ctx(message: str, kind: type[ComposefsError]) -> Iterator[None]:
    try:
        yield
    except kind as e:
        raise kind(f"{message}: {e}") from e


def _replace_symlink(dir_fd: int, name: str, target: str) -> None:
    try:
        os.symlink(target, name, dir_fd=dir_fd)
        return
    except FileExistsError:
        pass
    try:
        if os.readlink(name, dir_fd=dir_fd) == target:
            return
    except OSError:
        pass
    for _ in range(16):
        tmp = ".symlink-" + random_suffix()
        try:
            os.symlink(target, tmp, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        return
    raise FileExistsError(errno.EEXIST, "could not create a temporary symlink", name)


class _RepoObjectStore(ObjectStore):
    """The repository's object writer: the backend's hasher, and fs-verity failures raised as
    the repository's errors (secure follows :attr:`Repository.secure` as it changes)."""

    __slots__ = ("_repo",)

    def __init__(self, repo: Repository) -> None:
        super().__init__(repo._objects(), repo.algorithm.hash_name, repo.secure)
        self._repo = repo

    @property
    def secure(self) -> bool:
        return self._repo.secure

    def _new_hasher(self) -> fsverity.Hasher:
        return fsverity.Hasher(self._repo.algorithm)

    def _enable_verity(self, fd: int) -> bool:
        try:
            fsverity.enable_verity(fd, self._repo.algorithm)
        except VerityAlreadyEnabled:
            pass
        except VerityNotSupported:
            if self.secure:
                raise
            return False
        return True

    def _measure_verity(self, fd: int) -> bytes | None:
        measured = fsverity.measure_verity_opt(fd, self._repo.algorithm)
        if measured is None and self.secure:
            raise VerityMissing("fs-verity is not enabled on file")
        return measured

    def _check_existing(self, fd: int, object_id: bytes) -> None:
        measured = fsverity.measure_verity_opt(fd, self._repo.algorithm)
        if measured is None:
            if self.secure:
                raise FsVerityError(
                    f"Verifying existing object integrity: objects/{object_pathname(object_id)}"
                ) from VerityMissing("fs-verity is not enabled on file")
            return
        if measured != object_id:
            raise self._mismatch("Verifying existing object integrity", object_id, measured)

    def _mismatch(self, what: str, expected: bytes, found: bytes) -> Exception:
        return ObjectDigestMismatch(
            f"{what}: Expected digest {expected.hex()} but found {found.hex()}"
        )
