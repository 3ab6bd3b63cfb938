"""Shared benchmark plumbing: every group has a reference (the reference tool, run in the same
session) and the summary prints each benchmark's median and its ratio against it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import pytest

# group -> name -> median seconds
MEDIANS: dict[str, dict[str, float]] = {}
REFERENCES: dict[str, str] = {}
#: more lines for the summary: name -> text (e.g. peak RSS figures)
NOTES: dict[str, str] = {}


def record(group: str, name: str, median: float, *, reference: bool = False) -> None:
    MEDIANS.setdefault(group, {})[name] = median
    if reference:
        REFERENCES[group] = name


@pytest.fixture
def notes() -> dict[str, str]:
    """Lines added to the summary (name -> text)."""
    return NOTES


@pytest.fixture
def measure(benchmark: Any) -> Callable[..., Any]:
    """Runs ``fn`` under pytest-benchmark and records its median for the ratio report."""

    def run(
        group: str,
        name: str,
        fn: Callable[[], Any],
        *,
        rounds: int = 5,
        reference: bool = False,
        setup: Callable[[], None] | None = None,
    ) -> Any:
        """``setup`` (not timed) runs before every round, the warm-up round included."""
        benchmark.group = group
        benchmark.name = name
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1, setup=setup)
        record(group, name, benchmark.stats.stats.median, reference=reference)
        return result

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not MEDIANS:
        return
    tr = terminalreporter
    for name, text in NOTES.items():
        tr.write_line(f"{name}: {text}")
    tr.section("medians and speed ratios against the reference (higher is faster)")
    for group, results in MEDIANS.items():
        ref_name = REFERENCES.get(group)
        ref = results.get(ref_name) if ref_name else None
        tr.write_line(f"{group}:")
        for name, median in results.items():
            ratio = f"{ref / median:6.2f}x" if ref else "   n/a"
            mark = "  (reference)" if name == ref_name else ""
            tr.write_line(f"  {name:<40} median {median * 1000:10.1f} ms  {ratio}{mark}")


def median(values: list[float]) -> float:
    return statistics.median(values)
