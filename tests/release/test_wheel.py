"""The release wheel (tools/build-wheels): its tags, what it holds, its metadata, and that it runs.

What auditwheel and pip would reject, checked cheaply from the archive itself; the install into a
venv without Rust and README's main job from it are tools/check-wheel's (run by .ci/run).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import trove_classifiers
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CARGO_VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
NATIVE = "composefs/_native.abi3.so"
LICENSES = ("LICENSE-MIT", "LICENSE-APACHE", "THIRD-PARTY-LICENSES")
# The libraries a manylinux wheel may link without bundling them (the PEP 599/600 policies).
SYSTEM_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "librt.so.1",
    "libpthread.so.0",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
}


def wheel_tags(path: Path) -> tuple[str, str, str, list[str]]:
    """(version, python tag, abi tag, platform tags) of a wheel file name (no build tag)."""
    name, version, python, abi, platforms = path.name.removesuffix(".whl").split("-")
    assert name == "composefs", path.name
    return version, python, abi, platforms.split(".")


def glibc_floor(platform: str) -> tuple[int, int]:
    """The glibc version a manylinux platform tag promises to run on."""
    if platform == "manylinux2014_x86_64":
        return (2, 17)
    match = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", platform)
    assert match, f"not a manylinux x86_64 tag: {platform}"
    return (int(match[1]), int(match[2]))


def test_file_name_tags(wheel_path: Path) -> None:
    version, python, abi, platforms = wheel_tags(wheel_path)
    assert Version(version) == Version(CARGO_VERSION)
    # One wheel for every CPython from requires-python's floor on: the stable ABI.
    floor = re.fullmatch(r">=3\.(\d+)", PROJECT["requires-python"])
    assert floor, PROJECT["requires-python"]
    assert python == f"cp3{floor[1]}"
    assert abi == "abi3"
    assert platforms, wheel_path.name
    for platform in platforms:
        glibc_floor(platform)
    # the legacy alias and its PEP 600 name agree (manylinux2014 = manylinux_2_17)
    assert len({glibc_floor(p) for p in platforms}) == 1, platforms


def test_wheel_file(wheel: zipfile.ZipFile, dist_info: str, wheel_path: Path) -> None:
    fields = [
        line.split(": ", 1) for line in wheel.read(f"{dist_info}/WHEEL").decode().splitlines()
    ]
    tags = {value for key, value in fields if key == "Tag"}
    _, python, abi, platforms = wheel_tags(wheel_path)
    assert tags == {f"{python}-{abi}-{platform}" for platform in platforms}
    assert ["Root-Is-Purelib", "false"] in fields
    assert ["Wheel-Version", "1.0"] in fields


def test_native_module_needs_only_the_tagged_glibc(
    wheel: zipfile.ZipFile, wheel_path: Path
) -> None:
    """What auditwheel checks: the libraries and glibc symbol versions the extension needs."""
    floor = glibc_floor(wheel_tags(wheel_path)[3][0])
    elf = ELFFile(io.BytesIO(wheel.read(NATIVE)))
    assert elf["e_machine"] == "EM_X86_64"
    dynamic = elf.get_section_by_name(".dynamic")
    assert isinstance(dynamic, DynamicSection)
    needed = {tag.needed for tag in dynamic.iter_tags() if tag.entry.d_tag == "DT_NEEDED"}
    # an abi3 extension resolves the Python C API from the interpreter: no libpython
    assert needed <= SYSTEM_LIBRARIES, needed - SYSTEM_LIBRARIES
    verneed = elf.get_section_by_name(".gnu.version_r")
    assert isinstance(verneed, GNUVerNeedSection)
    versions = {aux.name for _, auxes in verneed.iter_versions() for aux in auxes}
    assert versions, "no versioned symbols at all: not linked against glibc?"
    glibc = [version_tuple(v.removeprefix("GLIBC_")) for v in versions if v.startswith("GLIBC_")]
    assert max(glibc) <= floor, f"needs glibc {max(glibc)}, the tag promises {floor}"
    gcc = [version_tuple(v.removeprefix("GCC_")) for v in versions if v.startswith("GCC_")]
    # libgcc_s: manylinux2014's policy stops at GCC_4.8.0 (the later policies allow more)
    assert max(gcc, default=()) <= (4, 8, 0), f"needs libgcc_s GCC_{max(gcc)}"
    others = [v for v in versions if not v.startswith(("GLIBC_", "GCC_"))]
    assert not others, f"unexpected symbol versions {others}"


def version_tuple(text: str) -> tuple[int, ...]:
    assert re.fullmatch(r"\d+(\.\d+)*", text), text
    return tuple(int(part) for part in text.split("."))


def test_contents(wheel: zipfile.ZipFile, dist_info: str) -> None:
    """Every module, stub and marker of the source tree, the extension, the license texts, and
    nothing else (no tests, no caches)."""
    source = ROOT / "python"
    expected = {
        path.relative_to(source).as_posix()
        for pattern in ("*.py", "*.pyi", "py.typed")
        for path in (source / "composefs").rglob(pattern)
        if "__pycache__" not in path.parts
    }
    expected.add(NATIVE)
    names = set(wheel.namelist())
    package = {name for name in names if not name.startswith(f"{dist_info}/")}
    assert package == expected
    stubs = {name for name in package if name.startswith("composefs/_native/")}
    assert "composefs/_native/__init__.pyi" in stubs
    assert "composefs/py.typed" in package

    info = {name.removeprefix(f"{dist_info}/") for name in names - package}
    licenses = {f"licenses/{name}" for name in LICENSES}
    assert licenses <= info
    sboms = {name for name in info if name.startswith("sboms/")}
    assert info - licenses - sboms == {"METADATA", "WHEEL", "RECORD", "entry_points.txt"}
    for name in LICENSES:
        assert wheel.read(f"{dist_info}/licenses/{name}") == (ROOT / name).read_bytes()


def test_record(wheel: zipfile.ZipFile, dist_info: str) -> None:
    """RECORD lists every file with its sha256 and size (pip refuses a mismatch)."""
    record = f"{dist_info}/RECORD"
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(wheel.read(record).decode()))}
    assert set(rows) == set(wheel.namelist())
    assert rows.pop(record) == ["", ""]
    for name, (digest, size) in rows.items():
        data = wheel.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}", name
        assert int(size) == len(data), name


def test_metadata(metadata: Message) -> None:
    assert Version(metadata["Metadata-Version"]) >= Version("2.4")  # PEP 639
    assert metadata["Name"] == "composefs"
    # one version, Cargo.toml's (pyproject takes it from there)
    assert "version" not in PROJECT
    assert "version" in PROJECT["dynamic"]
    assert Version(metadata["Version"]) == Version(CARGO_VERSION)
    assert metadata["Requires-Python"] == PROJECT["requires-python"]
    assert metadata["License-Expression"] == "MIT OR Apache-2.0"
    assert metadata.get_all("License-File") == list(LICENSES)
    assert metadata["License"] is None  # the legacy field stays out
    assert metadata["Summary"] == PROJECT["description"]
    assert metadata["Author"] == "The composefs-python authors"
    assert metadata["Keywords"].split(",") == PROJECT["keywords"]
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert set(urls) == {"Homepage", "Documentation", "Source", "Issues"}
    assert all(url.startswith("https://") for url in urls.values())
    # README.md is the long description
    assert metadata.get_payload().strip() == (ROOT / "README.md").read_text().strip()
    required = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    runtime = {str(r) for r in required if r.marker is None}
    assert runtime == {str(Requirement(r)) for r in PROJECT["dependencies"]}


def test_classifiers(metadata: Message) -> None:
    classifiers = metadata.get_all("Classifier")
    assert classifiers == PROJECT["classifiers"]
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown, f"not trove classifiers (PyPI rejects them): {unknown}"
    deprecated = [c for c in classifiers if c in trove_classifiers.deprecated_classifiers]
    assert not deprecated
    # PEP 639: with a License-Expression, a `License ::` classifier is an error (PyPI rejects it)
    assert not [c for c in classifiers if c.startswith("License ::")]
    for wanted in ("Development Status :: 3 - Alpha", "Typing :: Typed"):
        assert wanted in classifiers
    assert [c for c in classifiers if c.startswith("Topic :: System :: Filesystems")]
    # the Python versions named are the ones requires-python admits, its floor included
    allowed = SpecifierSet(PROJECT["requires-python"])
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions
    assert all(Version(v) in allowed for v in versions)
    assert min(versions, key=Version) == PROJECT["requires-python"].removeprefix(">=")


def test_entry_points(wheel: zipfile.ZipFile, dist_info: str) -> None:
    text = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert "[console_scripts]" in text
    for name, target in PROJECT["scripts"].items():
        assert re.search(rf"^{re.escape(name)} ?= ?{re.escape(target)}$", text, re.M), text


def test_wheel_runs(wheel: zipfile.ZipFile, tmp_path: Path) -> None:
    """The unpacked wheel imports on this interpreter, with the native backend, and its version
    is its metadata's and the extension's (Cargo.toml's)."""
    wheel.extractall(tmp_path / "site")
    script = """
import importlib.metadata, json, sys
import composefs, composefs._native
from composefs._native import fsverity as native
from composefs._pure import fsverity as pure
data = bytes(range(256)) * 4099
print(json.dumps({
    "file": composefs.__file__,
    "backend": composefs.backend,
    "version": composefs.__version__,
    "metadata": importlib.metadata.version("composefs"),
    "native": composefs._native.__version__,
    "same_digest": native.digest(data, "sha512") == pure.digest(data, "sha512"),
}))
"""
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), COMPOSEFS_BACKEND="native")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert Path(got["file"]).is_relative_to(tmp_path / "site")
    assert got["backend"] == "native"
    assert got["version"] == got["metadata"]
    assert Version(got["version"]) == Version(got["native"]) == Version(CARGO_VERSION)
    assert got["same_digest"]
