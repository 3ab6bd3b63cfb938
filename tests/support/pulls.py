"""Pulls in subprocesses, for the crash-consistency and concurrency tests.

:func:`shared_layout` writes an OCI layout with two images that share their two lower layers:
``one`` (an image index over another architecture's manifest and the host's, so that a pull
also stores an index stream and an index tag) and ``two`` (a plain manifest). :func:`pull`
starts ``python -m composefs.cli oci pull`` (optionally with a ``COMPOSEFS_FAULT`` point);
:func:`check_repository` runs every consistency check we ask of a repository after a crash
or a race: our fsck and ``cfsctl fsck`` clean, no temporary files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from composefs.oci.image import OciImage
from composefs.oci.platform import host_platform
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import run, tool

HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"
#: names a crashed writer could leave behind (objects' and symlinks' temporary names)
TEMPORARY_PREFIXES = (".tmp-", ".symlink-")


@dataclasses.dataclass(frozen=True)
class SharedLayout:
    path: Path

    def ref(self, tag: str) -> str:
        return f"oci:{self.path}:{tag}"


def _seeded(seed: str, size: int) -> bytes:
    block = (seed.encode() * (size // max(len(seed), 1) + 1))[:size]
    return block


def shared_layout(path: Path) -> SharedLayout:
    """Two images sharing their two lower layers (see the module's doc)."""
    w = LayoutWriter(path)
    base = TarBuilder().dir("usr").dir("usr/lib")
    for i in range(40):
        base.file(f"usr/lib/f{i}", _seeded(f"base{i}-", 200 + 97 * i))
    base.symlink("usr/lib/link", "f1")
    mid = TarBuilder().dir("etc")
    for i in range(20):
        mid.file(f"etc/m{i}", _seeded(f"mid{i}-", 64 + 150 * i))
    base_layer = w.layer(base.build(), "gzip")
    mid_layer = w.layer(mid.build(), "zstd")
    top_one = w.layer(
        TarBuilder().file("etc/one", _seeded("one", 5000)).whiteout("etc/m3").build(), "gzip"
    )
    top_two = w.layer(TarBuilder().file("etc/two", _seeded("two", 7000)).build(), "none")
    one_host = w.image([base_layer, mid_layer, top_one], architecture=HOST)
    one_other = w.image([base_layer, top_one], architecture=OTHER)
    index = w.index([one_other, one_host])
    two = w.image([base_layer, mid_layer, top_two], architecture=HOST)
    w.write_index([w.tagged(index, "one"), w.tagged(two, "two")])
    return SharedLayout(path)


def cli_args(repo: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "composefs.cli", "--repo", os.fspath(repo), *args]


#: runs ``composefs.cli.main`` with ``sys.argv[2:]`` once the file ``sys.argv[1]`` exists (the
#: interpreter and the package are loaded first, so that processes started one after the other
#: really run together)
_AT_BARRIER = """
import os, sys, time
from composefs.cli import main
import composefs.cli._main, composefs.oci.pull  # noqa: the run after the barrier is warm
barrier = sys.argv[1]
sys.argv = ["composefs", *sys.argv[2:]]
while not os.path.exists(barrier):
    time.sleep(0.002)
sys.exit(main())
"""


def start(barrier: Path, repo: Path, *args: str) -> subprocess.Popen[bytes]:
    """Starts ``composefs --repo REPO ARGS...``, to run when :func:`release` creates ``barrier``."""
    return subprocess.Popen(
        [sys.executable, "-c", _AT_BARRIER, os.fspath(barrier), "--repo", os.fspath(repo), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "COMPOSEFS_FAULT"},
    )


def release(barrier: Path, procs: list[subprocess.Popen[bytes]]) -> list[tuple[int, str]]:
    """Lets the processes of :func:`start` run; their exit codes and outputs."""
    time.sleep(0.3)  # their imports
    barrier.touch()
    return [finish(p, timeout=60) for p in procs]


def cli(repo: Path, *args: str) -> str:
    return run(*cli_args(repo, *args)).stdout.decode()


def init(repo: Path) -> Path:
    cli(repo, "init", "--insecure")
    return repo


def pull(
    repo: Path, ref: str, name: str, *, fault: str | None = None, **popen: object
) -> subprocess.Popen[bytes]:
    """Starts ``composefs oci pull REF NAME`` (``COMPOSEFS_FAULT=fault``)."""
    env = {k: v for k, v in os.environ.items() if k != "COMPOSEFS_FAULT"}
    if fault is not None:
        env["COMPOSEFS_FAULT"] = fault
    return subprocess.Popen(
        cli_args(repo, "oci", "pull", ref, name),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        **popen,  # type: ignore[arg-type]
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, (out + err).decode(errors="replace")


def tags(repo: Path) -> list[str]:
    doc = json.loads(cli(repo, "oci", "images", "--json"))
    return sorted(image["name"] for image in doc["images"])


def stream_refs(repo: Path) -> list[str]:
    """Every ref below ``streams/refs/``, sorted."""
    with Repository.open(repo) as r:
        return [name for name, _ in r.list_stream_refs()]


def image_id(repo: Path, name: str) -> str:
    """The EROFS image id the tag's config links (the repository's default format), checked
    to be stored as ``images/<id>``."""
    with Repository.open(repo) as r:
        found = OciImage.open_ref(r, name).erofs_image(r.erofs_version)
        assert found is not None, f"{name}: no EROFS image linked"
        assert r.has_image(found.hex()) == found, f"{name}: images/{found.hex()} missing"
        return found.hex()


def objects(repo: Path) -> list[str]:
    """Every object's ``xx/rest`` name, sorted."""
    root = repo / "objects"
    return sorted(
        f"{sub.name}/{entry.name}"
        for sub in root.iterdir()
        if sub.is_dir()
        for entry in sub.iterdir()
    )


def temporary_files(repo: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in dirnames + filenames:
            if name.startswith(TEMPORARY_PREFIXES):
                found.append(os.path.relpath(os.path.join(dirpath, name), repo))
    return sorted(found)


def check_repository(repo: Path) -> None:
    """Our fsck and cfsctl's agree that the repository is clean; no temporary file is left."""
    report = json.loads(cli(repo, "fsck", "--json"))
    assert report["ok"], report
    run(tool("cfsctl"), "--repo", repo, "fsck")
    cli(repo, "oci", "fsck")
    assert temporary_files(repo) == []
