"""``oci pull docker://`` from a loopback registry: our native registry client against
``cfsctl oci pull`` (skopeo underneath: the reference), our skopeo path, and
``skopeo copy docker://... dir:`` (which only downloads and checks digests).

The image: 6 gzip layers of ~80 MiB of tar each (a 60 MiB file of random bytes plus 2,000
files of 10 KiB, half random and half text), about 370 MB of gzip in all, pushed into Debian's
``docker-registry`` on 127.0.0.1 (plain HTTP). cfsctl's skopeo learns that the registry is
insecure from ``$HOME/.config/containers/registries.conf`` (skopeo 1.9.3 ignores
``CONTAINERS_REGISTRIES_CONF``). Each round pulls into a new repository on tmpfs (``init``
included for both tools).
Every row runs a command in a subprocess, so the peak RSS and the CPU time of each are
measured (``wait4``) and printed with the medians.

Goals (issue 11): native >= 2x cfsctl, no slower than ``skopeo copy ... dir:``, peak RSS of
ours < 200 MB.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs.oci.platform import host_platform
from composefs.testing import LayoutWriter, TarBuilder

# how the integration tests start Debian's docker-registry on 127.0.0.1
from integration.conftest import _start_registry, _stop
from support import tool
from support.registry import Registry

GROUP = "pull docker:// 6x80MiB gzip layers (loopback registry)"
LAYERS = 6
#: command -> its largest peak RSS over the rounds (KiB)
PEAK_RSS: dict[str, int] = {}
#: command -> CPU seconds of each round (robust where the wall time is not: a shared machine)
CPU_SECONDS: dict[str, list[float]] = {}
#: the summary's extra lines (the ``notes`` fixture's dict, set by :func:`_record_notes`)
_NOTES: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _record_notes(notes: dict[str, str]) -> None:
    global _NOTES
    _NOTES = notes


def _layer(rng: random.Random, n: int) -> bytes:
    t = TarBuilder(mtime=1_700_000_000 + n)
    t.dir("usr")
    t.dir(f"usr/l{n}")
    text = b"composefs registry benchmark, a line of fairly compressible text\n" * 64
    t.file(f"usr/l{n}/big", rng.randbytes(60 << 20))
    for i in range(2000):
        t.file(f"usr/l{n}/s{i}", rng.randbytes(5 << 10) + text[: 5 << 10])
    return t.build()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A loopback registry for this module (plain HTTP; a registries.conf marks it insecure
    for cfsctl's skopeo)."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("registry")
    (base / "storage").mkdir()
    proc, port = _start_registry(base, base / "storage")
    conf = base / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
    try:
        yield Registry(f"127.0.0.1:{port}", base / "storage", skopeo, conf)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("bench") / "layout"
    rng = random.Random(11)
    w = LayoutWriter(path)
    layers = [w.layer(_layer(rng, n), "gzip") for n in range(LAYERS)]
    w.write_index([w.tagged(w.image(layers, architecture=host_platform().architecture), "t")])
    ref = registry.push(f"oci:{path}:t", "bench:t")
    shutil.rmtree(path)
    yield ref


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[[], Path]]:
    """A new path per round, on tmpfs when there is one (both tools ``syncfs``)."""
    shm = Path("/dev/shm")
    base = (
        Path(tempfile.mkdtemp(prefix="composefs-registry-bench-", dir=shm))
        if shm.is_dir()
        else tmp_path
    )
    counter = itertools.count()
    os.sync()
    yield lambda: base / f"r{next(counter)}"
    shutil.rmtree(base, ignore_errors=True)


#: runs argv[2:] and writes the peak RSS (KiB) of that child (and the processes it waited for,
#: such as cfsctl's skopeo) to fd argv[1]: the benchmark
#: process itself is large, and a child forked from it inherits its resident pages until exec
#: (counted in the child's peak RSS), so a small process starts the command
_PEAK_RSS_WRAPPER = """
import os, sys
fd = int(sys.argv[1])
closing = [(os.POSIX_SPAWN_CLOSE, fd)]
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ, file_actions=closing)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}".encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run(name: str, argv: list[str | os.PathLike[str]], env: dict[str, str] | None = None) -> bytes:
    """Runs ``argv``, records its peak RSS, returns its stdout (it must succeed)."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _PEAK_RSS_WRAPPER, str(write_fd)]
                + [os.fspath(a) for a in argv],
                stdout=out,
                stderr=err,
                env=env,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        proc.wait()
        with os.fdopen(read_fd, "rb") as r:
            kib_text, _, cpu_text = r.read().decode().partition(" ")
        PEAK_RSS[name] = max(PEAK_RSS.get(name, 0), int(kib_text or 0))
        CPU_SECONDS.setdefault(name, []).append(float(cpu_text or 0))
        cpu = statistics.median(CPU_SECONDS[name])
        _NOTES[f"{name}"] = (
            f"peak RSS {PEAK_RSS[name] / 1024:.0f} MiB (largest of the rounds), "
            f"CPU time (user + system, the process and what it waited for) median {cpu:.2f} s"
        )
        err.seek(0)
        assert proc.returncode == 0, err.read().decode(errors="replace")
        out.seek(0)
        return out.read()


def _cli(repo: Path, *args: str) -> list[str | os.PathLike[str]]:
    return [sys.executable, "-m", "composefs.cli", "--repo", repo, *args]


def test_cfsctl_pull(
    measure: Any, image: str, registry: Registry, fresh: Callable[[], Path]
) -> None:
    cfsctl = tool("cfsctl")
    # skopeo 1.9.3 has no environment variable for registries.conf: it reads the user's
    home = fresh()
    (home / ".config/containers").mkdir(parents=True)
    (home / ".config/containers/registries.conf").write_bytes(registry.registries_conf.read_bytes())
    env = {**os.environ, "HOME": str(home)}

    def pull() -> bytes:
        repo = fresh()
        subprocess.run([cfsctl, "--repo", repo, "init", "--insecure", repo], check=True,
                       capture_output=True)  # fmt: skip
        return _run("cfsctl", [cfsctl, "--repo", repo, "oci", "pull", image], env)

    out = measure(GROUP, "cfsctl oci pull docker:// (skopeo)", pull, rounds=3, reference=True)
    assert out.startswith(b"manifest sha256:")


def _ours(image: str, fresh: Callable[[], Path], name: str, *extra: str) -> Callable[[], bytes]:
    # the CLI as installed: with bytecode caches (written by the warm-up round)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["COMPOSEFS_BACKEND"] = "native"

    def pull() -> bytes:
        repo = fresh()
        subprocess.run(_cli(repo, "init", "--insecure"), check=True, capture_output=True, env=env)
        return _run(name, _cli(repo, "oci", "pull", image, "--tls-verify=false", *extra), env)

    return pull


def test_ours_native(measure: Any, image: str, fresh: Callable[[], Path]) -> None:
    pull = _ours(image, fresh, "native")
    out = measure(GROUP, "composefs oci pull docker:// (native)", pull, rounds=5)
    assert out.startswith(b"manifest sha256:")


def test_ours_via_skopeo(measure: Any, image: str, fresh: Callable[[], Path]) -> None:
    pull = _ours(image, fresh, "via-skopeo", "--via-skopeo")
    out = measure(GROUP, "composefs oci pull --via-skopeo", pull, rounds=3)
    assert out.startswith(b"manifest sha256:")


def test_skopeo_copy_dir(measure: Any, image: str, fresh: Callable[[], Path]) -> None:
    skopeo = tool("skopeo")

    def copy() -> bytes:
        return _run(
            "skopeo-copy",
            [skopeo, "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", image,
             f"dir:{fresh()}"],
        )  # fmt: skip

    measure(GROUP, "skopeo copy docker:// dir: (download only)", copy, rounds=3)
