"""The layer merge against cfsctl: ``merge_layers`` over the layer splitstreams that
``cfsctl oci pull`` stored must print exactly what ``cfsctl oci dump`` prints, in both xattr
modes, for sha256 and sha512 repositories, with the layers imported by cfsctl itself.

The layouts avoid our deliberate differences (whiteout markers come first in their layer,
no PAX global headers, no ``..`` in names), where both tools must agree byte for byte.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

from composefs import _backend
from composefs._pure import dumpfile, merge
from composefs.oci.platform import host_platform
from composefs.testing import LayoutWriter
from support import run, tool
from support.tars import Tar, seeded_bytes

pytestmark = pytest.mark.interop

ARCH = host_platform().architecture
ALGORITHMS = ["fsverity-sha256-12", "fsverity-sha512-12"]
XATTR_MODES = ["allowlist-only", "keep-user-xattrs"]


XATTRS = {
    "security.capability": "\x01\x00\x00\x02cap",
    "security.selinux": "system_u:object_r:bin_t:s0",
    "user.comment": "a = b",
    "user.empty": "",
    "trusted.overlay.opaque": "y",
}


def base_layer() -> bytes:
    t = Tar()
    t.dir("./", mode=0o700)
    for d in ("etc", "usr", "usr/bin", "usr/lib", "opt", "opt/old", "var", "dev", "run"):
        t.dir(d)
    t.dir("usr/lib/caps", xattrs=XATTRS)
    t.file(
        "usr/bin/tool", seeded_bytes("tool", 70_000), mode=0o755, uid=1000, gid=100, xattrs=XATTRS
    )
    t.link("usr/bin/tool-hard", "usr/bin/tool")
    t.file("usr/bin/small", b"tiny\n", pax={"mtime": "1700000000.123456789"})
    t.file("usr/bin/sixty-four", b"6" * 64)
    t.file("usr/bin/sixty-five", b"6" * 65)
    t.file("usr/bin/empty")
    t.symlink("usr/bin/link", "tool")
    t.symlink("usr/bin/-", "-")
    t.file("usr/lib/" + "n" * 150, b"long name" * 20)
    t.dir("usr/lib/" + "d" * 120)
    t.file("usr/lib/" + "d" * 120 + "/" + "f" * 120, b"deep")
    t.file("usr/lib/sp ace\tand\\back=slash", b"odd names\n")
    t.file("usr/lib/caf\u00e9", b"utf8")
    t.file("opt/old/a", seeded_bytes("a", 1000))
    t.file("opt/old/b", b"b")
    t.file("var/gone", b"will be whited out\n" * 8)
    t.link("var/gone-hard", "var/gone")
    t.add("var/fifo", tarfile.FIFOTYPE)
    t.add("dev/null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3)
    t.add("dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, major=8, minor=0)
    t.add("dev/big", tarfile.BLKTYPE, major=4095, minor=1_048_575)
    t.file("run/pid", b"1234\n")
    t.dir("run/lock")
    t.file("run/lock/x", b"x")
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", uid=70_000, gid=4_000_000_000)
    t.file("etc/shadow", b"", mode=0o100640).patch("etc/shadow", 100, b"%07o\0" % 0o100640)
    t.file("etc/epoch", b"old").patch("etc/epoch", 136, (-86_400 % (1 << 96)).to_bytes(12, "big"))
    t.dir("etc/d-to-file")
    t.file("etc/d-to-file/child", b"c")
    t.file("etc/file-to-d", b"f")
    return t.build()


def upper_layer() -> bytes:
    t = Tar(mtime=1_700_000_100)
    t.dir("var")
    t.file("var/.wh.gone")
    t.dir("opt")
    t.dir("opt/old", mode=0o750)
    t.file("opt/old/.wh..wh..opq")
    t.file("opt/old/c", seeded_bytes("c", 4000))
    t.dir("usr", mode=0o755, uid=1, gid=2, pax={"mtime": "1700000100.5"}, xattrs=XATTRS)
    t.dir("usr/bin")
    t.file("usr/bin/tool", seeded_bytes("tool2", 80_000), mode=0o755)  # the hard link keeps the old
    t.link("usr/bin/hard2", "opt/old/c")
    t.link("usr/bin/hard-lower", "usr/bin/small")  # across layers
    t.dir("usr/lib/caps", mode=0o700, xattrs={"user.new": "1"})  # dir over dir: stat only
    t.dir("etc")
    t.file("etc/d-to-file", b"now a file")
    t.dir("etc/file-to-d")
    t.file("etc/file-to-d/inner", b"i")
    t.add("run/fifo", tarfile.FIFOTYPE)
    return t.build()


def third_layer() -> bytes:
    t = Tar(mtime=1_700_000_200)  # no usr/ entry: the root keeps usr's stat of layer two
    t.file("usr/.wh.nothing-here")
    t.file("usr/bin/.wh.tool-hard")
    t.file("usr/bin/new", b"n" * 100, xattrs={"user.z": "last", "user.a": "first"})
    t.dir("usr/new-dir")
    t.file("usr/new-dir/.wh..wh..opq")
    t.file("usr/new-dir/x", b"x")
    return t.build()


def build_layout(path: Path) -> dict[str, list[str]]:
    """The test images: tag -> diff_ids, bottom first."""
    w = LayoutWriter(path)
    layers = {
        "base": w.layer(base_layer(), "gzip"),
        "upper": w.layer(upper_layer(), "zstd"),
        "third": w.layer(third_layer(), "none"),
    }
    images = {
        "one": ["base"],
        "two": ["base", "upper"],
        "three": ["base", "upper", "third"],
    }
    entries = []
    out = {}
    for tag, names in images.items():
        blobs = [layers[n] for n in names]
        entries.append(w.tagged(w.image(blobs, architecture=ARCH), tag))
        out[tag] = [b.diff_id for b in blobs]
    w.write_index(entries)
    return out


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    path = tmp_path_factory.mktemp("layout") / "img"
    return path, build_layout(path)


@pytest.fixture(scope="module", params=ALGORITHMS)
def pulled(
    request: pytest.FixtureRequest,
    cfsctl: str,
    layout: tuple[Path, dict[str, list[str]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[str]]]:
    """A repository where cfsctl pulled every tag."""
    path, tags = layout
    repo = tmp_path_factory.mktemp("repo") / "r"
    run(cfsctl, "--repo", repo, "init", "--insecure", "--algorithm", request.param)
    for tag in tags:
        run(cfsctl, "--repo", repo, "oci", "pull", f"oci:{path}:{tag}", tag)
    return repo, tags


def layer_streams(repo: Path, diff_ids: list[str]) -> list[bytes]:
    return [(repo / "streams" / f"oci-layer-{d}").read_bytes() for d in diff_ids]


@pytest.mark.parametrize("mode", XATTR_MODES)
@pytest.mark.parametrize("tag", ["one", "two", "three"])
def test_merge_matches_cfsctl_dump(
    cfsctl: str, pulled: tuple[Path, dict[str, list[str]]], tag: str, mode: str
) -> None:
    repo, tags = pulled
    theirs = run(cfsctl, "--repo", repo, "oci", "dump", "--xattrs", mode, tag).stdout
    streams = layer_streams(repo, tags[tag])
    with _backend.use("python"):
        ours = merge.merge_layers(streams, mode)
    assert (
        ours.decode(errors="replace").splitlines() == theirs.decode(errors="replace").splitlines()
    )
    assert ours == theirs
    # the dumpfile reads back into the same tree (the parser keeps only mode & 0o7777)
    clean = merge.merge_layers(streams, mode, raw_modes=False)
    assert dumpfile.write(dumpfile.parse(ours)) == clean


def test_whiteout_after_own_entry_differs_from_cfsctl(cfsctl: str, tmp_path: Path) -> None:
    """Our deliberate difference: a marker after the layer's own entry does not remove it
    (composefs-rs removes it)."""
    w = LayoutWriter(tmp_path / "img")
    t = Tar().dir("usr").file("usr/a", b"a").file("usr/.wh.a")
    blob = w.layer(t.build(), "none")
    w.write_index([w.tagged(w.image([blob], architecture=ARCH), "late")])
    repo = tmp_path / "repo"
    run(cfsctl, "--repo", repo, "init", "--insecure", "--algorithm", "fsverity-sha256-12")
    run(cfsctl, "--repo", repo, "oci", "pull", f"oci:{tmp_path / 'img'}:late", "late")
    theirs = run(cfsctl, "--repo", repo, "oci", "dump", "late").stdout.decode().splitlines()
    ours = merge.merge_layers(layer_streams(repo, [blob.diff_id])).decode().splitlines()
    assert [x.split()[0] for x in theirs] == ["/", "/usr"]
    assert [x.split()[0] for x in ours] == ["/", "/usr", "/usr/a"]


def test_missing_usr_fails_in_both(cfsctl: str, tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "img")
    blob = w.layer(Tar().dir("etc").file("etc/a", b"a").build(), "none")
    w.write_index([w.tagged(w.image([blob], architecture=ARCH), "nousr")])
    repo = tmp_path / "repo"
    run(cfsctl, "--repo", repo, "init", "--insecure", "--algorithm", "fsverity-sha256-12")
    proc = run(cfsctl, "--repo", repo, "oci", "pull", f"oci:{tmp_path / 'img'}:nousr", check=False)
    assert proc.returncode != 0
    assert b'Directory entry "usr" does not exist' in proc.stderr
    streams = layer_streams(repo, [blob.diff_id])
    with pytest.raises(ValueError, match='Directory entry "usr" does not exist'):
        merge.merge_layers(streams)


def test_layer_streams_exist(pulled: tuple[Path, dict[str, list[str]]]) -> None:
    repo, tags = pulled
    for diff_ids in tags.values():
        for d in diff_ids:
            assert os.path.exists(repo / "streams" / f"oci-layer-{d}")


@pytest.mark.parametrize("backend", ["native", "python"])
def test_deep_layer_matches_cfsctl(cfsctl: str, tmp_path: Path, backend: str) -> None:
    """A 2,000-deep layer: cfsctl's image id and dump, from its own repository, equal ours
    (both backends, through the CLI). cfsctl 0.9.4 also handles 20,000 levels (see
    docs/differences.md); tests/unit/tree/test_deep_trees.py runs that depth on our side."""
    from composefs.testing import TarBuilder

    t = TarBuilder().dir("usr")
    path = "usr"
    for _ in range(2_000):
        path += "/d"
        t.dir(path)
    t.file(path + "/f", seeded_bytes("bottom", 1000))
    w = LayoutWriter(tmp_path / "img")
    blob = w.layer(t.build(), "gzip")
    w.write_index([w.tagged(w.image([blob], architecture=ARCH), "deep")])
    ref = f"oci:{tmp_path / 'img'}:deep"
    repo = tmp_path / "repo"
    run(cfsctl, "--repo", repo, "init", "--insecure", "--algorithm", "fsverity-sha256-12")
    run(cfsctl, "--repo", repo, "oci", "pull", ref, "deep")
    theirs_id = run(cfsctl, "--repo", repo, "oci", "compute-id", "deep").stdout
    theirs_dump = run(cfsctl, "--repo", repo, "oci", "dump", "deep").stdout
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    ours = [sys.executable, "-m", "composefs.cli", "--repo", repo, "oci"]
    assert run(*ours, "compute-id", "deep", env=env).stdout == theirs_id
    assert run(*ours, "dump", "deep", env=env).stdout == theirs_dump
    assert theirs_dump.count(b"\n") == 2_000 + 3
