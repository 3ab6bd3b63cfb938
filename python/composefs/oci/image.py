"""OCI images in a repository: the manifest, config and index streams, tags, reading back, fsck.

Stored exactly as composefs-rs 0.9 stores them (see ``docs/oci.md``)::

    streams/oci-manifest-sha256:<hex>   ocimanif: refs config:<digest>, <diff_id>...; the JSON
    streams/oci-config-sha256:<hex>     ociconfg: refs <diff_id>... (+ composefs.image*); the JSON
    streams/oci-layer-<diff_id>         ocilayer: the tar split stream
    streams/refs/oci/<encoded tag>      -> ../../oci-manifest-sha256:<hex>

plus our extension for image indexes (composefs-rs 0.9 keeps none)::

    streams/oci-index-sha256:<hex>      ociindx\\0: refs manifest:<digest>..., index:<digest>...;
                                        index JSON
    streams/refs/oci-index/<encoded tag> -> ../../oci-index-sha256:<hex>
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from composefs import splitstream
from composefs.errors import ComposefsError
from composefs.layer import layer_identifier
from composefs.oci.platform import Platform, format_platforms, host_platform, match_rank
from composefs.oci.reference import ReferenceError, RepoReference, parse_digest
from composefs.repository import FsckResult, Repository

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "IMAGE_REF_KEY",
    "IMAGE_REF_KEY_V1",
    "INDEX_MEDIA_TYPE",
    "INDEX_REF_PREFIX",
    "MANIFEST_MEDIA_TYPE",
    "OCI_REF_PREFIX",
    "ImageError",
    "ImageInfo",
    "OciFsckResult",
    "OciImage",
    "StoredIndex",
    "config_identifier",
    "decode_tag",
    "encode_tag",
    "index_identifier",
    "inspect_reply",
    "list_images",
    "list_referrers",
    "list_refs",
    "manifest_identifier",
    "oci_fsck",
    "open_index",
    "resolve_index",
    "resolve_ref",
    "tag_image",
    "untag_image",
    "write_config",
    "write_index",
    "write_manifest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"

OCI_REF_PREFIX = "oci/"
INDEX_REF_PREFIX = "oci-index/"
REFERRER_REF_PREFIX = "oci-referrers/"

IMAGE_REF_KEY = "composefs.image"
IMAGE_REF_KEY_V1 = "composefs.image.v1"
BOOT_IMAGE_REF_KEY = "composefs.image.boot"
BOOT_IMAGE_REF_KEY_V1 = "composefs.image.boot.v1"
SEAL_LABEL = "containers.composefs.fsverity"


class ImageError(ComposefsError):
    """An OCI image in the repository is missing, incomplete or corrupt."""


# -- names ---------------------------------------------------------------------------------


def manifest_identifier(digest: str) -> str:
    return f"oci-manifest-{digest}"


def config_identifier(digest: str) -> str:
    return f"oci-config-{digest}"


def index_identifier(digest: str) -> str:
    return f"oci-index-{digest}"


def encode_tag(name: str) -> str:
    """Tag -> file name: ``%`` becomes ``%25`` (first), then ``/`` becomes ``%2F``."""
    return name.replace("%", "%25").replace("/", "%2F")


def decode_tag(encoded: str) -> str:
    """File name -> tag, single pass; unknown ``%xx`` sequences are kept as they are."""
    out: list[str] = []
    i = 0
    while i < len(encoded):
        c = encoded[i]
        if c == "%":
            code = encoded[i + 1 : i + 3]
            out.append({"2F": "/", "25": "%"}.get(code, "%" + code))
            i += 1 + len(code)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _ref_path(name: str, prefix: str = OCI_REF_PREFIX) -> str:
    return prefix + encode_tag(name)


# -- streams with one external object --------------------------------------------------------


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


def _open_external(
    repo: Repository, identifier: str, verity: bytes | None, content_type: int
) -> tuple[bytes, dict[str, bytes]]:
    """Like :func:`read_external_stream`, with cfsctl's message for a missing stream."""
    if verity is None and repo.has_stream(identifier) is None:
        raise ImageError(f"Opening stream '{identifier}'") from FileNotFoundError(
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


# -- stored image indexes (our extension) ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
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
        doc = json.loads(self.raw)
        if not isinstance(doc, dict):
            raise ImageError(f"index {self.digest} is not a JSON object")
        return doc

    def entries(self) -> list[dict[str, Any]]:
        entries = self.document.get("manifests") or []
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
            repo.name_stream(index_identifier(chain[0][0]), _ref_path(name, INDEX_REF_PREFIX))
        return verity


def _order_index_refs(raw: bytes, refs: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Refs in the order their targets appear in the index; unknown names last, sorted."""
    order: dict[str, int] = {}
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        for i, entry in enumerate(json.loads(raw).get("manifests") or []):
            digest = entry.get("digest")
            order.setdefault(f"manifest:{digest}", i)
            order.setdefault(f"index:{digest}", i)
    return sorted(refs.items(), key=lambda kv: (order.get(kv[0], len(order) + 1), kv[0]))


def open_index(repo: Repository, digest: str, verity: bytes | None = None) -> StoredIndex:
    """Reads ``oci-index-<digest>`` back (hashing the bytes when ``verity`` is unknown)."""
    identifier = index_identifier(digest)
    if verity is None:
        verity = repo.has_stream(identifier)
        if verity is None:
            raise ImageError(f"OCI index not found: {digest}")
        raw, refs = read_external_stream(repo, identifier, verity, splitstream.INDEX_CONTENT_TYPE)
        found = sha256_digest(raw)
        if found != digest:
            raise ImageError(f"Index integrity failed: expected {digest}, got {found}")
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
    seen: list[Platform | None] = []
    best: tuple[int, int, str, bytes | None] | None = None
    order = 0

    def walk(index: StoredIndex, depth: int) -> bool:
        nonlocal best, order
        if depth > 16:
            raise ImageError(f"image index {index.digest} nests too deep")
        for entry in index.entries():
            media_type, entry_digest = entry.get("mediaType"), str(entry.get("digest"))
            if media_type == INDEX_MEDIA_TYPE:
                child = index.indexes.get(entry_digest)
                if child is not None and walk(open_index(repo, entry_digest, child), depth + 1):
                    return True
                continue
            if media_type != MANIFEST_MEDIA_TYPE:
                continue
            verity = index.manifests.get(entry_digest)
            plat: Platform | None = None
            if isinstance(entry.get("platform"), dict):
                plat = Platform.from_json(entry["platform"])
            elif verity is not None:
                with contextlib.suppress(ComposefsError):
                    image = OciImage.open(repo, entry_digest, verity)
                    if image.config is not None:
                        plat = Platform.from_json(image.config)
            seen.append(plat)
            rank = None if plat is None else match_rank(plat, wanted)
            if rank is None:
                continue
            key = (rank, order, entry_digest, verity)
            order += 1
            if best is None or key[:2] < best[:2]:
                best = key
            if rank == 0:
                return True
        return False

    walk(open_index(repo, digest), 0)
    if best is None:
        raise ImageError(
            f"No manifest found for platform {wanted} in index {digest}; available: "
            f"{format_platforms(seen)}"
        )
    _, _, manifest_digest, verity = best
    if verity is None:
        raise ImageError(
            f"manifest {manifest_digest} for platform {wanted} of index {digest} was not "
            "pulled into this repository"
        )
    return manifest_digest, verity


# -- tags ------------------------------------------------------------------------------------


def _validate_ref_name(name: str) -> None:
    if name.startswith("@"):
        raise ImageError(
            f"Invalid ref name {json.dumps(name)}: leading '@' is reserved for digest references"
        )


def tag_image(repo: Repository, digest: str, name: str) -> None:
    """Tags a manifest (or, our extension, a stored index) under ``name``.

    Like cfsctl, a manifest tag is written even when the manifest is not in the repository.
    """
    _validate_ref_name(name)
    if (
        repo.has_stream(manifest_identifier(digest)) is None
        and repo.has_stream(index_identifier(digest)) is not None
    ):
        repo.name_stream(index_identifier(digest), _ref_path(name, INDEX_REF_PREFIX))
        return
    repo.name_stream(manifest_identifier(digest), _ref_path(name))


def untag_image(repo: Repository, name: str) -> None:
    """Removes the tag ``name`` (and the index tag of the same name, if any)."""
    repo.ensure_writable()
    removed = False
    try:
        os.unlink(f"streams/refs/{_ref_path(name)}", dir_fd=repo.fd)
        removed = True
    except FileNotFoundError as e:
        missing: OSError = e
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"streams/refs/{_ref_path(name, INDEX_REF_PREFIX)}", dir_fd=repo.fd)
        removed = True
    if not removed:
        raise ImageError(f"Failed to remove tag {name}") from FileNotFoundError(
            missing.errno, missing.strerror
        )


def _digest_of_target(target: str, prefix: str) -> str | None:
    last = target.rsplit("/", 1)[-1]
    if not last.startswith(prefix):
        return None
    try:
        return parse_digest(last[len(prefix) :])
    except ReferenceError:
        return None


def resolve_ref(repo: Repository, name: str) -> tuple[str, bytes]:
    """A tag's ``(manifest digest, manifest verity)``."""
    try:
        target = os.readlink(f"streams/refs/{_ref_path(name)}", dir_fd=repo.fd)
    except FileNotFoundError:
        raise ImageError(f"OCI reference not found: {name}") from None
    digest = _digest_of_target(target, "oci-manifest-")
    if digest is None:
        raise ImageError(f"Invalid manifest reference: {target.rsplit('/', 1)[-1]}")
    verity = repo.has_stream(manifest_identifier(digest))
    if verity is None:
        raise ImageError(f"Manifest {digest} not found")
    return digest, verity


def resolve_index_ref(repo: Repository, name: str) -> tuple[str, bytes] | None:
    """The ``(digest, verity)`` of the index a tag was pulled through, if it was kept."""
    try:
        target = os.readlink(f"streams/refs/{_ref_path(name, INDEX_REF_PREFIX)}", dir_fd=repo.fd)
    except FileNotFoundError:
        return None
    digest = _digest_of_target(target, "oci-index-")
    if digest is None:
        return None
    verity = repo.has_stream(index_identifier(digest))
    return None if verity is None else (digest, verity)


def list_refs(repo: Repository) -> list[tuple[str, str]]:
    """``(tag, manifest digest)`` for every tag (sorted by file name)."""
    out = []
    for encoded, target in repo.list_stream_refs("oci"):
        digest = _digest_of_target(target, "oci-manifest-")
        if digest is not None:
            out.append((decode_tag(encoded), digest))
    return out


def list_index_refs(repo: Repository) -> list[tuple[str, str]]:
    """``(tag, index digest)`` for every index tag."""
    out = []
    for encoded, target in repo.list_stream_refs("oci-index"):
        digest = _digest_of_target(target, "oci-index-")
        if digest is not None:
            out.append((decode_tag(encoded), digest))
    return out


def list_referrers(repo: Repository, subject: str) -> list[tuple[str, bytes]]:
    """``(artifact manifest digest, verity)`` of the referrers recorded for ``subject``."""
    out = []
    for encoded, target in repo.list_stream_refs(REFERRER_REF_PREFIX + encode_tag(subject)):
        artifact = decode_tag(encoded)
        last = target.rsplit("/", 1)[-1]
        if last.startswith("oci-manifest-") and last[len("oci-manifest-") :] != artifact:
            continue
        try:
            digest = parse_digest(artifact)
        except ReferenceError as e:
            raise ImageError(f"Parsing referrer digest '{artifact}'") from e
        verity = repo.has_stream(manifest_identifier(digest))
        if verity is not None:
            out.append((digest, verity))
    return out


# -- reading images back ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
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
        identifier = manifest_identifier(digest)
        raw, refs = _open_external(repo, identifier, verity, splitstream.MANIFEST_CONTENT_TYPE)
        if verity is None:
            found = sha256_digest(raw)
            if found != digest:
                raise ImageError(f"Manifest integrity failed: expected {digest}, got {found}")
        manifest = _parse_object(raw, "manifest")
        config_desc = manifest.get("config")
        if not isinstance(config_desc, dict) or not isinstance(config_desc.get("digest"), str):
            raise ImageError("manifest has no config descriptor")
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
        if config_desc.get("mediaType") == CONFIG_MEDIA_TYPE:
            config: dict[str, Any] | None = _parse_object(config_raw, "config")
            layer_refs = dict(config_refs)
        else:
            config = None
            digests = {d.get("digest") for d in manifest.get("layers") or [] if isinstance(d, dict)}
            layer_refs = {k: v for k, v in refs.items() if k in digests}
        image_refs = {k: v for k, v in layer_refs.items() if k.startswith(IMAGE_REF_KEY)}
        for k in image_refs:
            del layer_refs[k]
        if verity is None:
            verity = repo.has_stream(identifier)
            if verity is None:
                raise ImageError(f"OCI image not found: {digest}")
        return cls(
            digest,
            verity,
            raw,
            manifest,
            config_digest,
            config_verity,
            config_raw,
            config,
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
        config = self.manifest.get("config") or {}
        return bool(config.get("mediaType") == CONFIG_MEDIA_TYPE)

    @property
    def architecture(self) -> str:
        return str((self.config or {}).get("architecture") or "")

    @property
    def os(self) -> str:
        return str((self.config or {}).get("os") or "")

    @property
    def created(self) -> str | None:
        created = (self.config or {}).get("created")
        return created if isinstance(created, str) else None

    @property
    def layer_descriptors(self) -> list[dict[str, Any]]:
        return [d for d in self.manifest.get("layers") or [] if isinstance(d, dict)]

    @property
    def diff_ids(self) -> list[str]:
        if self.config is None:
            return [str(d.get("digest")) for d in self.layer_descriptors]
        return [str(d) for d in ((self.config.get("rootfs") or {}).get("diff_ids") or [])]

    def erofs_image(self, version: int, *, boot: bool = False) -> bytes | None:
        """The linked EROFS image id for a format version (V0/V1 share ``.v1``), if any."""
        if boot:
            key = BOOT_IMAGE_REF_KEY_V1 if version in (0, 1) else BOOT_IMAGE_REF_KEY
        else:
            key = IMAGE_REF_KEY_V1 if version in (0, 1) else IMAGE_REF_KEY
        return self.image_refs.get(key)

    def label(self, key: str) -> str | None:
        labels = ((self.config or {}).get("config") or {}).get("Labels") or {}
        value = labels.get(key) if isinstance(labels, dict) else None
        return value if isinstance(value, str) else None


def _parse_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImageError(f"parsing {what} JSON") from e
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


@dataclasses.dataclass(frozen=True)
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
        return dataclasses.asdict(self)


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


# -- fsck ------------------------------------------------------------------------------------


@dataclasses.dataclass
class OciFsckResult:
    """The result of :func:`oci_fsck`: the repository check plus one check per tagged image."""

    repo: FsckResult
    images_checked: int = 0
    images_corrupted: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.repo.ok and not self.errors

    def to_dict(self) -> dict[str, Any]:
        """cfsctl's ``oci fsck --json`` document."""
        return {
            "ok": self.ok,
            "images_checked": self.images_checked,
            "images_corrupted": self.images_corrupted,
            "errors": list(self.errors),
            "repo": self.repo.to_dict(),
        }

    def __str__(self) -> str:
        text = str(self.repo)
        good = self.images_checked - self.images_corrupted
        text += f"oci images: {good}/{self.images_checked} ok\n"
        if self.errors:
            text += f"oci errors: {len(self.errors)}\n"
            text += "".join(f"  - {e}\n" for e in self.errors)
        return text


def oci_fsck(repo: Repository, name: str | None = None) -> OciFsckResult:
    """Checks the repository, then every tagged image (or only ``name``), like cfsctl."""
    result = OciFsckResult(repo.fsck())
    if name is not None:
        try:
            digest, _ = resolve_ref(repo, name)
        except ComposefsError as e:
            result.images_checked += 1
            result.images_corrupted += 1
            result.errors.append(f"fsck: ref-resolve-failed: {name}: {e}")
            return result
        _fsck_image(repo, name, digest, result)
        return result
    for tag, digest in list_refs(repo):
        if tag.startswith("@"):
            result.images_checked += 1
            result.images_corrupted += 1
            result.errors.append(
                f"fsck: invalid-ref-name: {tag}: leading '@' is reserved for digest references"
            )
            continue
        _fsck_image(repo, tag, digest, result)
    for tag, digest in list_index_refs(repo):
        _fsck_index(repo, tag, digest, result)
    return result


def _detail(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _fsck_image(repo: Repository, name: str, digest: str, result: OciFsckResult) -> None:
    result.images_checked += 1
    before = len(result.errors)

    def fail(kind: str, detail: str) -> None:
        result.images_corrupted += 1
        result.errors.append(f"fsck: {kind}: {name}: {detail}")

    try:
        raw, refs = _open_external(
            repo, manifest_identifier(digest), None, splitstream.MANIFEST_CONTENT_TYPE
        )
    except (ComposefsError, OSError) as e:
        return fail("manifest-read-failed", _detail(e))
    found = sha256_digest(raw)
    if found != digest:
        return fail("manifest-digest-mismatch", f"expected {digest}, got {found}")
    try:
        manifest = _parse_object(raw, "manifest")
        config_desc = manifest["config"]
        config_digest = str(config_desc["digest"])
    except (ComposefsError, KeyError, TypeError) as e:
        return fail("manifest-parse-failed", _detail(e))
    config_verity = refs.get(f"config:{config_digest}")
    if config_verity is None:
        return fail("config-ref-missing", config_digest)
    try:
        config_raw, config_refs = read_external_stream(
            repo, config_identifier(config_digest), config_verity, splitstream.CONFIG_CONTENT_TYPE
        )
    except (ComposefsError, OSError) as e:
        return fail("config-read-failed", _detail(e))
    found = sha256_digest(config_raw)
    if found != config_digest:
        return fail("config-digest-mismatch", f"expected {config_digest}, got {found}")
    if isinstance(config_desc, dict) and config_desc.get("mediaType") == CONFIG_MEDIA_TYPE:
        try:
            config = _parse_object(config_raw, "config")
            diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        except (ComposefsError, KeyError, TypeError) as e:
            return fail("config-parse-failed", _detail(e))
        for diff_id in diff_ids:
            layer_verity = config_refs.get(diff_id)
            if layer_verity is None:
                result.errors.append(f"fsck: layer-ref-missing: {name}: {diff_id}")
                continue
            try:
                parse_digest(diff_id)
            except ReferenceError as e:
                result.errors.append(
                    f"fsck: layer-check-failed: {name}: {diff_id}: Invalid diff_id: {e}"
                )
                continue
            try:
                present = repo.has_stream(layer_identifier(diff_id))
            except ComposefsError as e:
                result.errors.append(f"fsck: layer-check-failed: {name}: {diff_id}: {e}")
            else:
                if present is None:
                    result.errors.append(f"fsck: layer-stream-missing: {name}: {diff_id}")
            try:
                os.close(repo.open_object(layer_verity))
            except (ComposefsError, OSError) as e:
                result.errors.append(
                    f"fsck: layer-object-missing: {name}: {diff_id}: {_errno_detail(e)}"
                )
        labels = (config.get("config") or {}).get("Labels") or {}
        seal = labels.get(SEAL_LABEL) if isinstance(labels, dict) else None
        if isinstance(seal, str):
            try:
                fd, _ = repo.open_image(seal)
                os.close(fd)
            except (ComposefsError, OSError) as e:
                result.errors.append(
                    f"fsck: seal-image-missing: {name}: {seal}: {_errno_detail(e)}"
                )
    else:
        for layer in manifest.get("layers") or []:
            layer_digest = str(layer.get("digest")) if isinstance(layer, dict) else ""
            verity = refs.get(layer_digest)
            if verity is None:
                result.errors.append(f"fsck: artifact-layer-ref-missing: {name}: {layer_digest}")
                continue
            try:
                os.close(repo.open_object(verity))
            except (ComposefsError, OSError) as e:
                result.errors.append(
                    f"fsck: artifact-layer-object-missing: {name}: {layer_digest}: "
                    f"{_errno_detail(e)}"
                )
    if len(result.errors) > before:
        result.images_corrupted += 1


def _fsck_index(repo: Repository, name: str, digest: str, result: OciFsckResult) -> None:
    """Our extension: a tagged index must read back, hash to its digest and have its refs.

    Problems are reported as errors without changing the image counters (cfsctl's counts).
    """
    try:
        index = open_index(repo, digest)
        for manifest_digest, verity in index.manifests.items():
            if not repo.has_object(verity):
                raise ImageError(f"manifest stream of {manifest_digest} is missing")
        for child, verity in index.indexes.items():
            open_index(repo, child, verity)
    except (ComposefsError, OSError, ValueError) as e:
        result.errors.append(f"fsck: index-check-failed: {name}: {_detail(e)}")


def _errno_detail(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (os error {e.errno})"
    return _detail(e)


def find_stream_digest(repo: Repository, digest: str) -> str | None:
    """``manifest``, ``index`` or ``None``: what the repository holds under ``digest``."""
    if repo.has_stream(manifest_identifier(digest)) is not None:
        return "manifest"
    if repo.has_stream(index_identifier(digest)) is not None:
        return "index"
    return None
