"""Native (Rust) backend of composefs: the formats, byte-identical to the pure-Python twin
``composefs._pure``. See ``docs/internals.md`` for the contract."""

from composefs._native import constants as constants
from composefs._native import erofs as erofs
from composefs._native import erofs_format as erofs_format
from composefs._native import fs as fs
from composefs._native import fsverity as fsverity
from composefs._native import merge as merge
from composefs._native import splitstream as splitstream
from composefs._native import tar_split as tar_split

__all__ = [
    "__version__",
    "constants",
    "erofs",
    "erofs_format",
    "fs",
    "fsverity",
    "merge",
    "splitstream",
    "tar_split",
]

__version__: str
