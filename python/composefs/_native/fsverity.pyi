"""fs-verity digests (4 KiB blocks, no salt) and the fs-verity ioctls (native backend).

Algorithms are ``"sha256"`` or ``"sha512"``; any other string raises :class:`ValueError`.
Byte arguments accept any contiguous buffer. Large inputs are hashed with the GIL released.
"""

from typing import Self, TypeAlias, final

from composefs._contract import VerityMeasurement

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["Hasher", "digest", "digest_fd", "enable_verity", "measure_verity"]

def digest(data: _Buffer, algorithm: str) -> bytes:
    """The fs-verity digest of ``data`` (32 or 64 bytes)."""

def digest_fd(fd: int, algorithm: str, threads: int = 0) -> bytes:
    """The digest of the whole file behind ``fd``, read with ``pread`` from offset 0 to EOF.

    The file position is neither used nor moved. ``threads=0``: one thread per available
    core; ``1``: single-threaded. Raises :class:`OSError` (with ``errno``) on read errors.
    """

@final
class Hasher:
    """Incremental fs-verity digest: any split of the input gives the same result."""

    def __new__(cls, algorithm: str) -> Self: ...
    def update(self, data: _Buffer) -> None:
        """Appends ``data``."""

    def digest(self) -> bytes:
        """The digest of the data so far; more updates may follow."""

    @property
    def size(self) -> int:
        """Bytes fed so far."""

def enable_verity(fd: int, algorithm: str) -> None:
    """``FS_IOC_ENABLE_VERITY`` (4 KiB blocks, no salt, no signature).

    Raises :class:`OSError` with the kernel's ``errno`` (``ENOTTY``/``EOPNOTSUPP``,
    ``EEXIST``, ``ETXTBSY``, ...).
    """

def measure_verity(fd: int, algorithm: str) -> VerityMeasurement:
    """``FS_IOC_MEASURE_VERITY`` with room for a digest of ``algorithm``.

    Returns ``VerityMeasurement(algorithm_id, digest)`` (the kernel's algorithm id); raises
    :class:`OSError` with the kernel's ``errno`` (``ENODATA``, ``ENOTTY``, ``EOPNOTSUPP``,
    ``EOVERFLOW``, ...).
    """
