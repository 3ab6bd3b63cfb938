"""OCI images: pull them into a repository, list, inspect, tag and check them.

The entry point is :func:`pull`::

    from composefs.repository import Repository
    from composefs import oci

    with Repository.open("/path/to/repo") as repo:
        result = oci.pull(repo, "oci:/path/to/layout:latest", name="myimage")
        print(result.manifest_digest, result.stats)

``oci:`` references are read directly from the layout directory; every other transport
(``docker://``, ``oci-archive:``, ``containers-storage:``, ...) goes through skopeo's image
proxy. The repository ends up as ``cfsctl oci pull`` would leave it, composefs EROFS image
included (:mod:`composefs.oci.filesystem` builds it; ``PullResult.image_id`` names it). See
``docs/oci.md``.
"""

from __future__ import annotations

from composefs.oci.image import (
    ImageError,
    ImageInfo,
    OciFsckResult,
    OciImage,
    StoredIndex,
    inspect_reply,
    list_images,
    list_refs,
    oci_fsck,
    open_index,
    resolve_index,
    resolve_ref,
    tag_image,
    untag_image,
)
from composefs.oci.layout import LayoutError, LayoutSource, NoMatchingPlatform
from composefs.oci.platform import Platform, PlatformError, host_platform, parse_platform
from composefs.oci.pull import ImportStats, PullError, PullEvent, PullResult, pull
from composefs.oci.reference import ReferenceError, parse_reference

__all__ = [
    "ImageError",
    "ImageInfo",
    "ImportStats",
    "LayoutError",
    "LayoutSource",
    "NoMatchingPlatform",
    "OciFsckResult",
    "OciImage",
    "Platform",
    "PlatformError",
    "PullError",
    "PullEvent",
    "PullResult",
    "ReferenceError",
    "StoredIndex",
    "host_platform",
    "inspect_reply",
    "list_images",
    "list_refs",
    "oci_fsck",
    "open_index",
    "parse_platform",
    "parse_reference",
    "pull",
    "resolve_index",
    "resolve_ref",
    "tag_image",
    "untag_image",
]
