"""The composefs image of a stored OCI image: merge its layers, write the EROFS image(s), link
them to the config, rewrite the manifest and tag it (composefs-rs 0.9
``composefs_oci::image::create_filesystem`` and ``ensure_oci_composefs_erofs``).

The merge reads the layer splitstreams named by the config stream's ``<diff_id>`` refs, in the
config's ``rootfs.diff_ids`` order, and applies them as composefs-rs does, except where it
departs from the OCI image spec (whiteouts of a layer hide only lower layers; see
``docs/differences.md``). The backend's layer merge writes the EROFS images straight from the
merged tree (``mkfs_layers``, one merge for every format asked for); the same tree as a
composefs dumpfile (``merge_layers``) is what ``composefs oci dump`` prints.

After a pull, :func:`commit_images` writes one image per format the repository is configured
for (``meta.json`` ``erofs_formats``: the default first), stores the config stream again with
``composefs.image`` (V2) / ``composefs.image.v1`` (V1) refs after the layer refs, then the
manifest stream with the new config verity, and finally points the tag at it. Images are linked
as ``images/<hex>`` only: the config's refs keep them alive through the tag.
"""

from __future__ import annotations

from collections.abc import Sequence

from composefs import _backend, _faults, erofs, splitstream
from composefs._record import record
from composefs.constants import ALLOWLIST_ONLY, EROFS_VERSIONS, XATTR_MODES
from composefs.errors import (
    ComposefsError,
    DigestMismatchError,
    FilesystemError,
    ImageNotFoundError,
    with_categories,
    wrap,
)
from composefs.oci.documents import DocumentError, config_diff_ids, parse_json_object
from composefs.oci.image import OciImage
from composefs.oci.names import (
    BOOT_IMAGE_REF_KEY,
    IMAGE_REF_KEY,
    IMAGE_REF_KEY_V1,
    config_identifier,
    manifest_identifier,
    sha256_digest,
    tag_image,
)
from composefs.oci.streams import read_external_stream, write_external_stream, write_manifest
from composefs.repository import Repository

__all__ = [
    "XATTR_MODES",
    "CommitResult",
    "FilesystemDigestMismatch",
    "FilesystemError",
    "ImageLayers",
    "commit_images",
    "compute_id",
    "create_dumpfile",
    "create_image",
    "create_images",
    "image_layers",
    "layer_streams",
    "merge_layer_streams",
    "write_dumpfile",
]


class FilesystemDigestMismatch(FilesystemError, DigestMismatchError):
    """A stored config or layer does not hash to the digest that names it."""


@record
class ImageLayers:
    """The layers of a container image as its config stream names them."""

    config_digest: str
    #: ``rootfs.diff_ids``, bottom layer first
    diff_ids: list[str]
    #: diff_id -> layer stream verity
    layer_refs: dict[str, bytes]
    #: whether the config stream was reached through verity refs (a tag or manifest); when
    #: not (``@<config digest>``), the layers' tars are hashed against their diff_ids
    trusted: bool


def image_layers(repo: Repository, image: OciImage | str) -> ImageLayers:
    """The layers of an image given as an opened image, a tag, or ``@sha256:<digest>``.

    As in cfsctl, ``@<digest>`` names a *config*; a manifest digest is accepted too (our
    extension).
    """
    if isinstance(image, str):
        if image.startswith("@"):
            digest = image[1:]
            if repo.has_stream(config_identifier(digest)) is None:
                if repo.has_stream(manifest_identifier(digest)) is None:
                    raise with_categories(FilesystemError, ImageNotFoundError)(
                        f"no config or manifest {digest} in the repository"
                    )
                return image_layers(repo, OciImage.open(repo, digest))
            raw, refs = read_external_stream(
                repo, config_identifier(digest), None, splitstream.CONFIG_CONTENT_TYPE
            )
            found = sha256_digest(raw)
            if found != digest:
                raise FilesystemDigestMismatch(
                    f"Config integrity failed: expected {digest}, got {found}"
                )
            try:
                what = f"config {digest}"
                diff_ids = config_diff_ids(parse_json_object(raw, what), what)
            except DocumentError as e:
                raise FilesystemError(f"parsing config {digest}") from e
            return ImageLayers(digest, diff_ids, refs, trusted=False)
        image = OciImage.open_ref(repo, image)
    if not image.is_container_image:
        raise FilesystemError(f"{image.manifest_digest} is an artifact, not a container image")
    return ImageLayers(image.config_digest, image.diff_ids, dict(image.layer_refs), trusted=True)


