"""Pure-Python backend: the same functions as ``composefs._native``, byte for byte."""

from composefs._pure import erofs, fsverity, splitstream, tar_split, tree

__all__ = ["erofs", "fsverity", "splitstream", "tar_split", "tree"]
