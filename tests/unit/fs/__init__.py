"""Directories read into the tree model (``composefs.fs``, the backends' scanners)."""
