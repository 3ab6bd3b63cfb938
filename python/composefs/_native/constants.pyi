"""The format constants of the native backend, by name: the values of ``rust/constants.rs``,
which must equal those of :mod:`composefs.constants` (a test compares them)."""

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

INLINE_CONTENT_MAX: int
"""Regular-file bodies of at most this many bytes are stored inline."""
EROFS_VERSIONS: tuple[int, ...]
"""The supported EROFS image formats."""
DEFAULT_EROFS_VERSION: int
"""The format a new repository builds."""
ALLOWLIST_ONLY: str
"""Xattr filtering mode: only ``security.capability``."""
KEEP_USER_XATTRS: str
"""Xattr filtering mode: ``security.capability`` and ``user.*``."""
XATTR_MODES: tuple[str, ...]
"""Both xattr filtering modes."""
ALGORITHM_IDS: dict[str, int]
"""fs-verity algorithm numbers by name."""
LAYER_CONTENT_TYPE: int
"""Splitstream content type ``ocilayer``."""
CONFIG_CONTENT_TYPE: int
"""Splitstream content type ``ociconfg``."""
MANIFEST_CONTENT_TYPE: int
"""Splitstream content type ``ocimanif``."""
BLOB_CONTENT_TYPE: int
"""Splitstream content type ``oci_blob``."""
INDEX_CONTENT_TYPE: int
"""Splitstream content type ``ociindx\\0``."""
