"""``oci copy`` on filesystems that reflink (btrfs, xfs), made on loop devices by the test
(root): both tools store every layer object of the copy as a reflink of the source's object
(its own inode, extents shared), with or without ``--zerocopy``, and the destination
repositories are the same as cfsctl's (tests/interop/test_cli_surface_interop.py compares
them on ext4, where both tools hard-link)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from composefs.fsverity import Algorithm
from support import need_root, run, tool
from support.oci import build_layout
from support.repos import same_repositories

pytestmark = [pytest.mark.root, pytest.mark.interop]

#: FIEMAP extent flag: the extent is shared with another file (a reflink)
_SHARED = "shared"


@contextlib.contextmanager
def loop_filesystem(tmp_path: Path, kind: str) -> Iterator[Path]:
    need_root()
    mkfs = tool(f"mkfs.{kind}")
    image = tmp_path / f"{kind}.img"
    with open(image, "wb") as f:
        f.truncate(400 << 20)  # sparse; above mkfs.xfs's 300 MiB minimum
    run(mkfs, "-q", *(["-f"] if kind == "xfs" else []), image)
    mountpoint = tmp_path / f"{kind}-mnt"
    mountpoint.mkdir()
    run("mount", "-o", "loop", image, mountpoint)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", os.fspath(mountpoint)], check=False)


def env() -> dict[str, str]:
    return dict(os.environ, RUST_BACKTRACE="0")


def ours(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "composefs.cli", *args, env=env())


def shared_extents(path: Path) -> bool:
    out = run(tool("filefrag"), "-v", path).stdout.decode()
    return _SHARED in out


@pytest.mark.parametrize("kind", ["btrfs", "xfs"])
def test_copy_reflinks(tmp_path: Path, kind: str) -> None:
    cfsctl = tool("cfsctl")
    layout = tmp_path / "layout"
    build_layout(layout)
    with loop_filesystem(tmp_path, kind) as fs:
        src = fs / "src"
        run(cfsctl, "init", "--insecure", src, env=env())
        run(cfsctl, "--repo", src, "oci", "pull", f"oci:{layout}:multi", "multi", env=env())
        for extra, algorithm in (
            (["--zerocopy"], "fsverity-sha512-12"),
            ([], "fsverity-sha512-12"),
            ([], "fsverity-sha256-12"),  # another algorithm: reflinked under the new names
        ):
            tag = f"{len(extra)}-{algorithm}"
            dests = {name: fs / f"{name}-{tag}" for name in ("ours", "theirs")}
            for dest in dests.values():
                run(cfsctl, "init", "--insecure", "--algorithm", algorithm, dest, env=env())
            args = ["oci", "copy", "multi", "--from", src, "--name", "c", *extra]
            ours("--repo", dests["ours"], *args)
            run(cfsctl, "--repo", dests["theirs"], *args, env=env())
            same_repositories(dests["ours"], dests["theirs"], Algorithm.parse(algorithm), src)
            src_inodes = {p.stat().st_ino for p in (src / "objects").rglob("*") if p.is_file()}
            big = [
                p
                for p in (dests["ours"] / "objects").rglob("*")
                if p.is_file() and p.stat().st_size >= 65536
            ]
            assert big
            for path in big:
                st = path.stat()
                assert st.st_nlink == 1 and st.st_ino not in src_inodes, path
                assert shared_extents(path), f"{path} is not a reflink"
