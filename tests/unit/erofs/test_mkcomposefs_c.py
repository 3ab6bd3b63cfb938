"""``composefs mkcomposefs --from-file`` is C mkcomposefs 1.0: C's own test assets
(``tests/data/mkcomposefs``, copied from containers/composefs v1.0.8) run as C's test suite
runs them (``tests/test-checksums.sh``: the ``.version`` file gives ``--min-version=V
--max-version=V``; ``CFS_PARSE_STRICT=1`` except for three files) must give the sha256 C's
suite expects, in both backends and through the CLI; every should-fail asset is refused with
a one-line error. The comparison with the C binary itself is
``tests/interop/test_mkcomposefs_interop.py``."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from composefs import erofs
from composefs.erofs_format import COMPOSEFS_HEADER
from support import load_backend

ASSETS = Path(__file__).parents[2] / "data" / "mkcomposefs"
NONSTRICT = {"no-newline.dump", "longlink.dump", "honggfuzz-longlink-unterminated.dump"}
CHECKSUMS = sorted(p.name.removesuffix(".sha256") for p in ASSETS.glob("*.sha256"))
SHOULD_FAIL = sorted(p.name for p in ASSETS.glob("should-fail-*.dump"))
BACKENDS = ("native", "python")

# The outcome of each asset before this work (composefs 0.x `mkcomposefs --from-file`, which
# used composefs-rs's dumpfile rules and writer): 3 of 14 matched C, 14 of 14 refused.
MATCHED_BEFORE = {"bigfile.dump", "bigfile-xattr.dump", "honggfuzz-bigfile-with-acl.dump"}


def read_asset(name: str) -> bytes:
    data = (ASSETS / name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def c_options(name: str) -> tuple[int, int, bool]:
    """(min_version, max_version, strict) as C's test-checksums.sh runs the asset."""
    version_file = ASSETS / f"{name}.version"
    if version_file.exists():
        v = int(version_file.read_text())
        low, high = v, v
    else:
        low, high = 0, 1
    return low, high, name not in NONSTRICT


def expected(name: str) -> str:
    return (ASSETS / f"{name}.sha256").read_text().strip()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> ModuleType:
    return load_backend(request.param)


def test_the_assets_are_there() -> None:
    assert len(CHECKSUMS) == 14 and len(SHOULD_FAIL) == 14
    assert (ASSETS / "special_v1.dump").read_bytes() == (ASSETS / "special.dump").read_bytes()


@pytest.mark.parametrize("name", CHECKSUMS)
def test_checksum_assets(backend: ModuleType, name: str) -> None:
    low, high, strict = c_options(name)
    image = backend.erofs.mkcomposefs(read_asset(name), low, high, strict)
    assert hashlib.sha256(image).hexdigest() == expected(name)


@pytest.mark.parametrize("name", SHOULD_FAIL)
@pytest.mark.parametrize("strict", [False, True])
def test_should_fail_assets(name: str, strict: bool) -> None:
    data = read_asset(name)
    messages = []
    for backend in BACKENDS:
        with pytest.raises(ValueError) as info:
            load_backend(backend).erofs.mkcomposefs(data, 0, 1, strict)
        messages.append(str(info.value))
    assert messages[0] == messages[1]  # the same in both backends
    assert "\n" not in messages[0] and len(messages[0]) < 400


def test_should_fail_messages() -> None:
    """Each should-fail asset is refused for the reason its name gives (C's message, with
    what it left out)."""
    reasons = {
        "should-fail-big-inline.dump": "line 2: Inline content size 5004 exceeds maximum 5000",
        "should-fail-dir-hardlink.dump": "line 2: Directories can't be hardlinked",
        "should-fail-dot-name.dump": "line 2: Invalid . or .. in path: /.",
        "should-fail-dotdot-name.dump": "line 2: Invalid . or .. in path: /..",
        "should-fail-empty-link-name.dump": "line 2: Invalid symlink: empty target",
        "should-fail-empty-name.dump": "line 2: Can't add child //: empty file name",
        "should-fail-empty-xattr-key.dump": "line 2: Can't set xattr: empty name",
        "should-fail-honggfuzz-long-xattr.dump": "line 1: Can't set xattr user.foo2: the "
        "xattrs of one file exceed 32767 bytes",
        "should-fail-long-link.dump": "line 2: Invalid symlink: target of 7248 bytes (the "
        "limit is 4095)",
        "should-fail-long-xattr-key.dump": "line 2: Too many xattrs",
        "should-fail-long-xattr-value.dump": "line 2: Invalid mode 644",
        "should-fail-no-ftype.dump": "line 2: Invalid mode 0",
        "should-fail-self-hardlink.dump": "Self-referential hardlink /037blockdev",
        "should-fail-too-big.dump": "cannot write file: File too large (9500000000000000 bytes)",
    }
    assert sorted(reasons) == SHOULD_FAIL
    for name, reason in reasons.items():
        with pytest.raises(erofs.ErofsError) as info:
            erofs.mkcomposefs(read_asset(name))
        assert str(info.value) == reason


def test_matched_before() -> None:
    """The three assets the composefs-rs writer already matched still match through
    ``erofs.mkfs`` (version 0: C's default for them): the two writers agree there."""
    for name in sorted(MATCHED_BEFORE):
        assert hashlib.sha256(erofs.mkfs(read_asset(name), 0)).hexdigest() == expected(name)


