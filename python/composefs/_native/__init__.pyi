"""Native (Rust) backend of composefs: the formats, byte-identical to the pure-Python twin
``composefs._pure``. See ``docs/internals.md`` for the contract."""

from composefs._native import fsverity as fsverity
from composefs._native import splitstream as splitstream

__all__ = ["__version__", "fsverity", "splitstream"]

__version__: str
