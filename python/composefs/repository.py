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
import json
import os
import secrets
import string
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO

from composefs import fsverity, splitstream
from composefs._linux import rename_noreplace, syncfs
from composefs.errors import (
    ComposefsError,
    FsVerityError,
    ObjectDigestMismatch,
    OldFormatRepository,
    RepositoryError,
    RepositoryMetadataInvalid,
    RepositoryMetadataMissing,
    RepositoryNotWritable,
    SplitStreamError,
    VerityAlreadyEnabled,
    VerityMissing,
    VerityNotSupported,
    error_chain,
)
from composefs.fsverity import Algorithm, AlgorithmLike

__all__ = [
    "REPO_FORMAT_VERSION",
    "FsckResult",
    "GcResult",
    "RepoMetadata",
    "Repository",
    "object_pathname",
    "parse_object_pathname",
    "to_id",
]

REPO_FORMAT_VERSION = 1
METADATA_FILENAME = "meta.json"
V1_EROFS = "v1_erofs"
KNOWN_COMPAT: tuple[str, ...] = ()
KNOWN_RO_COMPAT: tuple[str, ...] = (V1_EROFS,)
KNOWN_INCOMPAT: tuple[str, ...] = ()
EROFS_VERSIONS = (0, 1, 2)

_TMP_ALPHABET = string.ascii_letters + string.digits
_COPY_CHUNK = 1 << 20


def _tmpname(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_TMP_ALPHABET) for _ in range(12))


# -- object ids ----------------------------------------------------------------------------


def to_id(digest: bytes) -> str:
    """``sha256:<hex>`` or ``sha512:<hex>``, as cfsctl prints an object id."""
    return f"{'sha256' if len(digest) == 32 else 'sha512'}:{digest.hex()}"


def object_pathname(digest: bytes) -> str:
    """``xx/<rest>``: the path of an object below ``objects/``."""
    h = digest.hex()
    return f"{h[:2]}/{h[2:]}"


def parse_object_pathname(target: str, algorithm: Algorithm) -> bytes:
    """The digest at the end of a symlink target like ``../objects/xx/rest``."""
    n = 2 * algorithm.digest_size + 1
    tail = target[-n:]
    if len(tail) != n or tail[2] != "/":
        raise RepositoryError(f"invalid object path {target!r}")
    try:
        return bytes.fromhex(tail[:2] + tail[3:])
    except ValueError as e:
        raise RepositoryError(f"invalid object path {target!r}: {e}") from None


def parse_hex_id(text: str, algorithm: Algorithm) -> bytes:
    """Parses a bare hex digest of the repository's algorithm (cfsctl's messages)."""
    return _parse_hex(text, algorithm.digest_size)


def _parse_hex(text: str, size: int) -> bytes:
    if len(text) % 2:
        raise ValueError("Odd number of digits")
    if len(text) != 2 * size:
        raise ValueError("Invalid string length")
    for i, c in enumerate(text):
        if c not in string.hexdigits:
            raise ValueError(f"Invalid character {c!r} at position {i}")
    return bytes.fromhex(text)


