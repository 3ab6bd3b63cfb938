"""fs-verity digests (4 KiB blocks, no salt) and the kernel's fs-verity ioctls.

Every object in a composefs repository is named by the fs-verity digest of its content,
computed exactly as the Linux kernel and ``fsverity digest`` compute it::

    >>> from composefs import fsverity
    >>> fsverity.digest(b"hello world", "sha256").hex()[:16]
    '1e2eaa4202d750a4'
"""

from __future__ import annotations

import enum
import errno
import os
from typing import Literal

from composefs import _backend
from composefs._contract import HasherLike
from composefs.constants import ALGORITHM_IDS
from composefs.errors import (
    FsVerityError,
    VerityAlreadyEnabled,
    VerityFileOpenedForWrite,
    VerityInvalidDigest,
    VerityMissing,
    VerityNotSupported,
)

__all__ = [
    "Algorithm",
    "Hasher",
    "digest",
    "digest_fd",
    "digest_file",
    "enable_verity",
    "measure_verity",
    "measure_verity_opt",
]

BufferLike = bytes | bytearray | memoryview
HashName = Literal["sha256", "sha512"]

_NOT_SUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP)


class Algorithm(enum.Enum):
    """A repository's fs-verity algorithm (always 4 KiB blocks)."""

    SHA256 = "sha256"
    SHA512 = "sha512"

    @property
    def hash_name(self) -> HashName:
        return "sha256" if self is Algorithm.SHA256 else "sha512"

    @property
    def kernel_id(self) -> int:
        """The kernel's ``FS_VERITY_HASH_ALG_*`` number."""
        return ALGORITHM_IDS[self.hash_name]

    @property
    def digest_size(self) -> int:
        return 32 if self is Algorithm.SHA256 else 64

    def __str__(self) -> str:
        return f"fsverity-{self.value}-12"

    @classmethod
    def from_kernel_id(cls, kernel_id: int) -> Algorithm:
        for alg in cls:
            if alg.kernel_id == kernel_id:
                return alg
        raise ValueError(f"unknown fs-verity hash algorithm id {kernel_id}")

    @classmethod
    def parse(cls, text: str) -> Algorithm:
        """Parses ``fsverity-sha256-12`` / ``fsverity-sha512-12`` (cfsctl's messages on error)."""
        if not text.startswith("fsverity-"):
            raise ValueError("algorithm must start with 'fsverity-'")
        rest = text[len("fsverity-") :]
        if "-" not in rest:
            raise ValueError("algorithm must be 'fsverity-<hash>-<lg_blocksize>'")
        hash_name, lg = rest.rsplit("-", 1)
        if not (lg.isascii() and lg.isdigit() and len(lg) < 5):
            raise ValueError(f"invalid lg_blocksize '{lg}'")
        if int(lg) != 12:
            raise ValueError(f"unsupported lg_blocksize {lg} (only 12 is currently supported)")
        return cls.from_hash_name(hash_name)

    @classmethod
    def from_hash_name(cls, name: str) -> Algorithm:
        """``sha256`` or ``sha512``."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(
                f"unsupported hash algorithm '{name}' (expected sha256 or sha512)"
            ) from None


AlgorithmLike = Algorithm | str


def _name(algorithm: AlgorithmLike) -> HashName:
    if isinstance(algorithm, Algorithm):
        return algorithm.hash_name
    if algorithm.startswith("fsverity-"):
        return Algorithm.parse(algorithm).hash_name
    return Algorithm.from_hash_name(algorithm).hash_name


def digest(data: BufferLike, algorithm: AlgorithmLike = Algorithm.SHA256) -> bytes:
    """The fs-verity digest of ``data``."""
    return _backend.backend().fsverity.digest(data, _name(algorithm))


def digest_fd(fd: int, algorithm: AlgorithmLike = Algorithm.SHA256, threads: int = 0) -> bytes:
    """The digest of the whole file behind ``fd`` (read with pread; the position is untouched).

    ``threads=0`` uses every available core, ``threads=1`` hashes on the calling thread only.
    """
    if threads < 0:
        raise ValueError("threads must be >= 0")
    return _backend.backend().fsverity.digest_fd(fd, _name(algorithm), threads)


def digest_file(
    path: str | os.PathLike[str], algorithm: AlgorithmLike = Algorithm.SHA256, threads: int = 0
) -> bytes:
    """The digest of the file at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd, algorithm, threads)
    finally:
        os.close(fd)


class Hasher:
    """Incremental fs-verity digest: feed data in any pieces, ask for the digest at any time."""

    __slots__ = ("_inner", "algorithm")

    def __init__(self, algorithm: AlgorithmLike = Algorithm.SHA256) -> None:
        name = _name(algorithm)
        self.algorithm = Algorithm(name)
        self._inner: HasherLike = _backend.backend().fsverity.Hasher(name)

    def update(self, data: BufferLike) -> None:
        self._inner.update(data)

    def digest(self) -> bytes:
        return self._inner.digest()

    def hexdigest(self) -> str:
        return self.digest().hex()

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._inner.size


def enable_verity(fd: int, algorithm: AlgorithmLike = Algorithm.SHA256) -> None:
    """Enables fs-verity on the file (which must have no writable descriptor open)."""
    try:
        _backend.backend().fsverity.enable_verity(fd, _name(algorithm))
    except OSError as e:
        if e.errno in _NOT_SUPPORTED:
            raise VerityNotSupported("Filesystem does not support fs-verity") from e
        if e.errno == errno.EEXIST:
            raise VerityAlreadyEnabled("fs-verity is already enabled on file") from e
        if e.errno == errno.ETXTBSY:
            raise VerityFileOpenedForWrite("File is opened for writing") from e
        raise FsVerityError("Failed to enable fs-verity") from e


def measure_verity(fd: int, algorithm: AlgorithmLike = Algorithm.SHA256) -> bytes:
    """The kernel's fs-verity digest of the file; errors if verity is missing or unsupported."""
    alg = Algorithm(_name(algorithm))
    try:
        measured = _backend.backend().fsverity.measure_verity(fd, alg.hash_name)
    except OSError as e:
        if e.errno == errno.ENODATA:
            raise VerityMissing("fs-verity is not enabled on file") from e
        if e.errno in _NOT_SUPPORTED:
            raise VerityNotSupported("fs-verity is not supported by filesystem") from e
        if e.errno == errno.EOVERFLOW:
            raise VerityInvalidDigest(f"Expected digest size {alg.digest_size}") from e
        raise FsVerityError("Failed to measure fs-verity") from e
    if measured.algorithm_id != alg.kernel_id:
        raise VerityInvalidDigest(
            f"Expected algorithm {alg.kernel_id}, found {measured.algorithm_id}"
        )
    if len(measured.digest) != alg.digest_size:
        raise VerityInvalidDigest(f"Expected digest size {alg.digest_size}")
    return bytes(measured.digest)


def measure_verity_opt(fd: int, algorithm: AlgorithmLike = Algorithm.SHA256) -> bytes | None:
    """Like :func:`measure_verity`, but ``None`` when verity is missing or unsupported."""
    try:
        return measure_verity(fd, algorithm)
    except (VerityMissing, VerityNotSupported):
        return None
