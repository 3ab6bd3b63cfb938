"""Pure-Python backend: the same functions as ``composefs._native``, byte for byte."""

from composefs._pure import fsverity, splitstream, tar_split

__all__ = ["fsverity", "splitstream", "tar_split"]
