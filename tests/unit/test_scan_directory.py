"""``tree.scan_directory`` / ``tree.mkfs_directory`` (both backends) against cfsctl's
``create-dumpfile``, ``compute-id`` and ``create-image``: random trees (hard links, symlinks,
fifos, xattrs, nanosecond mtimes, sizes around the 64-byte inline limit, large files, devices
as root), objects stored byte for byte as cfsctl stores them, and the errors."""

from __future__ import annotations

import errno
import os
import random
import stat
import sys
from pathlib import Path
from types import ModuleType

import pytest
from test_fs import build_tree

from composefs import fsverity
from composefs._pure import erofs as pure_erofs
from support import need_root, run, tool

XATTR_CASES = {
    "raw": ({"transform": False}, ("--no-propagate-usr-to-root",)),
    "oci": ({}, ()),
    "oci-keep-user": ({"xattrs": "keep-user-xattrs"}, ("--xattrs", "keep-user-xattrs")),
}


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


def _cfsctl_dump(cfsctl: str, path: Path, hash_name: str, *args: str) -> bytes:
    return run(cfsctl, "--hash", hash_name, "--no-repo", "create-dumpfile", *args, path).stdout


def _set_times(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def random_tree(root: Path, seed: int, *, as_root: bool = False) -> None:
    """A random tree under ``root`` (which gets a ``/usr`` and a ``/run``)."""
    rng = random.Random(seed)
    root.mkdir()
    dirs = [root / "usr", root / "run"]
    for d in dirs:
        d.mkdir()
    files: list[Path] = []
    for i in range(rng.randrange(60, 140)):
        parent = rng.choice(dirs)
        name = parent / f"e{i}-{rng.randrange(1000)}"
        r = rng.random()
        if r < 0.15:
            name.mkdir()
            dirs.append(name)
        elif r < 0.6:
            size = rng.choice([0, 1, 63, 64, 65, 66, 4095, 4096, 4097, rng.randrange(70, 9000)])
            if rng.random() < 0.03:
                size = rng.randrange(1 << 20, 3 << 20)
            name.write_bytes(rng.randbytes(size))
            if rng.random() < 0.2:
                os.setxattr(name, f"user.k{rng.randrange(3)}", rng.randbytes(rng.randrange(9)))
            os.chmod(name, rng.choice([0o644, 0o600, 0o755, 0o4755, 0o1777, 0o2711]))
            files.append(name)
        elif r < 0.72 and files:
            os.link(rng.choice(files), name)
        elif r < 0.85:
            os.symlink(rng.choice(["../x", "target", "/abs/p", "-" * rng.randrange(1, 300)]), name)
            files.append(name)
        elif r < 0.9:
            os.mkfifo(name)
            files.append(name)
        elif as_root:
            kind = rng.choice([stat.S_IFCHR, stat.S_IFBLK])
            os.mknod(name, 0o640 | kind, os.makedev(rng.randrange(300), rng.randrange(1 << 20)))
            os.chown(name, rng.randrange(70000), rng.randrange(70000))
            if rng.random() < 0.5:
                os.setxattr(name, "trusted.t", b"v")
            files.append(name)
        else:
            name.write_bytes(b"")
            files.append(name)
    if rng.random() < 0.5:
        os.setxattr(root / "usr", "user.on-usr", b"1")
    if as_root:
        cap = bytes.fromhex("0100000200200000000000000000000000000000")
        os.setxattr(root / "usr", "security.capability", cap)
    for p in sorted(root.rglob("*"), reverse=True):
        _set_times(p, rng.randrange(-(10**18), 2 * 10**18))
    _set_times(root, rng.randrange(0, 2 * 10**18))


def _scan(backend: ModuleType, path: Path, hash_name: str, **kw: object) -> bytes:
    return bytes(backend.fs.scan_directory(os.fsencode(path), hash_name, **kw))


@pytest.mark.interop
@pytest.mark.parametrize("seed", range(6))
def test_random_trees_match_cfsctl(
    cfsctl: str, tmp_path: Path, pure_backend: ModuleType, native_backend: ModuleType, seed: int
) -> None:
    tree = tmp_path / "tree"
    random_tree(tree, seed)
    hash_name = ["sha256", "sha512"][seed % 2]
    for case, (kw, args) in XATTR_CASES.items():
        expected = _cfsctl_dump(cfsctl, tree, hash_name, *args)
        for threads in (0, 1, 3):
            got = _scan(native_backend, tree, hash_name, threads=threads, **kw)
            assert got == expected, (case, threads)
        assert _scan(pure_backend, tree, hash_name, **kw) == expected, case
    for version in (1, 2):
        expected_id = run(
            cfsctl, "--hash", hash_name, "--erofs-version", str(version), "--no-repo",
            "compute-id", tree,
        ).stdout.decode().strip()  # fmt: skip
        for backend in (native_backend, pure_backend):
            (image,) = backend.fs.mkfs_directory(str(tree), hash_name, versions=[version])
            assert fsverity.digest(image, hash_name).hex() == expected_id


@pytest.mark.interop
@pytest.mark.root
def test_random_trees_as_root_match_cfsctl(
    cfsctl: str, tmp_path: Path, pure_backend: ModuleType, native_backend: ModuleType
) -> None:
    """Devices, ids above 65535, trusted.* and security.capability xattrs."""
    need_root()
    for seed in range(3):
        tree = tmp_path / f"tree{seed}"
        random_tree(tree, 100 + seed, as_root=True)
        for case, (kw, args) in XATTR_CASES.items():
            expected = _cfsctl_dump(cfsctl, tree, "sha512", *args)
            assert _scan(native_backend, tree, "sha512", **kw) == expected, case
            assert _scan(pure_backend, tree, "sha512", **kw) == expected, case


@pytest.mark.interop
def test_fs_test_tree_matches_cfsctl(
    cfsctl: str, tmp_path: Path, pure_backend: ModuleType, native_backend: ModuleType
) -> None:
    """The hand-made tree of ``test_fs`` (odd names, pre-1970 mtime, sockets, hard-linked
    symlinks; devices and security/trusted xattrs as root)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    build_tree(tree, as_root=os.geteuid() == 0)
    for case, (kw, args) in XATTR_CASES.items():
        expected = _cfsctl_dump(cfsctl, tree, "sha256", *args)
        assert _scan(native_backend, tree, "sha256", **kw) == expected, case
        assert _scan(pure_backend, tree, "sha256", **kw) == expected, case


def test_mkfs_directory_is_mkfs_of_the_dumpfile(
    tmp_path: Path, pure_backend: ModuleType, native_backend: ModuleType
) -> None:
    tree = tmp_path / "tree"
    random_tree(tree, 7)
    for backend in (native_backend, pure_backend):
        for transform in (True, False):
            dump = _scan(backend, tree, "sha256", transform=transform)
            images = backend.fs.mkfs_directory(
                tree.as_posix(), "sha256", transform=transform, versions=[0, 1, 2]
            )
            assert [bytes(i) for i in images] == [pure_erofs.mkfs(dump, v) for v in (0, 1, 2)]


def _objects(objects: Path) -> dict[str, tuple[int, bytes]]:
    """Every object file: relative path -> (mode bits, content)."""
    out = {}
    for p in objects.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(objects).as_posix()] = (p.stat().st_mode & 0o7777, p.read_bytes())
    return out


@pytest.mark.interop
def test_objects_match_cfsctl_create_image(
    cfsctl: str, tmp_path: Path, pure_backend: ModuleType, native_backend: ModuleType
) -> None:
    """The objects a scan stores are cfsctl create-image's (minus its image object)."""
    tree = tmp_path / "tree"
    random_tree(tree, 11)
    ref = tmp_path / "ref"
    run(cfsctl, "--repo", ref, "init", "--insecure", "--algorithm", "fsverity-sha512-12", ref)
    image_id = run(cfsctl, "--repo", ref, "create-image", tree).stdout.decode().strip()
    expected = _objects(ref / "objects")
    image_hex = image_id.split(":")[1]
    image_object = f"{image_hex[:2]}/{image_hex[2:]}"
    assert image_object in expected
    del expected[image_object]
    for name, backend in (("native", native_backend), ("python", pure_backend)):
        for threads in (0, 1) if name == "native" else (0,):
            objects = tmp_path / f"objects-{name}-{threads}"
            objects.mkdir()
            fd = os.open(objects, os.O_RDONLY | os.O_DIRECTORY)
            try:
                dump = _scan(backend, tree, "sha512", objects_fd=fd, threads=threads)
                # a second scan finds every object present
                assert _scan(backend, tree, "sha512", objects_fd=fd) == dump
            finally:
                os.close(fd)
            assert _objects(objects) == expected, (name, threads)
            assert dump == _cfsctl_dump(cfsctl, tree, "sha512")


@pytest.mark.interop
@pytest.mark.parametrize("backend", ["native", "python"])
def test_cli_create_image_matches_cfsctl(cfsctl: str, tmp_path: Path, backend: str) -> None:
    """``composefs create-image`` leaves the repository as cfsctl does: objects, images, refs
    (a repository with an extra EROFS format too)."""
    tree = tmp_path / "tree"
    random_tree(tree, 12)
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    repos = {}
    for who in ("cfsctl", "ours"):
        repo = tmp_path / who
        init = ["init", "--insecure", "--algorithm", "fsverity-sha256-12", repo]
        run(cfsctl, "--repo", repo, *init)
        if who == "cfsctl":
            out = run(cfsctl, "--repo", repo, "create-image", tree, "name").stdout
        else:
            out = run(
                sys.executable, "-m", "composefs.cli", "--repo", repo, "create-image", tree,
                "name", env=env,
            ).stdout  # fmt: skip
        repos[who] = (repo, out)
    (a, out_a), (b, out_b) = repos["cfsctl"], repos["ours"]
    assert out_a == out_b
    assert _objects(a / "objects") == _objects(b / "objects")

    def links(repo: Path) -> dict[str, str]:
        return {
            p.relative_to(repo).as_posix(): os.readlink(p)
            for p in (repo / "images").rglob("*")
            if p.is_symlink()
        }

    assert links(a) == links(b)
    assert run(cfsctl, "--repo", b, "fsck").stdout.endswith(b"status: ok\n")


# -- errors ----------------------------------------------------------------------------------


def test_errors(tmp_path: Path, backend_module: ModuleType) -> None:
    scan = backend_module.fs.scan_directory
    missing = tmp_path / "missing"
    with pytest.raises(OSError) as info:
        scan(str(missing), "sha256")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(missing)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(OSError) as info:
        scan(os.fsencode(link), "sha256")  # O_NOFOLLOW, as cfsctl
    assert info.value.errno == errno.ENOTDIR
    assert info.value.filename == str(link)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    with pytest.raises(ValueError, match=r'^Directory entry "usr" does not exist$'):
        scan(str(tree), "sha256")
    assert scan(str(tree), "sha256", transform=False).startswith(b"/ ")
    (tree / "run").write_bytes(b"")
    (tree / "usr").mkdir()
    with pytest.raises(ValueError, match=r'^Directory entry "run" is not a subdirectory$'):
        scan(str(tree), "sha256")
    with pytest.raises(ValueError):
        scan(str(tree), "md5")
    with pytest.raises(ValueError, match="invalid xattr filtering mode"):
        scan(str(tree), "sha256", xattrs="all")
    with pytest.raises(ValueError, match="unsupported EROFS format version 3"):
        backend_module.fs.mkfs_directory(str(tree), "sha256", transform=False, versions=[3])
    with pytest.raises(ValueError, match="objects_fd must be a file descriptor"):
        scan(str(tree), "sha256", transform=False, objects_fd=-1)


def test_cli_errors(tmp_path: Path) -> None:
    for backend in ("native", "python"):
        env = dict(os.environ, COMPOSEFS_BACKEND=backend)
        proc = run(
            sys.executable, "-m", "composefs.cli", "--no-repo", "create-dumpfile",
            tmp_path / "missing", env=env, check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr.decode() == (
            f"Error: Reading filesystem from {tmp_path}/missing\n\nCaused by:\n"
            f"    0: Scanning directory {tmp_path}/missing\n"
            f"    1: No such file or directory: {tmp_path}/missing (os error 2)\n"
        )
