"""OCI images in a repository: reading them back (:class:`OciImage`), listing and inspecting.

Stored exactly as composefs-rs 0.9 stores them (see ``docs/oci.md``)::

    streams/oci-manifest-sha256:<hex>   ocimanif: refs config:<digest>, <diff_id>...; the JSON
    streams/oci-config-sha256:<hex>     ociconfg: refs <diff_id>... (+ composefs.image*); the JSON
    streams/oci-layer-<diff_id>         ocilayer: the tar split stream
    streams/refs/oci/<encoded tag>      -> ../../oci-manifest-sha256:<hex>

plus our extension for image indexes (:mod:`composefs.oci.index`). Names and tags are in
:mod:`composefs.oci.names`, the JSON-document streams in :mod:`composefs.oci.streams`, ``oci
fsck`` in :mod:`composefs.oci.fsck`; this module re-exports what callers import from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from composefs._record import asdict, record, replace
from composefs.errors import ComposefsError
from composefs.oci.index import StoredIndex, open_index, resolve_index, write_index
from composefs.oci.media_types import (
    CONFIG_MEDIA_TYPE,
    CONFIG_MEDIA_TYPES,
    EMPTY_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
)
from composefs.oci.names import (
    BOOT_IMAGE_REF_KEY,
    BOOT_IMAGE_REF_KEY_V1,
    IMAGE_REF_KEY,
    IMAGE_REF_KEY_V1,
    INDEX_REF_PREFIX,
    OCI_REF_PREFIX,
    REFERRER_REF_PREFIX,
    SEAL_LABEL,
    ImageError,
    ImageMissing,
    cleanup_dangling_referrers,
    config_identifier,
    decode_tag,
    encode_tag,
    find_stream_digest,
    index_identifier,
    list_index_refs,
    list_referrers,
    list_refs,
    manifest_identifier,
    resolve_index_ref,
    resolve_ref,
    sha256_digest,
    tag_image,
    untag_image,
)
from composefs.oci.reference import RepoReference
from composefs.oci.streams import (
    open_manifest,
    read_external_stream,
    write_config,
    write_external_stream,
    write_manifest,
)
from composefs.repository import GcResult, Repository

TYPE_CHECKING = False
if TYPE_CHECKING:
    from composefs.oci.fsck import OciFsckResult, oci_fsck

__all__ = [
    "BOOT_IMAGE_REF_KEY",
    "BOOT_IMAGE_REF_KEY_V1",
    "CONFIG_MEDIA_TYPE",
    "IMAGE_REF_KEY",
    "IMAGE_REF_KEY_V1",
    "INDEX_MEDIA_TYPE",
    "INDEX_REF_PREFIX",
    "MANIFEST_MEDIA_TYPE",
    "OCI_REF_PREFIX",
    "REFERRER_REF_PREFIX",
    "SEAL_LABEL",
    "ImageError",
    "ImageInfo",
    "OciFsckResult",
    "OciImage",
    "StoredIndex",
    "config_identifier",
    "decode_tag",
    "encode_tag",
    "find_stream_digest",
    "gc",
    "index_identifier",
    "inspect_reply",
    "list_images",
    "list_index_refs",
    "list_referrers",
    "list_refs",
    "manifest_identifier",
    "oci_fsck",
    "open_index",
    "read_external_stream",
    "resolve_index",
    "resolve_index_ref",
    "resolve_ref",
    "sha256_digest",
    "tag_image",
    "untag_image",
    "write_config",
    "write_external_stream",
    "write_index",
    "write_manifest",
]


def __getattr__(name: str) -> object:
    # ``oci fsck`` (and the layer reader it imports) is loaded on first use: listing or
    # inspecting images does not pay for it
    if name in ("OciFsckResult", "oci_fsck"):
        from composefs.oci import fsck

        return getattr(fsck, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@record
class OciImage:
    """An OCI image (or artifact) stored in a repository."""

    manifest_digest: str
    manifest_verity: bytes
    manifest_raw: bytes
    manifest: dict[str, Any]
    config_digest: str
    config_verity: bytes
    config_raw: bytes
    #: the parsed config for container images, ``None`` for artifacts
    config: dict[str, Any] | None
    #: diff_id (artifacts: layer digest) -> layer stream verity
    layer_refs: dict[str, bytes]
    #: the EROFS image refs (``composefs.image``, ``composefs.image.v1``, boot ones)
    image_refs: dict[str, bytes]

    @classmethod
    def open(cls, repo: Repository, digest: str, verity: bytes | None = None) -> OciImage:
        """Opens an image by manifest digest; without ``verity`` the bytes are hashed."""
        stored = open_manifest(repo, digest, verity)
        if stored.config is not None:
            layer_refs = dict(stored.config_refs)
        else:
            layers = stored.manifest.get("layers")
            layers = layers if isinstance(layers, list) else []
            digests = {d.get("digest") for d in layers if isinstance(d, dict)}
            layer_refs = {k: v for k, v in stored.refs.items() if k in digests}
        image_refs = {k: v for k, v in layer_refs.items() if k.startswith(IMAGE_REF_KEY)}
        for k in image_refs:
            del layer_refs[k]
        if verity is None:
            verity = repo.has_stream(manifest_identifier(digest))
            if verity is None:
                raise ImageMissing(f"OCI image not found: {digest}")
        return cls(
            digest,
            verity,
            stored.raw,
            stored.manifest,
            stored.config_digest,
            stored.config_verity,
            stored.config_raw,
            stored.config,
            layer_refs,
            image_refs,
        )

    @classmethod
    def open_ref(cls, repo: Repository, name: str) -> OciImage:
        digest, verity = resolve_ref(repo, name)
        return cls.open(repo, digest, verity)

    @classmethod
    def resolve(cls, repo: Repository, reference: RepoReference | str) -> OciImage:
        """A tag, or ``@sha256:...`` (a manifest digest; the bytes are verified)."""
        if isinstance(reference, str):
            from composefs.oci.reference import parse_repo_reference

            reference = parse_repo_reference(reference)
        if reference.digest is not None:
            return cls.open(repo, reference.digest)
        assert reference.name is not None
        return cls.open_ref(repo, reference.name)

    @property
    def is_container_image(self) -> bool:
        return _field(_object(self.manifest, "config"), "mediaType") in CONFIG_MEDIA_TYPES

    @property
    def architecture(self) -> str:
        return _field(self.config or {}, "architecture")

    @property
    def os(self) -> str:
        return _field(self.config or {}, "os")

    @property
    def created(self) -> str | None:
        return _field(self.config or {}, "created") or None

    @property
    def artifact_type(self) -> str | None:
        """The manifest's ``artifactType``, else its config media type unless that is the
        image config or the empty descriptor (the OCI 1.1 rule for referrers)."""
        declared = self.manifest.get("artifactType")
        if isinstance(declared, str) and declared:
            return declared
        config_type = _field(_object(self.manifest, "config"), "mediaType")
        if config_type in ("", EMPTY_MEDIA_TYPE) or config_type in CONFIG_MEDIA_TYPES:
            return None
        return config_type

    def referrer_info(self) -> dict[str, Any]:
        """This manifest as an entry of a referrers list (the OCI referrers API's fields)."""
        annotations = self.manifest.get("annotations")
        return {
            "digest": self.manifest_digest,
            "media_type": _field(self.manifest, "mediaType") or MANIFEST_MEDIA_TYPE,
            "artifact_type": self.artifact_type,
            "size": len(self.manifest_raw),
            "annotations": annotations if isinstance(annotations, dict) else {},
        }

    @property
    def layer_descriptors(self) -> list[dict[str, Any]]:
        layers = self.manifest.get("layers")
        return [d for d in layers if isinstance(d, dict)] if isinstance(layers, list) else []

    @property
    def diff_ids(self) -> list[str]:
        if self.config is None:
            return [_field(d, "digest") for d in self.layer_descriptors]
        diff_ids = _object(self.config, "rootfs").get("diff_ids")
        return [str(d) for d in diff_ids] if isinstance(diff_ids, list) else []

    def erofs_image(self, version: int, *, boot: bool = False) -> bytes | None:
        """The linked EROFS image id for a format version (V0/V1 share ``.v1``), if any."""
        if boot:
            key = BOOT_IMAGE_REF_KEY_V1 if version in (0, 1) else BOOT_IMAGE_REF_KEY
        else:
            key = IMAGE_REF_KEY_V1 if version in (0, 1) else IMAGE_REF_KEY
        return self.image_refs.get(key)

    def label(self, key: str) -> str | None:
        labels = _object(_object(self.config or {}, "config"), "Labels")
        return _field(labels, key) or None


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]`` if it is a JSON object, else an empty one (stored documents are checked
    when pulled, but a repository can be tampered with: never an ``AttributeError``)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _field(doc: dict[str, Any], key: str) -> str:
    """``doc[key]`` if it is a string, else ``""``."""
    value = doc.get(key)
    return value if isinstance(value, str) else ""


