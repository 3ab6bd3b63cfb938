"""Chooses the backend that implements the formats: native (Rust) or pure Python.

``COMPOSEFS_BACKEND=native`` requires the extension module and fails loudly without it;
``COMPOSEFS_BACKEND=python`` forces the pure-Python backend; unset or ``auto`` prefers native.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING

from composefs._contract import (
    ErofsModule,
    FsModule,
    FsverityModule,
    MergeModule,
    SplitstreamModule,
    TarSplitModule,
)

__all__ = ["Backend", "backend", "name", "use"]

_CHOICES = ("auto", "native", "python")


class Backend:
    """The modules of one backend, as attributes named after the formats, each typed with its
    Protocol of :mod:`composefs._contract`."""

    fsverity: FsverityModule
    splitstream: SplitstreamModule
    tar_split: TarSplitModule
    merge: MergeModule
    erofs: ErofsModule
    fs: FsModule

    def __init__(self, name: str, package: ModuleType) -> None:
        self.name = name
        self.package = package
        # both packages expose their format modules as attributes (the native one registers
        # them as submodules of the extension module)
        self.fsverity = getattr(package, "fsverity")  # noqa: B009
        self.splitstream = getattr(package, "splitstream")  # noqa: B009
        self.tar_split = getattr(package, "tar_split")  # noqa: B009
        self.erofs = getattr(package, "erofs")  # noqa: B009
        self.merge = getattr(package, "merge")  # noqa: B009
        self.fs = getattr(package, "fs")  # noqa: B009

    def __repr__(self) -> str:
        return f"<composefs backend {self.name!r}>"


def load(choice: str) -> Backend:
    """Loads the backend named by ``choice`` (``auto``, ``native`` or ``python``)."""
    choice = choice.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"COMPOSEFS_BACKEND must be one of {', '.join(_CHOICES)}, not {choice!r}")
    if choice in ("auto", "native"):
        try:
            native = importlib.import_module("composefs._native")
            if not hasattr(native, "fsverity"):
                # only the directory of .pyi stubs was found: a namespace package
                raise ImportError("the extension module is not built")
        except ImportError as e:
            if choice == "native":
                raise ImportError(
                    "COMPOSEFS_BACKEND=native, but the extension module composefs._native "
                    f"cannot be imported ({e}); rebuild the package with `pip install .`"
                ) from e
        else:
            return Backend("native", native)
    return Backend("python", importlib.import_module("composefs._pure"))


_active: Backend = load(os.environ.get("COMPOSEFS_BACKEND", "auto"))


def backend() -> Backend:
    """The active backend."""
    return _active


def name() -> str:
    """``"native"`` or ``"python"``."""
    return _active.name


@contextlib.contextmanager
def use(choice: str) -> Iterator[Backend]:
    """Temporarily switches the active backend (for tests and benchmarks)."""
    global _active
    previous = _active
    _active = load(choice)
    try:
        yield _active
    finally:
        _active = previous


if TYPE_CHECKING:
    # mypy checks each backend module against its Protocol of composefs._contract: the pure
    # modules themselves and the stubs of the native ones (composefs/_native/*.pyi).
    from composefs import _native, _pure

    _pure_fsverity: FsverityModule = _pure.fsverity
    _pure_splitstream: SplitstreamModule = _pure.splitstream
    _pure_tar_split: TarSplitModule = _pure.tar_split
    _pure_merge: MergeModule = _pure.merge
    _pure_erofs: ErofsModule = _pure.erofs
    _pure_fs: FsModule = _pure.fs
    _native_fsverity: FsverityModule = _native.fsverity
    _native_splitstream: SplitstreamModule = _native.splitstream
    _native_tar_split: TarSplitModule = _native.tar_split
    _native_merge: MergeModule = _native.merge
    _native_erofs: ErofsModule = _native.erofs
    _native_fs: FsModule = _native.fs
