"""Deep and wide trees (issue 10): no recursion on the depth of a tree in either backend, memory
per entry (not per entry and level), time linear in the input.

A layer of 20,000 nested directories goes through the whole path (import, merge, dumpfile, the
EROFS writer of every format, ``oci pull``, ``oci dump`` and ``oci compute-id`` through the CLI,
the EROFS reader) with both backends, which must agree; the native pull, compute-id and dump
run in a child whose peak RSS is checked. The directory scanners read a real 5,000-deep
directory (created level by level with ``dir_fd``: its paths are far longer than
``PATH_MAX``). The dumpfile parser takes paths up to ``PATH_MAX`` (composefs-rs's limit): its
deep case is 2,000 levels.
cfsctl's results for such trees are compared in ``tests/interop/test_tree_interop.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import composefs.erofs
from composefs import _backend
from composefs._pure import dumpfile, tree
from composefs.fs import read_directory
from composefs.fsverity import Algorithm
from composefs.oci.layer import import_layer
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import load_backend, run

DEPTH = 20_000
#: the content of the file at the bottom of the deep tree (stored as an object)
BOTTOM = b"bottom of the tree\n" * 8
#: peak RSS allowed to a native pull or compute-id of the 20,000-deep layer (the layer's tar
#: is 425 MB: the paths alone, one per level, sum to 400 MB)
MAX_RSS_MB = 200

BACKENDS = ["native", "python"]
SHA256 = Algorithm.SHA256


def deep_tar(depth: int) -> bytes:
    """``usr/`` then ``depth`` nested directories ``d`` below it and a file at the bottom
    (PAX path records carry the long names)."""
    t = TarBuilder()
    t.dir("usr")
    path = "usr"
    for _ in range(depth):
        path += "/d"
        t.dir(path)
    t.file(path + "/f", BOTTOM)
    return t.build()


def wide_tar(width: int) -> bytes:
    t = TarBuilder().dir("usr").dir("usr/w")
    for i in range(width):
        t.file(f"usr/w/f{i:06d}", b"")
    return t.build()


def _layout(path: Path, tar: bytes) -> Path:
    w = LayoutWriter(path)
    manifest = w.image([w.layer(tar, "gzip")])
    w.write_index([LayoutWriter.tagged(manifest, "deep")])
    return path


@pytest.fixture(scope="module")
def deep_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _layout(tmp_path_factory.mktemp("deep") / "layout", deep_tar(DEPTH))


def cli(*args: str | os.PathLike[str], backend: str) -> bytes:
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    return run(sys.executable, "-m", "composefs.cli", *args, env=env).stdout


def cli_peak_rss(
    *args: str | os.PathLike[str], backend: str, devnull: bool = False
) -> tuple[bytes, int]:
    """Runs the CLI in a child of a fresh interpreter; returns its stdout (nothing with
    ``devnull``: the child writes to ``/dev/null``) and the child's peak RSS in bytes
    (``getrusage(RUSAGE_CHILDREN)`` of that interpreter, which ran nothing else)."""
    stdout = "subprocess.DEVNULL" if devnull else "subprocess.PIPE"
    probe = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-m', 'composefs.cli', *sys.argv[1:]],"
        f" stdout={stdout})\n"
        "sys.stdout.buffer.write(p.stdout or b'')\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
        "sys.exit(p.returncode)\n"
    )
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    proc = run(sys.executable, "-c", probe, *args, env=env)
    return proc.stdout, int(proc.stderr.decode().split()[-1])


@pytest.mark.slow
def test_deep_layer_through_the_cli_both_backends(deep_layout: Path, tmp_path: Path) -> None:
    ref = f"oci:{deep_layout}:deep"
    results = {}
    for backend in BACKENDS:
        repo = tmp_path / backend
        cli("--repo", repo, "--insecure", "init", backend=backend)
        cli("--repo", repo, "oci", "pull", ref, "deep", backend=backend)
        dump = cli("--repo", repo, "oci", "dump", "deep", backend=backend)
        # (every format in both backends: test_deep_layer_backends_agree_on_every_format)
        image_id = cli("--repo", repo, "oci", "compute-id", "deep", backend=backend)
        lines = dump.count(b"\n")
        assert lines == DEPTH + 3  # /, /usr, the levels, the file
        assert dump.split(b"\n")[DEPTH + 1].startswith(b"/usr" + b"/d" * DEPTH + b" ")
        results[backend] = (hashlib.sha256(dump).hexdigest(), image_id)
        # the EROFS reader walks the stored image (every level) and finds the bottom object
        (image,) = [p for p in (repo / "images").iterdir() if p.is_symlink()]
        # (the CLI's repositories use SHA-512)
        objects = composefs.erofs.collect_objects(image.read_bytes(), Algorithm.SHA512, strict=True)
        assert len(objects) == 1
    assert results["native"] == results["python"]


@pytest.mark.slow
def test_deep_layer_native_memory(deep_layout: Path, tmp_path: Path) -> None:
    """Peak RSS of the native pull, compute-id and dump (to ``/dev/null``): bounded by the
    entries, not by the sum of the path lengths (before: 3.5 GB; the dump, whose text is that
    sum, 827 MB before it was streamed). Time is not asserted."""
    load_backend("native")
    repo = tmp_path / "repo"
    cli("--repo", repo, "--insecure", "init", backend="native")
    _, pull_rss = cli_peak_rss(
        "--repo", repo, "oci", "pull", f"oci:{deep_layout}:deep", "deep", backend="native"
    )
    out, id_rss = cli_peak_rss("--repo", repo, "oci", "compute-id", "deep", backend="native")
    assert len(out.strip()) == 128
    _, dump_rss = cli_peak_rss(
        "--repo", repo, "oci", "dump", "deep", backend="native", devnull=True
    )
    assert pull_rss < MAX_RSS_MB << 20, pull_rss
    assert id_rss < MAX_RSS_MB << 20, id_rss
    assert dump_rss < MAX_RSS_MB << 20, dump_rss


@pytest.fixture(scope="module")
def deep_streams(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The 20,000-deep layer as a splitstream file (imported by the native backend when
    available: both read the same file)."""
    data = deep_tar(DEPTH)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path_factory.mktemp("deep-streams") / "repo"
    r, _ = Repository.init(path, "sha256", insecure=True)
    with r:
        result = import_layer(r, io.BytesIO(data), diff_id)
        return [r.read_object(result.verity)]