def layer_streams(repo: Repository, image: OciImage | str) -> list[bytes]:
    """The layer splitstream files of a container image, bottom layer first."""
    layers = image_layers(repo, image)
    streams = []
    for diff_id in layers.diff_ids:
        verity = layers.layer_refs.get(diff_id)
        if verity is None:
            import json

            keys = ", ".join(json.dumps(k) for k in sorted(layers.layer_refs))
            raise FilesystemError(
                f"missing layer verity for diff_id {diff_id}. Available keys in refs: [{keys}]"
            )
        try:
            data = repo.read_object(verity)
            if not layers.trusted:
                _check_diff_id(repo, data, diff_id)
        except (ComposefsError, OSError) as e:
            raise wrap(FilesystemError, f"Opening layer {diff_id}", e) from e
        streams.append(data)
    return streams


class _Sha256Sink:
    def __init__(self) -> None:
        import hashlib

        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _check_diff_id(repo: Repository, stream_file: bytes, diff_id: str) -> None:
    stream = splitstream.parse(stream_file, repo.algorithm, splitstream.LAYER_CONTENT_TYPE)
    sink = _Sha256Sink()
    repo.write_stream_content(stream, sink)  # type: ignore[arg-type]
    if f"sha256:{sink.hash.hexdigest()}" != diff_id:
        raise FilesystemDigestMismatch("Layer has incorrect checksum")


def create_dumpfile(
    repo: Repository,
    image: OciImage | str,
    *,
    xattrs: str = ALLOWLIST_ONLY,
    raw_modes: bool = True,
) -> bytes:
    """The merged root filesystem of ``image`` as a composefs dumpfile (``cfsctl oci dump``).

    With ``raw_modes`` false the mode field holds only the permission bits and the file type,
    the form the EROFS writer reads (a tar mode's stray type bits cannot change a file's type).
    """
    if xattrs not in XATTR_MODES:
        raise FilesystemError(f"unknown xattr filtering mode {xattrs!r}")
    streams = layer_streams(repo, image)
    try:
        return bytes(_backend.backend().merge.merge_layers(streams, xattrs, raw_modes))
    except ValueError as e:
        raise FilesystemError(str(e)) from None


def write_dumpfile(
    repo: Repository,
    image: OciImage | str,
    fd: int,
    *,
    xattrs: str = ALLOWLIST_ONLY,
    raw_modes: bool = True,
) -> int:
    """:func:`create_dumpfile`, written to the file descriptor ``fd`` as it is produced (the
    text is never held whole: ``cfsctl oci dump`` of a very deep tree is far larger than the
    tree). Returns the number of bytes written; a failed write raises ``OSError``. Nothing is
    written when the merge fails."""
    if xattrs not in XATTR_MODES:
        raise FilesystemError(f"unknown xattr filtering mode {xattrs!r}")
    streams = layer_streams(repo, image)
    try:
        return _backend.backend().merge.merge_layers_to_fd(streams, fd, xattrs, raw_modes)
    except ValueError as e:
        raise FilesystemError(str(e)) from None


def create_images(
    repo: Repository,
    image: OciImage | str,
    versions: Sequence[int],
    *,
    xattrs: str = ALLOWLIST_ONLY,
) -> list[bytes]:
    """The EROFS image bytes of ``image`` in each format of ``versions``, from one merge."""
    if xattrs not in XATTR_MODES:
        raise FilesystemError(f"unknown xattr filtering mode {xattrs!r}")
    for version in versions:
        if version not in EROFS_VERSIONS:
            raise FilesystemError(f"unsupported EROFS format version {version}")
    streams = layer_streams(repo, image)
    try:
        images = _backend.backend().merge.mkfs_layers(streams, xattrs, list(versions))
    except ValueError as e:
        cause = FilesystemError(str(e))
        diff_id = _layer_of(streams, image_layers(repo, image).diff_ids, str(e))
        if diff_id is None:
            raise cause from None
        raise FilesystemError(f"Layer {diff_id}") from cause
    return [bytes(i) for i in images]


