"""composefs: content-addressed repositories and OCI image import, compatible with cfsctl.

The formats (fs-verity, splitstream, …) are implemented twice: natively in Rust
(``composefs._native``) and in pure Python (``composefs._pure``), with identical output.
``composefs.backend`` names the one in use; set ``COMPOSEFS_BACKEND=python`` or ``native``
before importing to choose.
"""

from __future__ import annotations

from typing import Any

from composefs import errors, fsverity, splitstream
from composefs.errors import ComposefsError
from composefs.fsverity import Algorithm
from composefs.repository import Repository

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "ComposefsError",
    "Repository",
    "__version__",
    "backend",
    "errors",
    "fsverity",
    "splitstream",
]

backend: str  # ``"native"`` or ``"python"``; resolved at access time by __getattr__


def __getattr__(name: str) -> Any:
    if name == "backend":
        from composefs import _backend

        return _backend.name()
    raise AttributeError(f"module 'composefs' has no attribute {name!r}")
