"""The composefs EROFS image writer (V0, V1, V2), pure Python. Native twin: ``rust/erofs.rs``."""

from __future__ import annotations
