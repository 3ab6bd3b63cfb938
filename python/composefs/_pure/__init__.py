"""Pure-Python backend: the same functions as ``composefs._native``, byte for byte."""

from composefs._pure import fsverity, splitstream

__all__ = ["fsverity", "splitstream"]
