"""The native EROFS writer (``composefs._native.erofs``) against composefs-rs 0.9.4 / cfsctl.

* the pinned image ids of composefs-rs ``test_erofs_digest_stability`` (``empty`` and ``simple``
  in V0, V1, V2) and ``special_v1.dump`` (whiteouts, shared xattrs, ``trusted.overlay.*``
  escaping, hard links) in V1;
* random directory trees on disk (hard links, whiteouts, devices, fifos, sockets, long and
  short symlinks, inline and external files, big directories, xattrs incl. ACLs and
  ``trusted.overlay.*``, uid/gid above 65535, mixed and negative mtimes): the fs-verity
  digest of ``mkfs(cfsctl create-dumpfile DIR, N)`` equals ``cfsctl compute-id DIR`` for
  V0/V1/V2 and SHA-256/SHA-512, V0/V1 images equal ``cfsctl mkcomposefs --from-file`` output
  byte for byte, and every image passes ``fsck.erofs``;
* the native and pure-Python writers agree on generated trees (bytes or error message);
* errors are ``ValueError``; any buffer type is accepted.
"""

from __future__ import annotations

import os
import random
import stat
import struct
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import fsverity
from composefs._pure import dumpfile as pure_dumpfile
from composefs._pure.tree import (
    BLOCK,
    CHAR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
)
from support import load_backend, need, run, tool

DATA = Path(__file__).parents[2] / "data"

EMPTY = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
SIMPLE = (
    "/ 0 40755 2 0 0 0 0.0 - - -\n"
    "/blkdev 0 60000 1 0 0 123 0.0 - - -\n"
    "/chrdev 0 20000 1 0 0 123 0.0 - - -\n"
    "/fifo 0 10000 1 0 0 0 0.0 - - -\n"
    f"/regular-external 1234 100000 1 0 0 0 0.0 5a/{'5a' * 31} - {'5a' * 32}\n"
    "/regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n"
    "/socket 0 140000 1 0 0 0 0.0 - - -\n"
    "/symlink 7 120000 1 0 0 0 0.0 /target - -\n"
).encode()

# composefs-rs tests/mkfs.rs test_erofs_digest_stability (SHA-256 image ids).
PINNED = {
    "empty": (
        EMPTY,
        [
            "8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682",
            "14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63",
            "086b702a519b57d6ef5aea6f8b3f2be24355cd1fb835cd80fb4e3d388b24d5a5",
        ],
    ),
    "simple": (
        SIMPLE,
        [
            "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01",
            "ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5",
            "a8fcd41f8b313bede69f462f2af0a38d64b99a6333f5df884ea9ab4037fac722",
        ],
    ),
}
SPECIAL_V1_ID = "b1c78c25db8638be5b9b483472d32ee9624d8d32ded626a91cd536116e8df97c"


@pytest.fixture(scope="module")
def native() -> ModuleType:
    mod = load_backend("native")
    need(hasattr(mod, "erofs"), "the native backend has no erofs module (rebuild it)")
    return mod.erofs  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def pure() -> ModuleType:
    return load_backend("python").erofs  # type: ignore[no-any-return]


# -- pinned vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(PINNED))
@pytest.mark.parametrize("version", [0, 1, 2])
def test_pinned_digests(native: ModuleType, case: str, version: int) -> None:
    text, ids = PINNED[case]
    image = native.mkfs(text, version)
    assert len(image) == (4096 if version == 2 else 16384)
    assert fsverity.digest(image, "sha256").hex() == ids[version]


def test_special_v1(native: ModuleType) -> None:
    image = native.mkfs((DATA / "special_v1.dump").read_bytes(), 1)
    assert fsverity.digest(image, "sha256").hex() == SPECIAL_V1_ID


def test_buffer_types(native: ModuleType) -> None:
    want = native.mkfs(SIMPLE, 1)
    assert native.mkfs(bytearray(SIMPLE), 1) == want
    assert native.mkfs(memoryview(SIMPLE), 1) == want
    big = SIMPLE + b"".join(
        b"/f%05d 0 100644 1 0 0 0 0.0 - - -\n" % i for i in range(2000)
    )  # more than 16 KiB: the zero-copy path for bytes
    assert native.mkfs(bytearray(big), 0) == native.mkfs(big, 0)


