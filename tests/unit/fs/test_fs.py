"""``composefs.fs``: reading a directory into the tree model, against ``cfsctl create-dumpfile``.

Each tree is read by us and by ``cfsctl --no-repo create-dumpfile`` (with and without
``--no-propagate-usr-to-root``, both hashes, both xattr modes) and the dumpfiles must be equal.
Our side is printed by :func:`dump` below, a small writer of composefs-rs's dumpfile format
kept here so that the reader can be checked on its own; once the backend dumpfile writer
(``composefs._pure.dumpfile.write``) exists, it must print the same bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from composefs import dumpfile as dumpfmt
from composefs import fs as fs_module
from composefs import fsverity
from composefs._pure import dumpfile as pure_dumpfile
from composefs._pure import erofs as pure_erofs
from composefs._pure import merge as pure_merge
from composefs._pure.tree import Directory, FileSystem, Leaf
from composefs.errors import format_error
from composefs.fs import FilesystemError, oci_transform, read_directory
from composefs.repository import Repository, object_pathname
from support import need_root, run, tool
from support.trees import build_tree, patterned

_TYPE = {
    "file": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "block": stat.S_IFBLK,
    "char": stat.S_IFCHR,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}


def dump(fs: FileSystem) -> bytes:
    """composefs-rs's dumpfile of ``fs`` (the ``cfsctl create-dumpfile`` text)."""
    counts: dict[int, int] = {}

    def count(d: Directory) -> None:
        for entry in d.entries.values():
            if isinstance(entry, Directory):
                count(entry)
            else:
                counts[id(entry)] = counts.get(id(entry), 0) + 1

    count(fs.root)
    first: dict[int, bytes] = {}
    lines: list[str] = []

    def xattrs(d: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return sorted(d.items())

    def walk(path: bytes, d: Directory) -> None:
        nlink = 2 + sum(isinstance(e, Directory) for e in d.entries.values())
        st = d.stat
        lines.append(
            dumpfmt.entry_line(
                path or b"/",
                mode=st.mode | stat.S_IFDIR,
                nlink=nlink,
                uid=st.uid,
                gid=st.gid,
                mtime=st.mtime,
                mtime_nsec=st.mtime_nsec,
                xattrs=xattrs(st.xattrs),
            )
        )
        for name in sorted(d.entries):
            entry = d.entries[name]
            sub = path + b"/" + name
            if isinstance(entry, Directory):
                walk(sub, entry)
                continue
            if id(entry) in first:
                lines.append(dumpfmt.hardlink_line(sub, first[id(entry)]))
                continue
            first[id(entry)] = sub
            lines.append(leaf_line(sub, entry, counts[id(entry)]))

    def leaf_line(path: bytes, leaf: Leaf, nlink: int) -> str:
        st = leaf.stat
        size, payload, content, digest = 0, b"", b"", None
        if leaf.kind == "file":
            size = leaf.size
            if leaf.digest is not None:
                payload = object_pathname(leaf.digest).encode()
                digest = leaf.digest.hex()
            else:
                assert leaf.inline is not None
                content = leaf.inline
        elif leaf.kind == "symlink":
            size, payload = len(leaf.target), leaf.target
        return dumpfmt.entry_line(
            path,
            mode=st.mode | _TYPE[leaf.kind],
            size=size,
            nlink=nlink,
            uid=st.uid,
            gid=st.gid,
            rdev=leaf.rdev,
            mtime=st.mtime,
            mtime_nsec=st.mtime_nsec,
            payload=payload,
            content=content,
            digest=digest,
            xattrs=xattrs(st.xattrs),
        )

    walk(b"", fs.root)
    return "".join(line + "\n" for line in lines).encode()


# -- test trees ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fs") / "tree"
    root.mkdir()
    build_tree(root, as_root=False)
    return root


@pytest.fixture(scope="module")
def root_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_root()
    root = tmp_path_factory.mktemp("fs") / "rtree"
    root.mkdir()
    build_tree(root, as_root=True)
    return root


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


def cfsctl_dump(cfsctl: str, path: Path, hash_name: str, *args: str) -> bytes:
    return run(cfsctl, "--hash", hash_name, "--no-repo", "create-dumpfile", *args, path).stdout


def ours(path: Path, hash_name: str, transform: str | None) -> FileSystem:
    fs = read_directory(path, algorithm=hash_name)
    if transform is not None:
        oci_transform(fs, transform)
    return fs


# -- against cfsctl --------------------------------------------------------------------------

CASES = {
    "raw": ("--no-propagate-usr-to-root",),
    "oci": (),
    "oci-keep-user": ("--xattrs", "keep-user-xattrs"),
}
TRANSFORM = {"raw": None, "oci": "allowlist-only", "oci-keep-user": "keep-user-xattrs"}


@pytest.mark.interop
@pytest.mark.parametrize("hash_name", ["sha256", "sha512"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dumpfile_matches_cfsctl(cfsctl: str, tree: Path, case: str, hash_name: str) -> None:
    expected = cfsctl_dump(cfsctl, tree, hash_name, *CASES[case])
    assert dump(ours(tree, hash_name, TRANSFORM[case])) == expected


@pytest.mark.interop
@pytest.mark.root
@pytest.mark.parametrize("case", sorted(CASES))
def test_dumpfile_matches_cfsctl_as_root(cfsctl: str, root_tree: Path, case: str) -> None:
    """Devices, security.* and trusted.* xattrs (also on a symlink), ids above 65535."""
    expected = cfsctl_dump(cfsctl, root_tree, "sha512", *CASES[case])
    assert dump(ours(root_tree, "sha512", TRANSFORM[case])) == expected


@pytest.mark.interop
@pytest.mark.parametrize("case", sorted(CASES))
def test_backend_dumpfile_writer_matches_cfsctl(cfsctl: str, tree: Path, case: str) -> None:
    expected = cfsctl_dump(cfsctl, tree, "sha256", *CASES[case])
    fs = ours(tree, "sha256", TRANSFORM[case])
    assert bytes(pure_dumpfile.write(fs)) == expected


@pytest.mark.interop
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("hash_name", ["sha256", "sha512"])
def test_image_id_matches_cfsctl_compute_id(
    cfsctl: str, tree: Path, version: int, hash_name: str
) -> None:
    """``create-image``'s default pipeline: read, OCI transform, EROFS, fs-verity digest."""
    expected = (
        run(
            cfsctl,
            "--hash",
            hash_name,
            "--erofs-version",
            str(version),
            "--no-repo",
            "compute-id",
            tree,
        )
        .stdout.decode()
        .strip()
    )
    fs = ours(tree, hash_name, "allowlist-only")
    assert fsverity.digest(pure_erofs.write(fs, version), hash_name).hex() == expected


def test_transform_agrees_with_the_merge_helper(tree: Path) -> None:
    """``oci_transform`` and the layer merge's own transform give the same tree."""
    for mode in ("allowlist-only", "keep-user-xattrs"):
        a = oci_transform(read_directory(tree), mode)
        b = read_directory(tree)
        pure_merge.transform_for_oci(b, mode)
        assert dump(a) == dump(b)


# -- the tree itself -------------------------------------------------------------------------


def test_tree_model(tree: Path) -> None:
    fs = read_directory(tree)
    root = fs.root
    usr = root.entries[b"usr"]
    etc = root.entries[b"etc"]
    assert isinstance(usr, Directory) and isinstance(etc, Directory)
    lib, bin_ = usr.entries[b"lib"], usr.entries[b"bin"]
    assert isinstance(lib, Directory) and isinstance(bin_, Directory)
    # byte order of names
    assert list(etc.entries) == sorted(etc.entries)
    # inline up to 64 bytes, external above
    for size in (0, 1, 63, 64):
        leaf = lib.entries[f"f{size}".encode()]
        assert isinstance(leaf, Leaf) and leaf.inline == patterned(size, size) and leaf.size == size
        assert leaf.digest is None
    for size in (65, 4096, 1 << 20):
        leaf = lib.entries[f"f{size}".encode()]
        assert isinstance(leaf, Leaf) and leaf.inline is None and leaf.size == size
        assert leaf.digest == fsverity.digest(patterned(size, size), "sha256")
    # hard links: one Leaf object; equal content in separate inodes: separate leaves
    assert bin_.entries[b"tool"] is bin_.entries[b"tool-link"] is etc.entries[b"tool-link"]
    assert etc.entries[b"small"] is lib.entries[b"small-link"]
    assert lib.entries[b"same-a"] is not lib.entries[b"same-b"]
    assert etc.entries[b"dash"] is etc.entries[b"dash-hardlink"]
    tool_leaf = bin_.entries[b"tool"]
    assert isinstance(tool_leaf, Leaf) and tool_leaf.stat.mode == 0o4755  # no type bits
    assert tool_leaf.stat.xattrs == {b"user.a": b""}
    sym = bin_.entries[b"sym"]
    assert isinstance(sym, Leaf) and sym.kind == "symlink" and sym.target == b"../lib/f70000"
    kinds = {name: e.kind for name, e in etc.entries.items() if isinstance(e, Leaf)}
    assert kinds[b"fifo"] == "fifo" and kinds[b"sock"] == "socket"
    assert b"\xff\xfe-bytes" in etc.entries
    # nanosecond and pre-1970 mtimes
    f0 = lib.entries[b"f0"]
    assert isinstance(f0, Leaf) and (f0.stat.mtime, f0.stat.mtime_nsec) == (-86_400, 5)
    assert (usr.stat.mtime, usr.stat.mtime_nsec) == (1_700_000_000, 999_999_999)
    assert (root.stat.mtime, root.stat.mtime_nsec) == (1_234_567_890, 42)


def test_oci_transform(tree: Path) -> None:
    fs = read_directory(tree)
    usr = fs.root.entries[b"usr"]
    assert isinstance(usr, Directory)
    oci_transform(fs)
    root = fs.root.stat
    assert (root.mode, root.uid, root.gid, root.mtime, root.mtime_nsec) == (
        usr.stat.mode,
        usr.stat.uid,
        usr.stat.gid,
        1_700_000_000,
        999_999_999,
    )
    run_dir = fs.root.entries[b"run"]
    assert isinstance(run_dir, Directory) and run_dir.entries == {}
    assert (run_dir.stat.mtime, run_dir.stat.mtime_nsec) == (1_700_000_000, 999_999_999)
    assert root.xattrs == {} and usr.stat.xattrs == {}  # user.* dropped by default

    fs = oci_transform(read_directory(tree), "keep-user-xattrs")
    assert fs.root.stat.xattrs == {b"user.dir": b"on /usr, copied to the root"}

    with pytest.raises(ValueError, match="unknown xattr filtering mode"):
        oci_transform(read_directory(tree), "all")


def test_oci_transform_errors(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(FilesystemError, match=r'^Directory entry "usr" does not exist$'):
        oci_transform(read_directory(tmp_path))
    (tmp_path / "usr").write_bytes(b"")
    with pytest.raises(FilesystemError, match=r'^Directory entry "usr" is not a subdirectory$'):
        oci_transform(read_directory(tmp_path))
    (tmp_path / "usr").unlink()
    (tmp_path / "usr").mkdir()
    (tmp_path / "run").symlink_to("usr")
    with pytest.raises(FilesystemError, match=r'^Directory entry "run" is not a subdirectory$'):
        oci_transform(read_directory(tmp_path))


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(FilesystemError) as info:
        read_directory(tmp_path / "missing")
    assert format_error(info.value) == (
        f"Error: Reading filesystem from {tmp_path}/missing\n\nCaused by:\n"
        f"    0: Scanning directory {tmp_path}/missing\n"
        f"    1: No such file or directory: {tmp_path}/missing (os error 2)"
    )
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(FilesystemError) as info:
        read_directory(tmp_path / "link")  # O_NOFOLLOW, as cfsctl
    assert isinstance(info.value.__cause__, FilesystemError)
    assert isinstance(info.value.__cause__.__cause__, OSError)
    assert info.value.__cause__.__cause__.errno == errno.ENOTDIR
    with pytest.raises(ValueError, match="unsupported hash algorithm"):
        read_directory(tmp_path, algorithm="md5")


def test_failing_entry_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "small").write_bytes(b"x")

    def fail(fd: int, size: int) -> bytes:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fs_module, "_read_small", fail)
    with pytest.raises(FilesystemError) as info:
        read_directory(tmp_path)
    assert format_error(info.value).splitlines()[3:] == [
        f"    0: Scanning leaf {tmp_path}/d/small",
        "    1: Input/output error (os error 5)",
    ]


# -- with a repository -------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ["fsverity-sha256-12", "fsverity-sha512-12"])
def test_objects_match_cfsctl_create_image(
    cfsctl: str, tree: Path, tmp_path: Path, algorithm: str
) -> None:
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    run(cfsctl, "--repo", theirs, "init", "--insecure", "--algorithm", algorithm, theirs)
    image_id = (
        run(cfsctl, "--repo", theirs, "create-image", tree).stdout.decode().split(":")[1].strip()
    )
    repo, _ = Repository.init(mine, algorithm, insecure=True)
    with repo:
        fs = read_directory(tree, repo)
        with pytest.raises(ValueError, match="does not match the repository"):
            read_directory(tree, repo, algorithm="sha256" if "512" in algorithm else "sha512")
    assert dump(fs) == cfsctl_dump(
        cfsctl, tree, algorithm.split("-")[1], "--no-propagate-usr-to-root"
    )

    def objects(repo_path: Path) -> dict[str, bytes]:
        return {p.parent.name + p.name: p.read_bytes() for p in (repo_path / "objects").glob("*/*")}

    theirs_objects = objects(theirs)
    del theirs_objects[image_id]  # the EROFS image is not ours to write here
    assert objects(mine) == theirs_objects

    # and every external leaf names one of them
    def leaves(d: Directory) -> list[Leaf]:
        out: list[Leaf] = []
        for e in d.entries.values():
            out.extend(leaves(e) if isinstance(e, Directory) else [e])
        return out

    digests = {leaf.digest.hex() for leaf in leaves(fs.root) if leaf.digest is not None}
    assert digests == set(theirs_objects)