@contextlib.contextmanager
def shallow_stack(frames: int = 150) -> Iterator[None]:
    """Lowers the recursion limit to ``frames`` above the current depth: any recursion on the
    depth of a tree fails with ``RecursionError``."""
    depth = 0
    f = sys._getframe()
    while f is not None:
        depth += 1
        f = f.f_back  # type: ignore[assignment]
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.slow
def test_deep_layer_backends_agree_on_every_format(deep_streams: list[bytes]) -> None:
    native = load_backend("native")
    pure = load_backend("python")
    versions = (0, 1, 2)
    images = native.merge.mkfs_layers(deep_streams, versions=versions)
    with shallow_stack():
        pure_images = pure.merge.mkfs_layers(deep_streams, versions=versions)
        dump = pure.merge.merge_layers(deep_streams, raw_modes=False)
    assert [hashlib.sha256(i).digest() for i in images] == [
        hashlib.sha256(i).digest() for i in pure_images
    ]
    assert dump == native.merge.merge_layers(deep_streams, raw_modes=False)
    with shallow_stack():
        for image in images:
            assert len(composefs.erofs.collect_objects(image, SHA256, strict=True)) == 1


def test_wide_directory_both_backends(tmp_path: Path) -> None:
    """100,000 entries in one directory: the same results, nothing quadratic (a per-entry walk
    of the directory would take minutes here)."""
    data = wide_tar(100_000)
    with _backend.use("native" if _native_available() else "python"):
        r, _ = Repository.init(tmp_path / "repo", "sha256", insecure=True)
        with r:
            result = import_layer(r, io.BytesIO(data), "sha256:" + hashlib.sha256(data).hexdigest())
            streams = [r.read_object(result.verity)]
    outputs = []
    for name in _available():
        b = load_backend(name)
        outputs.append(
            (b.merge.merge_layers(streams), b.merge.mkfs_layers(streams, versions=(1, 2)))
        )
    assert all(o == outputs[0] for o in outputs)
    assert outputs[0][0].count(b"\n") == 100_000 + 3


def _native_available() -> bool:
    try:
        load_backend("native")
    except BaseException:  # skipped (outside CI) when the extension is missing
        return False
    return True


def _available() -> list[str]:
    return ["native", "python"] if _native_available() else ["python"]


def test_dumpfile_parser_deep_both_backends() -> None:
    """2,000 levels (the deepest a dumpfile path of one-letter names can be: composefs-rs
    refuses paths longer than PATH_MAX): parsed and written back, images of every format."""
    depth = 2_000
    lines = [b"/ 0 40755 3 0 0 0 0.0 - - -"]
    path = b""
    for level in range(depth):
        path += b"/d"
        lines.append(path + b" 0 40755 %d 0 0 0 0.0 - - -" % (3 if level < depth - 1 else 2))
    lines.append(path + b"/f 5 100644 1 0 0 0 0.0 - hello -")
    text = b"\n".join(lines) + b"\n"
    results = []
    for name in _available():
        b = load_backend(name)
        with shallow_stack():
            results.append([b.erofs.mkfs(text, v) for v in (0, 1, 2)])
    assert all(r == results[0] for r in results)
    with shallow_stack():
        fs = dumpfile.parse(text)
        assert dumpfile.write(fs) == text
        assert tree.equal(fs, dumpfile.parse(text))


def make_deep_directory(root: Path, depth: int) -> None:
    """``root/d/d/...`` ``depth`` levels deep, created level by level through directory
    descriptors (the full paths exceed ``PATH_MAX``), a file at the bottom."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(BOTTOM)
    finally:
        os.close(fd)


@pytest.fixture
def deep_directory(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "tree"
    (root / "usr").mkdir(parents=True)
    make_deep_directory(root / "usr", 5_000)
    yield root
    # shutil.rmtree recurses once per level: GNU rm does not
    subprocess.run(["rm", "-rf", os.fspath(root)], check=True)


@pytest.mark.slow
def test_directory_scanners_on_a_deep_directory(deep_directory: Path) -> None:
    results = []
    for name in _available():
        b = load_backend(name)
        with shallow_stack():
            dump = b.fs.scan_directory(os.fspath(deep_directory), "sha256")
            images = b.fs.mkfs_directory(os.fspath(deep_directory), "sha256", versions=(0, 1, 2))
        results.append((dump, images))
    assert all(r == results[0] for r in results)
    dump = results[0][0]
    assert dump.count(b"\n") == 5_000 + 3
    assert dump.split(b"\n")[-2].startswith(b"/usr" + b"/d" * 5_000 + b"/f ")
    with _backend.use("python"), shallow_stack():
        fs = read_directory(deep_directory)
    levels = 0
    d = fs.root.entries[b"usr"]
    while isinstance(d, tree.Directory) and b"d" in d.entries:
        d = d.entries[b"d"]
        levels += 1
    assert levels == 5_000
