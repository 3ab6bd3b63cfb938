"""Comparisons with the reference tool cfsctl (``interop`` marker)."""
