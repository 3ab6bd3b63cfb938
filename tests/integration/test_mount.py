"""``composefs.mount``: kernel mounts of composefs images (root only).

A three-layer OCI image (whiteouts, an opaque directory, cross-layer hard links, replaced
files, xattrs, devices, ``/run`` content) is pulled into an insecure repository by a
*producer*, and the image it commits is mounted with :func:`composefs.mount.mount_image`.
:func:`check_mounted_tree` then compares every entry under the mount point with the tree
written out by hand in :data:`EXPECTED` (content, type, mode, owner, mtime, device number,
symlink target, xattrs, hard links sharing an inode).

Producers: ``cfsctl`` (``cfsctl oci pull``) and ``ours`` (``composefs oci pull``, which commits
the same image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from composefs import mount as mount_module
from composefs.errors import format_error
from composefs.mount import MountError, mount_image, unmount
from composefs.oci.platform import host_platform
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import need_root, run, tool
from support.tars import seeded_bytes

pytestmark = pytest.mark.root

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service
T1, T2, T3 = 1_700_000_000, 1_700_000_100, 1_700_000_200


def _data(seed: str, size: int) -> bytes:
    return seeded_bytes(seed, size, "sha256")


# -- the image ---------------------------------------------------------------------------------


def _layer1() -> bytes:
    t = TarBuilder(mtime=T1)
    for d in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", "var", "var/cache", "opt"):
        t.dir(d)
    t.dir("opt/dir")
    t.dir("run", mode=0o755)
    t.dir("run/lock", mode=0o700)
    t.dir("tmp", mode=0o1777)
    t.file(
        "usr/bin/tool",
        _data("tool", 70_000),
        mode=0o4755,
        uid=1000,
        gid=100,
        xattrs={"security.capability": CAP.decode("latin-1"), "user.note": "dropped"},
    )
    t.file("usr/bin/sh", _data("sh", 5000), mode=0o755)
    t.hardlink("usr/bin/sh-hard", "usr/bin/sh")
    t.symlink("usr/bin/sh-link", "sh")
    t.symlink("etc/abs-link", "/usr/lib/small")
    t.file("usr/lib/small", b"tiny\n")
    t.file("usr/lib/exact64", _data("64", 64))
    t.file("usr/lib/exact65", _data("65", 65))
    t.file("usr/lib/empty", b"")
    t.file("usr/lib/big", _data("big-old", 300_000))
    t.file("usr/share/secret", _data("secret", 200), mode=0o600, uid=5, gid=6)
    t.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    t.file("etc/shadow", b"root:*::0:::::\n", mode=0o640, gid=42)
    t.fifo("etc/fifo")
    t.chardev("etc/null", 1, 3)
    t.file("var/cache/old", _data("old", 1000))
    t.file("var/gone", b"whited out\n" * 10)
    t.file("opt/dir/inner", _data("inner", 5000))
    t.file("opt/kept", b"kept\n")
    t.file("run/lock/pid", b"1\n")
    return t.build()


def _layer2() -> bytes:
    t = TarBuilder(mtime=T2)
    t.dir("etc", mode=0o750)  # directory over directory: only the stat changes
    t.dir("var")
    t.whiteout("var/gone")
    t.dir("opt")
    t.whiteout("opt/dir")
    t.dir("var/cache")
    t.opaque("var/cache")
    t.file("var/cache/new", _data("new", 2000))
    t.file("usr/lib/big", _data("big-new", 100_000), mode=0o644)
    t.file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n")
    t.hardlink("usr/bin/tool-hard", "usr/bin/tool")  # a hard link to a lower layer's file
    t.hardlink("etc/big-link", "usr/lib/big")
    return t.build()


def _layer3() -> bytes:
    t = TarBuilder(mtime=T3)
    t.file("usr/share/doc", b"uncompressed layer\n" * 10, xattrs={"user.x": "1"})
    return t.build()


def build_layout(path: Path) -> str:
    """Writes the image into an OCI layout; returns the tag."""
    w = LayoutWriter(path)
    layers = [w.layer(_layer1(), "gzip"), w.layer(_layer2(), "zstd"), w.layer(_layer3(), "none")]
    w.write_index([w.tagged(w.image(layers, architecture=host_platform().architecture), "t")])
    return "t"


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "dir" "file" "symlink" "fifo" "char" "block"
    mode: int
    mtime: int
    uid: int = 0
    gid: int = 0
    data: bytes = b""  # file content or symlink target
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()


def _d(mtime: int, mode: int = 0o755, **kw: object) -> Entry:
    return Entry("dir", mode, mtime, **kw)  # type: ignore[arg-type]


def _f(mtime: int, data: bytes, mode: int = 0o644, **kw: object) -> Entry:
    return Entry("file", mode, mtime, data=data, **kw)  # type: ignore[arg-type]


#: The merged, OCI-transformed tree: root has /usr's metadata, /run is empty, user.* xattrs
#: are gone, whiteouts and everything they hide are absent.
EXPECTED: dict[str, Entry] = {
    "/": _d(T1),
    "/etc": _d(T2, 0o750),
    "/etc/abs-link": Entry("symlink", 0o777, T1, data=b"/usr/lib/small"),
    "/etc/big-link": _f(T2, _data("big-new", 100_000)),
    "/etc/fifo": Entry("fifo", 0o644, T1),
    "/etc/null": Entry("char", 0o644, T1, rdev=os.makedev(1, 3)),
    "/etc/passwd": _f(T2, b"root:x:0:0::/root:/bin/bash\n"),
    "/etc/shadow": _f(T1, b"root:*::0:::::\n", 0o640, gid=42),
    "/opt": _d(T2),
    "/opt/kept": _f(T1, b"kept\n"),
    "/run": _d(T1),
    "/tmp": _d(T1, 0o1777),
    "/usr": _d(T1),
    "/usr/bin": _d(T1),
    "/usr/bin/sh": _f(T1, _data("sh", 5000), 0o755),
    "/usr/bin/sh-hard": _f(T1, _data("sh", 5000), 0o755),
    "/usr/bin/sh-link": Entry("symlink", 0o777, T1, data=b"sh"),
    "/usr/bin/tool": _f(
        T1,
        _data("tool", 70_000),
        0o4755,
        uid=1000,
        gid=100,
        xattrs=((b"security.capability", CAP),),
    ),
    "/usr/bin/tool-hard": _f(
        T1,
        _data("tool", 70_000),
        0o4755,
        uid=1000,
        gid=100,
        xattrs=((b"security.capability", CAP),),
    ),
    "/usr/lib": _d(T1),
    "/usr/lib/big": _f(T2, _data("big-new", 100_000)),
    "/usr/lib/empty": _f(T1, b""),
    "/usr/lib/exact64": _f(T1, _data("64", 64)),
    "/usr/lib/exact65": _f(T1, _data("65", 65)),
    "/usr/lib/small": _f(T1, b"tiny\n"),
    "/usr/share": _d(T1),
    "/usr/share/doc": _f(T3, b"uncompressed layer\n" * 10),
    "/usr/share/secret": _f(T1, _data("secret", 200), 0o600, uid=5, gid=6),
    "/var": _d(T2),
    "/var/cache": _d(T2),
    "/var/cache/new": _f(T2, _data("new", 2000)),
}

#: Names of one inode.
EXPECTED_HARDLINKS = [
    {"/usr/bin/sh", "/usr/bin/sh-hard"},
    {"/usr/bin/tool", "/usr/bin/tool-hard"},
    {"/usr/lib/big", "/etc/big-link"},
]


# -- checking a mounted tree -------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    raise AssertionError(f"unknown file type {mode:o}")


def _walk(root: str, rel: str = "/") -> Iterator[tuple[str, os.stat_result]]:
    path = root if rel == "/" else root + rel
    st = os.lstat(path)
    yield rel, st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(path)):
            yield from _walk(root, (rel.rstrip("/")) + "/" + name)


def read_mounted_tree(
    mountpoint: str | os.PathLike[str],
) -> dict[str, tuple[Entry, os.stat_result]]:
    """Every entry under ``mountpoint`` as an :class:`Entry` (plus its raw stat)."""
    root = os.fspath(mountpoint)
    out: dict[str, tuple[Entry, os.stat_result]] = {}
    for rel, st in _walk(root):
        path = root if rel == "/" else root + rel
        kind = _kind(st.st_mode)
        data = b""
        if kind == "file":
            with open(path, "rb") as f:
                data = f.read()
        elif kind == "symlink":
            data = os.fsencode(os.readlink(path))
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)) for n in names)
        entry = Entry(
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_mtime_ns // 1_000_000_000,
            st.st_uid,
            st.st_gid,
            data,
            st.st_rdev if kind in ("char", "block") else 0,
            xattrs,
        )
        out[rel] = (entry, st)
    return out


def check_mounted_tree(
    mountpoint: str | os.PathLike[str],
    expected: dict[str, Entry],
    hardlinks: list[set[str]],
) -> None:
    """Asserts that the tree under ``mountpoint`` is exactly ``expected``: the same paths, and
    for each the same type, permission bits, owner, mtime, content (or symlink target or
    device number) and xattrs; the names in each set of ``hardlinks`` share one inode whose
    link count is the size of the set; every other file has a link count of 1."""
    actual = read_mounted_tree(mountpoint)
    assert sorted(actual) == sorted(expected)
    for path, want in expected.items():
        got = actual[path][0]
        if got != want:  # show a short diff, not 300 KB of content
            for field in dataclasses.fields(Entry):
                a, b = getattr(got, field.name), getattr(want, field.name)
                if field.name == "data" and a != b:
                    a = (len(a), hashlib.sha256(a).hexdigest()[:16])
                    b = (len(b), hashlib.sha256(b).hexdigest()[:16])
                assert a == b, f"{path}: {field.name}"
    linked = {p for group in hardlinks for p in group}
    for group in hardlinks:
        inodes = {actual[p][1].st_ino for p in group}
        assert len(inodes) == 1, f"{sorted(group)} are not one inode"
        for p in group:
            assert actual[p][1].st_nlink == len(group), p
    for path, (entry, st) in actual.items():
        if entry.kind != "dir" and path not in linked:
            assert st.st_nlink == 1, path


# -- producers ---------------------------------------------------------------------------------


def _ours(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "composefs.cli", *args)


def _cfsctl(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run(tool("cfsctl"), *args)


#: producer name -> the command line tool that runs ``init`` / ``oci pull`` / ``oci inspect``
PRODUCERS: dict[str, Callable[..., subprocess.CompletedProcess[bytes]]] = {
    "cfsctl": _cfsctl,
    "ours": _ours,
}


def produce_image(producer: str, repo: Path, layout: Path, tag: str, algorithm: str) -> str:
    """Pulls ``layout:tag`` into a new insecure repository with ``producer``; returns the hex
    id of the EROFS image it committed (``oci inspect``'s ``composefs_erofs``)."""
    cli = PRODUCERS[producer]
    cli("--repo", repo, "init", "--insecure", "--algorithm", algorithm, repo)
    ref = f"oci:{layout}:{tag}"
    cli("--repo", repo, "oci", "pull", ref, "img")
    image = json.loads(cli("--repo", repo, "oci", "inspect", "img").stdout)["composefs_erofs"]
    assert isinstance(image, str) and image, f"{producer} committed no EROFS image"
    return image


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "img"
    build_layout(path)
    return path


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    need_root()
    target = tmp_path / "mnt"
    target.mkdir()
    yield target
    # a test that failed between mount and unmount must not leave the mount behind
    if os.path.ismount(target):
        unmount(target, lazy=True)


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ["fsverity-sha512-12", "fsverity-sha256-12"])
@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_mount_pulled_image(
    producer: str, algorithm: str, layout: Path, tmp_path: Path, mountpoint: Path
) -> None:
    repo = tmp_path / "repo"
    image = produce_image(producer, repo, layout, "t", algorithm)
    mount_image(repo, image, mountpoint)
    try:
        assert os.path.ismount(mountpoint)
        fields = _findmnt(mountpoint)
        assert fields["SOURCE"] == f"composefs:{image}"
        assert fields["FSTYPE"] == "overlay"
        options = fields["OPTIONS"].split(",")
        assert "ro" in options and "metacopy=on" in options and "redirect_dir=on" in options
        assert "verity=require" not in options  # an insecure repository
        check_mounted_tree(mountpoint, EXPECTED, EXPECTED_HARDLINKS)
    finally:
        unmount(mountpoint)
    assert not os.path.ismount(mountpoint)
    assert os.listdir(mountpoint) == []


