"""Native (Rust) backend of composefs: the formats, byte-identical to the pure-Python twin
``composefs._pure``. See ``docs/internals.md`` for the contract."""

from composefs._native import fsverity as fsverity
from composefs._native import splitstream as splitstream
from composefs._native import tar_split as tar_split

__all__ = ["__version__", "fsverity", "splitstream", "tar_split"]

__version__: str
