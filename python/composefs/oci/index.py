"""Image indexes kept in a repository (our extension; composefs-rs 0.9 keeps none)::

    streams/oci-index-sha256:<hex>      ociindx\\0: refs manifest:<digest>..., index:<digest>...;
                                        the index JSON
    streams/refs/oci-index/<encoded tag> -> ../../oci-index-sha256:<hex>

A pull stores every index it walked to reach the manifest; :func:`resolve_index` picks a
platform again among the manifests imported from one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from composefs import splitstream
from composefs._record import record
from composefs.errors import ComposefsError
from composefs.oci.documents import (
    DocumentError,
    parse_index,
    parse_json_object,
    quote,
)
from composefs.oci.media_types import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, MAX_INDEX_DEPTH
from composefs.oci.names import (
    INDEX_REF_PREFIX,
    ImageDigestMismatch,
    ImageError,
    ImageMissing,
    index_identifier,
    ref_path,
    sha256_digest,
)
from composefs.oci.platform import Platform, format_platforms, host_platform, match_rank
from composefs.oci.source import Descriptor
from composefs.oci.streams import open_manifest, read_external_stream, write_external_stream

if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = ["StoredIndex", "open_index", "resolve_index", "write_index"]


@record
class StoredIndex:
    """An image index kept in the repository, with the manifests and indexes pulled from it."""

    digest: str
    verity: bytes
    raw: bytes
    #: imported manifests: digest -> manifest stream verity
    manifests: dict[str, bytes]
    #: nested indexes kept too: digest -> index stream verity
    indexes: dict[str, bytes]

    @property
    def document(self) -> dict[str, Any]:
        try:
            return parse_json_object(self.raw, f"index {self.digest}")
        except DocumentError as e:
            raise ImageError(f"Reading stored index {self.digest}") from e

    def descriptors(self) -> tuple[Descriptor, ...]:
        """The index's ``manifests``, every field checked."""
        try:
            return parse_index(self.document, f"index {self.digest}", check_version=False).manifests
        except DocumentError as e:
            raise ImageError(f"Reading stored index {self.digest}") from e

    def entries(self) -> list[dict[str, Any]]:
        entries = self.document.get("manifests")
        entries = entries if isinstance(entries, list) else []
        return [e for e in entries if isinstance(e, dict)]


@contextlib.contextmanager
def _index_lock(repo: Repository) -> Iterator[None]:
    """Serialises read-modify-write of index streams (threads and processes)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir("streams", 0o755, dir_fd=repo.fd)
    fd = os.open("streams", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=repo.fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_index(
    repo: Repository,
    chain: Sequence[tuple[str, bytes]],
    manifest_digest: str,
    manifest_verity: bytes,
    name: str | None = None,
) -> bytes | None:
    """Stores the indexes walked to reach a manifest (outermost first); returns the outer verity.

    Each index stream gets one ``manifest:<digest>`` ref per manifest imported from it and one
    ``index:<digest>`` ref per nested index kept, in the order of the index's ``manifests``
    array; refs from earlier pulls (other platforms) are kept. ``name`` tags the outermost
    index under ``streams/refs/oci-index/``.
    """
    if not chain:
        return None
    with _index_lock(repo):
        child_name, child_id = f"manifest:{manifest_digest}", manifest_verity
        verity = b""
        for digest, raw in reversed(chain):
            identifier = index_identifier(digest)
            refs: dict[str, bytes] = {}
            existing = repo.has_stream(identifier)
            if existing is not None:
                with contextlib.suppress(ComposefsError, OSError):
                    _, refs = read_external_stream(
                        repo, identifier, existing, splitstream.INDEX_CONTENT_TYPE
                    )
            refs[child_name] = child_id
            verity = write_external_stream(
                repo,
                splitstream.INDEX_CONTENT_TYPE,
                raw,
                _order_index_refs(raw, refs),
                identifier,
            )
            child_name, child_id = f"index:{digest}", verity
        if name is not None:
            repo.name_stream(index_identifier(chain[0][0]), ref_path(name, INDEX_REF_PREFIX))
        return verity


def _order_index_refs(raw: bytes, refs: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Refs in the order their targets appear in the index; unknown names last, sorted."""
    order: dict[str, int] = {}
    with contextlib.suppress(DocumentError):
        for i, entry in enumerate(_entries(raw)):
            order.setdefault(f"manifest:{entry.digest}", i)
            order.setdefault(f"index:{entry.digest}", i)
    return sorted(refs.items(), key=lambda kv: (order.get(kv[0], len(order) + 1), kv[0]))


