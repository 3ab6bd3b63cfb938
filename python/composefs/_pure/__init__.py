"""Pure-Python backend: the same modules, functions and results as ``composefs._native``, byte
for byte. Each backend module satisfies its Protocol in :mod:`composefs._contract` (checked by
mypy in ``composefs._backend``).

The backend modules are imported on first use: the orchestration imports a few helpers from
here (the object writer, ``composefs._pure.objects``) without paying for the whole backend when
the native one is active (CLI start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from composefs._pure import erofs, fs, fsverity, merge, splitstream, tar_split

__all__ = ["erofs", "fs", "fsverity", "merge", "splitstream", "tar_split"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
