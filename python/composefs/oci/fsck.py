"""``oci fsck``: the repository check plus one check per tagged image (and, our extension, per
tagged index), with cfsctl's counters and error strings."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from composefs import splitstream
from composefs._text import printable
from composefs.errors import ComposefsError
from composefs.fsck import FsckResult
from composefs.oci import layer as _layer
from composefs.oci.index import open_index
from composefs.oci.media_types import CONFIG_MEDIA_TYPES
from composefs.oci.names import (
    SEAL_LABEL,
    ImageError,
    config_identifier,
    list_index_refs,
    list_refs,
    manifest_identifier,
    resolve_ref,
    sha256_digest,
)
from composefs.oci.reference import ImageReferenceError, parse_digest
from composefs.oci.streams import open_external, parse_object, read_external_stream

if TYPE_CHECKING:
    from composefs.repository import Repository

__all__ = ["OciFsckResult", "oci_fsck"]


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
            text += "".join(f"  - {printable(e)}\n" for e in self.errors)
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
        raw, refs = open_external(
            repo, manifest_identifier(digest), None, splitstream.MANIFEST_CONTENT_TYPE
        )
    except (ComposefsError, OSError) as e:
        return fail("manifest-read-failed", _detail(e))
    found = sha256_digest(raw)
    if found != digest:
        return fail("manifest-digest-mismatch", f"expected {digest}, got {found}")
    try:
        manifest = parse_object(raw, "manifest")
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
    if isinstance(config_desc, dict) and config_desc.get("mediaType") in CONFIG_MEDIA_TYPES:
        try:
            config = parse_object(config_raw, "config")
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
            except ImageReferenceError as e:
                result.errors.append(
                    f"fsck: layer-check-failed: {name}: {diff_id}: Invalid diff_id: {e}"
                )
                continue
            try:
                present = repo.has_stream(_layer.layer_identifier(diff_id))
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
        inner = config.get("config")
        labels = inner.get("Labels") if isinstance(inner, dict) else None
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
        layers = manifest.get("layers")
        for layer in layers if isinstance(layers, list) else []:
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
