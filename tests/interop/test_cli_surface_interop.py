"""cfsctl 0.9.4's command surface beyond the basics, against cfsctl: ``init --ensure``,
``init --reset-metadata``, pre-0.7 repositories (upgraded on open), ``transaction``,
``dump-files``, ``oci linked-erofs-images``, ``oci copy``, ``import-image``, ``composefs-info``
(``compute-karg`` is tested with the boot work, tests/interop/test_boot_interop.py).

Each test runs the same command on two copies of a repository (or a tree), one with cfsctl and
one with ``composefs``, and compares stdout, the exit status and the repositories' bytes. The
repository paths differ only in their last component, which is replaced by ``X`` before
comparing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from composefs import fsverity
from composefs.fsverity import Algorithm
from composefs.object_ids import object_pathname
from support import run, tool
from support.oci import build_layout
from support.repos import same_repositories

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


#: what our "meta.json not found" error adds to cfsctl's: the command that creates it
_INIT_HINT = re.compile(rb" \(`composefs --repo [^`]* init`\)")


def same(a: bytes, b: bytes, a_name: str = "ours", b_name: str = "theirs") -> None:
    a = _INIT_HINT.sub(b"", a)
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
        f"initialized with `composefs init` (`composefs --repo {tmp_path / 'ours'} init`)"
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


# -- dump-files, oci linked-erofs-images ---------------------------------------------------


@pytest.fixture(scope="module")
def pulled(cfsctl: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A repository with the test layout's ``multi`` image pulled by cfsctl, and the image
    id (hex) of its EROFS image."""
    base = tmp_path_factory.mktemp("pulled")
    layout = base / "layout"
    build_layout(layout)
    repo = base / "repo"
    theirs(cfsctl, "init", "--insecure", repo)
    theirs(cfsctl, "--repo", repo, "oci", "pull", f"oci:{layout}:multi", "multi")
    inspect = json.loads(theirs(cfsctl, "--repo", repo, "oci", "inspect", "multi").stdout)
    return repo, str(inspect["composefs_erofs"])


def both_tools(cfsctl: str, *args: str | os.PathLike[str]) -> None:
    """The same command through both tools: the same stdout, error report and status (usage
    errors, status 2, are worded by each tool's argument parser)."""
    a = ours(*args, check=False)
    b = theirs(cfsctl, *args, check=False)
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout), args
    if a.returncode != 2:
        assert error_lines(a.stderr) == error_lines(b.stderr), args


DUMP_FILES_CASES = [
    ["/usr"],
    ["/usr/bin/", "usr/lib", "/etc/passwd", "/usr/bin/hard2", "/opt", "/usr/./bin"],
    [],
    ["/usr/bin/.", "/usr/.", "usr/./", "/usr//", "/var/./."],
    ["/usr/bin/tool", "/opt/old/c", "/usr/bin/hard2"],  # hard links: full lines each time
    ["/"],
    ["."],
    ["/usr/../etc"],
    ["/nonexist/x"],
    ["/usr/bin/small/x"],
    ["/usr/nope"],
    ["./usr"],
    [""],
    ["/usr", "/nonexist"],  # nothing is printed when one path fails
]


@pytest.mark.parametrize("paths", DUMP_FILES_CASES, ids=lambda p: " ".join(p) or "none")
def test_dump_files(cfsctl: str, pulled: tuple[Path, str], paths: list[str]) -> None:
    repo, image = pulled
    both_tools(cfsctl, "--repo", repo, "dump-files", image, *paths)
    both_tools(cfsctl, "--repo", repo, "dump-files", "--backing-path-only", image, *paths)


def test_dump_files_backing_paths(cfsctl: str, pulled: tuple[Path, str]) -> None:
    repo, image = pulled
    paths = ["/usr/bin/tool", "/usr/bin/small", "/usr/bin/link", "/var/fifo", "/usr/bin/hard2"]
    both_tools(cfsctl, "--repo", repo, "dump-files", "--backing-path-only", image, *paths)
    out = ours("--repo", repo, "dump-files", "--backing-path-only", image, *paths).stdout
    assert b"/usr/bin/small inline\n" in out
    assert b"/usr/bin/tool 76/" in out


