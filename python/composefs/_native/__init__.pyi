"""Native (Rust) backend of composefs: the formats, byte-identical to the pure-Python twin
``composefs._pure``. See ``docs/internals.md`` for the contract."""

from composefs._native import erofs as erofs
from composefs._native import fsverity as fsverity
from composefs._native import splitstream as splitstream
from composefs._native import tar_split as tar_split
from composefs._native import tree as tree

__all__ = ["__version__", "erofs", "fsverity", "splitstream", "tar_split", "tree"]

__version__: str
