"""How OCI images are named in a repository: stream identifiers, tags, referrers.

::

    streams/oci-manifest-sha256:<hex>      manifest_identifier(digest)
    streams/oci-config-sha256:<hex>        config_identifier(digest)
    streams/oci-index-sha256:<hex>         index_identifier(digest) (our extension)
    streams/refs/oci/<encoded tag>         a tag (encode_tag) -> ../../oci-manifest-...
    streams/refs/oci-index/<encoded tag>   the index a tag was pulled through (our extension)
    streams/refs/oci-referrers/<subject>/<artifact>   referrers of a manifest

(Layer streams are ``oci-layer-<diff_id>``: :func:`composefs.oci.layer.layer_identifier`.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import TYPE_CHECKING

from composefs._text import printable
from composefs.errors import ComposefsError, ImageNotFoundError, InvalidName, TagNotFoundError
from composefs.oci.reference import ImageReferenceError, parse_digest

if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = [
    "BOOT_IMAGE_REF_KEY",
    "BOOT_IMAGE_REF_KEY_V1",
    "IMAGE_REF_KEY",
    "IMAGE_REF_KEY_V1",
    "INDEX_REF_PREFIX",
    "OCI_REF_PREFIX",
    "REFERRER_REF_PREFIX",
    "SEAL_LABEL",
    "ImageError",
    "ImageMissing",
    "TagMissing",
    "add_referrer",
    "cleanup_dangling_referrers",
    "config_identifier",
    "decode_tag",
    "encode_tag",
    "find_stream_digest",
    "index_identifier",
    "list_index_refs",
    "list_referrers",
    "list_refs",
    "manifest_identifier",
    "ref_path",
    "referrer_subjects",
    "remove_referrer",
    "remove_referrers_for_subject",
    "resolve_index_ref",
    "resolve_ref",
    "sha256_digest",
    "tag_image",
    "untag_image",
]

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


class ImageMissing(ImageError, ImageNotFoundError):
    """An OCI image (a manifest or an index) is not in the repository."""


class TagMissing(ImageMissing, TagNotFoundError):
    """A tag is not in the repository."""


# -- stream identifiers and tag encoding ---------------------------------------------------------


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


def ref_path(name: str, prefix: str = OCI_REF_PREFIX) -> str:
    """The path of a tag below ``streams/refs/``.

    A tag becomes one file name (``%`` and ``/`` encoded): the empty tag, ``.``, ``..`` and
    tags with a NUL cannot be one and are refused (:class:`~composefs.errors.InvalidName`).
    """
    encoded = encode_tag(name)
    if encoded in ("", ".", "..") or "\0" in encoded:
        raise InvalidName(f"invalid tag {printable(repr(name))}: not usable as a file name")
    return prefix + encoded


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
        repo.name_stream(index_identifier(digest), ref_path(name, INDEX_REF_PREFIX))
        return
    repo.name_stream(manifest_identifier(digest), ref_path(name))


def untag_image(repo: Repository, name: str) -> None:
    """Removes the tag ``name`` (and the index tag of the same name, if any)."""
    tag_path = ref_path(name)
    index_path = ref_path(name, INDEX_REF_PREFIX)
    repo.ensure_writable()
    removed = False
    try:
        os.unlink(_beneath(repo, f"streams/refs/{tag_path}"), dir_fd=repo.fd)
        removed = True
    except (FileNotFoundError, NotADirectoryError) as e:
        missing: OSError = e
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(_beneath(repo, f"streams/refs/{index_path}"), dir_fd=repo.fd)
        removed = True
    if not removed:
        raise ImageError(f"Failed to remove tag {printable(name)}") from FileNotFoundError(
            missing.errno, missing.strerror
        )


def _beneath(repo: Repository, path: str) -> str:
    """``path`` with its directories resolved inside the repository (the last component is
    left alone: it is the link itself)."""
    parent, _, leaf = path.rpartition("/")
    return f"{repo.resolve(parent)}/{leaf}"


def _digest_of_target(target: str, prefix: str) -> str | None:
    last = target.rsplit("/", 1)[-1]
    if not last.startswith(prefix):
        return None
    try:
        return parse_digest(last[len(prefix) :])
    except ImageReferenceError:
        return None


def resolve_ref(repo: Repository, name: str) -> tuple[str, bytes]:
    """A tag's ``(manifest digest, manifest verity)``."""
    target = repo.read_link(f"streams/refs/{ref_path(name)}")
    if target is None:
        raise TagMissing(f"OCI reference not found: {printable(name)}")
    digest = _digest_of_target(target, "oci-manifest-")
    if digest is None:
        raise ImageError(f"Invalid manifest reference: {printable(target.rsplit('/', 1)[-1])}")
    verity = repo.has_stream(manifest_identifier(digest))
    if verity is None:
        raise ImageMissing(f"Manifest {digest} not found")
    return digest, verity


