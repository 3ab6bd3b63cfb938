"""Linux system calls the ``os`` module lacks: ``renameat2(RENAME_NOREPLACE)`` and ``syncfs``."""

from __future__ import annotations

import ctypes
import functools
import os

__all__ = ["rename_noreplace", "syncfs"]

_RENAME_NOREPLACE = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Renames ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (never replaces it)."""
    if _libc().renameat2(src_dir, src.encode(), dst_dir, dst.encode(), _RENAME_NOREPLACE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def syncfs(fd: int) -> None:
    """Flushes the filesystem that holds ``fd``."""
    if _libc().syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
