"""cfsctl 0.9.4's command surface beyond the basics, against cfsctl: ``init --ensure``,
``init --reset-metadata``, pre-0.7 repositories (upgraded on open), ``transaction``,
``dump-files``, ``compute-karg``, ``oci linked-erofs-images``.

Each test runs the same command on two copies of a repository (or a tree), one with cfsctl and
one with ``composefs``, and compares stdout, the exit status and the repositories' bytes. The
repository paths differ only in their last component, which is replaced by ``X`` before
comparing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from composefs import fsverity
from composefs.object_ids import object_pathname
from support import run, tool

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RUST_BACKTRACE"] = "0"  # cfsctl's error report without a stack trace
    return env


def ours(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "composefs.cli", *args, check=check, env=cli_env())


def theirs(
    cfsctl: str, *args: str | os.PathLike[str], check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return run(cfsctl, *args, check=check, env=cli_env())


def same(a: bytes, b: bytes, a_name: str = "ours", b_name: str = "theirs") -> None:
    b = b.replace(b"`cfsctl init`", b"`composefs init`")
    assert a.replace(a_name.encode(), b"X") == b.replace(b_name.encode(), b"X")


def error_lines(stderr: bytes) -> list[str]:
    """The ``Error:``/``Caused by:`` report, program names made equal."""
    text = stderr.decode().replace("`cfsctl init`", "`composefs init`")
    return [line.strip() for line in text.splitlines() if line.strip()]


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry below ``root``: a file's bytes, a symlink's target, ``dir``."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes()
    return out


def legacy_repository(path: Path, algorithm: str, *, empty: bool = False) -> None:
    """A pre-0.7 repository as composefs-rs before meta.json left them: ``objects/xx/rest``
    files named by their fs-verity digest, ``streams/`` and ``images/`` symlinks into them and
    refs, and no ``meta.json``."""
    (path / "objects").mkdir(parents=True)
    if empty:
        return
    hash_name = algorithm.split("-")[1]
    ids = []
    for i in range(5):
        data = bytes([i]) * (100 + i * 5000)
        object_id = fsverity.digest(data, hash_name)
        target = path / "objects" / object_pathname(object_id)
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(data)
        ids.append(object_id)
    (path / "streams" / "refs").mkdir(parents=True)
    (path / "images" / "refs").mkdir(parents=True)
    stream = f"oci-layer-sha256:{'ab' * 32}"
    os.symlink(f"../objects/{object_pathname(ids[0])}", path / "streams" / stream)
    os.symlink(f"../{stream}", path / "streams" / "refs" / "layer")
    os.symlink(f"../objects/{object_pathname(ids[1])}", path / "images" / ids[1].hex())
    os.symlink(f"../{ids[1].hex()}", path / "images" / "refs" / "img")


@pytest.mark.parametrize("algorithm", ["fsverity-sha256-12", "fsverity-sha512-12"])
def test_legacy_repository_upgraded_on_open(cfsctl: str, tmp_path: Path, algorithm: str) -> None:
    for name in ("ours", "theirs"):
        legacy_repository(tmp_path / name, algorithm)
    a = ours("--repo", tmp_path / "ours", "images", "--json")
    b = theirs(cfsctl, "--repo", tmp_path / "theirs", "images", "--json")
    assert a.stdout == b.stdout
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    assert (tmp_path / "ours" / "meta.json").exists()
    # the upgraded repository is an ordinary one for both tools (fsck: the hand-made stream
    # and image are not real ones, both tools count them as bad; the details are worded
    # differently)
    a = ours("--repo", tmp_path / "theirs", "fsck", check=False)
    b = theirs(cfsctl, "--repo", tmp_path / "ours", "fsck", check=False)

    def counts(out: bytes) -> list[bytes]:
        return [line for line in out.splitlines() if not line.startswith(b"  - ")]

    assert (a.returncode, counts(a.stdout)) == (b.returncode, counts(b.stdout))


def test_no_upgrade_refuses_legacy_repository(cfsctl: str, tmp_path: Path) -> None:
    for name in ("ours", "theirs"):
        legacy_repository(tmp_path / name, "fsverity-sha512-12")
    a = ours("--repo", tmp_path / "ours", "--no-upgrade", "images", check=False)
    b = theirs(cfsctl, "--repo", tmp_path / "theirs", "--no-upgrade", "images", check=False)
    assert (a.returncode, b.returncode) == (1, 1)
    same(a.stderr, b.stderr)
    assert error_lines(a.stderr) == [
        f"Error: meta.json not found in {tmp_path / 'ours'}; this repository must be "
        "initialized with `composefs init`"
    ]
    assert not (tmp_path / "ours" / "meta.json").exists()


def test_legacy_repository_errors(cfsctl: str, tmp_path: Path) -> None:
    # objects/ without any object: nothing to infer from
    for name in ("ours", "theirs"):
        legacy_repository(tmp_path / name, "fsverity-sha512-12", empty=True)
    a = ours("--repo", tmp_path / "ours", "images", check=False)
    b = theirs(cfsctl, "--repo", tmp_path / "theirs", "images", check=False)
    assert (a.returncode, b.returncode) == (1, 1)
    same(a.stderr, b.stderr)
    # --hash that contradicts the objects: refused before meta.json is written
    for name in ("ours2", "theirs2"):
        legacy_repository(tmp_path / name, "fsverity-sha512-12")
    a = ours("--repo", tmp_path / "ours2", "--hash", "sha256", "images", check=False)
    b = theirs(cfsctl, "--repo", tmp_path / "theirs2", "--hash", "sha256", "images", check=False)
    assert (a.returncode, b.returncode) == (1, 1)
    same(a.stderr, b.stderr, "ours2", "theirs2")
    assert not (tmp_path / "ours2" / "meta.json").exists()


@pytest.mark.parametrize("algorithm", ["fsverity-sha256-12", "fsverity-sha512-12"])
def test_init_ensure(cfsctl: str, tmp_path: Path, algorithm: str) -> None:
    def both(*args: str, check: bool = True) -> tuple[bytes, bytes]:
        a = ours(*args, tmp_path / "ours", check=check)
        b = theirs(cfsctl, *args, tmp_path / "theirs", check=check)
        assert a.returncode == b.returncode, (a.stderr, b.stderr)
        same(a.stderr, b.stderr)
        return a.stdout, b.stdout

    # created, then opened as it is whatever the requested configuration
    for args in (
        ["init", "--ensure", "--insecure", "--algorithm", algorithm, "--erofs-version", "2"],
        ["init", "--ensure", "--insecure", "--algorithm", algorithm],
        ["init", "--ensure", "--algorithm", algorithm, "--erofs-version", "0"],
        ["init", "--insecure", "--algorithm", algorithm, "--erofs-version", "2"],
    ):
        a, b = both(*args)
        same(a, b)
        assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    # without --ensure a different configuration is an error; an algorithm always is
    for args in (
        ["init", "--insecure", "--algorithm", algorithm],
        ["init", "--ensure", "--insecure", "--algorithm", "fsverity-sha256-12"]
        if algorithm.endswith("sha512-12")
        else ["init", "--ensure", "--insecure"],
    ):
        a, b = both(*args, check=False)
    # a legacy repository is upgraded
    for name in ("ours", "theirs"):
        shutil.rmtree(tmp_path / name)
        legacy_repository(tmp_path / name, algorithm)
    a, b = both("init", "--ensure", "--algorithm", algorithm)
    same(a, b)
    assert a.startswith(b"Upgraded legacy repository at ")
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    # an empty directory (and a missing one, with its parents) is initialized
    for name in ("ours", "theirs"):
        shutil.rmtree(tmp_path / name)
    a, b = both("init", "--ensure", "--insecure", "--algorithm", algorithm)
    same(a, b)
    a = ours("init", "--ensure", "--insecure", tmp_path / "deep" / "er" / "ours").stdout
    b = theirs(cfsctl, "init", "--ensure", "--insecure", tmp_path / "deep" / "er" / "theirs").stdout
    same(a, b)


def test_init_reset_metadata(cfsctl: str, tmp_path: Path) -> None:
    for name in ("ours", "theirs"):
        legacy_repository(tmp_path / name, "fsverity-sha512-12")
        (tmp_path / name / "streams" / "junk").mkdir()
    # reset then init with another algorithm: the objects stay, streams/ and images/ go
    args = ["init", "--reset-metadata", "--insecure", "--algorithm", "fsverity-sha256-12"]
    a = ours(*args, tmp_path / "ours")
    b = theirs(cfsctl, *args, tmp_path / "theirs")
    same(a.stdout, b.stdout)
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")
    assert not (tmp_path / "ours" / "streams").exists()
    # reset of a modern repository, with --ensure: the objects decide (an upgrade)
    args = ["init", "--reset-metadata", "--ensure"]
    a = ours(*args, tmp_path / "ours", check=False)
    b = theirs(cfsctl, *args, tmp_path / "theirs", check=False)
    assert a.returncode == b.returncode
    same(a.stdout, b.stdout)
    same(a.stderr, b.stderr)
    assert tree(tmp_path / "ours") == tree(tmp_path / "theirs")


# -- transaction ---------------------------------------------------------------------------


def _lock_held(repo: Path) -> bool:
    """Whether another process holds the repository's flock (a shared one blocks ours)."""
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _start(*args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [os.fspath(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )


def _wait_for_lock(repo: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not _lock_held(repo):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the transaction never took the lock"
        time.sleep(0.02)


def _our_cli(*args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
    return [sys.executable, "-m", "composefs.cli", *args]


@pytest.mark.parametrize(
    ("holder", "collector"),
    [("cfsctl", "ours"), ("ours", "cfsctl"), ("ours", "ours"), ("cfsctl", "cfsctl")],
)
def test_transaction_blocks_gc(cfsctl: str, tmp_path: Path, holder: str, collector: str) -> None:
    """A transaction of either tool holds the repository's shared flock; gc of either tool
    waits for it (cfsctl's gc silently, ours says so on stderr), other commands do not."""
    repo = tmp_path / "repo"
    theirs(cfsctl, "init", "--insecure", repo)
    put = fsverity.digest(b"garbage" * 100, "sha512")
    (repo / "objects" / object_pathname(put)).parent.mkdir(parents=True)
    (repo / "objects" / object_pathname(put)).write_bytes(b"garbage" * 100)

    def command(tool_name: str, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        return [cfsctl, *args] if tool_name == "cfsctl" else _our_cli(*args)

    transaction = _start(*command(holder, "--repo", repo, "transaction"))
    try:
        _wait_for_lock(repo, transaction)
        listing = run(*command(collector, "--repo", repo, "images"), env=cli_env())
        assert listing.stdout == b"No images found\n"
        dry = run(*command(collector, "--repo", repo, "gc", "--dry-run"), env=cli_env())
        assert b"Objects: 1 removed" in dry.stdout
        gc = _start(*command(collector, "--repo", repo, "gc"))
        time.sleep(1.5)
        if gc.poll() is not None:
            pytest.fail(f"gc did not wait: {gc.communicate()}")
        assert (repo / "objects" / object_pathname(put)).exists()
        transaction.send_signal(signal.SIGINT if holder == "ours" else signal.SIGTERM)
        transaction.wait(10)
        out, err = gc.communicate(timeout=30)
        assert gc.returncode == 0, err
        assert out == b"Objects: 1 removed (700 bytes)\n"
        if collector == "ours":
            assert b"Waiting for the repository's other users" in err
        assert not (repo / "objects" / object_pathname(put)).exists()
    finally:
        transaction.kill()
        output = transaction.communicate()
    if holder == "ours":
        # Ctrl-C ends our transaction quietly, with the status of a SIGINT
        assert transaction.returncode == 130
        assert output == (b"", b"")


def test_gc_waiting_for_a_transaction_stops_on_ctrl_c(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    ours("init", "--insecure", repo)
    transaction = _start(*_our_cli("--repo", repo, "transaction"))
    try:
        _wait_for_lock(repo, transaction)
        gc = _start(*_our_cli("--repo", repo, "gc"))
        deadline = time.monotonic() + 30
        assert gc.stderr is not None
        while b"Waiting" not in gc.stderr.read1(100):
            assert time.monotonic() < deadline
        gc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = gc.communicate(timeout=10)
        assert time.monotonic() - start < 1.0
        assert gc.returncode == 130
        assert err.endswith(b"Error: interrupted\n")
    finally:
        transaction.kill()
        transaction.communicate()
