"""Directory trees written on disk for the directory scanner tests (``composefs.fs``, the
backends' ``scan_directory`` / ``mkfs_directory``), checked against ``cfsctl``."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path


def patterned(n: int, seed: int = 0) -> bytes:
    """``n`` bytes ``(i * 7 + seed) % 251``."""
    return bytes((i * 7 + seed) % 251 for i in range(n))


def _set_times(path: Path, sec: int, nsec: int) -> None:
    ns = sec * 1_000_000_000 + nsec
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def build_tree(root: Path, *, as_root: bool) -> None:
    """A tree with every kind of entry this user can make (devices etc. only as root)."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/empty").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "run/user/0").mkdir(parents=True)
    (root / "run/user/0/state").write_bytes(b"runtime state, dropped by the OCI transform" * 3)
    (root / "run/marker").write_bytes(b"x")
    for size in (0, 1, 63, 64, 65, 4095, 4096, 4097, 70_000, 1 << 20):
        (root / f"usr/lib/f{size}").write_bytes(patterned(size, size))
    (root / "usr/lib/same-a").write_bytes(patterned(5000, 1))
    (root / "usr/lib/same-b").write_bytes(patterned(5000, 1))  # same content, separate inode
    (root / "usr/bin/tool").write_bytes(patterned(9000, 3))
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    os.link(root / "usr/bin/tool", root / "etc/tool-link")  # three names, two directories
    (root / "etc/small").write_bytes(b"small\n")
    os.link(root / "etc/small", root / "usr/lib/small-link")
    os.symlink("../lib/f70000", root / "usr/bin/sym")
    os.symlink("/" + "long/" * 60 + "target", root / "etc/longsym")
    os.symlink("-", root / "etc/dash")
    os.symlink("dangling", root / "etc/dangling")
    os.link(root / "etc/dash", root / "etc/dash-hardlink", follow_symlinks=False)
    os.mkfifo(root / "etc/fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(root / "etc/sock"))
    # awkward names: escapes in the dumpfile, byte order of non-ASCII names
    odd = os.fsencode(root / "etc") + b"/"
    for name in (
        b"with space",
        b"new\nline",
        b"eq=ual",
        b"\xff\xfe-bytes",
        b"\xc3\xa9t\xc3\xa9",
        b"-",
    ):
        with open(odd + name, "wb") as f:
            f.write(name)
    os.chmod(root / "etc/small", 0o600)
    os.chmod(root / "usr/lib/empty", 0o1777)
    # xattrs: user.* everywhere (also on directories), values with '=' and binary bytes
    os.setxattr(root / "usr/lib/f65", "user.comment", b"key=value")
    os.setxattr(root / "usr/lib/f65", "user.binary", bytes(range(0, 256, 7)))
    os.setxattr(root / "usr/bin/tool", "user.a", b"")
    os.setxattr(root / "usr", "user.dir", b"on /usr, copied to the root")
    os.setxattr(root / "etc", "user.etc", b"1")
    if as_root:
        os.mknod(root / "etc/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "etc/blk", 0o640 | stat.S_IFBLK, os.makedev(259, 70000))
        os.mknod(root / "etc/bigdev", 0o600 | stat.S_IFCHR, os.makedev(4095, 1048575))
        os.link(root / "etc/null", root / "etc/null-link")
        cap = bytes.fromhex("0100000200200000000000000000000000000000")
        os.setxattr(root / "usr/bin/tool", "security.capability", cap)
        os.setxattr(root / "usr", "security.capability", cap)
        os.setxattr(root / "usr/lib/f4096", "trusted.overlay.opaque", b"y")
        os.setxattr(root / "usr/lib/f4096", "trusted.other", b"t")
        os.setxattr(root / "etc/longsym", "trusted.on-symlink", b"s", follow_symlinks=False)
        os.setxattr(root / "usr/lib", "security.test", b"dropped")
        os.chown(root / "usr/lib/f1", 1000, 100)
        os.chown(root / "usr/bin", 0, 65534)
        os.chown(root / "usr", 7, 8)
        os.chown(root / "etc/longsym", 123456, 654321, follow_symlinks=False)
    # times last (creating entries changes the directories' mtimes); nanoseconds and a
    # timestamp before 1970 included
    for i, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        _set_times(p, 1_600_000_000 + i * 1001, (i * 123_456_789) % 1_000_000_000)
    _set_times(root / "usr/lib/f0", -86_400, 5)
    _set_times(root / "usr", 1_700_000_000, 999_999_999)
    _set_times(root / "run", 1_500_000_000, 1)
    _set_times(root, 1_234_567_890, 42)