def resolve_index_ref(repo: Repository, name: str) -> tuple[str, bytes] | None:
    """The ``(digest, verity)`` of the index a tag was pulled through, if it was kept."""
    target = repo.read_link(f"streams/refs/{ref_path(name, INDEX_REF_PREFIX)}")
    if target is None:
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
        except ImageReferenceError as e:
            raise ImageError(f"Parsing referrer digest '{artifact}'") from e
        verity = repo.has_stream(manifest_identifier(digest))
        if verity is not None:
            out.append((digest, verity))
    return out


def find_stream_digest(repo: Repository, digest: str) -> str | None:
    """``manifest``, ``index`` or ``None``: what the repository holds under ``digest``."""
    if repo.has_stream(manifest_identifier(digest)) is not None:
        return "manifest"
    if repo.has_stream(index_identifier(digest)) is not None:
        return "index"
    return None


def _referrer_path(subject: str, artifact: str | None = None) -> str:
    parse_digest(subject)
    path = REFERRER_REF_PREFIX + encode_tag(subject)
    if artifact is not None:
        parse_digest(artifact)
        path += "/" + encode_tag(artifact)
    return path


def add_referrer(repo: Repository, subject: str, artifact: str) -> None:
    """Records that the artifact manifest ``artifact`` refers to the manifest ``subject``:
    ``streams/refs/oci-referrers/<subject>/<artifact>`` -> its manifest stream (composefs-rs
    ``add_referrer``). The link keeps the artifact from being collected while it exists."""
    repo.name_stream(manifest_identifier(artifact), _referrer_path(subject, artifact))


def remove_referrer(repo: Repository, subject: str, artifact: str) -> None:
    """Removes one referrer link; nothing to remove is not an error."""
    repo.ensure_writable()
    path = f"streams/refs/{_referrer_path(subject, artifact)}"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(_beneath(repo, path), dir_fd=repo.fd)


def remove_referrers_for_subject(repo: Repository, subject: str) -> int:
    """Removes every referrer link of ``subject`` (and its directory, once empty); the number
    of links removed."""
    repo.ensure_writable()
    removed = 0
    for encoded, _target in repo.list_stream_refs(_referrer_path(subject)):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(
                _beneath(repo, f"streams/refs/{_referrer_path(subject)}/{encoded}"),
                dir_fd=repo.fd,
            )
            removed += 1
    with contextlib.suppress(OSError):
        os.rmdir(_beneath(repo, f"streams/refs/{_referrer_path(subject)}"), dir_fd=repo.fd)
    return removed


def referrer_subjects(repo: Repository) -> list[str]:
    """The subject digests that have a referrer directory (unparsable names skipped)."""
    subjects: set[str] = set()
    for name, _target in repo.list_stream_refs(REFERRER_REF_PREFIX.rstrip("/")):
        encoded = name.split("/", 1)[0]
        with contextlib.suppress(ImageReferenceError):
            subjects.add(parse_digest(decode_tag(encoded)))
    return sorted(subjects)


def cleanup_dangling_referrers(repo: Repository, *, dry_run: bool = False) -> int:
    """Removes the referrer links of subjects whose manifest stream is gone (composefs-rs
    ``cleanup_dangling_referrers``), so that ``gc`` can collect those artifacts; the number of
    links removed (or that would be, with ``dry_run``)."""
    removed = 0
    for subject in referrer_subjects(repo):
        if repo.has_stream(manifest_identifier(subject)) is not None:
            continue
        if dry_run:
            removed += len(repo.list_stream_refs(_referrer_path(subject)))
        else:
            removed += remove_referrers_for_subject(repo, subject)
    return removed
