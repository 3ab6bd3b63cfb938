"""A real unprivileged user against a root-owned repository: one clear ``Error:`` line (exit 1),
no traceback, nothing half-made, for ``init``, ``oci pull``, ``gc``, ``oci tag``/``untag``,
``create-image``, ``oci import-layer`` (issue 10).

The user is ``composefs-test`` (created if missing, a system user without a home) or else
``nobody``; commands run through ``runuser``. The interpreter the tests run under may live where
that user cannot read (``/root/.pyenv``), so the test builds one it can: a copy of this
interpreter (binary, ``libpython``, the standard library without tests and site-packages) and of
the package and its dependencies (zstandard) in a world-readable temporary directory, run with
``PYTHONHOME``, ``LD_LIBRARY_PATH`` and ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

import composefs
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import need_root, tool

pytestmark = pytest.mark.root

USER = "composefs-test"
#: what the unprivileged run needs besides the standard library
DEPENDENCIES = ("zstandard",)
_SKIP = shutil.ignore_patterns(
    "site-packages",
    "test",
    "tests",
    "__pycache__",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "config-*",
)


def _unprivileged_user() -> str:
    try:
        pwd.getpwnam(USER)
        return USER
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is not None:
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            return USER
    pwd.getpwnam("nobody")
    return "nobody"


class Runner:
    """Runs ``python -m composefs.cli`` as the unprivileged user."""

    def __init__(self, root: Path, user: str) -> None:
        self.user = user
        self.runuser = tool("runuser")
        prefix = Path(sys.base_prefix)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        py = root / "python"
        (py / "bin").mkdir(parents=True)
        (py / "lib").mkdir()
        shutil.copy2(os.path.realpath(sys.executable), py / "bin" / "python3")
        libdir = sysconfig.get_config_var("LIBDIR")
        ldlibrary = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
        if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and ldlibrary:
            shutil.copy2(Path(libdir) / ldlibrary, py / "lib" / ldlibrary)
        stdlib = prefix / sys.platlibdir / f"python{version}"
        shutil.copytree(stdlib, py / "lib" / f"python{version}", ignore=_SKIP, symlinks=True)
        pkg = root / "pkg"
        shutil.copytree(
            Path(composefs.__file__).parent,
            pkg / "composefs",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        for name in DEPENDENCIES:
            module = __import__(name)
            shutil.copytree(
                Path(module.__file__).parent,
                pkg / name,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        for path in [root, *root.rglob("*")]:
            mode = path.lstat().st_mode
            if not path.is_symlink():
                path.chmod(mode | 0o444 | (0o111 if path.is_dir() or mode & 0o100 else 0))
        for parent in root.parents:
            if not os.stat(parent).st_mode & 0o001:
                pytest.fail(f"{parent} is not searchable by others: use a world-readable TMPDIR")
        self.python = py / "bin" / "python3"
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONHOME": str(py),
            "LD_LIBRARY_PATH": str(py / "lib"),
            "PYTHONPATH": str(pkg),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
        }

    def run(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.runuser, "-u", self.user, "--", "env", "-i"]
            + [f"{k}={v}" for k, v in self.env.items()]
            + [str(self.python), "-m", "composefs.cli", *map(os.fspath, args)],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )


@pytest.fixture(scope="module")
def world() -> Iterator[Path]:
    """A world-searchable directory (pytest's tmp_path is 0700)."""
    need_root()
    base = Path("/tmp") / f"composefs-unprivileged-{os.getpid()}"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def runner(world: Path) -> Runner:
    runner = Runner(world / "tool", _unprivileged_user())
    proc = runner.run("--help")
    assert proc.returncode == 0, proc.stderr
    return runner


@pytest.fixture(scope="module")
def layout(world: Path) -> Path:
    path = world / "layout"
    writer = LayoutWriter(path)
    tar = TarBuilder().dir("usr").file("usr/hello", b"hello world\n" * 100).build()
    writer.write_index([writer.tagged(writer.image([writer.layer(tar)]), "v1")])
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


@pytest.fixture()
def root_repo(world: Path, layout: Path) -> Iterator[Path]:
    """A root-owned repository (0755, world-readable) with one pulled, tagged image."""
    from composefs import oci

    path = world / "repo"
    repo, _ = Repository.init(path, insecure=True)
    with repo:
        oci.pull(repo, f"oci:{layout}:v1", "v1")
    for p in [path, *path.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    yield path
    shutil.rmtree(path)


def _snapshot(path: Path) -> list[tuple[str, int, str]]:
    out = []
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        target = os.readlink(p) if p.is_symlink() else ""
        out.append((str(p.relative_to(path)), st.st_mode, target))
    return out


def _assert_one_clear_error(proc: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: "), proc.stderr
    first = proc.stderr.splitlines()[0]
    assert any(e in proc.stderr for e in expected), proc.stderr
    assert len(first) < 300


def test_the_user_is_unprivileged(runner: Runner) -> None:
    proc = subprocess.run(
        [runner.runuser, "-u", runner.user, "--", "id", "-u"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(proc.stdout) != 0


def test_reading_works(runner: Runner, root_repo: Path) -> None:
    images = runner.run("--repo", root_repo, "oci", "images")
    assert images.returncode == 0, images.stderr
    assert "v1" in images.stdout
    fsck = runner.run("--repo", root_repo, "fsck")
    assert fsck.returncode == 0, fsck.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["oci", "pull", "oci:{layout}:v1", "other"],
        ["gc"],
        ["oci", "tag", "{digest}", "second"],
        ["oci", "untag", "v1"],
        ["create-image", "{layout}", "img"],
        ["oci", "import-layer", "sha256:" + "0" * 64],
    ],
    ids=["pull", "gc", "tag", "untag", "create-image", "import-layer"],
)
def test_writing_fails_with_one_clear_error(
    runner: Runner, root_repo: Path, layout: Path, command: list[str]
) -> None:
    from composefs import oci

    with Repository.open(root_repo) as repo:
        digest = oci.list_refs(repo)[0][1]
    before = _snapshot(root_repo)
    args = [a.format(layout=layout, digest=digest) for a in command]
    proc = runner.run("--repo", root_repo, *args)
    _assert_one_clear_error(proc, "Repository is not writable", "Permission denied")
    assert _snapshot(root_repo) == before


def test_init_fails_with_one_clear_error(runner: Runner, world: Path) -> None:
    parent = world / "root-only"
    parent.mkdir(mode=0o755)
    try:
        proc = runner.run("init", "--insecure", parent / "repo")
        _assert_one_clear_error(proc, "Permission denied")
        assert not (parent / "repo").exists()
        # an existing root-owned repository: nothing to write, it is only read
        Repository.init(parent / "existing", insecure=True)[0].close()
        for p in [parent / "existing", *(parent / "existing").rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        before = _snapshot(parent / "existing")
        again = runner.run("init", "--insecure", parent / "existing")
        assert again.returncode == 0, again.stderr
        assert "Repository already initialized at" in again.stdout
        other = runner.run("init", "--algorithm", "fsverity-sha256-12", parent / "existing")
        _assert_one_clear_error(other, "already initialized with different configuration")
        assert _snapshot(parent / "existing") == before
    finally:
        shutil.rmtree(parent)
