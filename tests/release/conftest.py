"""Fixtures of the release tests: the release wheel (tools/build-wheels) and its metadata."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest

from support import need

ROOT = Path(__file__).resolve().parents[2]


def _artifact(variable: str, pattern: str, what: str) -> Path:
    """``$variable``, else the one file of ``dist/`` matching ``pattern``.

    Without one the tests are skipped (failed in CI, whose .ci/run builds it first).
    """
    named = os.environ.get(variable)
    if named:
        path = Path(named)
        assert path.is_file(), f"{variable}={named} is not a file"
        return path
    found = sorted((ROOT / "dist").glob(pattern))
    need(bool(found), f"no {what} in dist/: build it with tools/build-wheels (or set {variable})")
    assert len(found) == 1, f"several {what}s in dist/ ({[p.name for p in found]}): which one?"
    return found[0]


@pytest.fixture(scope="session")
def wheel_path() -> Path:
    """The wheel under test: ``$COMPOSEFS_WHEEL``, else the one wheel in ``dist/``."""
    return _artifact("COMPOSEFS_WHEEL", "composefs-*.whl", "wheel")


@pytest.fixture(scope="session")
def sdist_path() -> Path:
    """The sdist under test: ``$COMPOSEFS_SDIST``, else the one sdist in ``dist/``."""
    return _artifact("COMPOSEFS_SDIST", "composefs-*.tar.gz", "sdist")


@pytest.fixture(scope="session")
def wheel(wheel_path: Path) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(wheel_path) as archive:
        yield archive


@pytest.fixture(scope="session")
def dist_info(wheel: zipfile.ZipFile) -> str:
    """The ``NAME-VERSION.dist-info`` directory of the wheel."""
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    infos = [top for top in tops if top.endswith(".dist-info")]
    assert len(infos) == 1, infos
    return infos[0]


@pytest.fixture(scope="session")
def metadata(wheel: zipfile.ZipFile, dist_info: str) -> Message:
    """The wheel's core metadata (``METADATA``)."""
    return HeaderParser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