def _findmnt(path: Path) -> dict[str, str]:
    out = run("findmnt", "-J", "-o", "SOURCE,FSTYPE,OPTIONS", "--mountpoint", path).stdout
    fs = json.loads(out)["filesystems"]
    assert len(fs) == 1
    return {k.upper(): v for k, v in fs[0].items()}


# -- images made by create-image: names, layer passing, verity, upper layers, errors -----------


@pytest.fixture(scope="module")
def created(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An insecure sha512 repository with one image from ``cfsctl create-image``, named ``x``."""
    need_root()
    base = tmp_path_factory.mktemp("created")
    tree = base / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/big").write_bytes(_data("big", 10_000))
    (tree / "usr/small").write_bytes(b"small\n")
    repo = base / "repo"
    _cfsctl("--repo", repo, "init", "--insecure", repo)
    out = _cfsctl("--repo", repo, "create-image", tree, "x").stdout.decode().strip()
    return repo, out.split(":", 1)[1]


def _check_created(mountpoint: Path) -> None:
    assert (mountpoint / "usr/bin/big").read_bytes() == _data("big", 10_000)
    assert (mountpoint / "usr/small").read_bytes() == b"small\n"


@pytest.mark.interop
@pytest.mark.parametrize("name", ["hex", "refs/x", "x"])
@pytest.mark.parametrize("fd_layers", [True, False], ids=["fd-layers", "lowerdir-string"])
def test_image_names_and_layer_passing(
    created: tuple[Path, str], mountpoint: Path, name: str, fd_layers: bool
) -> None:
    repo_path, image = created
    image_name = image if name == "hex" else name
    with Repository.open(repo_path) as repo:
        mount_image(repo, image_name, mountpoint, _fd_layers=fd_layers)
    try:
        fields = _findmnt(mountpoint)
        assert fields["SOURCE"] == f"composefs:{image_name}"
        options = fields["OPTIONS"].split(",")
        assert any(o.startswith("lowerdir+=" if fd_layers else "lowerdir=") for o in options)
        _check_created(mountpoint)
    finally:
        unmount(mountpoint)
    leftovers = list(Path(tempfile.gettempdir()).glob("composefs-erofs-*"))
    assert not leftovers, "temporary mount point left over"


@pytest.mark.interop
def test_secure_repository_requires_verity(created: tuple[Path, str], mountpoint: Path) -> None:
    """A secure repository mounts with ``verity=require``: without fs-verity on the objects
    (this kernel or filesystem has none) external files cannot be opened."""
    repo_path, _ = created
    with Repository.open(repo_path) as repo:
        repo._secure = True  # as if meta.json had fs-verity
        mount_image(repo, "refs/x", mountpoint)
    try:
        assert "verity=require" in _findmnt(mountpoint)["OPTIONS"].split(",")
        assert (mountpoint / "usr/small").read_bytes() == b"small\n"  # inline
        with pytest.raises(OSError):
            (mountpoint / "usr/bin/big").read_bytes()
    finally:
        unmount(mountpoint)


@pytest.mark.interop
def test_read_write_upper_layer(
    created: tuple[Path, str], mountpoint: Path, tmp_path: Path
) -> None:
    repo_path, image = created
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mount_image(repo_path, image, mountpoint, upperdir=upper, workdir=work, read_write=True)
    try:
        assert "rw" in _findmnt(mountpoint)["OPTIONS"].split(",")
        (mountpoint / "usr/new").write_bytes(b"written\n")
        (mountpoint / "usr/small").unlink()
        _check_created_after_write(mountpoint)
    finally:
        unmount(mountpoint)
    assert (upper / "usr/new").read_bytes() == b"written\n"
    # and read-only with an upper layer stays read-only
    mount_image(repo_path, image, mountpoint, upperdir=upper, workdir=work)
    try:
        with pytest.raises(OSError):
            (mountpoint / "usr/other").write_bytes(b"")
        assert (mountpoint / "usr/new").read_bytes() == b"written\n"
    finally:
        unmount(mountpoint)


def _check_created_after_write(mountpoint: Path) -> None:
    assert (mountpoint / "usr/bin/big").read_bytes() == _data("big", 10_000)
    assert not (mountpoint / "usr/small").exists()
    assert (mountpoint / "usr/new").read_bytes() == b"written\n"


@pytest.mark.interop
def test_errors(created: tuple[Path, str], mountpoint: Path, tmp_path: Path) -> None:
    repo_path, image = created
    cases = {
        ("refs/nope", mountpoint): "image not found: refs/nope",
        ("nope", mountpoint): "image not found: nope",
        ("0" * 128, mountpoint): "image not found: " + "0" * 128,
        (image, tmp_path / "missing"): f"mountpoint {tmp_path}/missing does not exist",
        (image, repo_path / "meta.json"): f"mountpoint {repo_path}/meta.json is not a directory",
    }
    for (name, target), cause in cases.items():
        with pytest.raises(MountError) as info:
            mount_image(repo_path, name, target)
        assert str(info.value) == f"Mounting image '{name}' at {target}"
        assert str(info.value.__cause__) == cause
    with pytest.raises(MountError, match="upperdir and workdir must be given together"):
        mount_image(repo_path, image, mountpoint, upperdir=tmp_path)
    with pytest.raises(MountError) as info:
        unmount(mountpoint)
    assert str(info.value) == f"Unmounting {mountpoint}: not a mount point"
    assert not os.path.ismount(mountpoint)


@pytest.mark.interop
def test_without_cap_sys_admin(created: tuple[Path, str], mountpoint: Path) -> None:
    """Without CAP_SYS_ADMIN the error says that mounting needs root."""
    repo_path, image = created
    script = (
        "from composefs.mount import mount_image\n"
        "from composefs.errors import format_error\n"
        "import sys\n"
        "try:\n"
        f"    mount_image({str(repo_path)!r}, {image!r}, {str(mountpoint)!r})\n"
        "except Exception as e:\n"
        "    print(format_error(e)); sys.exit(1)\n"
    )
    proc = run(
        tool("setpriv"),
        "--bounding-set",
        "-sys_admin",
        "--inh-caps",
        "-sys_admin",
        sys.executable,
        "-c",
        script,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.decode() == (
        f"Error: Mounting image '{image}' at {mountpoint}\n\nCaused by:\n"
        "    0: mounting composefs images needs root (CAP_SYS_ADMIN in the initial user "
        "namespace)\n"
        "    1: fsopen(erofs) failed\n"
        "    2: Operation not permitted (os error 1)\n"
    )
    assert not os.path.ismount(mountpoint)


def test_kernel_refusals_are_reported(
    created: tuple[Path, str], mountpoint: Path, tmp_path: Path
) -> None:
    """The failing step is named, with the kernel's own log for the context when it has one."""
    repo_path, image = created
    upper = tmp_path / "upper"
    (upper / "work").mkdir(parents=True)  # a workdir inside the upperdir: refused
    with pytest.raises(MountError) as info:
        mount_image(repo_path, image, mountpoint, upperdir=upper, workdir=upper / "work")
    assert format_error(info.value).splitlines()[3:] == [
        "    0: overlay: creating the filesystem",
        "    1: Invalid argument (os error 22)",
    ]
    assert not os.path.ismount(mountpoint)
    with mount_module._FsContext("overlay") as ctx, pytest.raises(MountError) as info:
        ctx.set_string("no-such-option", "1")
    assert str(info.value) == (
        "overlay: setting no-such-option=1 (kernel: e overlay: Unknown parameter 'no-such-option')"
    )


@pytest.mark.interop
@pytest.mark.parametrize("mounter", ["composefs oci mount", "composefs mount", "cfsctl oci mount"])
def test_mount_commands(mounter: str, layout: Path, tmp_path: Path, mountpoint: Path) -> None:
    """Our pull mounted through our CLI and through cfsctl's (which reads our repository)."""
    repo = tmp_path / "repo"
    image = produce_image("ours", repo, layout, "t", "fsverity-sha512-12")
    if mounter == "composefs oci mount":
        _ours("--repo", repo, "oci", "mount", "img", mountpoint)
    elif mounter == "composefs mount":
        _ours("--repo", repo, "mount", image, mountpoint)
    else:
        _cfsctl("--repo", repo, "oci", "mount", "img", mountpoint)
    try:
        assert _findmnt(mountpoint)["SOURCE"] == f"composefs:{image}"
        check_mounted_tree(mountpoint, EXPECTED, EXPECTED_HARDLINKS)
    finally:
        unmount(mountpoint)
