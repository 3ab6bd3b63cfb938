"""THIRD-PARTY-LICENSES, shipped in the wheel, lists what Cargo.lock compiles into the extension."""

from __future__ import annotations

import sys

from support import run, tool

from .conftest import ROOT


def test_third_party_licenses_are_current() -> None:
    tool("cargo")
    run(sys.executable, ROOT / "tools" / "third-party-licenses", "--check")


def test_bundled_c_library_and_bsd_crates_are_listed() -> None:
    """The licenses that require their notice in binary redistributions are reproduced."""
    text = (ROOT / "THIRD-PARTY-LICENSES").read_text()
    for name in ("zstd-sys", "zstd-safe", "zlib-rs", "pyo3", "sha2"):
        assert f"\n  {name} " in text, name
    assert "--- zstd/LICENSE" in text  # libzstd's own (BSD) license, the C code zstd-sys builds
    assert "Redistributions in binary form must reproduce" in text
