"""The EROFS images linked to an OCI image (``cfsctl oci linked-erofs-images``)."""

from __future__ import annotations

import os
from typing import Any

from composefs.errors import ImageNotFoundError, RepositoryError
from composefs.repository import Repository

__all__ = ["ImageNotLinked", "linked_erofs_images"]

_IMAGE = "composefs.image"
_IMAGE_V1 = "composefs.image.v1"
_BOOT = "composefs.image.boot"
_BOOT_V1 = "composefs.image.boot.v1"
_MODES = ("allowlist-only", "keep-user-xattrs")


class ImageNotLinked(RepositoryError, ImageNotFoundError):
    """No stored OCI image links this EROFS image."""


def linked_erofs_images(repo: Repository, image_id: bytes) -> list[dict[str, Any]]:
    """Every EROFS image of the stored OCI image that links ``image_id``: plain V2 first,
    then plain V1, then the boot images (by key, for a stable order), each as
    ``{"id", "bootable", "version", "xattrMode"}`` as cfsctl prints them.

    Like composefs-rs, every ``streams/oci-manifest-*`` is read (not the tags: an untagged
    image still counts); a manifest that cannot be opened is skipped.
    """
    from composefs.oci.image import OciImage

    names = _manifest_streams(repo)
    for name in names:
        digest = name.removeprefix("oci-manifest-")
        try:
            image = OciImage.open(repo, digest)
        except (RepositoryError, OSError, ValueError):
            continue
        refs = image.image_refs
        if image_id not in refs.values():
            continue
        out: list[dict[str, Any]] = []
        for key, version in ((_IMAGE, 2), (_IMAGE_V1, 1)):
            if key in refs:
                out.append(_entry(refs[key], False, version, None))
        for key in sorted(k for k in refs if k.startswith(_BOOT)):
            version = 1 if key.startswith(_BOOT_V1) else 2
            _, _, mode = key.partition(".xattrs=")
            out.append(_entry(refs[key], True, version, mode if mode in _MODES else _MODES[0]))
        return out
    raise ImageNotLinked(f"image not found: {image_id.hex()}")


def _entry(image_id: bytes, bootable: bool, version: int, mode: str | None) -> dict[str, Any]:
    return {"id": image_id.hex(), "bootable": bootable, "version": version, "xattrMode": mode}


def _manifest_streams(repo: Repository) -> list[str]:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open("streams", flags, dir_fd=repo.fd)
    except OSError as e:
        raise RepositoryError("opening streams/") from e
    try:
        return sorted(n for n in os.listdir(fd) if n.startswith("oci-manifest-"))
    finally:
        os.close(fd)
