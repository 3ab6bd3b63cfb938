"""Start-up of the ``composefs`` command: what it imports, never how long it takes (issue 14:
``composefs --help`` and ``oci images`` start in < 60 ms in a fresh venv; the figures are in
benches/README.md).

A command imports only its own module and what it uses; ``--help`` imports nothing of the
package beyond the parser. Modules are compared with what the interpreter and argparse import
by themselves (a later Python may import more of its own), so that only our imports count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import composefs
from composefs.oci.platform import host_platform
from composefs.testing import LayoutWriter, TarBuilder

PYTHON_DIR = str(Path(composefs.__file__).resolve().parents[1])

#: prints the modules imported by running ``main(argv)`` (stdout of the command discarded)
PROBE = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
before = set(sys.modules)
del sys.modules["json"]  # imported by this probe only: does the command import it?
from composefs.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
print(json.dumps({"status": status, "modules": sorted(set(sys.modules) - (before - {"json"}))}))
"""

#: what argparse and help formatting import by themselves
BASELINE = """
import argparse, contextlib, io, json, sys
before = set(sys.modules)
p = argparse.ArgumentParser(prog="x")
p.add_subparsers().add_parser("y")
with contextlib.redirect_stdout(io.StringIO()):
    try:
        p.parse_args(["--help"])
    except SystemExit:
        pass
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _run(code: str, *args: str) -> object:
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    env.pop("COMPOSEFS_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout)


def imported(*argv: str | os.PathLike[str]) -> set[str]:
    """The modules a run of ``composefs ARGV`` imports beyond the interpreter's and argparse's
    own."""
    result = _run(PROBE, json.dumps([os.fspath(a) for a in argv]))
    assert isinstance(result, dict)
    assert result["status"] in (0, None), result
    baseline = _run(BASELINE)
    assert isinstance(baseline, list)
    return set(result["modules"]) - set(baseline)


def _ours(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "composefs" or m.startswith("composefs.")}


def test_help_imports_only_the_parser() -> None:
    modules = imported("--help")
    assert _ours(modules) == {
        "composefs",
        "composefs._text",
        "composefs.cli",
        "composefs.cli._common",
        "composefs.cli._main",
        "composefs.constants",
        "composefs.errors",
    }
    for name in ("json", "typing", "logging", "dataclasses", "threading"):
        assert name not in modules, name


def test_commands_that_do_not_log_do_not_import_logging(repo: Path) -> None:
    for argv in (["oci", "images"], ["oci", "compute-id", "t"], ["images"]):
        assert "logging" not in imported("--repo", repo, *argv), argv
    assert "logging" in imported("--repo", repo, "-v", "oci", "images")  # -v: at once


def test_every_module_logs_through_composefs_log() -> None:
    """So that the command's handler is installed before anything logs (composefs._loghook)."""
    package = Path(PYTHON_DIR) / "composefs"
    allowed = {package / "_log.py", package / "cli" / "_loghandler.py"}
    for path in sorted(package.rglob("*.py")):
        if path not in allowed:
            assert "getLogger(" not in path.read_text(), f"{path}: use composefs._log.logger"


#: never needed to list, inspect or compute an image: the pull, the layer reader, the pure
#: backend, the writers, fsck, and the stdlib modules they bring; ``dataclasses`` (and the
#: ``inspect`` it imports): the records of these modules are ``composefs._record`` classes
NOT_FOR_READING = (
    "composefs._pure",
    "composefs._log",
    "composefs._repo_objects",
    "composefs.dumpfile",
    "composefs.fs",
    "composefs.fsck",
    "composefs.mount",
    "composefs.oci.fsck",
    "composefs.oci.layer",
    "composefs.oci.layout",
    "composefs.oci.proxy",
    "composefs.oci.pull",
    "concurrent.futures",
    "ctypes",
    "dataclasses",
    "inspect",
    "secrets",
    "subprocess",
    "zstandard",
)


def _unwanted(modules: set[str]) -> set[str]:
    return {m for m in modules for bad in NOT_FOR_READING if m == bad or m.startswith(bad + ".")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    w = LayoutWriter(root / "layout")
    layer = w.layer(TarBuilder().dir("usr").file("usr/f", b"f" * 5000).build(), "gzip")
    w.write_index([w.tagged(w.image([layer], architecture=host_platform().architecture), "t")])
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR}
    for args in (["init", "--insecure"], ["-q", "oci", "pull", f"oci:{root / 'layout'}:t", "t"]):
        subprocess.run(
            [sys.executable, "-m", "composefs.cli", "--repo", str(root / "repo"), *args],
            env=env,
            check=True,
            capture_output=True,
        )
    return root / "repo"


def test_oci_images_imports_no_writer(repo: Path) -> None:
    modules = imported("--repo", repo, "oci", "images")
    assert not _unwanted(modules), sorted(_unwanted(modules))
    # only the oci commands' module of the CLI (and the table of repo_cmd)
    assert {m for m in modules if m.startswith("composefs.cli.")} <= {
        "composefs.cli._common",
        "composefs.cli._main",
        "composefs.cli._output",
        "composefs.cli.oci_cmd",
        "composefs.cli.repo_cmd",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["oci", "compute-id", "t"],
        ["oci", "inspect", "t"],
        ["images"],
        ["--help"],
        ["oci", "pull", "--help"],
    ],
)
def test_reading_commands_import_no_writer(repo: Path, argv: list[str]) -> None:
    modules = imported("--repo", repo, *argv)
    assert not _unwanted(modules), sorted(_unwanted(modules))


def test_a_command_imports_only_its_module() -> None:
    assert "composefs.cli.oci_cmd" not in imported("fsverity", "digest", "--help")
    modules = imported("oci", "--help")
    assert "composefs.cli.oci_cmd" in modules
    assert not {"composefs.cli.repo_cmd", "composefs.cli.image_cmd"} & modules
