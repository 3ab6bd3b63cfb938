"""Repositories and splitstreams shared with cfsctl 0.9, in both directions.

* a repository made by ``cfsctl init`` is opened, written and fsck'ed by us;
* one made by us is read by cfsctl (``fsck``, ``gc``, ``images``);
* a splitstream written by ``cfsctl oci import-layer`` is parsed by us and re-written with our
  writer, byte for byte, in both backends;
* our CLI prints what cfsctl prints for the same repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from composefs import _backend, splitstream
from composefs.fsverity import Algorithm
from composefs.repository import Repository, object_pathname
from support import run, tool

pytestmark = pytest.mark.interop

ALGORITHMS = ["fsverity-sha256-12", "fsverity-sha512-12"]


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


def composefs_cli(
    *args: str | os.PathLike[str], check: bool = True, backend: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    if backend is not None:
        env["COMPOSEFS_BACKEND"] = backend
    return run(sys.executable, "-m", "composefs.cli", *args, check=check, env=env)


def make_tar(kind: str) -> bytes:
    """Tars of several shapes (formats, padding, small/large and duplicate files)."""
    buf = io.BytesIO()
    fmt = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}[
        kind
    ]
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)

        add("etc", type=tarfile.DIRTYPE, mode=0o755)
        for size in (0, 1, 63, 64, 65, 511, 512, 513, 4096, 100_000):
            add(f"etc/f{size}", bytes((i * 7 + size) % 251 for i in range(size)), mode=0o644)
        add("etc/dup1", b"x" * 1000)
        add("etc/dup2", b"x" * 1000)
        add("etc/link", type=tarfile.SYMTYPE, linkname="f100000")
        add("etc/hard", type=tarfile.LNKTYPE, linkname="etc/f65")
        if kind != "ustar":
            add("etc/" + "long" * 40, b"y" * 300)
    return buf.getvalue()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cfsctl_repository_opened_written_and_checked_by_us(
    cfsctl: str, tmp_path: Path, algorithm: str
) -> None:
    repo_path = tmp_path / "repo"
    run(cfsctl, "--repo", repo_path, "init", "--insecure", "--algorithm", algorithm, repo_path)
    with Repository.open(repo_path) as repo:
        assert str(repo.algorithm) == algorithm
        assert not repo.secure
        data = b"content of an object" * 100
        object_id = repo.ensure_object(data)
        writer = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
        writer.write_inline(b"header")
        writer.write_external(object_id, len(data))
        repo.write_stream(writer, "test-stream", ref="tests/one")
        assert repo.fsck().ok
    # cfsctl agrees, and reads back the stream we wrote
    out = run(cfsctl, "--repo", repo_path, "fsck").stdout.decode()
    assert out.endswith("status: ok\n"), out
    cat = run(cfsctl, "--repo", repo_path, "cat", "refs/tests/one").stdout
    assert cat == b"header" + data
    # and its gc keeps everything our ref reaches
    gc = run(cfsctl, "--repo", repo_path, "gc").stdout.decode()
    assert gc.startswith("Objects: 0 removed"), gc


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_our_repository_is_read_by_cfsctl(cfsctl: str, tmp_path: Path, algorithm: str) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    composefs_cli("--repo", ours, "init", "--insecure", "--algorithm", algorithm, ours)
    run(cfsctl, "--repo", theirs, "init", "--insecure", "--algorithm", algorithm, theirs)
    assert (ours / "meta.json").read_bytes() == (theirs / "meta.json").read_bytes()
    assert oct((ours / "meta.json").stat().st_mode) == oct((theirs / "meta.json").stat().st_mode)
    assert oct(ours.stat().st_mode) == oct(theirs.stat().st_mode)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs)) == ["meta.json"]

    with Repository.open(ours) as repo:
        kept = repo.ensure_object(b"kept" * 1000)
        dropped = repo.ensure_object(b"garbage" * 1000)
        writer = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
        writer.write_external(kept, 4000)
        stream_id = repo.write_stream(writer, "kept-stream", ref="a/b/c")
        assert os.readlink(ours / "streams" / "kept-stream") == (
            f"../objects/{object_pathname(stream_id)}"
        )
        assert os.readlink(ours / "streams/refs/a/b/c") == "../../../kept-stream"

    out = run(cfsctl, "--repo", ours, "fsck").stdout.decode()
    assert "objects: 3/3 ok" in out and out.endswith("status: ok\n"), out
    assert run(cfsctl, "--repo", ours, "images").stdout == b"No images found\n"
    assert json.loads(run(cfsctl, "--repo", ours, "images", "--json").stdout) == {"images": []}
    # cfsctl's gc removes exactly the unreferenced object
    gc = run(cfsctl, "--repo", ours, "gc").stdout.decode()
    assert gc == f"Objects: 1 removed ({len(b'garbage' * 1000)} bytes)\n"
    assert not (ours / "objects" / object_pathname(dropped)).exists()
    assert (ours / "objects" / object_pathname(kept)).exists()
    assert run(cfsctl, "--repo", ours, "cat", "refs/a/b/c").stdout == b"kept" * 1000


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["gnu", "pax", "ustar"])
@pytest.mark.parametrize("backend", ["python", "native"])
def test_cfsctl_layer_splitstream_round_trips(
    cfsctl: str, tmp_path: Path, algorithm: str, kind: str, backend: str
) -> None:
    from support import need

    if backend == "native":
        try:
            _backend.load("native")
        except ImportError as e:
            need(False, f"native backend unavailable: {e}")
    tar = make_tar(kind)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    repo_path = tmp_path / "repo"
    run(cfsctl, "--repo", repo_path, "init", "--insecure", "--algorithm", algorithm, repo_path)
    printed = run(cfsctl, "--repo", repo_path, "oci", "import-layer", diff_id, input=tar)
    stream_link = repo_path / "streams" / f"oci-layer-{diff_id}"
    original = stream_link.read_bytes()

    with _backend.use(backend), Repository.open(repo_path) as repo:
        stream_id = repo.has_stream(f"oci-layer-{diff_id}")
        assert stream_id is not None
        assert printed.stdout.decode().strip() == (f"{repo.algorithm.hash_name}:{stream_id.hex()}")
        stream = repo.open_stream(f"oci-layer-{diff_id}", splitstream.LAYER_CONTENT_TYPE)
        assert stream.algorithm is Algorithm.parse(algorithm)
        assert stream.stream_size == len(tar)
        assert stream.stream_refs == () and stream.named_refs == {}
        # the chunk sequence reassembles the tar
        out = io.BytesIO()
        repo.write_stream_content(stream, out)
        assert out.getvalue() == tar
        # and our writer reproduces cfsctl's file byte for byte
        assert stream.rewrite(repo.object_size) == original
        assert repo.fsck().ok


def test_cli_output_matches_cfsctl(cfsctl: str, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    a = composefs_cli("--repo", ours, "init", "--insecure", ours).stdout
    b = run(cfsctl, "--repo", theirs, "init", "--insecure", theirs).stdout
    assert a.replace(b"ours", b"X") == b.replace(b"theirs", b"X")
    a = composefs_cli("--repo", ours, "init", "--insecure", ours).stdout
    b = run(cfsctl, "--repo", theirs, "init", "--insecure", theirs).stdout
    assert a.replace(b"ours", b"X") == b.replace(b"theirs", b"X")
    tar = make_tar("gnu")
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    for repo in (ours, theirs):
        run(cfsctl, "--repo", repo, "oci", "import-layer", diff_id, "mylayer", input=tar)
    for args in (
        ["fsck"],
        ["fsck", "--json"],
        ["images"],
        ["images", "--json"],
        ["cat", "refs/mylayer"],
        ["gc", "--dry-run"],
        ["gc"],
        ["fsck"],
    ):
        mine = composefs_cli("--repo", ours, *args)
        ref = run(cfsctl, "--repo", theirs, *args)
        assert mine.stdout == ref.stdout, args
    shutil.rmtree(ours / "streams" / "refs")
    shutil.rmtree(theirs / "streams" / "refs")
    assert composefs_cli("--repo", ours, "gc").stdout == run(cfsctl, "--repo", theirs, "gc").stdout


def test_cfsctl_reads_a_repository_after_our_gc(cfsctl: str, tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    run(cfsctl, "--repo", repo_path, "init", "--insecure", repo_path)
    tar = make_tar("pax")
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    run(cfsctl, "--repo", repo_path, "oci", "import-layer", diff_id, "keep", input=tar)
    other = make_tar("gnu")
    other_id = "sha256:" + hashlib.sha256(other).hexdigest()
    run(cfsctl, "--repo", repo_path, "oci", "import-layer", other_id, input=other)
    # compare our gc's decisions with cfsctl's on a copy
    copy = tmp_path / "copy"
    shutil.copytree(repo_path, copy, symlinks=True)
    theirs = run(cfsctl, "--repo", copy, "gc").stdout
    ours = composefs_cli("--repo", repo_path, "gc").stdout
    assert ours == theirs
    assert sorted(p.relative_to(repo_path).as_posix() for p in repo_path.rglob("*")) == sorted(
        p.relative_to(copy).as_posix() for p in copy.rglob("*")
    )
    assert run(cfsctl, "--repo", repo_path, "cat", "refs/keep").stdout == tar
    assert run(cfsctl, "--repo", repo_path, "fsck").stdout.endswith(b"status: ok\n")
