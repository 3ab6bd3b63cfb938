"""Pure-Python backend: the same functions as ``composefs._native``, byte for byte."""

from composefs._pure import erofs, fs, fsverity, splitstream, tar_split, tree
from composefs._pure import tree as merge

__all__ = ["erofs", "fs", "fsverity", "merge", "splitstream", "tar_split", "tree"]
