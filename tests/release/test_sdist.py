"""The release sdist (tools/build-wheels): what a source build needs, the license texts, the
metadata, no binaries. That it builds into a working wheel in a clean venv is tools/check-wheel's
(run by .ci/run)."""

from __future__ import annotations

import tarfile
import tomllib
from collections.abc import Iterator
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

import pytest
from packaging.version import Version

from .conftest import ROOT

CARGO_VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
LICENSES = ("LICENSE-MIT", "LICENSE-APACHE", "THIRD-PARTY-LICENSES")


@pytest.fixture(scope="module")
def sdist(sdist_path: Path) -> Iterator[tarfile.TarFile]:
    with tarfile.open(sdist_path, "r:gz") as archive:
        yield archive


@pytest.fixture(scope="module")
def top(sdist_path: Path) -> str:
    name = sdist_path.name.removesuffix(".tar.gz")
    assert name.startswith("composefs-"), name
    assert Version(name.removeprefix("composefs-")) == Version(CARGO_VERSION)
    return name


def read(sdist: tarfile.TarFile, top: str, name: str) -> bytes:
    member = sdist.extractfile(f"{top}/{name}")
    assert member is not None, name
    return member.read()


def test_layout(sdist: tarfile.TarFile, top: str) -> None:
    names = sdist.getnames()
    for name in names:
        path = PurePosixPath(name)
        assert not path.is_absolute() and ".." not in path.parts, name
        assert path.parts[0] == top, name
    files = {name.removeprefix(f"{top}/") for name in names}
    # what maturin needs to build the extension and the package
    assert {"PKG-INFO", "pyproject.toml", "Cargo.toml", "Cargo.lock", "README.md"} <= files
    for pattern in ("rust/**/*.rs", "python/composefs/**/*.py", "python/composefs/**/*.pyi"):
        expected = {p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern)}
        assert expected, pattern
        assert expected <= files, expected - files
    assert "python/composefs/py.typed" in files
    # no build output
    assert not [f for f in files if f.endswith((".so", ".whl", ".pyc")) or "/target/" in f]


def test_build_inputs_are_the_tree(sdist: tarfile.TarFile, top: str) -> None:
    for name in ("pyproject.toml", "Cargo.lock", *LICENSES):
        assert read(sdist, top, name) == (ROOT / name).read_bytes(), name


def test_pkg_info(sdist: tarfile.TarFile, top: str) -> None:
    info = HeaderParser().parsestr(read(sdist, top, "PKG-INFO").decode())
    assert Version(info["Metadata-Version"]) >= Version("2.4")
    assert info["Name"] == "composefs"
    assert Version(info["Version"]) == Version(CARGO_VERSION)
    assert info["License-Expression"] == "MIT OR Apache-2.0"
    assert info.get_all("License-File") == list(LICENSES)
