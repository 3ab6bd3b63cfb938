"""Streams that hold one JSON document as their only external object, with named refs: the
manifest, config and index streams of OCI images (see ``docs/oci.md``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from composefs import splitstream
from composefs.oci.documents import DocumentError, parse_json, parse_manifest
from composefs.oci.media_types import CONFIG_MEDIA_TYPES
from composefs.oci.names import (
    ImageDigestMismatch,
    ImageError,
    ImageMissing,
    config_identifier,
    manifest_identifier,
    sha256_digest,
)

if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = [
    "StoredManifest",
    "open_external",
    "open_manifest",
    "parse_object",
    "read_external_stream",
    "write_config",
    "write_external_stream",
    "write_manifest",
]


def write_external_stream(
    repo: Repository,
    content_type: int,
    data: bytes,
    refs: Sequence[tuple[str, bytes]],
    identifier: str,
    ref: str | None = None,
) -> bytes:
    """Writes a stream of named refs (in call order) and ``data`` as one external object."""
    object_id = repo.ensure_object(data)
    writer = splitstream.Writer(repo.algorithm, content_type)
    for name, stream_id in refs:
        writer.add_named_ref(name, stream_id)
    writer.write_external(object_id, len(data))
    return repo.write_stream(writer, identifier, ref)


def read_external_stream(
    repo: Repository, identifier: str, verity: bytes | None, content_type: int
) -> tuple[bytes, dict[str, bytes]]:
    """The payload and named refs of a stream that holds exactly one external object."""
    stream = repo.open_stream(identifier, content_type, verity)
    if len(stream.object_refs) != 1:
        raise ImageError(
            f"Expected exactly 1 external object in splitstream, got {len(stream.object_refs)}"
        )
    return repo.read_object(stream.object_refs[0]), stream.named_ref_ids()


def open_external(
    repo: Repository, identifier: str, verity: bytes | None, content_type: int
) -> tuple[bytes, dict[str, bytes]]:
    """Like :func:`read_external_stream`, with cfsctl's message for a missing stream."""
    if verity is None and repo.has_stream(identifier) is None:
        # a manifest or an index that is not there: the image is not; a config or a layer
        # missing under a manifest that is: the image is broken
        missing = identifier.startswith(("oci-manifest-", "oci-index-"))
        cls = ImageMissing if missing else ImageError
        raise cls(f"Opening stream '{identifier}'") from FileNotFoundError(
            2, "No such file or directory"
        )
    return read_external_stream(repo, identifier, verity, content_type)


def write_config(
    repo: Repository, digest: str, raw: bytes, layer_refs: Sequence[tuple[str, bytes]]
) -> bytes:
    """``oci-config-<digest>``: ``<diff_id>`` refs in config order, then the config JSON."""
    return write_external_stream(
        repo, splitstream.CONFIG_CONTENT_TYPE, raw, layer_refs, config_identifier(digest)
    )


def write_manifest(
    repo: Repository,
    digest: str,
    raw: bytes,
    config_digest: str,
    config_verity: bytes,
    layer_refs: Sequence[tuple[str, bytes]],
) -> bytes:
    """``oci-manifest-<digest>``: ``config:<digest>``, the layer refs, then the manifest JSON."""
    refs = [(f"config:{config_digest}", config_verity), *layer_refs]
    return write_external_stream(
        repo, splitstream.MANIFEST_CONTENT_TYPE, raw, refs, manifest_identifier(digest)
    )


def parse_object(raw: bytes, what: str) -> dict[str, Any]:
    """A stored JSON document (read back from the repository, which may be hostile too)."""
    try:
        doc = parse_json(raw, what)
    except DocumentError as e:
        raise ImageError(f"parsing {what} JSON") from e
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


class StoredManifest(NamedTuple):
    """A manifest stream read back with its config stream."""

    raw: bytes
    manifest: dict[str, Any]
    #: the manifest stream's named refs (``config:<digest>``, layers)
    refs: dict[str, bytes]
    config_digest: str
    config_verity: bytes
    config_raw: bytes
    #: the config stream's named refs (``<diff_id>``..., ``composefs.image``...)
    config_refs: dict[str, bytes]
    #: the parsed config for container images, ``None`` for artifacts
    config: dict[str, Any] | None


def open_manifest(repo: Repository, digest: str, verity: bytes | None = None) -> StoredManifest:
    """Reads ``oci-manifest-<digest>`` and its config stream; without ``verity`` the manifest
    bytes are hashed."""
    raw, refs = open_external(
        repo, manifest_identifier(digest), verity, splitstream.MANIFEST_CONTENT_TYPE
    )
    if verity is None:
        found = sha256_digest(raw)
        if found != digest:
            raise ImageDigestMismatch(f"Manifest integrity failed: expected {digest}, got {found}")
    manifest = parse_object(raw, "manifest")
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict) or not isinstance(config_desc.get("digest"), str):
        raise ImageError("manifest has no config descriptor")
    try:
        parse_manifest(manifest, f"manifest {digest}")
    except DocumentError as e:
        raise ImageError(f"invalid stored manifest {digest}") from e
    config_digest = config_desc["digest"]
    config_verity = refs.get(f"config:{config_digest}")
    if config_verity is None:
        raise ImageError("Manifest missing config reference")
    config_raw, config_refs = read_external_stream(
        repo,
        config_identifier(config_digest),
        config_verity,
        splitstream.CONFIG_CONTENT_TYPE,
    )
    config: dict[str, Any] | None = None
    if config_desc.get("mediaType") in CONFIG_MEDIA_TYPES:
        config = parse_object(config_raw, "config")
    return StoredManifest(
        raw, manifest, refs, config_digest, config_verity, config_raw, config_refs, config
    )
