"""``composefs mkcomposefs --from-file`` against C mkcomposefs 1.0.8 itself (built by
``tools/build-c-mkcomposefs``, which checks the build against C's own checksum assets): for the
hand-written cases of ``support.mkcomposefs_cases`` and random dumpfiles in C's grammar, both
backends give C's image byte for byte, or refuse where C refuses. The one deliberate
difference: a DIGEST that is not 64 hex digits on a file that needs one (C reads memory it
never wrote there) is refused.

cfsctl 0.9.4, the second oracle, is compared on C's assets: where it writes an image, the
list of assets where that image is not C's is pinned (docs/differences.md names them)."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from support import load_backend, need, need_root, run, tool
from support.mkcomposefs_cases import CASES, c_dumpfiles

pytestmark = pytest.mark.interop

ASSETS = Path(__file__).parents[1] / "data" / "mkcomposefs"
BACKENDS = ("native", "python")
DIGEST_REFUSAL = "is not 64 hex digits"


def c_mkcomposefs() -> str:
    cache = os.environ.get("COMPOSEFS_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "composefs-tests"
    )
    path = os.environ.get("COMPOSEFS_C_MKCOMPOSEFS") or os.path.join(
        cache, "c-mkcomposefs-1.0.8", "bin", "mkcomposefs"
    )
    need(
        os.access(path, os.X_OK), "C mkcomposefs 1.0.8 is not built (run tools/build-c-mkcomposefs)"
    )
    return path


def c_outcome(
    binary: str, data: bytes, low: int | None, high: int | None, strict: bool
) -> tuple[str, bytes]:
    args = [binary]
    if low is not None:
        args.append(f"--min-version={low}")
    if high is not None:
        args.append(f"--max-version={high}")
    env = {k: v for k, v in os.environ.items() if k != "CFS_PARSE_STRICT"}
    if strict:
        env["CFS_PARSE_STRICT"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "image")
        proc = subprocess.run(
            [*args, "--from-file", "-", out], input=data, capture_output=True, env=env, check=False
        )
        if proc.returncode != 0:
            assert proc.returncode == 1, proc.stderr  # an error, not a crash
            return "error", proc.stderr
        return "ok", Path(out).read_bytes()


def our_outcome(
    backend: str, data: bytes, low: int | None, high: int | None, strict: bool
) -> tuple[str, bytes]:
    """The versions as our CLI turns C's options into them."""
    if low is None and high is None:
        low, high = 0, 1
    else:
        low, high = low or 0, high or 0
    try:
        return "ok", load_backend(backend).erofs.mkcomposefs(data, low, high, strict)
    except ValueError as e:
        return "error", str(e).encode()


def same_as_c(binary: str, data: bytes, low: int | None, high: int | None, strict: bool) -> None:
    theirs = c_outcome(binary, data, low, high, strict)
    for backend in BACKENDS:
        mine = our_outcome(backend, data, low, high, strict)
        if mine[0] == "error" and DIGEST_REFUSAL.encode() in mine[1]:
            continue
        assert mine[0] == theirs[0], (backend, mine[1][:300], theirs[1][:300], data[:500])
        if mine[0] == "ok":
            assert mine[1] == theirs[1], (backend, data[:500])


@pytest.fixture(scope="module")
def c_binary() -> str:
    return c_mkcomposefs()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cases_match_c(c_binary: str, case: object) -> None:
    data, low, high, strict = case[1:]  # type: ignore[index]
    same_as_c(c_binary, data, low, high, strict)


def test_digest_refusal_is_the_only_difference(c_binary: str) -> None:
    """C takes a short or non-hex DIGEST on an external file (and fills the rest of the
    digest with whatever was on its stack); we refuse it."""
    data = b"/ 0 40755 2 0 0 0 0.0 - - -\n/a 3 100644 1 0 0 0 0.0 aa/bb - xyz\n"
    assert c_outcome(c_binary, data, None, None, False)[0] == "ok"
    for backend in BACKENDS:
        kind, message = our_outcome(backend, data, None, None, False)
        assert kind == "error" and DIGEST_REFUSAL.encode() in message


@settings(
    max_examples=int(os.environ.get("MKCOMPOSEFS_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(example=c_dumpfiles())
def test_random_dumpfiles_match_c(
    c_binary: str, example: tuple[bytes, int | None, int | None, bool]
) -> None:
    same_as_c(c_binary, *example)


def test_assets_through_c_binary(c_binary: str) -> None:
    """The oracle itself reproduces C's checksums (tools/build-c-mkcomposefs checks it too)."""
    for sha in sorted(ASSETS.glob("*.sha256")):
        name = sha.name.removesuffix(".sha256")
        data = (ASSETS / name).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        version = ASSETS / f"{name}.version"
        v = int(version.read_text()) if version.exists() else None
        strict = name not in {
            "no-newline.dump",
            "longlink.dump",
            "honggfuzz-longlink-unterminated.dump",
        }
        kind, image = c_outcome(c_binary, data, v, v, strict)
        assert kind == "ok" and hashlib.sha256(image).hexdigest() == sha.read_text().strip()


# cfsctl 0.9.4 on C's checksum assets (C's options): the assets where it writes C's image,
# and the others (it fails, or writes another image)
CFSCTL_MATCHES = {
    "bigfile.dump",
    "bigfile-xattr.dump",
    "config.dump.gz",
    "config-with-hard-link.dump.gz",
    "honggfuzz-bigfile-with-acl.dump",
}


def test_cfsctl_on_c_assets(tmp_path: Path) -> None:
    cfsctl = tool("cfsctl")
    matches = set()
    for sha in sorted(ASSETS.glob("*.sha256")):
        name = sha.name.removesuffix(".sha256")
        data = (ASSETS / name).read_bytes()
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        version = ASSETS / f"{name}.version"
        args = []
        if version.exists():
            v = version.read_text().strip()
            args = [f"--min-version={v}", f"--max-version={v}"]
        out = tmp_path / "image"
        src = tmp_path / "dump"
        src.write_bytes(data)
        proc = subprocess.run(
            [cfsctl, "mkcomposefs", *args, "--from-file", src, out],
            capture_output=True,
            check=False,
        )
        if (
            proc.returncode == 0
            and hashlib.sha256(out.read_bytes()).hexdigest() == sha.read_text().strip()
        ):
            matches.add(name)
    assert matches == CFSCTL_MATCHES


@pytest.mark.parametrize("backend", BACKENDS)
def test_directory_with_a_whiteout(c_binary: str, tmp_path: Path, backend: str) -> None:
    """A directory source holding a char device 0/0: C raises the version to 1 (cfsctl 0.9.4
    stays at 0)."""
    need_root()
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    os.mknod(tree / "sub" / "w", 0o600 | stat.S_IFCHR, os.makedev(0, 0))
    (tree / "f").write_bytes(b"hi\n")
    theirs, mine = tmp_path / "theirs.img", tmp_path / "mine.img"
    run(c_binary, tree, theirs)
    env = {**os.environ, "COMPOSEFS_BACKEND": backend}
    run(sys.executable, "-m", "composefs.cli", "mkcomposefs", tree, mine, env=env)
    assert mine.read_bytes() == theirs.read_bytes()