def _entries(raw: bytes) -> tuple[Descriptor, ...]:
    doc = parse_json_object(raw, "index")
    return parse_index(doc, "index", check_version=False).manifests


def open_index(repo: Repository, digest: str, verity: bytes | None = None) -> StoredIndex:
    """Reads ``oci-index-<digest>`` back (hashing the bytes when ``verity`` is unknown)."""
    identifier = index_identifier(digest)
    if verity is None:
        verity = repo.has_stream(identifier)
        if verity is None:
            raise ImageMissing(f"OCI index not found: {digest}")
        raw, refs = read_external_stream(repo, identifier, verity, splitstream.INDEX_CONTENT_TYPE)
        found = sha256_digest(raw)
        if found != digest:
            raise ImageDigestMismatch(f"Index integrity failed: expected {digest}, got {found}")
    else:
        raw, refs = read_external_stream(repo, identifier, verity, splitstream.INDEX_CONTENT_TYPE)
    manifests = {k[len("manifest:") :]: v for k, v in refs.items() if k.startswith("manifest:")}
    indexes = {k[len("index:") :]: v for k, v in refs.items() if k.startswith("index:")}
    return StoredIndex(digest, verity, raw, manifests, indexes)


def resolve_index(
    repo: Repository, digest: str, platform: Platform | None = None
) -> tuple[str, bytes]:
    """Re-resolves a stored index for ``platform`` (default: this host) among the manifests
    imported from it; returns ``(manifest digest, manifest verity)``.

    Entries without a ``platform`` are matched by their stored config. An index entry that
    matches but was never imported is an error naming it (pull it first).
    """
    wanted = platform or host_platform()
    seen: dict[Platform | None, None] = {}  # distinct, in order: linear
    walked: set[str] = {digest}  # each stored index walked once
    config_platforms: dict[str, Platform | None] = {}  # manifest digest -> config platform
    best: tuple[int, int, str, bytes | None] | None = None
    order = 0

    def config_platform(entry_digest: str, verity: bytes) -> Platform | None:
        if entry_digest not in config_platforms:
            plat = None
            with contextlib.suppress(ComposefsError):
                config = open_manifest(repo, entry_digest, verity).config
                if config is not None:
                    plat = Platform.from_json(config)
            config_platforms[entry_digest] = plat
        return config_platforms[entry_digest]

    def walk(index: StoredIndex, depth: int) -> bool:
        nonlocal best, order
        if depth >= MAX_INDEX_DEPTH:
            raise ImageError(f"image index {index.digest} nests too deep")
        for entry in index.descriptors():
            if entry.media_type in INDEX_MEDIA_TYPES:
                child = index.indexes.get(entry.digest)
                if child is None or entry.digest in walked:
                    continue
                walked.add(entry.digest)
                if walk(open_index(repo, entry.digest, child), depth + 1):
                    return True
                continue
            if entry.media_type not in MANIFEST_MEDIA_TYPES:
                continue
            verity = index.manifests.get(entry.digest)
            plat: Platform | None = None
            if entry.platform:
                plat = Platform.from_json(entry.platform)
            elif verity is not None:
                plat = config_platform(entry.digest, verity)
            seen.setdefault(plat)
            rank = None if plat is None else match_rank(plat, wanted)
            if rank is None:
                continue
            key = (rank, order, entry.digest, verity)
            order += 1
            if best is None or key[:2] < best[:2]:
                best = key
            if rank == 0:
                return True
        return False

    walk(open_index(repo, digest), 0)
    if best is None:
        raise ImageError(
            f"No manifest found for platform {quote(wanted)} in index {digest}; available: "
            f"{format_platforms(seen)}"
        )
    _, _, manifest_digest, verity = best
    if verity is None:
        raise ImageError(
            f"manifest {manifest_digest} for platform {wanted} of index {digest} was not "
            "pulled into this repository"
        )
    return manifest_digest, verity
