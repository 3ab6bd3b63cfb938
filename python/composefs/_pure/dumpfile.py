"""The composefs dumpfile format (composefs-dump(5)): writer and parser, pure Python.
Native twin: ``rust/dumpfile.rs``."""

from __future__ import annotations
