"""Reading an image back into a tree (``composefs.erofs_read``): every format and algorithm
gives back the dumpfile the image was made from; damaged images raise ``ErofsError`` only.
``dump-files`` against cfsctl is in tests/interop/test_cli_surface_interop.py."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from composefs import erofs, fsverity
from composefs._pure import dumpfile
from composefs.erofs import ErofsError
from composefs.erofs_read import read_filesystem
from composefs.fsverity import Algorithm

DATA = Path(__file__).resolve().parents[2] / "data"


def tree_dump(hash_name: str) -> bytes:
    ext = fsverity.digest(b"e" * 5000, hash_name)
    ext_hex = ext.hex()
    ext_path = f"{ext_hex[:2]}/{ext_hex[2:]}"
    lines = [
        "/ 0 40755 2 0 0 0 1000.0 - - - user.root=1",
        "/a 0 40700 3 1 2 0 1001.0 - - - trusted.overlay.foo=y",
        "/a/b 0 40755 2 0 0 0 1000.0 - - -",
        f"/a/b/ext 5000 100644 2 0 0 0 1000.0 {ext_path} - {ext_hex} user.x=1",
        "/a/inline 5 100600 1 0 0 0 999.0 - hello - trusted.overlay.redirect=/x",
        "/a/link 3 120777 1 0 0 0 1000.0 ext - -",
        "/a/sparse 100000 100644 1 0 0 0 1000.0 - - -",
        "/a/wh 0 20000 1 0 0 0 1000.0 - - -",
        "/a/chr 0 20644 1 0 0 1025 1000.0 - - -",
        "/a/blk 0 60644 1 0 0 2049 1000.0 - - -",
        "/a/fifo 0 10644 1 0 0 0 1000.0 - - -",
        "/a/sock 0 140644 1 0 0 0 1000.0 - - -",
        "/hard 0 @120000 - - - - 0.0 /a/b/ext - -",
        "/big 500 100644 1 0 0 0 1000.0 - " + "x" * 500 + " -",
        "/many 0 40755 2 0 0 0 1000.0 - - -",
    ]
    # a directory of several blocks
    lines += [f"/many/{'n' * 60}{i:04d} 1 100644 1 0 0 0 1000.0 - {i % 10} -" for i in range(300)]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize(
    ("source", "hash_name"),
    # special_v1.dump (C composefs's test file) names sha256 objects only
    [("tree", "sha256"), ("tree", "sha512"), ("special", "sha256")],
)
def test_round_trip(version: int, hash_name: str, source: str) -> None:
    text = (DATA / "special_v1.dump").read_bytes() if source == "special" else tree_dump(hash_name)
    canonical = dumpfile.write(dumpfile.parse(text))
    image = erofs.mkfs(canonical, version)
    fs = read_filesystem(image, Algorithm(hash_name))
    assert dumpfile.write(fs) == canonical


def test_damaged_images_raise_erofs_error_only() -> None:
    image = erofs.mkfs(dumpfile.write(dumpfile.parse(tree_dump("sha256"))), 1)
    rng = random.Random(7)
    for _ in range(300):
        damaged = bytearray(image)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        with contextlib.suppress(ErofsError):
            read_filesystem(bytes(damaged), Algorithm.SHA256)
    for cut in (0, 100, 1200, len(image) // 2, len(image) - 1):
        with pytest.raises(ErofsError):
            read_filesystem(image[:cut], Algorithm.SHA256)


def test_composefs_internal_xattrs_are_dropped() -> None:
    """As composefs-rs reads images: the V1 whiteout markers and ``trusted.overlay.opaque``
    (stored escaped) are composefs's own and are not given back."""
    text = (
        b"/ 0 40755 2 0 0 0 0.0 - - -\n"
        b"/d 0 40755 2 0 0 0 0.0 - - - trusted.overlay.opaque=y user.overlay.opaque=y "
        b"user.keep=1\n"
    )
    for version in (1, 2):
        fs = read_filesystem(erofs.mkfs(text, version), Algorithm.SHA256)
        d = fs.root.entries[b"d"]
        assert d.stat.xattrs == {b"user.keep": b"1"}
