"""A repository's ``meta.json``: its content (:class:`RepoMetadata`), the compatibility checks,
reading it when a repository is opened and writing it (once, atomically) when one is created.

The bytes are exactly those composefs-rs 0.9 writes; the repository is *secure* when the file
has fs-verity.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from composefs import fsverity
from composefs._record import record, replace
from composefs.constants import DEFAULT_EROFS_VERSION, EROFS_VERSIONS
from composefs.errors import (
    FsVerityError,
    OldFormatRepository,
    RepositoryError,
    RepositoryMetadataInvalid,
    RepositoryMetadataMissing,
    VerityMissing,
    VerityNotSupported,
)
from composefs.fsverity import Algorithm

__all__ = [
    "KNOWN_COMPAT",
    "KNOWN_INCOMPAT",
    "KNOWN_RO_COMPAT",
    "METADATA_FILENAME",
    "REPO_FORMAT_VERSION",
    "V1_EROFS",
    "RepoMetadata",
    "infer_metadata",
    "read_metadata",
    "reset_metadata",
    "write_metadata",
]

REPO_FORMAT_VERSION = 1
METADATA_FILENAME = "meta.json"
V1_EROFS = "v1_erofs"
KNOWN_COMPAT: tuple[str, ...] = ()
KNOWN_RO_COMPAT: tuple[str, ...] = (V1_EROFS,)
KNOWN_INCOMPAT: tuple[str, ...] = ()


@record
class RepoMetadata:
    """The content of ``meta.json``."""

    algorithm: Algorithm
    version: int = REPO_FORMAT_VERSION
    compatible: tuple[str, ...] = ()
    read_only_compatible: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()
    erofs_default: int = DEFAULT_EROFS_VERSION
    erofs_extra: tuple[int, ...] = ()
    #: whether the ``erofs_formats`` key was present (absent means the legacy default V2)
    has_erofs_formats: bool = True

    @classmethod
    def new(cls, algorithm: Algorithm, erofs_version: int = DEFAULT_EROFS_VERSION) -> RepoMetadata:
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
        return replace(self, has_erofs_formats=True) == replace(other, has_erofs_formats=True)


def _measure_meta(fd: int, algorithm: Algorithm) -> bool:
    """Whether ``meta.json`` has fs-verity (the secure bit of the repository)."""
    try:
        fsverity.measure_verity(fd, algorithm)
    except (VerityMissing, VerityNotSupported):
        return False
    return True


def read_metadata(fd: int, expected: Algorithm | None) -> tuple[RepoMetadata, bool]:
    """Reads and checks ``meta.json`` of the repository directory ``fd``; returns it and
    whether it has fs-verity (the repository is secure)."""
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
            "use Repository.open_upgrade() or `composefs init --ensure` to migrate"
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


def write_metadata(dir_fd: int, metadata: RepoMetadata, *, insecure: bool) -> None:
    """Writes ``meta.json`` atomically, with fs-verity unless insecure; never overwrites."""
    data = metadata.to_json()
    from composefs._pure.objects import TmpFile, write_all

    tmp = TmpFile(dir_fd, 0o644)
    try:
        write_all(tmp.fd, data)
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


#: object file name lengths (the digest in hex, less the two characters of the directory)
_INFER_LENGTHS = {62: Algorithm.SHA256, 126: Algorithm.SHA512}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def infer_metadata(dir_fd: int) -> tuple[Algorithm, bool]:
    """The algorithm and the verity mode of a pre-0.7 repository (no ``meta.json``), from its
    objects, as composefs-rs 0.9 infers them: the first file (in directory order) of a
    two-character directory of ``objects/`` whose name has 62 (SHA-256) or 126 (SHA-512)
    characters decides; the repository is secure if that object has fs-verity.

    Unlike composefs-rs, only directories and regular files are opened (never a symlink, a
    FIFO or a device), and the scan reads at most 65,536 names per directory.
    """
    try:
        objects = os.open("objects", _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        raise RepositoryError("opening objects/ directory") from e
    try:
        for sub in _bounded_names(objects):
            if len(sub) != 2:
                continue
            try:
                sfd = os.open(sub, _DIR_FLAGS, dir_fd=objects)
            except OSError as e:
                if e.errno in (errno.ENOTDIR, errno.ELOOP):
                    continue
                raise RepositoryError(f"opening objects/{sub} subdirectory") from e
            try:
                for name in _bounded_names(sfd):
                    algorithm = _INFER_LENGTHS.get(len(name))
                    if algorithm is None:
                        continue
                    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                    try:
                        ofd = os.open(name, flags, dir_fd=sfd)
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            continue
                        raise RepositoryError(f"opening object file {name}") from e
                    try:
                        if not stat.S_ISREG(os.fstat(ofd).st_mode):
                            continue
                        try:
                            verity = fsverity.measure_verity_opt(ofd, algorithm) is not None
                        except FsVerityError as e:
                            raise RepositoryError("probing fs-verity on object") from e
                    finally:
                        os.close(ofd)
                    return algorithm, verity
            finally:
                os.close(sfd)
    finally:
        os.close(objects)
    raise RepositoryError("no objects found in repository — cannot infer metadata")


def _bounded_names(dir_fd: int, limit: int = 65536) -> list[str]:
    names = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            names.append(entry.name)
            if len(names) >= limit:
                break
    return names


def reset_metadata(path: str) -> None:
    """Removes ``streams/``, ``images/`` and ``meta.json`` of the repository at ``path`` and
    keeps ``objects/`` (``cfsctl init --reset-metadata``); the repository must then be
    initialized again. A symlink in their place is removed, never followed."""
    import shutil

    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        raise RepositoryError(f"Resetting repository metadata at {path}") from e
    try:
        for name in ("streams", "images", METADATA_FILENAME):
            where = os.path.join(path, name)
            try:
                st = os.lstat(name, dir_fd=dfd)
            except FileNotFoundError:
                continue
            try:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=dfd)
                else:
                    os.unlink(name, dir_fd=dfd)
            except OSError as e:
                cause = RepositoryError(f"removing {where}")
                cause.__cause__ = e
                raise RepositoryError(f"Resetting repository metadata at {path}") from cause
    finally:
        os.close(dfd)