@pytest.mark.parametrize("version", [0, 1, 2])
def test_dump_files_of_every_format(cfsctl: str, tmp_path: Path, version: int) -> None:
    """Images in each format, with every kind of entry, hard links, escaped overlay xattrs and
    whiteouts, imported into a repository with ``cfsctl import-image``: both tools read them
    back the same way."""
    from composefs import erofs
    from composefs._pure import dumpfile

    repo = tmp_path / "repo"
    theirs(cfsctl, "init", "--insecure", "--algorithm", "fsverity-sha256-12", repo)
    special = (Path(__file__).resolve().parents[1] / "data" / "special_v1.dump").read_bytes()
    image = erofs.mkfs(dumpfile.write(dumpfile.parse(special)), version)
    run(cfsctl, "--repo", repo, "import-image", "special", input=image, env=cli_env())
    fs = dumpfile.parse(special)
    names = sorted(os.fsdecode(b"/" + name) for name in fs.root.entries)
    both_tools(cfsctl, "--repo", repo, "dump-files", "refs/special", *names)
    both_tools(cfsctl, "--repo", repo, "dump-files", "refs/special", "/")


def test_linked_erofs_images(cfsctl: str, pulled: tuple[Path, str], tmp_path: Path) -> None:
    repo, image = pulled
    both_tools(cfsctl, "--repo", repo, "oci", "linked-erofs-images", image)
    listed = json.loads(ours("--repo", repo, "oci", "linked-erofs-images", image).stdout)
    assert listed == [{"id": image, "bootable": False, "version": 1, "xattrMode": None}]
    other = ("0" if image[0] != "0" else "1") + image[1:]
    for bad in (other, "abcd", "z" * len(image)):
        both_tools(cfsctl, "--repo", repo, "oci", "linked-erofs-images", bad)
    # a V2 repository links a V2 image
    v2 = tmp_path / "v2"
    theirs(cfsctl, "init", "--insecure", "--erofs-version", "2", v2)
    layout = tmp_path / "layout"
    build_layout(layout)
    theirs(cfsctl, "--repo", v2, "oci", "pull", f"oci:{layout}:multi", "multi")
    inspect = json.loads(theirs(cfsctl, "--repo", v2, "oci", "inspect", "multi").stdout)
    both_tools(cfsctl, "--repo", v2, "oci", "linked-erofs-images", inspect["composefs_erofs"])


# -- oci copy ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_source(cfsctl: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sha512 repository with the ``multi`` and ``index`` images, pulled by cfsctl."""
    base = tmp_path_factory.mktemp("copy")
    layout = base / "layout"
    build_layout(layout)
    repo = base / "src"
    theirs(cfsctl, "init", "--insecure", repo)
    for tag in ("multi", "index"):
        theirs(cfsctl, "--repo", repo, "oci", "pull", f"oci:{layout}:{tag}", tag)
    return repo


