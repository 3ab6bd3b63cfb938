"""Tar layers split into a splitstream and objects."""