def cli(
    *args: str | os.PathLike[str], backend: str, env: dict[str, str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if k != "CFS_PARSE_STRICT"}
    full_env.update(env, COMPOSEFS_BACKEND=backend)
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", "mkcomposefs", *map(os.fspath, args)],
        capture_output=True,
        env=full_env,
        input=input,
        check=False,
    )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cli_runs_c_test_suite(tmp_path: Path, backend_name: str) -> None:
    """C's test-checksums.sh, with our command: the dumpfile on stdin."""
    for name in CHECKSUMS:
        low, high, strict = c_options(name)
        versions = (
            [] if (low, high) == (0, 1) else [f"--min-version={low}", f"--max-version={high}"]
        )
        out = tmp_path / "image"
        proc = cli(
            *versions,
            "--from-file",
            "-",
            out,
            backend=backend_name,
            env={"CFS_PARSE_STRICT": "1"} if strict else {},
            input=read_asset(name),
        )
        assert proc.returncode == 0, (name, proc.stderr)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == expected(name), name


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_cli_refuses_should_fail_assets(tmp_path: Path, backend_name: str) -> None:
    for name in SHOULD_FAIL:
        out = tmp_path / "image"
        proc = cli("--from-file", ASSETS / name, out, backend=backend_name, env={})
        assert proc.returncode == 1, name
        lines = proc.stderr.decode().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"Error: dumpfile {ASSETS / name}: "), lines
        assert not out.exists()


def test_cli_strictness_is_cfs_parse_strict(tmp_path: Path) -> None:
    """CFS_PARSE_STRICT set (to anything, as in C) refuses what the three non-strict assets
    rely on: a last line without newline, an rdev on a non-device, a symlink SIZE that is not
    its target's length."""
    out = tmp_path / "image"
    data = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -"
    reasons = {
        "no-newline.dump": "line 1: Non-zero devnum on non-device",
        "longlink.dump": "line 2: Invalid symlink size 4070, must match size 5",
        "honggfuzz-longlink-unterminated.dump": (
            "line 2: Invalid symlink size 4095, must match size 0"
        ),
    }
    inputs = [(data, "Missing trailing newline")]
    inputs += [(read_asset(name), reason) for name, reason in reasons.items()]
    for text, reason in inputs:
        assert cli("--from-file", "-", out, backend="native", env={}, input=text).returncode == 0
        proc = cli(
            "--from-file", "-", out, backend="native", env={"CFS_PARSE_STRICT": ""}, input=text
        )
        assert proc.returncode == 1
        assert proc.stderr.decode() == f"Error: dumpfile <stdin>: {reason}\n"


def _version(image: bytes) -> int:
    return int(COMPOSEFS_HEADER.unpack_from(image)[3])


def test_version_options(tmp_path: Path) -> None:
    """C's rules: neither option: 0 up to 1 (1 when there is a whiteout); one option alone:
    the other is 0; a maximum below the minimum is raised to it; only 0 and 1 exist."""
    plain = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
    whiteout = plain + b"/w 0 20000 1 0 0 0 0.0 - - -\n"
    src = tmp_path / "dump"
    out = tmp_path / "image"
    cases = [
        ([], plain, 0),
        ([], whiteout, 1),
        (["--max-version=0"], whiteout, 0),
        (["--min-version=1"], plain, 1),
        (["--max-version=1"], whiteout, 1),
        (["--min-version=0", "--max-version=0"], whiteout, 0),
        (["--min-version=1", "--max-version=0"], plain, 1),
    ]
    for options, data, version in cases:
        src.write_bytes(data)
        proc = cli(*options, "--from-file", src, out, backend="native", env={})
        assert proc.returncode == 0, proc.stderr
        assert _version(out.read_bytes()) == version, (options, data)
    for options in (["--min-version=2"], ["--max-version=2"], ["--min-version=-1"]):
        proc = cli(*options, "--from-file", src, out, backend="native", env={})
        assert proc.returncode == 1
        assert b"the C-compatible versions are 0 and 1" in proc.stderr


def test_from_file_ignores_the_directory_options(tmp_path: Path) -> None:
    """As C 1.0.8: --use-epoch, --skip-xattrs, --user-xattrs and --skip-devices apply to a
    directory source only (cfsctl 0.9.4 applies them to dumpfiles too)."""
    src = tmp_path / "dump"
    src.write_bytes(
        b"/ 0 40755 2 0 0 0 5.0 - - - security.x=1\n/c 0 20644 1 0 0 259 7.0 - - - user.a=b\n"
    )
    a, b = tmp_path / "a", tmp_path / "b"
    options = ["--use-epoch", "--skip-xattrs", "--user-xattrs", "--skip-devices"]
    assert cli(*options, "--from-file", src, a, backend="native", env={}).returncode == 0
    assert cli("--from-file", src, b, backend="native", env={}).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_print_digest(tmp_path: Path) -> None:
    name = "special.dump"
    proc = cli(
        "--min-version=0",
        "--max-version=0",
        "--print-digest-only",
        "--from-file",
        ASSETS / name,
        backend="python",
        env={"CFS_PARSE_STRICT": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    image = erofs.mkcomposefs(read_asset(name), min_version=0, max_version=0, strict=True)
    assert proc.stdout.decode() == erofs.image_id(image, "sha256").hex() + "\n"


def test_public_api_errors() -> None:
    with pytest.raises(erofs.ErofsError, match=r"^line 1: Invalid mode 0$"):
        erofs.mkcomposefs(b"/ 0 0 1 0 0 0 0.0 - - -\n")
    with pytest.raises(erofs.ErofsError, match=r"^No files in dump file$"):
        erofs.mkcomposefs(b"")
