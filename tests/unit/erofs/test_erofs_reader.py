"""The EROFS reader: ``collect_objects`` against ``cfsctl image-objects``, and malformed images.

Images are written by cfsctl 0.9 (``create-image``) in every format it supports (V0, V1, V2)
with both digest algorithms; our set of referenced objects must equal cfsctl's, and the
fs-verity digests of the tree's files bigger than 64 bytes. Corrupted images must raise
``ErofsError`` and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import fsverity
from composefs.erofs import (
    ErofsError,
    ImageInfo,
    collect_objects,
    parse_object_path,
    read_image_info,
)
from composefs.errors import ComposefsError
from composefs.fsverity import Algorithm
from support import run, tool

VERSIONS = [0, 1, 2]
ALGORITHMS = [Algorithm.SHA256, Algorithm.SHA512]
INLINE_MAX = 64


# -- trees ----------------------------------------------------------------------------------------


def _content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tree_empty(root: Path) -> None:
    pass


def _tree_sizes(root: Path) -> None:
    for i, size in enumerate([0, 1, 63, 64, 65, 4095, 4096, 4097, 100000]):
        _write(root / f"file-{size}", _content(i, size))


def _tree_duplicates(root: Path) -> None:
    big = _content(1, 200)
    small = b"tiny but shared"
    for d in ("a", "b", "a/deeper"):
        for n in ("one", "two"):
            _write(root / d / n, big)
            _write(root / d / f"{n}.small", small)
    _write(root / "other", _content(2, 200))


def _tree_many(root: Path) -> None:
    # one directory of 1500 entries (many directory blocks) ...
    for i in range(1500):
        size = 70 + i % 50 if i % 3 == 0 else i % 60
        _write(root / "flat" / f"entry-number-{i:05}-with-a-longer-name", _content(i, size))
    # ... and 1500 more spread over nested directories
    for i in range(1500):
        parts = [f"level{d}-{(i >> (2 * d)) % 4}" for d in range(5)]
        size = 100 + i % 7 if i % 2 else 10
        _write(root.joinpath(*parts, f"f{i}"), _content(10000 + i % 700, size))


def _tree_special(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    big = _content(7, 5000)
    _write(root / "dir" / "linked", big)
    os.link(root / "dir" / "linked", root / "hardlink-top")
    os.link(root / "dir" / "linked", root / "dir" / "sub" / "hardlink-deep")
    _write(root / "small-linked", b"inline")
    os.link(root / "small-linked", root / "dir" / "small-hardlink")
    os.symlink("dir/linked", root / "symlink")
    os.symlink("/nowhere/" + "x" * 990, root / "dir" / "long-symlink")
    os.symlink("dangling", root / "dir" / "sub" / "dangling")
    os.mkfifo(root / "dir" / "fifo")
    long = "L" * 255
    _write(root / long, _content(8, 300))
    (root / "dir" / long).mkdir()
    _write(root / "dir" / long / long, _content(9, 100))
    os.symlink(long, root / "dir" / ("s" * 255))
    # xattrs: unique, shared between inodes, on dirs, big values
    for i, path in enumerate([root / "dir" / "linked", root / "small-linked", root / "dir"]):
        os.setxattr(path, "user.shared", b"same value on several inodes")
        os.setxattr(path, f"user.unique{i}", f"value {i}".encode())
    os.setxattr(root / long, "user.big", b"v" * 2000)
    _write(root / "xattr-external", _content(10, 1000))
    os.setxattr(root / "xattr-external", "user.comment", b"an external file with an xattr")
    # overlay xattrs set by the user are escaped (trusted.overlay.overlay.*): not references
    fake = _content(11, 1000)
    _write(root / "fake-refs", fake)
    fake_digest = bytes(range(32))
    with_trusted = [
        ("trusted.overlay.metacopy", b"\x00\x24\x00\x01" + fake_digest),
        ("trusted.overlay.redirect", b"/00/" + fake_digest[1:].hex().encode()),
        ("security.capability", b"\x01\x00\x00\x02" + bytes(16)),
    ]
    for name, value in with_trusted:
        try:
            os.setxattr(root / "fake-refs", name, value)
            os.setxattr(root / "dir" / "sub", name, value)
        except OSError:  # not root: trusted.* and security.* need privileges
            pass
    # devices: whiteouts (0:0, escaped in V0/V1) in a subdirectory and shadowing a root stub
    for path, rdev, kind in [
        (root / "dir" / "sub" / "whiteout", os.makedev(0, 0), stat.S_IFCHR),
        (root / "ab", os.makedev(0, 0), stat.S_IFCHR),
        (root / "dir" / "chardev", os.makedev(1, 3), stat.S_IFCHR),
        (root / "dir" / "blockdev", os.makedev(8, 1), stat.S_IFBLK),
    ]:
        with contextlib.suppress(PermissionError):  # not root
            os.mknod(path, kind | 0o644, rdev)


def _tree_names(root: Path) -> None:
    base = os.fsencode(root)
    names = [
        b"\xff\xfe-not-utf8",
        b"caf\xe9",
        b"with space",
        b"new\nline",
        b"back\\slash",
        b"eq=uals",
        b"!bang",
        b"-dash",
        b" lead",
        b"\x01ctl",
        b"tab\t",
        b".hidden",
        b"...",
    ]
    for i, name in enumerate(names):
        with open(os.path.join(base, name), "wb") as f:
            f.write(_content(100 + i, 65 + i))
    os.mkdir(os.path.join(base, b"\xc3\x28dir"))
    with open(os.path.join(base, b"\xc3\x28dir", b"\x80"), "wb") as f:
        f.write(_content(99, 99))
    # two-hex-digit names in the root take the place of whiteout stubs in V0/V1
    _write(root / "00", _content(200, 500))
    _write(root / "7f", b"inline")
    _write(root / "ff" / "inside", _content(201, 500))


def _tree_oci(root: Path) -> None:
    # the default transform: root takes /usr's metadata, /run is emptied, xattrs filtered
    _write(root / "usr" / "bin" / "tool", _content(300, 3000))
    _write(root / "usr" / "lib" / "data", _content(301, 70))
    _write(root / "etc" / "config", b"key=value\n")
    _write(root / "run" / "dropped", _content(302, 3000))
    os.setxattr(root / "usr" / "bin" / "tool", "user.dropped", b"filtered out")


TREES: dict[str, Callable[[Path], None]] = {
    "empty": _tree_empty,
    "sizes": _tree_sizes,
    "duplicates": _tree_duplicates,
    "many": _tree_many,
    "special": _tree_special,
    "names": _tree_names,
    "oci": _tree_oci,
}


def _expected_objects(root: Path, algorithm: Algorithm, skip: tuple[str, ...] = ()) -> set[bytes]:
    """fs-verity digests of the regular files bigger than the inline limit."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        if dirpath == os.fsencode(root):
            dirnames[:] = [d for d in dirnames if os.fsdecode(d) not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            if stat.S_ISREG(st_.st_mode) and st_.st_size > INLINE_MAX:
                with open(path, "rb") as f:
                    found.add(fsverity.digest(f.read(), algorithm))
    return found


# -- cfsctl ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


class Builder:
    """Module-wide trees and one insecure cfsctl repository per algorithm."""

    def __init__(self, cfsctl: str, base: Path) -> None:
        self.cfsctl = cfsctl
        self.base = base
        self.trees: dict[str, Path] = {}
        self.repos: dict[Algorithm, Path] = {}
        self.images: dict[tuple[str, Algorithm, int], tuple[bytes, str]] = {}

    def tree(self, name: str) -> Path:
        if name not in self.trees:
            path = self.base / "trees" / name
            path.mkdir(parents=True)
            TREES[name](path)
            self.trees[name] = path
        return self.trees[name]

    def repo(self, algorithm: Algorithm) -> Path:
        if algorithm not in self.repos:
            path = self.base / f"repo-{algorithm.value}"
            run(
                self.cfsctl,
                "--repo",
                path,
                "init",
                "--insecure",
                "--algorithm",
                str(algorithm),
                path,
            )
            self.repos[algorithm] = path
        return self.repos[algorithm]

    def image(self, tree: str, algorithm: Algorithm, version: int) -> tuple[bytes, str]:
        """The image bytes and the hex image id of ``tree`` in format ``version``."""
        key = (tree, algorithm, version)
        if key not in self.images:
            repo = self.repo(algorithm)
            transform = [] if tree == "oci" else ["--no-propagate-usr-to-root"]
            out = run(
                self.cfsctl,
                "--repo",
                repo,
                "--erofs-version",
                str(version),
                "create-image",
                *transform,
                self.tree(tree),
            ).stdout.decode()
            prefix, hex_id = out.strip().split(":")
            assert prefix == algorithm.value
            self.images[key] = ((repo / "images" / hex_id).read_bytes(), hex_id)
        return self.images[key]

    def cfsctl_objects(self, algorithm: Algorithm, hex_id: str) -> set[bytes]:
        out = run(self.cfsctl, "--repo", self.repo(algorithm), "image-objects", hex_id)
        objects = set()
        for line in out.stdout.decode().split():
            prefix, hex_digest = line.split(":")
            assert prefix == algorithm.value
            objects.add(bytes.fromhex(hex_digest))
        return objects


@pytest.fixture(scope="module")
def builder(cfsctl: str, tmp_path_factory: pytest.TempPathFactory) -> Builder:
    return Builder(cfsctl, tmp_path_factory.mktemp("erofs"))


# -- agreement with cfsctl -------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=[a.value for a in ALGORITHMS])
@pytest.mark.parametrize("tree", list(TREES))
def test_objects_match_cfsctl(
    builder: Builder, tree: str, algorithm: Algorithm, version: int
) -> None:
    data, hex_id = builder.image(tree, algorithm, version)
    ours = collect_objects(data, algorithm)
    assert ours == builder.cfsctl_objects(algorithm, hex_id)
    skip = ("run",) if tree == "oci" else ()
    assert ours == _expected_objects(builder.tree(tree), algorithm, skip)
    assert all(len(d) == algorithm.digest_size for d in ours)
    # strict mode agrees on everything cfsctl writes
    assert collect_objects(data, algorithm, strict=True) == ours
    # any buffer works
    assert collect_objects(memoryview(bytearray(data)), algorithm) == ours

    info = read_image_info(data)
    assert info.composefs_version == version
    assert info.epoch == (2 if version == 2 else 1)
    assert info.blocks * 4096 == len(data)


@pytest.mark.interop
def test_many_files_is_fast(builder: Builder) -> None:
    data, _ = builder.image("many", Algorithm.SHA512, 1)
    start = time.perf_counter()
    collect_objects(data, Algorithm.SHA512)
    assert time.perf_counter() - start < 1.0


@pytest.mark.interop
@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_wrong_algorithm_finds_no_references(builder: Builder, version: int) -> None:
    # composefs-rs skips metacopy/redirect values of another digest size
    data, _ = builder.image("sizes", Algorithm.SHA256, version)
    assert collect_objects(data, Algorithm.SHA256)
    assert collect_objects(data, Algorithm.SHA512) == set()
    with pytest.raises(ErofsError, match=r"metacopy|redirect"):
        collect_objects(data, Algorithm.SHA512, strict=True)


def test_parse_object_path() -> None:
    digest = bytes(range(32))
    path = f"{digest[:1].hex()}/{digest[1:].hex()}".encode()
    assert parse_object_path(path, 32) == digest
    assert parse_object_path(b"/" + path, 32) == digest
    assert parse_object_path(b"../objects/" + path, 32) == digest
    assert parse_object_path(path.upper(), 32) == digest
    assert parse_object_path(path, 64) is None
    assert parse_object_path(path[1:], 32) is None
    assert parse_object_path(path.replace(b"/", b"0"), 32) is None
    assert parse_object_path(path[:-1] + b"g", 32) is None
    assert parse_object_path(path[:10] + b" " + path[11:], 32) is None
    assert parse_object_path(b"", 32) is None


# -- malformed images ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(builder: Builder) -> dict[int, bytes]:
    """Small SHA-256 images with external files, hardlinks, xattrs and directories."""
    return {v: builder.image("special", Algorithm.SHA256, v)[0] for v in VERSIONS}


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _inode(data: bytes, nid: int) -> tuple[int, int, int, int, int, int]:
    """(header size, xattr area size, layout, mode, size, u) of inode ``nid``."""
    off = nid * 32
    if data[off] & 1:
        fmt, icount, mode, size, u = struct.unpack_from("<HHH2xQI", data, off)
        hsize = 64
    else:
        fmt, icount, mode, size, u = struct.unpack_from("<HHH2xI4xI", data, off)
        hsize = 32
    return hsize, (12 + 4 * (icount - 1)) if icount else 0, (fmt >> 1) & 7, mode, size, u


def _dirents(data: bytes, nid: int) -> dict[bytes, tuple[int, int]]:
    """name -> (offset of the entry header, offset of the name) in directory ``nid``."""
    hsize, xsize, _, mode, size, u = _inode(data, nid)
    assert stat.S_ISDIR(mode)
    chunks = [(u * 4096 + i * 4096, 4096) for i in range(size // 4096)]
    if size % 4096:
        chunks.append((nid * 32 + hsize + xsize, size % 4096))
    found = {}
    for start, length in chunks:
        count = struct.unpack_from("<H", data, start + 8)[0] // 12
        offsets = [struct.unpack_from("<H", data, start + 12 * i + 8)[0] for i in range(count)]
        for i, name_off in enumerate(offsets):
            end = offsets[i + 1] if i + 1 < count else length
            name = data[start + name_off : start + end].rstrip(b"\0")
            found[name] = (start + 12 * i, start + name_off)
    return found


def _nid(data: bytes, path: bytes) -> int:
    nid = read_image_info(data).root_nid
    for part in path.split(b"/"):
        header = _dirents(data, nid)[part][0]
        nid = struct.unpack_from("<Q", data, header)[0]
    return nid


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_truncated_image(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    for length in [0, 1, 31, 32, 1024, 1151, 1152, 4095, 4096, len(data) - 4096, len(data) - 1]:
        with pytest.raises(ErofsError):
            collect_objects(data[:length], Algorithm.SHA256)
    with pytest.raises(ErofsError, match="too small"):
        collect_objects(b"", Algorithm.SHA256)


HEADER_CORRUPTIONS = {
    "composefs-magic": (0, "<I", 0xD078629B, "composefs magic"),
    "header-version": (4, "<I", 2, "format version"),
    "composefs-version": (12, "<I", 3, "composefs_version"),
    "erofs-magic": (1024, "<I", 0xE0F5E1E3, "EROFS magic"),
    "feature-compat": (1024 + 8, "<I", 0x8, "feature_compat"),
    "blkszbits": (1024 + 12, "<B", 9, "blkszbits"),
    "extslots": (1024 + 13, "<B", 1, "extslots"),
    "root-nid": (1024 + 14, "<H", 0xFFFF, "past the end"),
    "blocks": (1024 + 36, "<I", 1000, "truncated"),
    "meta-blkaddr": (1024 + 40, "<I", 1, "meta_blkaddr"),
    "xattr-blkaddr": (1024 + 44, "<I", 1 << 30, "xattr_blkaddr"),
    "feature-incompat": (1024 + 80, "<I", 0x1, "feature_incompat"),
    "compression": (1024 + 84, "<H", 1, "compression"),
    "extra-devices": (1024 + 86, "<H", 1, "multi-device"),
    "xattr-prefixes": (1024 + 91, "<B", 1, "xattr prefixes"),
    "packed-nid": (1024 + 96, "<Q", 5, "packed"),
}


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
@pytest.mark.parametrize("case", list(HEADER_CORRUPTIONS))
def test_bad_header(samples: dict[int, bytes], version: int, case: str) -> None:
    offset, fmt, value, message = HEADER_CORRUPTIONS[case]
    with pytest.raises(ErofsError, match=message):
        collect_objects(_patch(samples[version], offset, fmt, value), Algorithm.SHA256)


def test_image_info(samples: dict[int, bytes]) -> None:
    info = read_image_info(samples[2])
    assert isinstance(info, ImageInfo)
    assert (info.composefs_version, info.root_nid, info.xattr_blkaddr) == (2, 36, 0)
    assert read_image_info(samples[1]).root_nid == 36
    assert read_image_info(samples[1]).inos > 256  # the whiteout stubs
    with pytest.raises(ErofsError, match="composefs magic"):
        read_image_info(bytes(4096))
    assert issubclass(ErofsError, ComposefsError)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_directory_loops(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    root = read_image_info(data).root_nid
    sub = _nid(data, b"dir/sub")
    in_root = _dirents(data, root)
    in_sub = _dirents(data, sub)
    # a subdirectory entry pointing back at the root
    loop = _patch(data, in_root[b"dir"][0], "<Q", root)
    with pytest.raises(ErofsError, match="reachable twice"):
        collect_objects(loop, Algorithm.SHA256)
    # a directory containing itself
    self_loop = _patch(data, in_sub[b"dangling"][0], "<Q", sub)
    with pytest.raises(ErofsError, match="reachable twice"):
        collect_objects(self_loop, Algorithm.SHA256)
    # a directory reachable from two parents (hardlinked directory)
    twice = _patch(data, in_root[b"symlink"][0], "<Q", sub)
    with pytest.raises(ErofsError):
        collect_objects(twice, Algorithm.SHA256)
    # "." and ".." are not followed
    assert collect_objects(_patch(data, in_sub[b".."][0], "<Q", sub), Algorithm.SHA256)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_overlapping_inodes(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    # a well-formed fifo inode hidden in the inline target of a long symlink, and the entry
    # "dir/fifo" pointing at it: each inode alone is fine, together they overlap
    symlink = _nid(data, b"dir/long-symlink")
    hsize, xsize, layout, _, size, _ = _inode(data, symlink)
    assert (layout, size) == (2, 999)  # FLAT_INLINE, the whole target in the inode
    fake = -(-(symlink * 32 + hsize + xsize) // 32) + 1
    image = bytearray(data)
    image[fake * 32 : fake * 32 + 32] = struct.pack("<HHHH24x", 0, 0, 0o10644, 1)
    struct.pack_into("<Q", image, _dirents(data, _nid(data, b"dir"))[b"fifo"][0], fake)
    with pytest.raises(ErofsError, match="overlaps"):
        collect_objects(bytes(image), Algorithm.SHA256)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_bad_directory_entries(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    root = read_image_info(data).root_nid
    entries = _dirents(data, _nid(data, b"dir"))
    header = entries[b"linked"][0]
    cases = {
        "nid past the end": _patch(data, header, "<Q", 1 << 40),
        "file type": _patch(data, header + 10, "<B", 2),
        "unknown file type": _patch(data, header + 10, "<B", 0),
        "name offset": _patch(data, header + 8, "<H", 0xFFF0),
    }
    first = min(h for h, _ in entries.values())
    cases["first name offset 0"] = _patch(data, first + 8, "<H", 0)
    cases["first name offset 13"] = _patch(data, first + 8, "<H", 13)
    cases["slash in name"] = _patch(data, entries[b"fifo"][1], "<B", ord("/"))
    _, _, _, _, size, _ = _inode(data, root)
    cases["root size"] = _patch(data, root * 32 + 8, "<I", size + (1 << 28))
    for name, image in cases.items():
        with pytest.raises(ErofsError):
            collect_objects(image, Algorithm.SHA256)
            pytest.fail(name)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_bad_inodes(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    root = read_image_info(data).root_nid
    linked = _nid(data, b"dir/linked")
    off = linked * 32
    cases = {
        "layout": _patch(data, off, "<H", (data[off] & 1) | 6),
        "file type": _patch(data, off + 4, "<H", 0o644),
        "xattr count": _patch(data, off + 2, "<H", 0xFFFF),
        "shared xattr count": _patch(data, off + _inode(data, linked)[0] + 4, "<B", 255),
        "root not a directory": _patch(data, 1024 + 14, "<H", linked),
        "root layout": _patch(data, root * 32, "<H", (data[root * 32] & 1) | 8),
    }
    for name, image in cases.items():
        with pytest.raises(ErofsError):
            collect_objects(image, Algorithm.SHA256)
            pytest.fail(name)


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_metacopy_and_redirect_are_each_a_reference(
    samples: dict[int, bytes], version: int
) -> None:
    data = samples[version]
    digest = fsverity.digest(_content(10, 1000), Algorithm.SHA256)  # xattr-external
    objects = collect_objects(data, Algorithm.SHA256)
    assert digest in objects
    metacopy = data.index(b"\x00\x24\x00\x01" + digest)
    redirect = data.index(f"/{digest[:1].hex()}/{digest[1:].hex()}".encode())
    bad_metacopy = _patch(data, metacopy + 3, "<B", 2)  # algorithm byte
    bad_redirect = _patch(data, redirect + 3, "<B", ord("x"))  # "/xx/" -> "/xxx"
    # either one alone still names the object, like composefs-rs
    assert collect_objects(bad_metacopy, Algorithm.SHA256) == objects
    assert collect_objects(bad_redirect, Algorithm.SHA256) == objects
    both = _patch(bad_metacopy, redirect + 3, "<B", ord("x"))
    assert collect_objects(both, Algorithm.SHA256) == objects - {digest}
    for image in (bad_metacopy, bad_redirect):
        with pytest.raises(ErofsError):
            collect_objects(image, Algorithm.SHA256, strict=True)
    # a redirect naming another object is a reference to it too
    other = bytes(32)
    retarget = bytearray(bad_metacopy)
    retarget[redirect + 1 : redirect + 1 + 65] = f"00/{other[1:].hex()}".encode()
    assert collect_objects(bytes(retarget), Algorithm.SHA256) == objects - {digest} | {other}


@pytest.mark.parametrize("version", [0, 1])
def test_epoch1_invariants(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    root = read_image_info(data).root_nid
    in_root = _dirents(data, root)
    # a whiteout stub renamed: 255 hex names in the root
    missing_stub = bytearray(data)
    missing_stub[in_root[b"00"][1] + 1] = ord("g")
    with pytest.raises(ErofsError, match="hex-named"):
        collect_objects(bytes(missing_stub), Algorithm.SHA256)
    # a V0/V1 image marked as V2 is checked as V2: its escaped whiteouts are rejected
    with pytest.raises(ErofsError, match="escaped whiteout"):
        collect_objects(_patch(data, 12, "<I", 2), Algorithm.SHA256)
    # a whiteout device (a stub) below the root
    stub = struct.unpack_from("<Q", data, in_root[b"01"][0])[0]
    sub_entries = _dirents(data, _nid(data, b"dir/sub"))
    native = _patch(data, sub_entries[b"dangling"][0], "<Q", stub)
    native = _patch(native, sub_entries[b"dangling"][0] + 10, "<B", 3)
    with pytest.raises(ErofsError, match="whiteout device"):
        collect_objects(native, Algorithm.SHA256)


def test_v2_marked_as_v1_is_checked_as_v1(builder: Builder, samples: dict[int, bytes]) -> None:
    data, _ = builder.image("sizes", Algorithm.SHA256, 2)
    with pytest.raises(ErofsError, match="hex-named"):
        collect_objects(_patch(data, 12, "<I", 1), Algorithm.SHA256)
    # V2 keeps whiteouts as devices, which V0/V1 only allow as the root stubs
    with pytest.raises(ErofsError, match="whiteout device"):
        collect_objects(_patch(samples[2], 12, "<I", 1), Algorithm.SHA256)


def _check(image: bytes) -> None:
    start = time.perf_counter()
    try:
        result = collect_objects(image, Algorithm.SHA256)
    except ErofsError:
        pass
    else:
        assert isinstance(result, set)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("version", VERSIONS, ids=[f"v{v}" for v in VERSIONS])
def test_every_metadata_byte_flipped(samples: dict[int, bytes], version: int) -> None:
    data = samples[version]
    # the composefs header, superblock and the start of the inode table
    for offset in range(0, min(len(data), 4096), 3 if version else 1):
        image = bytearray(data)
        image[offset] ^= 0xFF
        _check(bytes(image))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    version=st.sampled_from(VERSIONS),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=8),
    length=st.none() | st.floats(0, 1.5),
)
def test_random_corruption(
    samples: dict[int, bytes], version: int, flips: list[tuple[float, int]], length: float | None
) -> None:
    image = bytearray(samples[version])
    for where, xor in flips:
        image[int(where * len(image))] ^= xor
    if length is not None:
        cut = int(length * len(image))
        image = image[:cut] + bytes(max(0, cut - len(image)))
    _check(bytes(image))
