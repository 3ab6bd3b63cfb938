"""The ``composefs`` command line: outputs, error chains, exit codes, backend selection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import composefs
from composefs.errors import ComposefsError, format_error
from support import run, tool


def cli(
    *args: str | os.PathLike[str], env: dict[str, str] | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        capture_output=True,
        env=full_env,
        input=input,
        check=False,
    )


def test_error_chain_format() -> None:
    try:
        try:
            try:
                raise OSError(2, "No such file or directory")
            except OSError as e:
                raise ComposefsError("reading blob") from e
        except ComposefsError as e:
            raise ComposefsError("Importing layer sha256:abc") from e
    except ComposefsError as e:
        text = format_error(e)
    assert text == (
        "Error: Importing layer sha256:abc\n\nCaused by:\n"
        "    0: reading blob\n    1: No such file or directory (os error 2)"
    )
    assert format_error(ComposefsError("alone")) == "Error: alone"
    single = ComposefsError("top")
    single.__cause__ = ValueError("why")
    assert format_error(single) == "Error: top\n\nCaused by:\n    why"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fsck"], "Error: meta.json not found in {repo}; this repository must be initialized"),
        (["--repo", "/nonexistent/x", "fsck"], "Error: opening repository /nonexistent/x"),
        (["init", "--algorithm", "sha256"], "Error: algorithm must start with 'fsverity-'"),
        (["init", "--algorithm", "fsverity-md5-12"], "Error: unsupported hash algorithm 'md5'"),
        (["init", "--algorithm", "fsverity-sha256-16"], "Error: unsupported lg_blocksize 16"),
        (["fsverity", "digest", "/nonexistent"], "Error: No such file or directory"),
    ],
)
def test_user_errors_print_a_chain_and_exit_1(
    tmp_path: Path, args: list[str], message: str
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    full = args if "--repo" in args else ["--repo", str(repo), *args]
    proc = cli(*full)
    assert proc.returncode == 1, proc
    err = proc.stderr.decode()
    assert err.startswith(message.format(repo=repo)), err
    assert "Traceback" not in err


def test_hash_mismatch(tmp_path: Path) -> None:
    assert cli("--repo", tmp_path / "r", "init", "--insecure").returncode == 0
    proc = cli("--repo", tmp_path / "r", "--hash", "sha256", "fsck")
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(
        "Error: repository is configured for fsverity-sha512-12 (from meta.json) but --hash "
        "sha256 was specified"
    )


def test_usage_errors_exit_2() -> None:
    proc = cli("no-such-command")
    assert proc.returncode == 2
    assert b"usage:" in proc.stderr


def test_secure_init_error_chain(tmp_path: Path) -> None:
    proc = cli("init", tmp_path / "r")
    if proc.returncode == 0:  # a filesystem with fs-verity
        assert b"verity:    required" in proc.stdout
        return
    assert proc.returncode == 1
    err = proc.stderr.decode()
    # cfsctl's first line, then the step that failed
    assert err.startswith(f"Error: Initializing repository at {tmp_path / 'r'}\n"), err
    assert "Enabling fs-verity on meta.json" in err
    assert "Filesystem does not support fs-verity" in err
    assert not (tmp_path / "r/meta.json").exists()


def test_fsck_failure_exits_1(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    assert cli("--repo", repo, "init", "--insecure").returncode == 0
    (repo / "streams").mkdir()
    (repo / "streams/junk").write_text("")
    proc = cli("--repo", repo, "fsck")
    assert proc.returncode == 1
    assert b"fsck: entry-not-symlink: streams/junk" in proc.stdout
    assert proc.stderr == b"Error: repository integrity check failed\n"
    assert cli("--repo", repo, "fsck", "--json").returncode == 0


@pytest.mark.parametrize("backend", ["python", "native"])
@pytest.mark.parametrize("alg", ["sha256", "sha512"])
def test_fsverity_digest_matches_fsverity_utils(tmp_path: Path, backend: str, alg: str) -> None:
    fsverity_tool = tool("fsverity")
    if backend == "native":
        from support import need

        need(_native_available(), "native backend not built")
    files = []
    for size in (0, 1, 4096, 4097, 300_000):
        f = tmp_path / f"f{size}"
        f.write_bytes(os.urandom(size))
        files.append(f)
    ours = cli("fsverity", "digest", "--hash-alg", alg, *files, env={"COMPOSEFS_BACKEND": backend})
    theirs = run(fsverity_tool, "digest", "--hash-alg", alg, *files)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def _native_available() -> bool:
    from composefs import _backend

    try:
        _backend.load("native")
    except ImportError:
        return False
    return True


def test_backend_selection() -> None:
    assert composefs.backend in ("native", "python")
    code = "import composefs; print(composefs.backend)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=True,
        env={**os.environ, "COMPOSEFS_BACKEND": "python"},
    )
    assert out.stdout == b"python\n"
    bad = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        check=False,
        env={**os.environ, "COMPOSEFS_BACKEND": "fortran"},
    )
    assert bad.returncode != 0 and b"COMPOSEFS_BACKEND must be one of" in bad.stderr


def test_native_backend_fails_loudly_when_missing() -> None:
    # hide the extension module: COMPOSEFS_BACKEND=native must not fall back silently
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'composefs._native':\n"
        "            raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import composefs\n"
    )
    # importing the package runs nothing (the CLI catches Ctrl-C around its imports): the
    # backend is chosen, and fails, on first use
    used = code + "composefs.Repository\n"
    proc = subprocess.run(
        [sys.executable, "-c", used],
        capture_output=True,
        check=False,
        env={**os.environ, "COMPOSEFS_BACKEND": "native"},
    )
    assert proc.returncode != 0
    assert b"COMPOSEFS_BACKEND=native, but the extension module" in proc.stderr
    auto = subprocess.run(
        [sys.executable, "-c", code + "print(composefs.backend)"],
        capture_output=True,
        check=True,
        env={**os.environ, "COMPOSEFS_BACKEND": "auto"},
    )
    assert auto.stdout == b"python\n"