@pytest.mark.parametrize(
    ("algorithm", "version"),
    [("fsverity-sha512-12", "1"), ("fsverity-sha256-12", "1"), ("fsverity-sha512-12", "2")],
)
@pytest.mark.parametrize("zerocopy", [False, True])
def test_oci_copy(
    cfsctl: str, copy_source: Path, tmp_path: Path, algorithm: str, version: str, zerocopy: bool
) -> None:
    """``oci copy`` into a fresh repository of each kind: the same output, and the same
    repository as cfsctl's copy (objects, layer and config streams, EROFS images, tags, which
    objects are hard links to the source's: on this filesystem, without reflinks, both tools
    hard-link, with or without --zerocopy)."""
    dests = {}
    for tool_name in ("ours", "theirs"):
        dest = tmp_path / tool_name
        theirs(
            cfsctl, "init", "--insecure", "--algorithm", algorithm, "--erofs-version", version, dest
        )
        dests[tool_name] = dest
    extra = ["--zerocopy"] if zerocopy else []
    for args in (
        ["multi", "--name", "copied"],
        ["index"],  # untagged, and a layer shared with multi is already present
        ["multi"],  # again: nothing new
    ):
        a = ours(
            "--repo",
            dests["ours"],
            "oci",
            "copy",
            *args,
            "--from",
            copy_source,
            *extra,
            check=False,
        )
        b = theirs(
            cfsctl,
            "--repo",
            dests["theirs"],
            "oci",
            "copy",
            *args,
            "--from",
            copy_source,
            *extra,
            check=False,
        )
        assert a.returncode == b.returncode, (a.stderr, b.stderr)
        if zerocopy and algorithm != "fsverity-sha512-12":
            assert a.returncode == 1
            same(a.stderr, b.stderr)
            assert b"--zerocopy requires matching hash algorithms" in a.stderr
            return
        assert a.returncode == 0, a.stderr

        def masked(out: bytes) -> list[bytes]:
            # the manifest stream's verity follows its refs' order (cfsctl: hash map order)
            return [line for line in out.splitlines() if not line.startswith(b"Manifest verity")]

        assert masked(a.stdout) == masked(b.stdout)
    alg = Algorithm.parse(algorithm)
    same_repositories(dests["ours"], dests["theirs"], alg, copy_source)
    for args in (["oci", "images", "--json"], ["fsck"], ["oci", "fsck", "--json"]):
        assert theirs(cfsctl, "--repo", dests["ours"], *args).stdout == (
            theirs(cfsctl, "--repo", dests["theirs"], *args).stdout
        )


def test_oci_copy_errors(cfsctl: str, copy_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    theirs(cfsctl, "init", "--insecure", dest)
    # cfsctl 0.9.4 tags the copy "@bad" (a name no command can name again: `@` starts a
    # digest); we refuse it as `oci pull` and `oci tag` do (docs/differences.md)
    a = ours(
        "--repo", dest, "oci", "copy", "multi", "--name", "@bad", "--from", copy_source, check=False
    )
    assert a.returncode == 1
    assert b"leading '@' is reserved for digest references" in a.stderr
    assert not (dest / "streams" / "refs").exists()
    for args in (
        ["nope"],
        ["@sha256:" + "0" * 64],
    ):
        a = ours("--repo", dest, "oci", "copy", *args, "--from", copy_source, check=False)
        b = theirs(cfsctl, "--repo", dest, "oci", "copy", *args, "--from", copy_source, check=False)
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout) == (1, b""), args
    a = ours("--repo", dest, "oci", "copy", "multi", "--from", tmp_path / "missing", check=False)
    assert a.returncode == 1
    assert error_lines(a.stderr)[0] == f"Error: opening source repository {tmp_path / 'missing'}"