def _layer_of(streams: Sequence[bytes], diff_ids: Sequence[str], message: str) -> str | None:
    """For an error of the EROFS limits (``"/path": what``, see ``erofs_limits``): the diff_id
    of the topmost layer with an entry at that path (the layer whose entry the merged tree
    kept), or None. Runs only after a failure, so a second read of the layers is fine."""
    if not message.startswith('"/'):
        return None
    # only on this error path: the pure dumpfile module is not needed otherwise
    from composefs._pure.dumpfile import debug_bytes

    read_entries = _backend.backend().tar_split.read_entries
    for diff_id, stream in reversed(list(zip(diff_ids, streams, strict=False))):
        try:
            entries = read_entries(stream)
        except ValueError:
            continue
        for entry in entries:
            parts = [c for c in entry.path.split(b"/") if c and c != b"."]
            if parts and message.startswith(debug_bytes(b"/" + b"/".join(parts)) + ": "):
                return diff_id
    return None


def create_image(
    repo: Repository,
    image: OciImage | str,
    version: int | None = None,
    *,
    xattrs: str = ALLOWLIST_ONLY,
) -> bytes:
    """The EROFS image bytes of ``image`` (format: the repository's default when ``None``)."""
    return create_images(
        repo, image, [repo.erofs_version if version is None else version], xattrs=xattrs
    )[0]


def compute_id(
    repo: Repository,
    image: OciImage | str,
    version: int | None = None,
    *,
    xattrs: str = ALLOWLIST_ONLY,
) -> bytes:
    """The image id ``image`` would get (``cfsctl oci compute-id``), without storing anything."""
    return erofs.image_id(create_image(repo, image, version, xattrs=xattrs), repo.algorithm)


@record
class CommitResult:
    """What :func:`commit_images` stored."""

    #: the image id of the repository's default format
    image_id: bytes
    #: every format written -> its image id
    images: dict[int, bytes]
    config_verity: bytes
    manifest_verity: bytes


def commit_images(repo: Repository, image: OciImage, tag: str | None = None) -> CommitResult:
    """Writes the EROFS image(s) of a pulled container image, links them from a rewritten
    config stream, rewrites the manifest stream and (if ``tag``) points the tag at it."""
    default, extra = repo.metadata.format_config
    versions = [default, *sorted(v for v in extra if v != default)]
    if default not in (1, 2):
        # composefs-rs 0.9 looks up the V1 or V2 result only ("commit_images did not produce
        # the repository's default EROFS format")
        raise FilesystemError(
            f"the repository's default EROFS format V{default} cannot be linked to an OCI image "
            "(only V1 and V2 have config refs)"
        )
    images: dict[int, bytes] = {}
    for version, data in zip(versions, create_images(repo, image, versions), strict=True):
        images[version] = repo.write_image(None, data)
    _faults.point("image-linked")

    # config: layer refs in diff_id order, composefs.image (V2), composefs.image.v1 (V1), then
    # the boot image refs already present (we do not build boot images)
    refs = [(d, image.layer_refs[d]) for d in dict.fromkeys(image.diff_ids)]
    if 2 in images:
        refs.append((IMAGE_REF_KEY, images[2]))
    if 1 in images:
        refs.append((IMAGE_REF_KEY_V1, images[1]))
    for key in sorted(image.image_refs):
        if key.startswith(BOOT_IMAGE_REF_KEY):
            refs.append((key, image.image_refs[key]))
    config_verity = write_external_stream(
        repo,
        splitstream.CONFIG_CONTENT_TYPE,
        image.config_raw,
        refs,
        config_identifier(image.config_digest),
    )
    # manifest: config:<digest> first, then the layer refs in name order (composefs-rs uses a
    # hash map's order here, so its manifest streams are not reproducible for several layers)
    layer_refs = sorted((d, image.layer_refs[d]) for d in set(image.diff_ids))
    manifest_verity = write_manifest(
        repo,
        image.manifest_digest,
        image.manifest_raw,
        image.config_digest,
        config_verity,
        layer_refs,
    )
    if tag is not None:
        tag_image(repo, image.manifest_digest, tag)
    return CommitResult(images[default], images, config_verity, manifest_verity)


def merge_layer_streams(
    streams: Sequence[bytes], *, xattrs: str = ALLOWLIST_ONLY, raw_modes: bool = True
) -> bytes:
    """Merges layer splitstream files (bottom first) into a dumpfile, outside any repository."""
    if xattrs not in XATTR_MODES:
        raise FilesystemError(f"unknown xattr filtering mode {xattrs!r}")
    try:
        return bytes(_backend.backend().merge.merge_layers(list(streams), xattrs, raw_modes))
    except ValueError as e:
        raise FilesystemError(str(e)) from None