@pytest.mark.parametrize(
    ("text", "version", "message"),
    [
        (SIMPLE, 3, "unsupported EROFS format version 3"),
        (SIMPLE, -1, "unsupported EROFS format version -1"),
        (
            EMPTY + b"/a 0 20000 1 0 0 0 0.0 - - -\n/b 0 @120000 - - - - 0.0 /a - -\n",
            1,
            "whiteout inode has nlink > 1",
        ),
        (b"/a 0 40755 2 0 0 0 0.0 - - -\n", 1, "must start with root directory"),
        (EMPTY + b"/d 0 60000 1 0 0 4294967296 0.0 - - -\n", 2, "u32"),
        # cfsctl validates the tree (whiteouts) before it writes (device numbers)
        (
            EMPTY
            + b"/a 0 20000 1 0 0 4294967296 0.0 - - -\n"
            + b"/b 0 20000 1 0 0 0 0.0 - - -\n/c 0 @120000 - - - - 0.0 /b - -\n",
            0,
            "whiteout inode has nlink > 1",
        ),
    ],
)
def test_errors(native: ModuleType, text: bytes, version: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        native.mkfs(text, version)


# -- random trees on disk against cfsctl ------------------------------------------------------

NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.+!= ~"
SHARED_VALUES = [b"", b"x", b"shared-value", b"\x00\x01\x02", b"v" * 40]


def _acl(uid: int) -> bytes:
    """A POSIX access ACL (user::rw-, user:<uid>:r--, group::r--, mask::r--, other::r--)."""
    undefined = 0xFFFFFFFF
    entries = [(1, 6, undefined), (2, 4, uid), (4, 4, undefined), (0x10, 4, undefined)]
    entries.append((0x20, 4, undefined))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def _name(rng: random.Random) -> str:
    n = rng.choice([1, 2, 3, 5, 8, 12, 20, 40, 100, 200])
    while True:
        name = "".join(rng.choice(NAME_CHARS) for _ in range(n))
        if name not in (".", ".."):
            return name


def make_tree(root: Path, seed: int, negative_mtimes: bool) -> None:
    """A random tree under ``root`` (which must exist and be empty)."""
    rng = random.Random(seed)
    dirs = [root]
    files: list[Path] = []
    everything: list[Path] = []

    def fresh(parent: Path) -> Path | None:
        p = parent / _name(rng)
        return None if os.path.lexists(p) else p

    # a big directory (several directory blocks) and stub-like names in the root
    big = root / "big"
    big.mkdir()
    dirs.append(big)
    for i in range(rng.randint(100, 400)):
        p = big / f"entry-{i:04d}-{'n' * rng.randint(0, 60)}"
        p.write_bytes(b"")
        files.append(p)
    stub_like = []
    for name in rng.sample([f"{i:02x}" for i in range(256)], 3):
        p = root / name
        if rng.random() < 0.5:
            os.mknod(p, 0o644 | stat.S_IFCHR, 0)
            stub_like.append(p)
        else:
            p.write_bytes(b"stub-like")
            files.append(p)
        everything.append(p)

    for _ in range(rng.randint(30, 150)):
        parent = rng.choice(dirs)
        path = fresh(parent)
        if path is None:
            continue
        kind = rng.choices(
            ["dir", "file", "link", "symlink", "fifo", "whiteout", "dev", "sock"],
            [12, 40, 8, 10, 3, 4, 3, 2],
        )[0]
        if kind == "dir":
            path.mkdir()
            dirs.append(path)
        elif kind == "file":
            size = rng.choice([0, 1, 17, 64, 65, 100, 2048, 2049, 4095, 4096, 4097, 10000, 70000])
            path.write_bytes(rng.randbytes(size))
            files.append(path)
        elif kind == "link":
            if not files:
                continue
            os.link(rng.choice(files), path)
        elif kind == "symlink":
            length = rng.choice([1, 7, 60, 200, 1000, 1024])
            os.symlink("t" * length, path)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "whiteout":
            os.mknod(path, 0o600 | stat.S_IFCHR, 0)
        elif kind == "dev":
            mode = rng.choice([stat.S_IFCHR, stat.S_IFBLK])
            os.mknod(path, 0o640 | mode, os.makedev(rng.randint(1, 300), rng.randint(0, 300)))
        else:
            os.mknod(path, 0o755 | stat.S_IFSOCK)
        everything.append(path)

    for path in everything + files + dirs:
        if rng.random() < 0.3:
            names = rng.sample(
                ["user.a", "user.b", "user.overlay.x", "trusted.overlay.opaque", "trusted.z"],
                rng.randint(1, 3),
            )
            for name in names:
                # user.* only on regular files and directories
                plain = not path.is_symlink() and (path.is_file() or path.is_dir())
                if name.startswith("user.") and not plain:
                    continue
                os.setxattr(path, name, rng.choice(SHARED_VALUES), follow_symlinks=False)
        if rng.random() < 0.05 and not path.is_symlink():
            os.setxattr(path, "system.posix_acl_access", _acl(1000), follow_symlinks=False)
        if rng.random() < 0.2:
            ids = [0, 1, 1000, 65535, 65536, 2**31]
            os.chown(path, rng.choice(ids), rng.choice(ids), follow_symlinks=False)
        if rng.random() < 0.05 and not path.is_symlink():
            os.chmod(path, rng.choice([0o4755, 0o2711, 0o1777, 0o000]))

    times = [10**9, 10**9 + 1, 1_700_000_000, 1_700_000_000]
    if negative_mtimes:
        times.append(-86400 * 365)
    # deepest first: creating entries changes the parent's mtime
    for path in sorted(everything + files + dirs, key=lambda p: -len(p.parts)):
        sec = rng.choice(times)
        nsec = rng.choice([0, 0, 0, 1, 999_999_999])
        os.utime(path, ns=(sec * 10**9 + nsec, sec * 10**9 + nsec), follow_symlinks=False)
    # some whiteouts in the root that look exactly like the writer's stubs (not escaped)
    top = root.lstat()
    for path in stub_like:
        if rng.random() < 0.7:
            for name in os.listxattr(path):
                os.removexattr(path, name)
            os.chown(path, top.st_uid, top.st_gid)
            os.chmod(path, 0o644)
            os.utime(path, ns=(top.st_mtime_ns, top.st_mtime_ns))


SEEDS = list(range(8))


@pytest.mark.interop
@pytest.mark.parametrize("seed", SEEDS)
def test_against_cfsctl(native: ModuleType, pure: ModuleType, tmp_path: Path, seed: int) -> None:
    cfsctl = tool("cfsctl")
    fsck = tool("fsck.erofs")
    need(os.geteuid() == 0, "creating device nodes and trusted.* xattrs needs root")
    tree = tmp_path / "tree"
    tree.mkdir()
    negative = seed % 4 == 3
    make_tree(tree, seed, negative_mtimes=negative)
    for algorithm in ("sha256", "sha512"):
        dump = run(
            cfsctl, "--hash", algorithm, "--no-repo", "create-dumpfile",
            "--no-propagate-usr-to-root", tree,
        ).stdout  # fmt: skip
        for version in (0, 1, 2):
            image = native.mkfs(dump, version)
            want = run(
                cfsctl, "--hash", algorithm, "--no-repo", "--erofs-version", str(version),
                "compute-id", "--no-propagate-usr-to-root", tree,
            ).stdout.decode().strip()  # fmt: skip
            assert fsverity.digest(image, algorithm).hex() == want, (algorithm, version)
            assert pure.mkfs(dump, version) == image, (algorithm, version)
            path = tmp_path / f"{algorithm}-v{version}.img"
            path.write_bytes(image)
            run(fsck, path)
            # mkcomposefs is SHA-256 only; cfsctl's dumpfile parser rejects negative mtimes.
            if version < 2 and algorithm == "sha256" and not negative:
                (tmp_path / "dump").write_bytes(dump)
                limits = (
                    ["--max-version=0"] if version == 0 else ["--min-version=1", "--max-version=1"]
                )
                out = tmp_path / "c.img"
                run(cfsctl, "mkcomposefs", "--from-file", *limits, tmp_path / "dump", out)
                assert out.read_bytes() == image, version


# -- native == pure on generated trees --------------------------------------------------------

NAMES = st.one_of(
    st.binary(min_size=1, max_size=12).filter(
        lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
    ),
    st.sampled_from([b"00", b"0a", b"ff", b"usr", b"a" * 200]),
)
XATTR_NAMES = st.sampled_from(
    [
        b"user.a",
        b"user.overlay.whiteout",
        b"trusted.overlay.opaque",
        b"trusted.overlay.x",
        b"trusted.x",
        b"security.selinux",
        b"security.capability",
        b"system.posix_acl_access",
        b"system.posix_acl_default",
        b"lustre.x",
        b"other",
    ]
)
STATS = st.builds(
    Stat,
    st.sampled_from([0, 0o644, 0o755, 0o7777]),
    st.sampled_from([0, 1, 65535, 65536, 2**32 - 1]),
    st.sampled_from([0, 1, 65536]),
    st.sampled_from([0, 1, 10**9, -1, 2**40]),
    st.sampled_from([0, 1, 999_999_999]),
    st.dictionaries(XATTR_NAMES, st.sampled_from([b"", b"x", b"yy", b"\x00" * 100]), max_size=4),
)
DIGESTS = st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
SIZES = st.sampled_from([0, 1, 4096, 4097, 2**20, 2**32, 2**43 + 1, 2**64 - 1])
LEAVES = st.one_of(
    st.builds(
        lambda s, d: Leaf(FILE, s, inline=d, size=len(d)),
        STATS,
        st.one_of(st.binary(max_size=70), st.binary(min_size=500, max_size=512)),
    ),
    st.builds(lambda s, d, n: Leaf(FILE, s, digest=d, size=n), STATS, DIGESTS, SIZES),
    st.builds(lambda s, d, n: Leaf(FILE, s, digest=d, size=n, verity=False), STATS, DIGESTS, SIZES),
    st.builds(lambda s, n: Leaf(FILE, s, size=n), STATS, SIZES.filter(bool)),
    st.builds(
        lambda s, n: Leaf(SYMLINK, s, target=b"t" * n),
        STATS,
        st.sampled_from([1, 7, 1000, 1024]),
    ),
    st.builds(lambda s, r: Leaf(BLOCK, s, rdev=r), STATS, st.sampled_from([0, 123, 2**32])),
    st.builds(lambda s, r: Leaf(CHAR, s, rdev=r), STATS, st.sampled_from([0, 0, 5, 2**32 - 1])),
    st.builds(lambda s: Leaf(FIFO, s), STATS),
    st.builds(lambda s: Leaf(SOCKET, s), STATS),
)


@st.composite
def trees(draw: st.DrawFn) -> FileSystem:
    fs = FileSystem(Directory(draw(STATS)))
    dirs = [fs.root]
    leaves: list[Leaf] = []
    for _ in range(draw(st.integers(0, 30))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        choice = draw(st.integers(0, 5))
        inode: Directory | Leaf
        if choice == 0:
            inode = Directory(draw(STATS))
            dirs.append(inode)
        elif choice == 1 and leaves:
            inode = draw(st.sampled_from(leaves))  # a hard link (whiteouts too: an error)
        elif choice == 2 and parent is fs.root:
            # looks like one of the whiteout stubs
            root = fs.root.stat
            xattrs = {k: v for k, v in root.xattrs.items() if k == b"security.selinux"}
            s = Stat(0o644, root.uid, root.gid, root.mtime, root.mtime_nsec, xattrs)
            inode = Leaf(CHAR, s, rdev=0)
            name = draw(st.sampled_from([b"00", b"1f", b"ab"]))
        else:
            leaf = draw(LEAVES)
            leaves.append(leaf)
            inode = leaf
        parent.entries[name] = inode
    if draw(st.booleans()):
        # a directory of several blocks
        big = Directory(draw(STATS))
        for i in range(draw(st.integers(100, 300))):
            big.entries[b"entry-%04d-" % i + b"n" * (i % 50)] = Leaf(FIFO, Stat())
        fs.root.entries[b"big"] = big
    return fs


def outcome(module: ModuleType, text: bytes, version: int) -> bytes | str:
    try:
        return module.mkfs(text, version)  # type: ignore[no-any-return]
    except ValueError as e:
        return f"ValueError: {e}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.sampled_from([0, 1, 2]))
def test_native_equals_pure(fs: FileSystem, version: int) -> None:
    native = load_backend("native").erofs
    pure = load_backend("python").erofs
    text = pure_dumpfile.write(fs)
    got = outcome(native, text, version)
    assert got == outcome(pure, text, version)
