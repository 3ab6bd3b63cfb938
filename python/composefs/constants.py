"""Format facts shared by the backends and the orchestration, stated once.

The Rust twin is ``rust/constants.rs`` (exposed as ``composefs._native.constants``); a test checks
that every value here equals the native one. The EROFS on-disk layout lives in
:mod:`composefs.erofs_format`, OCI media types in :mod:`composefs.oci.media_types`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final  # annotations only (postponed): typing is not imported

__all__ = [
    "ALGORITHM_IDS",
    "ALLOWLIST_ONLY",
    "BLOB_CONTENT_TYPE",
    "CONFIG_CONTENT_TYPE",
    "DEFAULT_EROFS_VERSION",
    "EROFS_VERSIONS",
    "INDEX_CONTENT_TYPE",
    "INLINE_CONTENT_MAX",
    "KEEP_USER_XATTRS",
    "LAYER_CONTENT_TYPE",
    "MANIFEST_CONTENT_TYPE",
    "XATTR_MODES",
]

#: Regular-file bodies of at most this many bytes are stored inline in layer splitstreams and
#: composefs images; larger ones are objects (composefs-rs ``INLINE_CONTENT_MAX_V0``).
INLINE_CONTENT_MAX: Final = 64

#: EROFS image formats: 0 and 1 are C mkcomposefs's, 2 composefs-rs's legacy layout.
EROFS_VERSIONS: Final = (0, 1, 2)
#: The format a new repository builds (composefs-rs 0.9 default).
DEFAULT_EROFS_VERSION: Final = 1

#: Xattr filtering of the OCI transform: only ``security.capability``, or also ``user.*``.
ALLOWLIST_ONLY: Final = "allowlist-only"
KEEP_USER_XATTRS: Final = "keep-user-xattrs"
XATTR_MODES: Final = (ALLOWLIST_ONLY, KEEP_USER_XATTRS)

#: fs-verity algorithm numbers (``FS_VERITY_HASH_ALG_*``), also the splitstream header's.
ALGORITHM_IDS: Final = {"sha256": 1, "sha512": 2}


def _content_type(tag: bytes) -> int:
    # composefs-rs stores an 8-byte ASCII tag as a little-endian u64
    return int.from_bytes(tag, "little")


#: Splitstream content types (the u64 at offset 96 of the header).
LAYER_CONTENT_TYPE: Final = _content_type(b"ocilayer")
CONFIG_CONTENT_TYPE: Final = _content_type(b"ociconfg")
MANIFEST_CONTENT_TYPE: Final = _content_type(b"ocimanif")
BLOB_CONTENT_TYPE: Final = _content_type(b"oci_blob")
INDEX_CONTENT_TYPE: Final = _content_type(b"ociindx\0")
