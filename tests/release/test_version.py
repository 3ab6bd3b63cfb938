"""``composefs.__version__``: the installed metadata's, one source (Cargo.toml), read lazily."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.version import Version

import composefs
from support import need

from .conftest import ROOT

CARGO_VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def installed_version() -> str:
    try:
        return importlib.metadata.version("composefs")
    except importlib.metadata.PackageNotFoundError:
        need(False, "composefs is not installed (no metadata): pip install -e .")
        raise


def test_version_is_the_metadata_version() -> None:
    assert composefs.__version__ == installed_version()
    assert "__version__" in dir(composefs)
    assert "__version__" in composefs.__all__


def test_one_source_of_the_version() -> None:
    """pyproject.toml names no version: maturin takes Cargo.toml's, and so does the extension."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert Version(installed_version()) == Version(CARGO_VERSION)


def test_native_version(native_backend: object) -> None:
    import composefs._native

    assert composefs._native.__version__ == CARGO_VERSION


def run_python(code: str, source: Path | None = None) -> str:
    """Output of ``code`` in a fresh interpreter without site-packages (so that nothing but
    composefs imports anything), importing composefs from ``source``, by default where this
    test run does."""
    if source is None:
        source = Path(composefs.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(source))
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_does_not_read_the_metadata() -> None:
    """importlib.metadata takes ~14 ms to import: ``import composefs`` (the CLI's start-up) must
    not pay it; the first access to ``__version__`` does."""
    out = run_python(
        "import sys, composefs\n"
        "print('importlib.metadata' in sys.modules)\n"
        "composefs.__version__\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    assert out.split() == ["False", "True"]


def test_version_without_metadata(tmp_path: Path) -> None:
    """A source tree on PYTHONPATH that was never installed: no metadata anywhere on the path."""
    package = Path(composefs.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "composefs", ignore=shutil.ignore_patterns("__pycache__"))
    out = run_python("import composefs; print(composefs.__version__)", source=tmp_path)
    assert out.strip() == "0+unknown"
