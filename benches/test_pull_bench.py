"""``oci pull`` of a multi-layer image from an OCI layout: ours (CLI and API) against
``cfsctl oci pull`` (the reference), into fresh repositories, in the same run.

The image: 6 gzip layers of ~16 MiB each (one 8 MiB file, 200 files of 20 KiB, 2000 files of
2 KiB, half random and half text so gzip has work to do). Each round pulls into a new
repository (``init`` included, for both tools; removing the repositories is not timed).

Both pulls end with the EROFS image built, linked and tagged; the
``cfsctl oci compute-id`` row times that step alone (an EROFS build in memory from the pulled
image) so the two can be told apart. The proxy rows pull the same image packed as an
``oci-archive:`` through ``skopeo experimental-image-proxy`` (ours and cfsctl's).

Goal: our ``oci:`` pull faster than cfsctl's.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import _backend, oci
from composefs.oci.platform import host_platform
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import need, tool

GROUP = "oci pull 6x16MiB gzip layers"
LAYERS = 6


def _layer(rng: random.Random, n: int) -> bytes:
    t = TarBuilder(mtime=1_700_000_000 + n)
    t.dir("usr")
    t.dir(f"usr/l{n}")
    text = b"composefs benchmark line of text, fairly compressible\n" * 64

    def blob(size: int) -> bytes:
        half = size // 2
        return rng.randbytes(half) + (text * (size // len(text) + 1))[: size - half]

    t.file(f"usr/l{n}/big", blob(8 << 20))
    for i in range(200):
        t.file(f"usr/l{n}/m{i}", blob(20 << 10))
    for i in range(2000):
        t.file(f"usr/l{n}/s{i}", blob(2 << 10))
    return t.build()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("bench") / "layout"
    rng = random.Random(42)
    w = LayoutWriter(path)
    layers = [w.layer(_layer(rng, n), "gzip") for n in range(LAYERS)]
    w.write_index([w.tagged(w.image(layers, architecture=host_platform().architecture), "t")])
    subprocess.run(
        ["cat", *map(str, (path / "blobs/sha256").iterdir())], stdout=subprocess.DEVNULL, check=True
    )  # warm the page cache
    yield f"oci:{path}:t"
    shutil.rmtree(path)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A new repository path per round, on tmpfs when there is one: both tools ``syncfs``
    before linking a stream, and on this shared VM's disk the writeback of earlier rounds
    dominated and scrambled the timings. Removing the repositories is not timed."""
    shm = Path("/dev/shm")
    base = (
        Path(tempfile.mkdtemp(prefix="composefs-pull-bench-", dir=shm))
        if shm.is_dir()
        else tmp_path
    )
    counter = itertools.count()
    os.sync()
    yield lambda: base / f"r{next(counter)}"
    for p in base.iterdir():
        shutil.rmtree(p, ignore_errors=True)
    if base != tmp_path:
        base.rmdir()


def test_cfsctl_pull(measure: Any, image: str, fresh: Callable[[], Path]) -> None:
    cfsctl = tool("cfsctl")

    def pull() -> bytes:
        repo = fresh()
        subprocess.run(
            [cfsctl, "--repo", repo, "init", "--insecure", repo], capture_output=True, check=True
        )
        return subprocess.run(
            [cfsctl, "--repo", repo, "oci", "pull", image], capture_output=True, check=True
        ).stdout

    out = measure(GROUP, "cfsctl oci pull (with its EROFS step)", pull, rounds=7, reference=True)
    assert out.startswith(b"manifest sha256:")


def test_cfsctl_erofs_step(measure: Any, image: str, tmp_path: Path) -> None:
    cfsctl = tool("cfsctl")
    repo = tmp_path / "r"
    subprocess.run(
        [cfsctl, "--repo", repo, "init", "--insecure", repo], capture_output=True, check=True
    )
    subprocess.run(
        [cfsctl, "--repo", repo, "oci", "pull", image, "t"], capture_output=True, check=True
    )
    measure(
        GROUP,
        "cfsctl oci compute-id (EROFS build only)",
        lambda: subprocess.run(
            [cfsctl, "--repo", repo, "oci", "compute-id", "t"], capture_output=True, check=True
        ),
    )


def test_ours_cli(measure: Any, image: str, fresh: Callable[[], Path]) -> None:
    env = {**os.environ, "COMPOSEFS_BACKEND": "native"}

    def pull() -> bytes:
        repo = fresh()
        subprocess.run(
            [sys.executable, "-m", "composefs.cli", "--repo", repo, "init", "--insecure"],
            capture_output=True,
            check=True,
            env=env,
        )
        return subprocess.run(
            [sys.executable, "-m", "composefs.cli", "--repo", repo, "oci", "pull", image],
            capture_output=True,
            check=True,
            env=env,
        ).stdout

    out = measure(GROUP, "composefs oci pull (CLI, native)", pull, rounds=7)
    assert out.startswith(b"manifest sha256:")


@pytest.mark.parametrize("backend", ["native", "python"])
def test_ours_api(measure: Any, image: str, fresh: Callable[[], Path], backend: str) -> None:
    try:
        _backend.load(backend)
    except ImportError as e:
        need(False, f"{backend} backend: {e}")

    def pull() -> oci.PullResult:
        with _backend.use(backend):
            repo, _ = Repository.init(fresh(), insecure=True)
            with repo:
                return oci.pull(repo, image, "t")

    rounds = 7 if backend == "native" else 2
    result = measure(GROUP, f"composefs.oci.pull (API, {backend})", pull, rounds=rounds)
    assert result.stats.layers == LAYERS


@pytest.fixture(scope="module")
def archive(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same image as an ``oci-archive:`` (read through skopeo's image proxy)."""
    skopeo = tool("skopeo")
    path = tmp_path_factory.mktemp("archive") / "image.tar"
    subprocess.run([skopeo, "copy", "--quiet", image, f"oci-archive:{path}:t"], check=True)
    yield f"oci-archive:{path}:t"
    path.unlink()


def test_ours_proxy(measure: Any, archive: str, fresh: Callable[[], Path]) -> None:
    def pull() -> oci.PullResult:
        with _backend.use("native"):
            repo, _ = Repository.init(fresh(), insecure=True)
            with repo:
                return oci.pull(repo, archive, "t")

    result = measure(GROUP, "composefs.oci.pull via skopeo proxy (oci-archive:)", pull, rounds=5)
    assert result.stats.layers == LAYERS
