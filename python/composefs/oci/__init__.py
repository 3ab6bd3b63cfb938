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

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composefs.oci.image import (
        ImageError,
        ImageInfo,
        OciFsckResult,
        OciImage,
        StoredIndex,
        gc,
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
    from composefs.oci.reference import ImageReferenceError, parse_reference

# name -> the module that defines it: imported on first use (CLI start-up)
_EXPORTS: dict[str, str] = {
    "ImageError": "composefs.oci.image",
    "ImageInfo": "composefs.oci.image",
    "ImportStats": "composefs.oci.pull",
    "LayoutError": "composefs.oci.layout",
    "LayoutSource": "composefs.oci.layout",
    "NoMatchingPlatform": "composefs.oci.layout",
    "OciFsckResult": "composefs.oci.image",
    "OciImage": "composefs.oci.image",
    "Platform": "composefs.oci.platform",
    "PlatformError": "composefs.oci.platform",
    "PullError": "composefs.oci.pull",
    "PullEvent": "composefs.oci.pull",
    "PullResult": "composefs.oci.pull",
    "ImageReferenceError": "composefs.oci.reference",
    # deprecated (shadows a builtin): warns, and is not in __all__
    "ReferenceError": "composefs.oci.reference",
    "StoredIndex": "composefs.oci.image",
    "gc": "composefs.oci.image",
    "host_platform": "composefs.oci.platform",
    "inspect_reply": "composefs.oci.image",
    "list_images": "composefs.oci.image",
    "list_refs": "composefs.oci.image",
    "oci_fsck": "composefs.oci.image",
    "open_index": "composefs.oci.image",
    "parse_platform": "composefs.oci.platform",
    "parse_reference": "composefs.oci.reference",
    "pull": "composefs.oci.pull",
    "resolve_index": "composefs.oci.image",
    "resolve_ref": "composefs.oci.image",
    "tag_image": "composefs.oci.image",
    "untag_image": "composefs.oci.image",
}

__all__ = [
    "ImageError",
    "ImageInfo",
    "ImageReferenceError",
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
    "StoredIndex",
    "gc",
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """``composefs.oci.pull`` stays the function: importing the submodule of the same name
    would otherwise rebind the package's attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "pull" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