def test_oci_copy_damaged_source(cfsctl: str, copy_source: Path, tmp_path: Path) -> None:
    """An object of the source whose content does not match its name is never stored under
    that name: the copy fails (diff_id mismatch, or the object's digest with --zerocopy)."""
    src = tmp_path / "src"
    shutil.copytree(copy_source, src, symlinks=True)
    victim = max(
        (p for p in (src / "objects").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    for extra in ([], ["--zerocopy"]):
        dest = tmp_path / f"dest{len(extra)}"
        ours("init", "--insecure", dest)
        a = ours("--repo", dest, "oci", "copy", "multi", "--from", src, *extra, check=False)
        assert a.returncode == 1, a.stdout
        assert not (dest / "objects" / victim.relative_to(src / "objects")).exists()


# -- composefs-info --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def info_images(pulled: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of every format (C's special_v1.dump, a pulled OCI image) as files."""
    from composefs import erofs
    from composefs._pure import dumpfile

    base = tmp_path_factory.mktemp("info")
    special = (Path(__file__).resolve().parents[1] / "data" / "special_v1.dump").read_bytes()
    canonical = dumpfile.write(dumpfile.parse(special))
    for version in (0, 1, 2):
        (base / f"special{version}.img").write_bytes(erofs.mkfs(canonical, version))
    lines = [b"/ 0 40755 2 0 0 0 0.0 - - -"]
    for i in range(6):
        digest = fsverity.digest(bytes([i]) * 1000, "sha256").hex()
        path = f"{digest[:2]}/{digest[2:]}".encode()
        lines.append(b"/f%d 1000 100644 1 0 0 0 0.0 %s - %s" % (i, path, digest.encode()))
    (base / "ext.img").write_bytes(erofs.mkfs(b"\n".join(lines) + b"\n", 1))
    repo, image = pulled
    (base / "multi.img").write_bytes((repo / "images" / image).resolve().read_bytes())
    return base


#: the console script as pip writes it: `composefs.cli.main` under the name composefs-info
INFO_SCRIPT = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = '/usr/bin/composefs-info'; "
    "from composefs.cli import main; sys.exit(main())",
]


def info_both(cfsctl: str, cwd: Path, *args: str) -> None:
    """``composefs-info ARGS`` (our console script's entry point, and through ``composefs``)
    against ``cfsctl composefs-info``: the same stdout, status and first error line."""
    b = subprocess.run(
        [cfsctl, "composefs-info", *args], cwd=cwd, capture_output=True, env=cli_env()
    )
    for command in (
        [*INFO_SCRIPT, *args],
        [sys.executable, "-m", "composefs.cli", "composefs-info", *args],
    ):
        a = subprocess.run(command, cwd=cwd, capture_output=True, env=cli_env())
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout), (args, a.stderr, b.stderr)
        if a.returncode == 1:
            assert error_lines(a.stderr)[0] == error_lines(b.stderr)[0], args


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "special0.img", "special1.img", "special2.img"],
        ["ls", "--filter", "usr", "--filter", "etc", "multi.img"],
        ["ls", "multi.img"],
        ["dump", "special0.img"],
        ["dump", "special1.img", "special2.img"],
        ["dump", "--filter", "usr", "special2.img"],
        ["objects", "special1.img", "special2.img", "ext.img"],
        ["ls", "ext.img"],
        ["missing-objects", "--basedir", ".", "special1.img", "special0.img"],
        ["measure-file", "special0.img", "special2.img"],
        ["ls"],
        ["ls", "missing.img"],
        ["dump", "multi.img"],  # sha512 objects: not an image of SHA-256 objects
        ["objects", "notanimage"],
        ["measure-file", "missing"],
    ],
    ids=lambda a: " ".join(a),
)
def test_composefs_info(cfsctl: str, info_images: Path, args: list[str]) -> None:
    (info_images / "notanimage").write_bytes(b"root:x:0:0\n" * 200)
    info_both(cfsctl, info_images, *args)


