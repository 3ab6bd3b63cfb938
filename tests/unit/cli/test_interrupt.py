"""Ctrl-C: a pull stops at once in every phase, ``Error: interrupted``, status 130, a clean
repository, nothing tagged, and never a traceback (issue 10)."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import composefs
from composefs import oci
from composefs.oci.media_types import LAYER_MEDIA_TYPE
from composefs.oci.pull import PullCancelled, PullEvent
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

PYTHON_DIR = str(Path(composefs.__file__).resolve().parents[1])

#: the console script, with a byte written to $READY_FD once ``main`` is about to run (what
#: comes before, the interpreter's start-up and two tiny imports, is out of our reach)
LAUNCHER = (
    "import os, sys\n"
    "from composefs.cli import main\n"
    "fd = int(os.environ.pop('READY_FD')); os.write(fd, b'r'); os.close(fd)\n"
    "sys.exit(main())\n"
)


class _Layer:
    def __init__(self, descriptor: dict[str, Any], diff_id: str) -> None:
        self.descriptor = descriptor
        self.diff_id = diff_id


def _write_layout(path: Path, layers: int, files: int, size: int) -> None:
    """An image of ``layers`` gzip layers of incompressible files, tagged ``big``."""
    writer = LayoutWriter(path)
    blobs = []
    for i in range(layers):
        tar = TarBuilder().dir("usr").dir(f"usr/l{i}")
        for j in range(files):
            tar.file(f"usr/l{i}/f{j}", os.urandom(size))
        data = tar.build()
        blob = gzip.compress(data, compresslevel=1, mtime=0)
        blobs.append(
            _Layer(
                writer.blob(blob, LAYER_MEDIA_TYPE + "+gzip"),
                "sha256:" + hashlib.sha256(data).hexdigest(),
            )
        )
    writer.write_index([writer.tagged(writer.image(blobs), "big")])


def _env(backend: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": PYTHON_DIR + (os.pathsep + path if path else ""),
        "COMPOSEFS_BACKEND": backend,
    }


def _cli(env: dict[str, str], *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _init(env: dict[str, str], repo: Path) -> None:
    proc = _cli(env, "--repo", repo, "init", "--insecure")
    assert proc.returncode == 0, proc.stderr


def _assert_clean_and_untagged(env: dict[str, str], repo: Path) -> None:
    fsck = _cli(env, "--repo", repo, "fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "status: ok" in fsck.stdout
    images = _cli(env, "--repo", repo, "oci", "images", "--json")
    assert images.returncode == 0, images.stderr
    assert '"images": []' in images.stdout


def _objects(repo: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(repo / "objects"))


@pytest.fixture(scope="module")
def big_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("interrupt") / "layout"
    _write_layout(path, layers=4, files=6, size=8 << 20)  # 192 MiB, gzip, incompressible
    return path


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "python"])
def test_ctrl_c_during_pull(tmp_path: Path, big_layout: Path, backend: str) -> None:
    env = _env(backend)
    pull = ["--repo", tmp_path / "full", "oci", "pull", f"oci:{big_layout}:big", "t"]
    _init(env, tmp_path / "full")
    start = time.monotonic()
    done = _cli(env, *pull)
    full = time.monotonic() - start
    assert done.returncode == 0, done.stderr

    repo = tmp_path / "repo"
    _init(env, repo)
    pull[1] = repo
    proc = subprocess.Popen(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, pull)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while _objects(repo) == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)  # the first object: the layer import has started
    assert proc.poll() is None, "the pull ended before it could be interrupted"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - sent

    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "Error: interrupted"
    assert "Traceback" not in err
    assert "tagged" not in out
    # not an absolute bound (a loaded machine): well below what the whole pull takes
    assert stopped < full / 3, f"stopped {stopped:.2f}s after SIGINT; a full pull: {full:.2f}s"
    _assert_clean_and_untagged(env, repo)


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_start_up(tmp_path: Path) -> None:
    """SIGINT at many moments from the start of ``main`` on (lazy imports, parsing, opening
    the repository, the pull): never a traceback, and the repository stays clean."""
    layout = tmp_path / "layout"
    _write_layout(layout, layers=2, files=2, size=1 << 20)
    env = _env("native")
    repo = tmp_path / "repo"
    _init(env, repo)
    delays = [0.0, 0.001, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.16, 0.2, 0.3]
    statuses = set()
    for delay in delays:
        read_fd, write_fd = os.pipe()
        pull = ["--repo", str(repo), "oci", "pull", f"oci:{layout}:big", "t"]
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *pull],
            env={**env, "READY_FD": str(write_fd)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            assert ready.read(1) == b"r"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, f"SIGINT {delay}s into main:\n{err}"
        # 130: interrupted; 0: it had finished; -SIGINT: it was shutting down (default action)
        assert proc.returncode in (0, 130, -signal.SIGINT), (delay, proc.returncode, err)
        if proc.returncode == 130:
            assert err.strip().splitlines()[-1] == "Error: interrupted"
        statuses.add(proc.returncode)
        untag = _cli(env, "--repo", repo, "oci", "untag", "t")
        assert untag.returncode in (0, 1), untag.stderr
    assert 130 in statuses
    _assert_clean_and_untagged(env, repo)


@pytest.mark.parametrize("backend", ["native", "python"])
def test_cancel_event_stops_the_layer_import(tmp_path: Path, backend: str) -> None:
    """``pull(cancel=...)`` set from the progress callback: the backend's import stops at its
    next progress report (both backends), nothing is tagged, fsck is clean."""
    from composefs import _backend

    layout = tmp_path / "layout"
    _write_layout(layout, layers=2, files=3, size=4 << 20)
    repo, _ = Repository.init(tmp_path / "repo", insecure=True)
    cancel = threading.Event()
    progress: list[PullEvent] = []

    def on_event(event: PullEvent) -> None:
        progress.append(event)
        if event.kind == "progress":
            cancel.set()

    with repo, _backend.use(backend):
        with pytest.raises(PullCancelled):
            oci.pull(repo, f"oci:{layout}:big", "t", progress=on_event, cancel=cancel)
        reports = [e for e in progress if e.kind == "progress"]
        assert reports and max(e.transferred for e in reports) < 12 << 20
        assert not any(e.kind == "done" for e in progress)
        assert oci.list_refs(repo) == []
        assert repo.fsck().ok


def test_cancel_during_the_erofs_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The EROFS step runs in a helper thread: a cancel (or Ctrl-C) is seen at once even while
    the step is busy in native code (simulated here by a slow ``commit_images``)."""
    pull_module = sys.modules["composefs.oci.pull"]
    real = pull_module.commit_images
    release = threading.Event()

    def slow_commit(repo: Repository, image: Any) -> Any:
        release.wait(30)
        return real(repo, image)

    monkeypatch.setattr(pull_module, "commit_images", slow_commit)
    layout = tmp_path / "layout"
    _write_layout(layout, layers=1, files=1, size=1 << 16)
    repo, _ = Repository.init(tmp_path / "repo", insecure=True)
    cancel = threading.Event()

    def on_event(event: PullEvent) -> None:
        if event.message == "Creating composefs image":
            threading.Timer(0.2, cancel.set).start()

    with repo:
        start = time.monotonic()
        with pytest.raises(PullCancelled):
            oci.pull(repo, f"oci:{layout}:big", "t", progress=on_event, cancel=cancel)
        assert time.monotonic() - start < 20  # not the 30 s the step would take
        release.set()
        assert oci.list_refs(repo) == []
