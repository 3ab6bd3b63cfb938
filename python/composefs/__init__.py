"""composefs: content-addressed repositories and OCI image import, compatible with cfsctl.

The formats (fs-verity, splitstream, …) are implemented twice: natively in Rust
(``composefs._native``) and in pure Python (``composefs._pure``), with identical output.
``composefs.backend`` names the one in use; set ``COMPOSEFS_BACKEND=python`` or ``native``
before importing to choose.

The names below are imported on first use: importing ``composefs`` itself runs almost
nothing, so that the ``composefs`` command can catch Ctrl-C around its own imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composefs import errors, fsverity, splitstream
    from composefs.errors import (
        AuthenticationError,
        ComposefsError,
        DigestMismatchError,
        FilesystemError,
        ImageNotFoundError,
        ImageReferenceError,
        RepositoryError,
        SourceError,
        TagNotFoundError,
        TransportError,
    )
    from composefs.fsverity import Algorithm
    from composefs.repository import Repository

__all__ = [
    "Algorithm",
    "AuthenticationError",
    "ComposefsError",
    "DigestMismatchError",
    "FilesystemError",
    "ImageNotFoundError",
    "ImageReferenceError",
    "Repository",
    "RepositoryError",
    "SourceError",
    "TagNotFoundError",
    "TransportError",
    "__version__",
    "backend",
    "errors",
    "fsverity",
    "splitstream",
]

backend: str  # ``"native"`` or ``"python"``; resolved at access time by __getattr__
#: The installed distribution's version (its metadata, whose single source is Cargo.toml's
#: ``version``); read on first access, since importlib.metadata takes ~14 ms to import.
__version__: str

#: name -> (module, attribute or None for the module itself)
_LAZY = {
    "errors": ("composefs.errors", None),
    "fsverity": ("composefs.fsverity", None),
    "splitstream": ("composefs.splitstream", None),
    "AuthenticationError": ("composefs.errors", "AuthenticationError"),
    "ComposefsError": ("composefs.errors", "ComposefsError"),
    "DigestMismatchError": ("composefs.errors", "DigestMismatchError"),
    "FilesystemError": ("composefs.errors", "FilesystemError"),
    "ImageNotFoundError": ("composefs.errors", "ImageNotFoundError"),
    "ImageReferenceError": ("composefs.errors", "ImageReferenceError"),
    "RepositoryError": ("composefs.errors", "RepositoryError"),
    "SourceError": ("composefs.errors", "SourceError"),
    "TagNotFoundError": ("composefs.errors", "TagNotFoundError"),
    "TransportError": ("composefs.errors", "TransportError"),
    "Algorithm": ("composefs.fsverity", "Algorithm"),
    "Repository": ("composefs.repository", "Repository"),
}


def __getattr__(name: str) -> Any:
    if name == "backend":
        from composefs import _backend

        return _backend.name()
    if name == "__version__":
        globals()["__version__"] = version = _installed_version()
        return version
    lazy = _LAZY.get(name)
    if lazy is None:
        raise AttributeError(f"module 'composefs' has no attribute {name!r}")
    module = importlib.import_module(lazy[0])
    value = module if lazy[1] is None else getattr(module, lazy[1])
    globals()[name] = value
    return value


def _installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("composefs")
    except metadata.PackageNotFoundError:
        # The package imported from a source tree that was never installed (no metadata).
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