def test_composefs_info_missing_objects(cfsctl: str, info_images: Path, tmp_path: Path) -> None:
    objects = run(
        *INFO_SCRIPT,
        "objects",
        info_images / "ext.img",
    ).stdout.split()
    assert objects
    basedir = tmp_path / "base"
    for name in objects[::2]:
        (basedir / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
        (basedir / os.fsdecode(name)).write_bytes(b"")
    info_both(cfsctl, info_images, "missing-objects", "--basedir", os.fspath(basedir), "ext.img")


def test_composefs_info_by_argv0(tmp_path: Path) -> None:
    """Installed as (or linked to) ``composefs-info``, ``composefs`` is composefs-info, as
    cfsctl is; pyproject declares the console script."""
    import tomllib

    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["composefs-info"] == "composefs.cli:main"
    script = tmp_path / "composefs-info"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom composefs.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    proc = run(script, "measure-file", script, env=cli_env())
    assert proc.stdout.decode().strip() == fsverity.digest(script.read_bytes(), "sha256").hex()


def test_import_image(cfsctl: str, info_images: Path, tmp_path: Path) -> None:
    """``import-image REF`` stores the image read on stdin as cfsctl does; a file that is not
    a composefs image is refused (cfsctl stores it)."""
    repos = {name: tmp_path / name for name in ("ours", "theirs")}
    for repo in repos.values():
        theirs(cfsctl, "init", "--insecure", "--algorithm", "fsverity-sha256-12", repo)
    for image in ("special0.img", "special2.img", "ext.img"):
        data = (info_images / image).read_bytes()
        a = run(
            sys.executable,
            "-m",
            "composefs.cli",
            "--repo",
            repos["ours"],
            "import-image",
            f"r/{image}",
            input=data,
            env=cli_env(),
        )
        b = run(
            cfsctl,
            "--repo",
            repos["theirs"],
            "import-image",
            f"r/{image}",
            input=data,
            env=cli_env(),
        )
        assert a.stdout == b.stdout
    assert tree(repos["ours"]) == tree(repos["theirs"])
    bad = run(
        sys.executable,
        "-m",
        "composefs.cli",
        "--repo",
        repos["ours"],
        "import-image",
        "bad",
        input=b"not an image" * 500,
        check=False,
        env=cli_env(),
    )
    assert bad.returncode == 1
    assert error_lines(bad.stderr)[0] == "Error: Importing image 'bad' from reader"
    assert not (repos["ours"] / "images" / "refs" / "bad").exists()


def test_oci_copy_artifact(cfsctl: str, tmp_path: Path) -> None:
    """An OCI artifact with non-tar layers (stored as ``oci_blob`` streams by a pull) is
    copied with its blob streams as they are: the copy equals the source. cfsctl 0.9.4 stores
    the blobs as tar-layer streams instead (its content type), so only the payloads of its
    copy are compared."""
    from composefs.testing import LayoutWriter

    w = LayoutWriter(tmp_path / "art")
    config = w.blob(b"{}", "application/vnd.oci.empty.v1+json")
    blobs = [
        w.blob(b"some artifact payload" * 10, "application/vnd.example.payload"),
        w.blob(bytes(range(256)) * 40, "application/vnd.example.payload"),
    ]
    manifest = w.json_blob(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example",
            "config": config,
            "layers": blobs,
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    w.write_index([w.tagged(manifest, "art")])
    repos = {name: tmp_path / name for name in ("src", "ours", "theirs")}
    for repo in repos.values():
        theirs(cfsctl, "init", "--insecure", repo)
    ours(
        "--repo", repos["src"], "oci", "pull", f"oci:{tmp_path / 'art'}@{manifest['digest']}", "art"
    )
    args = ["oci", "copy", "art", "--from", repos["src"], "--name", "copied"]
    a = ours("--repo", repos["ours"], *args).stdout.splitlines()
    b = theirs(cfsctl, "--repo", repos["theirs"], *args).stdout.splitlines()
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3]  # the verities differ (see above)
    for blob in blobs:
        name = f"oci-layer-{blob['digest']}"
        assert (repos["ours"] / "streams" / name).resolve().read_bytes() == (
            repos["src"] / "streams" / name
        ).resolve().read_bytes()
        for repo in ("ours", "theirs"):
            assert run(cfsctl, "--repo", repos[repo], "cat", name, env=cli_env()).stdout == (
                (tmp_path / "art" / "blobs" / "sha256" / blob["digest"][7:]).read_bytes()
            )
    assert json.loads(ours("--repo", repos["ours"], "oci", "images", "--json").stdout) == (
        json.loads(theirs(cfsctl, "--repo", repos["theirs"], "oci", "images", "--json").stdout)
    )
    assert theirs(cfsctl, "--repo", repos["ours"], "oci", "fsck").stdout.endswith(b"ok\n")
