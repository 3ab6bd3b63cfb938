"""Pure-Python backend: the same modules, functions and results as ``composefs._native``, byte
for byte. Each backend module satisfies its Protocol in :mod:`composefs._contract` (checked by
mypy in ``composefs._backend``)."""

from composefs._pure import erofs, fs, fsverity, merge, splitstream, tar_split

__all__ = ["erofs", "fs", "fsverity", "merge", "splitstream", "tar_split"]
