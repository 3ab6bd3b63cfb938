"""fs-verity digest of a 1 GiB file: native (1 thread, all threads), pure Python, and
fsverity-utils' ``fsverity digest`` on the same file in the same run.

Goals: native >= 1.5x ``fsverity digest`` single-threaded and >= 2.5x with both cores; pure
Python >= 0.9x.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from composefs import _backend
from support import need, tool

SIZE = 1 << 30


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("fsverity") / "big"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(SIZE >> 20):
            f.write(block)
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    yield path
    path.unlink()


def _native() -> _backend.Backend:
    try:
        return _backend.load("native")
    except ImportError as e:
        need(False, f"native backend: {e}")
        raise


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_fsverity_digest_tool(measure, big_file: Path, alg: str) -> None:  # type: ignore[no-untyped-def]
    exe = tool("fsverity")
    out = measure(
        f"fsverity 1GiB {alg}",
        "fsverity digest (fsverity-utils)",
        lambda: (
            subprocess.run(
                [exe, "digest", "--hash-alg", alg, str(big_file)], capture_output=True, check=True
            ).stdout
        ),
        reference=True,
    )
    expected = out.split()[0].decode().split(":")[1]
    fd = os.open(big_file, os.O_RDONLY)
    try:
        assert _backend.load("python").fsverity.digest_fd(fd, alg, 0).hex() == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("threads", [1, 0], ids=["1thread", "allthreads"])
def test_native(measure, big_file: Path, alg: str, threads: int) -> None:  # type: ignore[no-untyped-def]
    native = _native()
    fd = os.open(big_file, os.O_RDONLY)
    try:
        measure(
            f"fsverity 1GiB {alg}",
            f"native threads={threads or os.cpu_count()}",
            lambda: native.fsverity.digest_fd(fd, alg, threads),
        )
    finally:
        os.close(fd)


@pytest.mark.parametrize("alg", ["sha256", "sha512"])
@pytest.mark.parametrize("threads", [1, 0], ids=["1thread", "allthreads"])
def test_pure_python(measure, big_file: Path, alg: str, threads: int) -> None:  # type: ignore[no-untyped-def]
    pure = _backend.load("python")
    fd = os.open(big_file, os.O_RDONLY)
    try:
        measure(
            f"fsverity 1GiB {alg}",
            f"pure python threads={threads or os.cpu_count()}",
            lambda: pure.fsverity.digest_fd(fd, alg, threads),
            rounds=3,
        )
    finally:
        os.close(fd)
