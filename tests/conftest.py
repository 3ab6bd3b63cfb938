"""Fixtures shared by all test suites: the two format backends, the hypothesis profile."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from support import need

# No per-example deadline: timings on a loaded 2-core machine are noise, not failures.
settings.register_profile("composefs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "composefs"))

BACKENDS = ("python", "native")


def load_backend(name: str) -> ModuleType:
    """The package of backend ``name`` (``composefs._pure`` or ``composefs._native``).

    The native extension is required in CI (``CI=true``: a missing module fails the test);
    elsewhere its tests are skipped with the reason.
    """
    if name == "python":
        return importlib.import_module("composefs._pure")
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
    return native


@pytest.fixture(scope="session", params=BACKENDS)
def backend_module(request: pytest.FixtureRequest) -> ModuleType:
    """Each backend package in turn: ``composefs._pure``, then ``composefs._native``."""
    return load_backend(request.param)


@pytest.fixture(scope="session")
def pure_backend() -> ModuleType:
    """The pure-Python backend package."""
    return load_backend("python")


@pytest.fixture(scope="session")
def native_backend() -> ModuleType:
    """The native backend package (skipped if not built, failed in CI)."""
    return load_backend("native")
