"""Composefs image generation for an image of 50,000 files: ours (native and pure backends) against
``cfsctl oci compute-id`` (the reference), in the same run.

The image: one layer of 500 directories x 100 entries under ``/usr`` (regular files of 0-64
bytes inline and 65 bytes-2 KiB external, symlinks, hard links, a few xattrs, mixed mtimes),
pulled once into a SHA-512 V1 repository on tmpfs. Each round computes the image id from the
stored layer splitstream: read the layer stream, merge, write the EROFS image, fs-verity
digest. Rows:

* ``cfsctl oci compute-id`` — the reference (a process: start-up included, a few ms);
* ``composefs oci compute-id`` CLI, native backend — the same work, also a process;
* API ``composefs.oci.filesystem.compute_id``, native and pure backends (in process);
* the native merge alone (layer stream → dumpfile) and the native EROFS writer alone
  (dumpfile → image), to show where the time goes.

A second group does the same for a directory of the same tree (``compute-id DIR``), where
the files are read and hashed first.

Goal: native >= 1.0x cfsctl.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import _backend, erofs
from composefs.oci import filesystem
from composefs.oci.image import OciImage
from composefs.oci.platform import host_platform
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import tool

GROUP = "image id of a 50,000-file OCI image (V1, sha512)"
DIR_GROUP = "image id of a 50,000-file directory (V1, sha512)"
DIRS, PER_DIR = 500, 100


def _entries(rng: random.Random) -> Iterator[tuple[str, str, Any]]:
    for d in range(DIRS):
        yield f"usr/d{d:03}", "dir", None
        for i in range(PER_DIR):
            name = f"usr/d{d:03}/f{i:03}"
            r = rng.random()
            if r < 0.05:
                yield name, "symlink", f"f{(i + 1) % PER_DIR:03}"
            elif r < 0.07 and i > 0:
                yield name, "hardlink", f"usr/d{d:03}/f000"
            elif r < 0.55:
                yield name, "file", rng.randbytes(rng.randrange(0, 65))
            else:
                yield name, "file", rng.randbytes(rng.randrange(65, 2048))


def _layer(rng: random.Random) -> bytes:
    t = TarBuilder(mtime=1_700_000_000)
    t.dir("usr")
    hard_ok: set[str] = set()
    for name, kind, payload in _entries(rng):
        if kind == "dir":
            t.dir(name)
        elif kind == "symlink":
            t.symlink(name, payload)
        elif kind == "hardlink":
            if payload in hard_ok:
                t.hardlink(name, payload)
        else:
            xattrs = {"user.bench": "x"} if rng.random() < 0.01 else None
            t.file(name, payload, xattrs=xattrs)
            hard_ok.add(name)
    return t.build()


def _tree(root: Path, rng: random.Random) -> None:
    (root / "usr").mkdir(parents=True)
    for name, kind, payload in _entries(rng):
        path = root / name
        if kind == "dir":
            path.mkdir()
        elif kind == "symlink":
            os.symlink(payload, path)
        elif kind == "hardlink":
            if (root / payload).exists():
                os.link(root / payload, path)
        else:
            path.write_bytes(payload)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cfsctl = tool("cfsctl")
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="cfs-image-bench-", dir=shm))
    try:
        layout = work / "layout"
        w = LayoutWriter(layout)
        layer = w.layer(_layer(random.Random(5)), "none")
        w.write_index([w.tagged(w.image([layer], architecture=host_platform().architecture), "t")])
        repo_path = work / "repo"
        subprocess.run([cfsctl, "--repo", repo_path, "init", "--insecure", repo_path], check=True)
        ref = f"oci:{layout}:t"
        subprocess.run(
            [cfsctl, "--repo", repo_path, "oci", "pull", ref], check=True, capture_output=True
        )
        tree = work / "tree"
        _tree(tree, random.Random(5))
        expected = subprocess.run(
            [cfsctl, "--repo", repo_path, "oci", "compute-id", ref],
            check=True,
            capture_output=True,
        ).stdout
        yield {
            "cfsctl": cfsctl,
            "repo": repo_path,
            "ref": ref,
            "tree": tree,
            "expected": expected.decode().strip(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_cfsctl_compute_id(measure: Any, setup: dict[str, Any]) -> None:
    cmd = [setup["cfsctl"], "--repo", setup["repo"], "oci", "compute-id", setup["ref"]]
    out = measure(
        GROUP,
        "cfsctl oci compute-id",
        lambda: subprocess.run(cmd, check=True, capture_output=True).stdout,
        reference=True,
    )
    assert out.decode().strip() == setup["expected"]


def test_cli_native(measure: Any, setup: dict[str, Any]) -> None:
    cmd = [sys.executable, "-m", "composefs.cli", "--repo", setup["repo"], "oci", "compute-id"]
    env = dict(os.environ, COMPOSEFS_BACKEND="native")
    out = measure(
        GROUP,
        "composefs oci compute-id (CLI, native)",
        lambda: subprocess.run([*cmd, setup["ref"]], check=True, capture_output=True, env=env),
    ).stdout
    assert out.decode().strip() == setup["expected"]


@pytest.mark.parametrize("backend", ["native", "python"])
def test_api(measure: Any, setup: dict[str, Any], backend: str) -> None:
    with Repository.open(setup["repo"]) as repo, _backend.use(backend):
        img = OciImage.open_ref(repo, setup["ref"])
        image_id = measure(
            GROUP,
            f"API compute_id ({backend})",
            lambda: filesystem.compute_id(repo, img),
            rounds=5 if backend == "native" else 2,
        )
    assert image_id.hex() == setup["expected"]


@pytest.mark.parametrize("part", ["merge", "erofs", "digest"])
def test_native_parts(measure: Any, setup: dict[str, Any], part: str) -> None:
    with Repository.open(setup["repo"]) as repo, _backend.use("native"):
        img = OciImage.open_ref(repo, setup["ref"])
        streams = filesystem.layer_streams(repo, img)
        dump = filesystem.merge_layer_streams(streams, raw_modes=False)
        data = erofs.mkfs(dump, 1)
        if part == "merge":
            measure(
                GROUP,
                "  native merge only (stream -> dumpfile)",
                lambda: filesystem.merge_layer_streams(streams, raw_modes=False),
            )
        elif part == "erofs":
            measure(GROUP, "  native EROFS writer only", lambda: erofs.mkfs(dump, 1))
        else:
            measure(GROUP, "  image fs-verity digest", lambda: erofs.image_id(data, "sha512"))
    assert erofs.image_id(data, "sha512").hex() == setup["expected"]


def test_directory_cfsctl(measure: Any, setup: dict[str, Any]) -> None:
    cmd = [setup["cfsctl"], "--hash", "sha512", "--no-repo", "compute-id", setup["tree"]]
    out = measure(
        DIR_GROUP,
        "cfsctl compute-id DIR",
        lambda: subprocess.run(cmd, check=True, capture_output=True).stdout,
        reference=True,
        rounds=3,
    )
    setup["dir_expected"] = out


@pytest.mark.parametrize("backend", ["native", "python"])
def test_directory_ours(measure: Any, setup: dict[str, Any], backend: str) -> None:
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    cmd = [sys.executable, "-m", "composefs.cli", "--hash", "sha512", "--no-repo"]
    out = measure(
        DIR_GROUP,
        f"composefs compute-id DIR ({backend})",
        lambda: (
            subprocess.run(
                [*cmd, "compute-id", setup["tree"]], check=True, capture_output=True, env=env
            ).stdout
        ),
        rounds=3,
    )
    expected = subprocess.run(
        [setup["cfsctl"], "--hash", "sha512", "--no-repo", "compute-id", setup["tree"]],
        check=True,
        capture_output=True,
    ).stdout
    assert out == expected
