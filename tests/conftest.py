"""Fixtures shared by all test suites: the two format backends, the hypothesis profile."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from composefs._backend import Backend
from support import load_backend

# No per-example deadline: timings on a loaded 2-core machine are noise, not failures.
settings.register_profile("composefs", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "composefs"))

BACKENDS = ("python", "native")


@pytest.fixture(scope="session", params=BACKENDS)
def backend_module(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn: ``composefs._pure``, then ``composefs._native``."""
    return load_backend(request.param)


@pytest.fixture(scope="session")
def pure_backend() -> Backend:
    """The pure-Python backend."""
    return load_backend("python")


@pytest.fixture(scope="session")
def native_backend() -> Backend:
    """The native backend (skipped if not built, failed in CI)."""
    return load_backend("native")
