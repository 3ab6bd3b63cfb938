"""The fuzzing budget: ``COMPOSEFS_FUZZ_EXAMPLES`` cases per target (CI: 2000, else 200).

Every target must end in a result or in one of our errors; a crash, a panic, a hang or any other
exception (a traceback for a user) fails the test, and hypothesis shrinks the input. Each bug
found gets a pinned regression case next to its target.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from hypothesis import HealthCheck, settings

from support import IN_CI

EXAMPLES = int(os.environ.get("COMPOSEFS_FUZZ_EXAMPLES", "2000" if IN_CI else "200"))

settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=False,
)
FUZZ = settings.get_profile("fuzz")


@contextlib.contextmanager
def bounded(seconds: float = 10.0) -> Iterator[None]:
    """Fails the example (a hang) when the block runs longer than ``seconds``."""

    def expired(signum: int, frame: object) -> None:
        raise AssertionError(f"no result after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
