"""``fsck`` of a repository: :class:`FsckResult` and the walk that fills it, with cfsctl's
counters and error strings (``Repository.fsck`` calls :func:`fsck`)."""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import TYPE_CHECKING, Any, BinaryIO

from composefs import fsverity, splitstream
from composefs._text import printable
from composefs.errors import (
    ComposefsError,
    FsVerityError,
    RepositoryEscape,
    SplitStreamError,
    error_chain,
)
from composefs.object_ids import parse_hex
from composefs.repo_metadata import METADATA_FILENAME, RepoMetadata

if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = ["FsckResult", "fsck"]


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
            lines.extend(f"  - {printable(e)}" for e in self.errors)
        else:
            lines.append("status: ok")
        return "\n".join(lines) + "\n"


def fsck(repo: Repository, *, check_objects: bool = True) -> FsckResult:
    """Checks ``repo`` the way ``cfsctl fsck`` does (read-only)."""
    result = FsckResult()
    _fsck_metadata(repo, result)
    if check_objects:
        _fsck_objects(repo, result)
    _fsck_category(repo, "streams", result)
    _fsck_category(repo, "images", result)
    return result


def _fsck_metadata(repo: Repository, result: FsckResult) -> None:
    try:
        with open(f"/proc/self/fd/{repo.fd}/{METADATA_FILENAME}", "rb") as f:
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
        meta.check_compatible(repo.algorithm)
    except ComposefsError:
        result.errors.append(
            f"fsck: metadata-algorithm-mismatch: meta.json: expected {meta.algorithm}, "
            f"repository opened as {repo.algorithm.hash_name}"
        )


def _fsck_objects(repo: Repository, result: FsckResult) -> None:
    try:
        objects = os.open("objects", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=repo.fd)
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
                    _fsck_object(repo, dfd, sub, entry.name, result)
            finally:
                os.close(dfd)
    finally:
        os.close(objects)


def _fsck_object(repo: Repository, dfd: int, sub: str, name: str, result: FsckResult) -> None:
    result.objects_checked += 1
    path = f"objects/{sub}/{name}"
    try:
        expected = bytes.fromhex(sub) + parse_hex(name, repo.algorithm.digest_size - 1)
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
            measured: bytes | None = fsverity.measure_verity(fd, repo.algorithm)
        except FsVerityError:
            measured = None
        if measured is None:
            if not repo.secure:
                try:
                    measured = fsverity.digest_fd(fd, repo.algorithm)
                except OSError as e:
                    result.objects_corrupted += 1
                    result.errors.append(f"fsck: object-verity-failed: {path}: {_errno_text(e)}")
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


def _fsck_category(repo: Repository, category: str, result: FsckResult) -> None:
    is_streams = category == "streams"
    cfd = _open_dir(repo, category, result)
    if cfd is None:
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
            resolved = repo.resolve(path)
            os.stat(resolved, dir_fd=repo.fd, follow_symlinks=False)
        except RepositoryEscape:
            corrupted()
            result.errors.append(f"fsck: symlink-escapes-repository: {path}")
            continue
        except FileNotFoundError:
            result.broken_links += 1
            corrupted()
            result.errors.append(f"fsck: broken-symlink: {path}")
            continue
        except OSError as e:
            result.errors.append(f"fsck: stat-failed: {path}: {_errno_text(e)}")
            continue
        if is_streams:
            _fsck_stream(repo, entry.name, resolved, result)
        else:
            _fsck_image(repo, entry.name, resolved, result)
    _fsck_refs(repo, category, f"{category}/refs", result)


def _fsck_refs(repo: Repository, category: str, path: str, result: FsckResult) -> None:
    fd = _open_dir(repo, path, result)
    if fd is None:
        return
    try:
        entries = sorted(os.scandir(fd), key=lambda e: e.name)
    finally:
        os.close(fd)
    for entry in entries:
        sub = f"{path}/{entry.name}"
        if entry.is_symlink():
            try:
                os.stat(repo.resolve(sub), dir_fd=repo.fd, follow_symlinks=False)
            except RepositoryEscape:
                result.errors.append(f"fsck: symlink-escapes-repository: {sub}")
            except FileNotFoundError:
                result.broken_links += 1
                result.errors.append(f"fsck: broken-symlink: {sub}")
            except OSError as e:
                result.errors.append(f"fsck: stat-failed: {sub}: {_errno_text(e)}")
        elif entry.is_dir(follow_symlinks=False):
            _fsck_refs(repo, category, sub, result)
        else:
            kind = "RegularFile" if entry.is_file(follow_symlinks=False) else "Unknown"
            result.errors.append(f"fsck: unexpected-file-type: {sub}: {kind}")


def _fsck_stream(repo: Repository, name: str, resolved: str, result: FsckResult) -> None:
    path = f"streams/{name}"
    try:
        with _open_resolved(repo, resolved) as f:
            data = f.read()
    except OSError as e:
        result.streams_corrupted += 1
        result.errors.append(f"fsck: stream-open-failed: {path}: {_errno_text(e)}")
        return
    try:
        stream = splitstream.parse(data, repo.algorithm)
    except SplitStreamError as e:
        result.streams_corrupted += 1
        result.errors.append(f"fsck: stream-read-failed: {path}: {e}")
        return
    for object_id in stream.object_refs:
        if not repo.has_object(object_id):
            result.missing_objects += 1
            result.errors.append(f"fsck: missing-object-ref: {path}: {object_id.hex()}")
    for ref_name, ref_id in sorted(stream.named_ref_ids().items()):
        if not repo.has_object(ref_id):
            result.missing_objects += 1
            result.errors.append(f"fsck: missing-named-ref: {path}: ref {ref_name}: {ref_id.hex()}")


def _fsck_image(repo: Repository, name: str, resolved: str, result: FsckResult) -> None:
    from composefs import erofs

    path = f"images/{name}"
    try:
        with _open_resolved(repo, resolved) as f:
            data = f.read()
    except OSError as e:
        result.images_corrupted += 1
        result.errors.append(f"fsck: image-open-failed: {path}: {_errno_text(e)}")
        return
    try:
        objects = erofs.collect_objects(data, repo.algorithm)
    except ComposefsError as e:
        result.images_corrupted += 1
        result.errors.append(f"fsck: image-invalid: {path}: {e}")
        return
    for object_id in sorted(objects):
        if not repo.has_object(object_id):
            result.missing_objects += 1
            result.images_corrupted += 1
            result.errors.append(f"fsck: image-missing-object: {path}: {object_id.hex()}")


def _open_dir(repo: Repository, path: str, result: FsckResult) -> int | None:
    """A directory of the repository, never through a symlink (reported instead)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, dir_fd=repo.fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    result.errors.append(f"fsck: unexpected-file-type: {path}: not a directory")
    return None


def _open_resolved(repo: Repository, resolved: str) -> BinaryIO:
    """Opens a path :meth:`Repository.resolve` returned (no symlink left to follow)."""
    fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=repo.fd)
    return os.fdopen(fd, "rb")


def _errno_text(e: OSError) -> str:
    return f"{e.strerror} (os error {e.errno})" if e.errno else str(e)