@record
class ImageInfo:
    """One row of ``oci images`` (cfsctl's ``ImageEntry``)."""

    name: str
    manifest_digest: str
    is_container: bool
    architecture: str
    os: str
    created: str | None
    layer_count: int
    referrer_count: int

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = asdict(self)
        return doc


def list_images(repo: Repository, warn: Any = None) -> list[ImageInfo]:
    """Every tagged image; unreadable ones are skipped (reported through ``warn(message)``)."""
    images = []
    for name, digest in list_refs(repo):
        try:
            img = OciImage.open(repo, digest)
        except (ComposefsError, OSError) as e:
            if warn is not None:
                warn(f"skipping image {name}: {e}")
            continue
        try:
            referrers = len(list_referrers(repo, digest))
        except ComposefsError:
            referrers = 0
        images.append(
            ImageInfo(
                name=name,
                manifest_digest=digest,
                is_container=img.is_container_image,
                architecture=img.architecture,
                os=img.os,
                created=img.created,
                layer_count=len(img.layer_descriptors),
                referrer_count=referrers,
            )
        )
    return images


def inspect_reply(repo: Repository, image: OciImage) -> dict[str, Any]:
    """cfsctl's ``oci inspect`` document (``OciInspectReply``)."""
    erofs = image.erofs_image(repo.erofs_version)
    boot = image.erofs_image(repo.erofs_version, boot=True)
    return {
        "manifest": image.manifest_raw.decode("utf-8"),
        "config": image.config_raw.decode("utf-8"),
        "referrers": [d for d, _ in list_referrers(repo, image.manifest_digest)],
        "composefs_erofs": None if erofs is None else erofs.hex(),
        "composefs_boot_erofs": None if boot is None else boot.hex(),
    }


