"""Helpers shared by the test suites: external tools, CI strictness, the two backends.

The rest is in submodules, imported by name:

* ``support.tars``: the ``Tar`` builder of layers for the merge, seeded file contents;
* ``support.trees``: a directory tree on disk with every kind of entry (scanner tests);
* ``support.oci``: the host's and another architecture, the OCI layout of the interop tests;
* ``support.registry``: OCI layouts written by hand and the local registry (integration).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from composefs._backend import Backend

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skips the test when ``condition`` is false, except in CI, where it fails instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def tool(name: str) -> str:
    """Path of an external tool (``cfsctl`` is also looked up in ~/.cargo/bin)."""
    found = shutil.which(name)
    if found is None and name == "cfsctl":
        candidate = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / name
        if candidate.exists():
            found = str(candidate)
    need(found is not None, f"{name} is not installed (run tools/setup-test-env)")
    assert found is not None
    return found


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")


def run(
    *args: str | os.PathLike[str],
    input: bytes | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Runs a command, capturing output; on failure the assertion shows stderr."""
    proc = subprocess.run(
        [os.fspath(a) for a in args], input=input, capture_output=True, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def load_backend(name: str) -> Backend:
    """Backend ``name`` (``python``: ``composefs._pure``, ``native``: ``composefs._native``), as
    :class:`composefs._backend.Backend` shows it: its modules typed by the contract.

    The native extension is required in CI (``CI=true``: a missing module fails the test);
    elsewhere its tests are skipped with the reason.
    """
    if name == "python":
        return Backend("python", importlib.import_module("composefs._pure"))
    try:
        native = importlib.import_module("composefs._native")
        # An unbuilt tree can leave an empty ``_native/`` directory, which imports as a
        # namespace package: insist on the real extension's submodules.
        for sub in ("fsverity", "splitstream"):
            if not hasattr(native, sub):
                raise ImportError(f"composefs._native has no submodule {sub!r}")
    except ImportError as e:
        need(False, f"native backend unavailable ({e}); build it with `pip install -e .`")
        raise  # not reached: need() skips or fails
    return Backend("native", native)