# -- meta.json -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RepoMetadata:
    """The content of ``meta.json``."""

    algorithm: Algorithm
    version: int = REPO_FORMAT_VERSION
    compatible: tuple[str, ...] = ()
    read_only_compatible: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()
    erofs_default: int = 1
    erofs_extra: tuple[int, ...] = ()
    #: whether the ``erofs_formats`` key was present (absent means the legacy default V2)
    has_erofs_formats: bool = True

    @classmethod
    def new(cls, algorithm: Algorithm, erofs_version: int = 1) -> RepoMetadata:
        """Metadata as ``cfsctl init`` writes it (``v1_erofs`` iff the default format is V1)."""
        if erofs_version not in EROFS_VERSIONS:
            raise ValueError(f"unsupported EROFS format version {erofs_version}")
        ro = (V1_EROFS,) if erofs_version == 1 else ()
        return cls(algorithm=algorithm, read_only_compatible=ro, erofs_default=erofs_version)

    @property
    def format_config(self) -> tuple[int, tuple[int, ...]]:
        """``(default, extra)`` EROFS format versions, as composefs-rs derives them."""
        explicit = self.has_erofs_formats and (self.erofs_default, self.erofs_extra) != (2, ())
        if explicit:
            return self.erofs_default, self.erofs_extra
        if V1_EROFS in self.read_only_compatible:
            return 1, ()
        return 2, ()

    def to_json(self) -> bytes:
        """Exactly the bytes composefs-rs writes (serde_json pretty printer + newline)."""
        formats: dict[str, Any] = {"default": self.erofs_default}
        if self.erofs_extra:
            formats["extra"] = sorted(self.erofs_extra)
        doc = {
            "version": self.version,
            "algorithm": str(self.algorithm),
            "features": {
                "compatible": list(self.compatible),
                "read-only-compatible": list(self.read_only_compatible),
                "incompatible": list(self.incompatible),
            },
            "erofs_formats": formats,
        }
        return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> RepoMetadata:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("expected a JSON object")
            version = doc["version"]
            algorithm = Algorithm.parse(doc["algorithm"])
            if not isinstance(version, int) or version < 0:
                raise ValueError("version must be an unsigned integer")
            features = doc.get("features", {}) or {}
            formats = doc.get("erofs_formats")
            if formats is None:
                default, extra, has = 2, (), False
            else:
                default = formats["default"]
                extra = tuple(formats.get("extra", ()))
                has = True
                for v in (default, *extra):
                    if v not in EROFS_VERSIONS:
                        raise ValueError(f"unknown EROFS format version {v}")
            return cls(
                algorithm=algorithm,
                version=version,
                compatible=tuple(features.get("compatible", ())),
                read_only_compatible=tuple(features.get("read-only-compatible", ())),
                incompatible=tuple(features.get("incompatible", ())),
                erofs_default=default,
                erofs_extra=extra,
                has_erofs_formats=has,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RepositoryMetadataInvalid("failed to parse meta.json") from e

    def check_compatible(self, algorithm: Algorithm | None = None) -> None:
        if self.version > REPO_FORMAT_VERSION:
            raise RepositoryMetadataInvalid(
                f"unsupported repository format version {self.version} "
                f"(this tool supports up to {REPO_FORMAT_VERSION})"
            )
        if algorithm is not None and algorithm is not self.algorithm:
            raise RepositoryMetadataInvalid(
                f"repository algorithm {self.algorithm} does not match expected {algorithm}"
            )
        unknown = [f for f in self.incompatible if f not in KNOWN_INCOMPAT]
        if unknown:
            raise RepositoryMetadataInvalid(
                f"repository requires unknown incompatible features: {unknown!r}".replace("'", '"')
            )

    @property
    def unknown_ro_compat(self) -> list[str]:
        return [f for f in self.read_only_compatible if f not in KNOWN_RO_COMPAT]

    def same_config(self, other: RepoMetadata) -> bool:
        return dataclasses.replace(self, has_erofs_formats=True) == dataclasses.replace(
            other, has_erofs_formats=True
        )


# -- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class GcResult:
    """What garbage collection removed (or would remove, in a dry run)."""

    objects_removed: int = 0
    objects_bytes: int = 0
    images_pruned: int = 0
    streams_pruned: int = 0
    #: problems cfsctl treats as fatal and we report and step over (dangling refs, stray files)
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FsckResult:
    """The report of :meth:`Repository.fsck`, with cfsctl's counters and error strings."""

    has_metadata: bool = False
    objects_checked: int = 0
    objects_corrupted: int = 0
    streams_checked: int = 0
    streams_corrupted: int = 0
    images_checked: int = 0
    images_corrupted: int = 0
    broken_links: int = 0
    missing_objects: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The fields of cfsctl's ``fsck --json`` output, in its order."""
        return {
            "ok": self.ok,
            "has_metadata": self.has_metadata,
            "objects_checked": self.objects_checked,
            "objects_corrupted": self.objects_corrupted,
            "streams_checked": self.streams_checked,
            "streams_corrupted": self.streams_corrupted,
            "images_checked": self.images_checked,
            "images_corrupted": self.images_corrupted,
            "broken_links": self.broken_links,
            "missing_objects": self.missing_objects,
            "errors": list(self.errors),
        }

    def __str__(self) -> str:
        meta_error = any(
            e.startswith(("fsck: metadata-parse-failed", "fsck: metadata-algorithm-mismatch"))
            for e in self.errors
        )
        lines = [
            "meta.json: " + ("error" if meta_error else "ok" if self.has_metadata else "absent"),
            f"objects: {self.objects_checked - self.objects_corrupted}/{self.objects_checked} ok",
            f"streams: {self.streams_checked - self.streams_corrupted}/{self.streams_checked} ok",
            f"images: {self.images_checked - self.images_corrupted}/{self.images_checked} ok",
        ]
        if self.broken_links:
            lines.append(f"broken symlinks: {self.broken_links}")
        if self.missing_objects:
            lines.append(f"missing objects: {self.missing_objects}")
        if self.errors:
            lines.append(f"status: {len(self.errors)} error(s)")
            lines.extend(f"  - {e}" for e in self.errors)
        else:
            lines.append("status: ok")
        return "\n".join(lines) + "\n"


# -- the repository ------------------------------------------------------------------------


def _measure_meta(fd: int, algorithm: Algorithm) -> bool:
    """Whether ``meta.json`` has fs-verity (the secure bit of the repository)."""
    try:
        fsverity.measure_verity(fd, algorithm)
    except (VerityMissing, VerityNotSupported):
        return False
    return True


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
            metadata, secure = cls._read_metadata(fd, expected)
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

    @staticmethod
    def _read_metadata(fd: int, expected: Algorithm | None) -> tuple[RepoMetadata, bool]:
        try:
            mfd = os.open(METADATA_FILENAME, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            try:
                os.stat("objects", dir_fd=fd)
            except FileNotFoundError:
                raise RepositoryMetadataMissing(
                    "meta.json not found; this repository must be initialized with `composefs init`"
                ) from None
            raise OldFormatRepository(
                "meta.json not found; this appears to be an old-format repository — "
                "use `composefs init` to migrate"
            ) from None
        try:
            with os.fdopen(mfd, "rb", closefd=False) as f:
                data = f.read()
            metadata = RepoMetadata.from_json(data)
            metadata.check_compatible(expected)
            secure = _measure_meta(mfd, metadata.algorithm)
        finally:
            os.close(mfd)
        return metadata, secure

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        algorithm: AlgorithmLike = Algorithm.SHA512,
        *,
        insecure: bool = False,
        erofs_version: int = 1,
    ) -> tuple[Repository, bool]:
        """Creates a repository (or opens an identical existing one).

        Returns the open repository and whether it was created. ``algorithm`` defaults to
        SHA-512, as ``cfsctl init`` does. Without ``insecure``, ``meta.json`` gets fs-verity,
        which fails on filesystems without it.
        """
        path = os.fspath(path)
        alg = Algorithm(fsverity._name(algorithm))
        wanted = RepoMetadata.new(alg, erofs_version)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            created = True
            try:
                _write_metadata(dfd, wanted, insecure=insecure)
            except FileExistsError:
                created = False
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

    def close(self) -> None:
        if self._objects_fd is not None:
            os.close(self._objects_fd)
            self._objects_fd = None
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

    def ensure_object(self, data: bytes | bytearray | memoryview) -> bytes:
        """Stores ``data`` as an object (if absent) and returns its id."""
        self.ensure_writable()
        object_id = fsverity.digest(data, self.algorithm)
        self._store_object_with_id(object_id, data)
        return object_id

    def _store_object_with_id(self, object_id: bytes, data: bytes | bytearray | memoryview) -> None:
        objects = self._objects()
        name = object_pathname(object_id)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=objects)
        except FileNotFoundError:
            pass
        else:
            try:
                self._check_existing(fd, object_id)
            finally:
                os.close(fd)
            return
        subdir = name[:2]
        with contextlib.suppress(FileExistsError):
            os.mkdir(subdir, 0o777, dir_fd=objects)
        dir_fd = os.open(subdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=objects)
        try:
            tmp = _TmpFile(dir_fd, 0o666)
            try:
                _write_all(tmp.fd, data)
                self._enable_and_check(tmp.reopen_readonly(), object_id)
                tmp.link_as(name[3:], dir_fd)
            finally:
                tmp.discard()
        finally:
            os.close(dir_fd)

    def _check_existing(self, fd: int, object_id: bytes) -> None:
        measured = fsverity.measure_verity_opt(fd, self.algorithm)
        if measured is None:
            if self._secure:
                raise FsVerityError(
                    f"Verifying existing object integrity: objects/{object_pathname(object_id)}"
                ) from VerityMissing("fs-verity is not enabled on file")
            return
        if measured != object_id:
            raise ObjectDigestMismatch(
                f"Verifying existing object integrity: Expected digest {object_id.hex()} "
                f"but found {measured.hex()}"
            )

    def _enable_and_check(self, ro_fd: int, object_id: bytes) -> None:
        """Enables fs-verity on a fresh object and double-checks the kernel's digest."""
        try:
            fsverity.enable_verity(ro_fd, self.algorithm)
        except VerityAlreadyEnabled:
            pass
        except VerityNotSupported:
            if self._secure:
                raise
            return
        measured = fsverity.measure_verity_opt(ro_fd, self.algorithm)
        if measured is None:
            if self._secure:
                raise VerityMissing("fs-verity is not enabled on file")
            return
        if measured != object_id:
            raise ObjectDigestMismatch(
                f"Double-checking verity digest: Expected digest {object_id.hex()} "
                f"but found {measured.hex()}"
            )

    def ensure_object_from_stream(self, reader: IO[bytes], size: int | None = None) -> bytes:
        """Stores everything ``reader`` yields as an object, streaming (constant memory)."""
        self.ensure_writable()
        objects = self._objects()
        tmp = _TmpFile(objects, 0o644)
        try:
            hasher = fsverity.Hasher(self.algorithm)
            total = 0
            while True:
                chunk = reader.read(_COPY_CHUNK)
                if not chunk:
                    break
                _write_all(tmp.fd, chunk)
                hasher.update(chunk)
                total += len(chunk)
            if size is not None and total != size:
                raise RepositoryError(f"Expected {size} bytes, got {total}")
            object_id = hasher.digest()
            name = object_pathname(object_id)
            try:
                if os.stat(name, dir_fd=objects).st_size == total:
                    return object_id  # already present (trusted by size, like composefs-rs)
            except FileNotFoundError:
                pass
            self._enable_and_check(tmp.reopen_readonly(), object_id)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name[:2], 0o755, dir_fd=objects)
            tmp.link_as(name, objects)
            return object_id
        finally:
            tmp.discard()

    def ensure_object_from_file(self, path: str | os.PathLike[str]) -> bytes:
        with open(path, "rb") as f:
            return self.ensure_object_from_stream(f)

    # -- symlinks --------------------------------------------------------------------------

    def symlink(self, name: str, target: str) -> None:
        """Creates or atomically replaces the repo-relative symlink ``name`` -> ``target``.

        The link's content is relative: one ``..`` per directory of ``name`` beyond the part
        it shares with ``target``.
        """
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
        try:
            return os.readlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return None

    # -- streams ---------------------------------------------------------------------------

    def has_stream(self, identifier: str) -> bytes | None:
        """The object id of ``streams/<identifier>``, or ``None`` when absent."""
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
        if "/" in identifier or not identifier:
            raise RepositoryError(f"invalid stream identifier {identifier!r}")
        self.ensure_writable()
        self.sync()
        self._symlink(f"streams/{identifier}", f"objects/{object_pathname(object_id)}")
        if ref is not None:
            self._symlink(f"streams/refs/{_check_ref(ref)}", f"streams/{identifier}")

    def name_stream(self, identifier: str, name: str) -> None:
        """Creates the ref ``streams/refs/<name>`` -> ``streams/<identifier>``."""
        self.ensure_writable()
        self._symlink(f"streams/refs/{_check_ref(name)}", f"streams/{identifier}")

    def open_stream(
        self,
        identifier: str,
        content_type: int | None = None,
        verity: bytes | None = None,
    ) -> splitstream.SplitStream:
        """Reads and parses ``streams/<identifier>`` (``identifier`` may be ``refs/<name>``)."""
        if verity is not None:
            data = self.read_object(verity)
        else:
            try:
                fd = os.open(f"streams/{identifier}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                raise RepositoryError(f"stream not found: {identifier}") from None
            with os.fdopen(fd, "rb") as f:
                data = f.read()
        with _ctx(f"Opening stream {identifier}", SplitStreamError):
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
        return self._list_refs(f"streams/refs/{prefix}".rstrip("/"))

    def list_image_refs(self, prefix: str = "") -> list[tuple[str, str]]:
        return self._list_refs(f"images/refs/{prefix}".rstrip("/"))

    def _list_refs(self, path: str) -> list[tuple[str, str]]:
        return sorted(self._walk_symlinks(path))

    def _walk_symlinks(self, base: str, rel: str = "") -> Iterator[tuple[str, str]]:
        path = f"{base}/{rel}" if rel else base
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except (FileNotFoundError, NotADirectoryError):
            return
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
            self._symlink(f"images/refs/{_check_ref(name)}", f"images/{object_id.hex()}")
        return object_id

    def has_image(self, name: str) -> bytes | None:
        target = self._readlink(f"images/{name}")
        if target is None:
            return None
        return parse_object_pathname(target, self.algorithm)

    def open_image(self, name: str) -> tuple[int, bool]:
        """Opens an image by hex id, ``refs/<name>`` or bare ref name.

        Returns the fd and whether verity must be required when mounting it.
        """
        if "/" in name:
            try:
                fd = os.open(f"images/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                raise RepositoryError(f"image not found: {name}") from None
            return fd, self._secure
        try:
            fd = os.open(f"images/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            try:
                fd = os.open(f"images/refs/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                raise RepositoryError(f"image not found: {name}") from None
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
        roots = list(roots)
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
                        object_id = bytes([first]) + _parse_hex(
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
        try:
            fd = os.open(category, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return []
        try:
            entries = list(os.scandir(fd))
        finally:
            os.close(fd)
        out = []
        for e in entries:
            if e.name != "refs" and e.is_symlink():
                out.append((e.name, os.readlink(f"{category}/{e.name}", dir_fd=self.fd)))
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
        result = FsckResult()
        self._fsck_metadata(result)
        if check_objects:
            self._fsck_objects(result)
        self._fsck_category("streams", result)
        self._fsck_category("images", result)
        return result

    def _fsck_metadata(self, result: FsckResult) -> None:
        try:
            with open(f"/proc/self/fd/{self.fd}/{METADATA_FILENAME}", "rb") as f:
                meta = RepoMetadata.from_json(f.read())
        except FileNotFoundError:
            result.errors.append(
                "fsck: metadata-parse-failed: meta.json: meta.json not found; expected "
                "because repository was opened successfully"
            )
            return
        except ComposefsError as e:
            detail = ": ".join(error_chain(e))
            result.errors.append(f"fsck: metadata-parse-failed: meta.json: {detail}")
            return
        result.has_metadata = True
        try:
            meta.check_compatible(self.algorithm)
        except ComposefsError:
            result.errors.append(
                f"fsck: metadata-algorithm-mismatch: meta.json: expected {meta.algorithm}, "
                f"repository opened as {self.algorithm.hash_name}"
            )

    def _fsck_objects(self, result: FsckResult) -> None:
        try:
            objects = os.open(
                "objects", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd
            )
        except FileNotFoundError:
            return
        try:
            for first in range(256):
                sub = f"{first:02x}"
                try:
                    dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=objects)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    for entry in sorted(os.scandir(dfd), key=lambda e: e.name):
                        self._fsck_object(dfd, sub, entry.name, result)
                finally:
                    os.close(dfd)
        finally:
            os.close(objects)

    def _fsck_object(self, dfd: int, sub: str, name: str, result: FsckResult) -> None:
        result.objects_checked += 1
        path = f"objects/{sub}/{name}"
        try:
            expected = bytes.fromhex(sub) + _parse_hex(name, self.algorithm.digest_size - 1)
        except ValueError as e:
            result.objects_corrupted += 1
            result.errors.append(f"fsck: object-invalid-name: {path}: {e}")
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            result.objects_corrupted += 1
            result.errors.append(f"fsck: object-open-failed: {path}: {_errno_text(e)}")
            return
        try:
            try:
                measured: bytes | None = fsverity.measure_verity(fd, self.algorithm)
            except FsVerityError:
                measured = None
            if measured is None:
                if not self._secure:
                    try:
                        measured = fsverity.digest_fd(fd, self.algorithm)
                    except OSError as e:
                        result.objects_corrupted += 1
                        result.errors.append(
                            f"fsck: object-verity-failed: {path}: {_errno_text(e)}"
                        )
                        return
                else:
                    result.objects_corrupted += 1
                    result.errors.append(f"fsck: object-verity-missing: {path}")
                    return
        finally:
            os.close(fd)
        if measured != expected:
            result.objects_corrupted += 1
            result.errors.append(f"fsck: object-digest-mismatch: {path}: measured {measured.hex()}")

    def _fsck_category(self, category: str, result: FsckResult) -> None:
        is_streams = category == "streams"
        try:
            cfd = os.open(category, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return
        try:
            entries = sorted(os.scandir(cfd), key=lambda e: e.name)
        finally:
            os.close(cfd)

        def corrupted() -> None:
            if is_streams:
                result.streams_corrupted += 1
            else:
                result.images_corrupted += 1

        for entry in entries:
            if entry.name == "refs":
                continue
            path = f"{category}/{entry.name}"
            if is_streams:
                result.streams_checked += 1
            else:
                result.images_checked += 1
            if not entry.is_symlink():
                corrupted()
                result.errors.append(f"fsck: entry-not-symlink: {path}")
                continue
            try:
                os.stat(path, dir_fd=self.fd)
            except FileNotFoundError:
                result.broken_links += 1
                corrupted()
                result.errors.append(f"fsck: broken-symlink: {path}")
                continue
            except OSError as e:
                result.errors.append(f"fsck: stat-failed: {path}: {_errno_text(e)}")
                continue
            if is_streams:
                self._fsck_stream(entry.name, result)
            else:
                self._fsck_image(entry.name, result)
        self._fsck_refs(category, f"{category}/refs", result)

    def _fsck_refs(self, category: str, path: str, result: FsckResult) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return
        try:
            entries = sorted(os.scandir(fd), key=lambda e: e.name)
        finally:
            os.close(fd)
        for entry in entries:
            sub = f"{path}/{entry.name}"
            if entry.is_symlink():
                try:
                    os.stat(sub, dir_fd=self.fd)
                except FileNotFoundError:
                    result.broken_links += 1
                    result.errors.append(f"fsck: broken-symlink: {sub}")
                except OSError as e:
                    result.errors.append(f"fsck: stat-failed: {sub}: {_errno_text(e)}")
            elif entry.is_dir(follow_symlinks=False):
                self._fsck_refs(category, sub, result)
            else:
                kind = "RegularFile" if entry.is_file(follow_symlinks=False) else "Unknown"
                result.errors.append(f"fsck: unexpected-file-type: {sub}: {kind}")

    def _fsck_stream(self, name: str, result: FsckResult) -> None:
        path = f"streams/{name}"
        try:
            with open(f"/proc/self/fd/{self.fd}/{path}", "rb") as f:
                data = f.read()
        except OSError as e:
            result.streams_corrupted += 1
            result.errors.append(f"fsck: stream-open-failed: {path}: {_errno_text(e)}")
            return
        try:
            stream = splitstream.parse(data, self.algorithm)
        except SplitStreamError as e:
            result.streams_corrupted += 1
            result.errors.append(f"fsck: stream-read-failed: {path}: {e}")
            return
        for object_id in stream.object_refs:
            if not self.has_object(object_id):
                result.missing_objects += 1
                result.errors.append(f"fsck: missing-object-ref: {path}: {object_id.hex()}")
        for ref_name, ref_id in sorted(stream.named_ref_ids().items()):
            if not self.has_object(ref_id):
                result.missing_objects += 1
                result.errors.append(
                    f"fsck: missing-named-ref: {path}: ref {ref_name}: {ref_id.hex()}"
                )

    def _fsck_image(self, name: str, result: FsckResult) -> None:
        from composefs import erofs

        path = f"images/{name}"
        try:
            with open(f"/proc/self/fd/{self.fd}/{path}", "rb") as f:
                data = f.read()
        except OSError as e:
            result.images_corrupted += 1
            result.errors.append(f"fsck: image-open-failed: {path}: {_errno_text(e)}")
            return
        try:
            objects = erofs.collect_objects(data, self.algorithm)
        except ComposefsError as e:
            result.images_corrupted += 1
            result.errors.append(f"fsck: image-invalid: {path}: {e}")
            return
        for object_id in sorted(objects):
            if not self.has_object(object_id):
                result.missing_objects += 1
                result.images_corrupted += 1
                result.errors.append(f"fsck: image-missing-object: {path}: {object_id.hex()}")


# -- helpers -------------------------------------------------------------------------------


def _exists(dir_fd: int, path: str) -> bool:
    try:
        os.stat(path, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _errno_text(e: OSError) -> str:
    return f"{e.strerror} (os error {e.errno})" if e.errno else str(e)


@contextlib.contextmanager
def _ctx(message: str, kind: type[ComposefsError]) -> Iterator[None]:
    try:
        yield
    except kind as e:
        raise kind(f"{message}: {e}") from e


def _check_ref(name: str) -> str:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts):
        raise RepositoryError(f"invalid ref name {name!r}")
    return name


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _TmpFile:
    """An anonymous (``O_TMPFILE``) or, where unsupported, named temporary file in a dir.

    ``fd`` is the file's only open descriptor: read-write at first, read-only after
    :meth:`reopen_readonly` (fs-verity can only be enabled with no writable fd open).
    """

    def __init__(self, dir_fd: int, mode: int) -> None:
        self.dir_fd = dir_fd
        self.name: str | None = None
        try:
            self.fd = os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self.fd = self._named(mode)

    def _named(self, mode: int) -> int:
        for _ in range(16):
            name = _tmpname(".tmp-object-")
            try:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    mode,
                    dir_fd=self.dir_fd,
                )
            except FileExistsError:
                continue
            self.name = name
            return fd
        raise FileExistsError(errno.EEXIST, "could not create a temporary file")

    def reopen_readonly(self) -> int:
        ro = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(self.fd)
        self.fd = ro
        return ro

    def link_as(self, name: str, dir_fd: int) -> None:
        """Gives the file its final name; an existing file of that name wins (dedup)."""
        with contextlib.suppress(FileExistsError):
            self.link_new(name, dir_fd)

    def link_new(self, name: str, dir_fd: int) -> None:
        """Gives the file its final name; ``FileExistsError`` if the name is taken."""
        if self.name is None:
            os.link(f"/proc/self/fd/{self.fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        else:
            rename_noreplace(self.dir_fd, self.name, dir_fd, name)
            self.name = None

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=self.dir_fd)
            self.name = None


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
        tmp = _tmpname(".symlink-")
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


def _write_metadata(dir_fd: int, metadata: RepoMetadata, *, insecure: bool) -> None:
    """Writes ``meta.json`` atomically, with fs-verity unless insecure; never overwrites."""
    data = metadata.to_json()
    tmp = _TmpFile(dir_fd, 0o644)
    try:
        _write_all(tmp.fd, data)
        os.fsync(tmp.fd)
        ro = tmp.reopen_readonly()
        if not insecure:
            try:
                fsverity.enable_verity(ro, metadata.algorithm)
            except FsVerityError as e:
                raise RepositoryError("Enabling fs-verity on meta.json") from e
        tmp.link_new(METADATA_FILENAME, dir_fd)
    finally:
        tmp.discard()