def gc(
    repo: Repository,
    roots: Sequence[str] = (),
    *,
    dry_run: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> GcResult:
    """Garbage collection that also lets go of the referrers (signatures, SBOMs) of images
    that are gone.

    A referrer link (``streams/refs/oci-referrers/<subject>/<artifact>``) is a root, so the
    artifact outlives its subject unless the link goes. composefs-rs leaves that to a separate
    ``cleanup_dangling_referrers`` call; here the links of subjects whose manifest is gone are
    dropped first, and once more after the collection (which may have removed the manifest of
    an untagged subject), followed by a second collection only then. ``dry_run`` reports the
    first pass only. ``on_wait``: see :meth:`Repository.gc` (called if the collection has to
    wait for the repository's other users).
    """
    pruned = cleanup_dangling_referrers(repo, dry_run=dry_run)
    result = repo.gc(roots, dry_run=dry_run, on_wait=on_wait)
    if not dry_run:
        again = cleanup_dangling_referrers(repo)
        if again:
            pruned += again
            second = repo.gc(roots)
            result = GcResult(
                objects_removed=result.objects_removed + second.objects_removed,
                objects_bytes=result.objects_bytes + second.objects_bytes,
                images_pruned=result.images_pruned + second.images_pruned,
                streams_pruned=result.streams_pruned + second.streams_pruned,
                warnings=result.warnings + second.warnings,
            )
    return replace(result, referrers_pruned=pruned)
