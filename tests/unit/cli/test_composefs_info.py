"""``composefs-info`` on hostile inputs (its output against cfsctl is in
tests/interop/test_cli_surface_interop.py): only regular files are read as images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("kind", ["fifo", "zero", "directory"])
def test_special_files_are_not_read(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path
    proc = subprocess.run(
        [sys.executable, "-m", "composefs.cli", "composefs-info", "dump", os.fspath(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    first = proc.stderr.decode().splitlines()[0]
    assert first.startswith(("Error: Failed to read image", "Error: Failed to open image")), first
