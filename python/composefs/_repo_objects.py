"""The repository's object writer (:meth:`composefs.repository.Repository._store`): the pure
object writer with the backend's hasher and the repository's errors. Imported on the first
object written, not when a repository is opened (start-up of the read-only commands)."""

from __future__ import annotations

from composefs import fsverity
from composefs._pure.objects import ObjectStore
from composefs.errors import (
    FsVerityError,
    ObjectDigestMismatch,
    VerityAlreadyEnabled,
    VerityMissing,
    VerityNotSupported,
)
from composefs.object_ids import object_pathname

TYPE_CHECKING = False
if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = ["_RepoObjectStore"]


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
