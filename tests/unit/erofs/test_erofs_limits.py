"""What EROFS cannot hold is refused before writing, in both backends with the same text
(``rust/erofs/limits.rs``, ``composefs._pure.erofs_limits``; docs/differences.md, "EROFS
limits"). composefs-rs 0.9.4 writes broken images in these cases: a name over 255 bytes that
the kernel and our own fsck reject, an xattr value over 65,535 bytes whose 16-bit length wraps
so that the kernel reads the rest of the value as further xattrs (an injection of
``trusted.overlay.*`` names).

* through ``erofs.mkfs`` (dumpfiles; the ``mkcomposefs`` path) and ``merge.mkfs_layers`` (tar
  layers; the pull path), both backends;
* the tree-level checks the native tree's types make unreachable, on the pure writer;
* the largest values that fit are written, read back and pass ``fsck.erofs``.
"""

from __future__ import annotations

import hashlib
import io
import struct
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from composefs import _backend
from composefs._backend import Backend
from composefs._pure import erofs as pure_erofs
from composefs._pure.tree import FILE, SYMLINK, Directory, FileSystem, Leaf, Stat
from composefs.oci.layer import import_layer
from composefs.repository import Repository
from support import need, tool
from support.tars import Tar

ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
LONG = "n" * 300


def _mkfs(backend: Backend, dump: bytes, version: int) -> bytes:
    return bytes(backend.erofs.mkfs(dump, version))


def _error(fn: object, *args: object) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args)  # type: ignore[operator]
    return str(info.value)


# -- dumpfiles (mkcomposefs) ----------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
def test_name_too_long(backend_module: Backend, version: int) -> None:
    dump = ROOT + b"/d 0 40755 2 0 0 0 0.0 - - -\n/d/%s 0 100644 1 0 0 0 0.0 - - -\n"
    assert _mkfs(backend_module, dump % (b"n" * 255), version)
    message = _error(_mkfs, backend_module, dump % LONG.encode(), version)
    assert message == f'"/d/{LONG}": file name too long (300 bytes; EROFS allows 255)'


def test_name_too_long_directory_first(backend_module: Backend) -> None:
    """The walk is depth-first in name order: the first offending path is reported."""
    dump = (
        ROOT
        + f"/a 0 40755 2 0 0 0 0.0 - - -\n/a/{'x' * 256} 0 100644 1 0 0 0 0.0 - - -\n".encode()
        + f"/{'b' * 257} 0 100644 1 0 0 0 0.0 - - -\n".encode()
    )
    message = _error(_mkfs, backend_module, dump, 1)
    assert message.startswith('"/a/xxx') and "(256 bytes; EROFS allows 255)" in message


def _xattrs(pairs: Sequence[tuple[str, int]]) -> str:
    return "".join(f" user.{name}={'v' * size}" for name, size in pairs)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_xattr_area_too_large(backend_module: Backend, version: int) -> None:
    """Five 60,000-byte values: each fits its u16 length, the inode's area (u16 ``icount``
    words) does not."""
    line = "/f 0 100644 1 0 0 0 0.0 - - -" + _xattrs([(f"x{i}", 60_000) for i in range(5)])
    message = _error(_mkfs, backend_module, ROOT + line.encode() + b"\n", version)
    assert message == '"/f": xattrs too large (300052 bytes; EROFS allows 262148 per inode)'
    ok = "/f 0 100644 1 0 0 0 0.0 - - -" + _xattrs([(f"x{i}", 60_000) for i in range(4)])
    assert _mkfs(backend_module, ROOT + ok.encode() + b"\n", version)


def test_too_many_shared_xattrs(backend_module: Backend) -> None:
    """256 xattrs shared by two files: the inode header counts shared xattrs in a u8."""
    pairs = _xattrs([(f"s{i:03}", 1) for i in range(256)])
    dump = ROOT + "".join(f"/{n} 0 100644 1 0 0 0 0.0 - - -{pairs}\n" for n in ("a", "b")).encode()
    for version in (0, 1, 2):
        message = _error(_mkfs, backend_module, dump, version)
        assert message == '"/a": too many shared xattrs (256; EROFS allows 255)'
    fewer = (
        ROOT
        + "".join(
            f"/{n} 0 100644 1 0 0 0 0.0 - - -{_xattrs([(f's{i:03}', 1) for i in range(255)])}\n"
            for n in ("a", "b")
        ).encode()
    )
    assert _mkfs(backend_module, fewer, 1)


BIG = [(f"a{i}", 65_535) for i in range(5)]


def test_same_messages_in_both_backends(pure_backend: Backend, native_backend: Backend) -> None:
    cases = [
        ROOT + f"/{LONG} 0 100644 1 0 0 0 0.0 - - -\n".encode(),
        ROOT + f"/f 0 100644 1 0 0 0 0.0 - - -{_xattrs(BIG)}\n".encode(),
    ]
    for dump in cases:
        for version in (0, 1, 2):
            assert _error(_mkfs, native_backend, dump, version) == _error(
                _mkfs, pure_backend, dump, version
            )


# -- tar layers (pulls) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    path: Path = tmp_path_factory.mktemp("limits") / "repo"
    with _backend.use("python"):
        r, _ = Repository.init(path, "sha256", insecure=True)
        with r:
            yield r


def _streams(repo: Repository, *tars: bytes) -> list[bytes]:
    out = []
    with _backend.use("python"):
        for tar in tars:
            diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
            out.append(repo.read_object(import_layer(repo, io.BytesIO(tar), diff_id).verity))
    return out


def _mkfs_layers(backend: Backend, streams: list[bytes], versions: Sequence[int]) -> list[bytes]:
    return [bytes(i) for i in backend.merge.mkfs_layers(streams, "allowlist-only", versions)]


def _injection_value() -> str:
    """A ``security.capability`` value of 65,536 + 24 bytes: its length written as a u16 is
    24, and the bytes after the first 24 (padded to 4) form a well-formed xattr entry
    ``trusted.overlay.redirect=/etc`` that a writer without the check makes the kernel list."""
    head = "\x01" * 24
    name, value = b"overlay.redirect", b"/etc"
    entry = struct.pack("<BBH", len(name), 4, len(value)) + name + value
    body = entry.decode("latin-1")
    return head + body + "\x00" * (65_536 + 24 - len(head) - len(body))


def _cap_layer(value: str) -> bytes:
    return Tar().dir("usr").file("usr/ping", b"ping", xattrs={"security.capability": value}).build()


def test_xattr_value_too_large_layer(backend_module: Backend, repo: Repository) -> None:
    value = _injection_value()
    streams = _streams(repo, _cap_layer(value))
    size = len(value.encode("utf-8"))
    assert size > 65_535
    for version in (0, 1, 2):
        message = _error(_mkfs_layers, backend_module, streams, [version])
        assert message == (
            f'"/usr/ping": xattr "security.capability" value too large ({size} bytes; '
            "EROFS allows 65535)"
        )


def test_largest_xattr_value_is_written_whole(
    backend_module: Backend, repo: Repository, tmp_path: Path
) -> None:
    """65,535 bytes fit: the entry says 65,535 and the value is stored whole (no wrap), and
    the image passes fsck.erofs."""
    value = "c" * 65_535
    (image,) = _mkfs_layers(backend_module, _streams(repo, _cap_layer(value)), [1])
    header = struct.pack("<BBH", len(b"capability"), 6, 65_535) + b"capability"
    at = image.find(header)
    assert at > 0 and image[at + len(header) : at + len(header) + 65_535] == value.encode()
    _fsck_erofs(image, tmp_path)


def _fsck_erofs(image: bytes, tmp_path: Path) -> None:
    need(bool(tool("fsck.erofs")), "fsck.erofs (erofs-utils) not installed")
    path = tmp_path / "image.erofs"
    path.write_bytes(image)
    proc = subprocess.run([tool("fsck.erofs"), path], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_long_name_and_symlink_layers(
    backend_module: Backend, repo: Repository, tmp_path: Path
) -> None:
    long_name = Tar().dir("usr").file(f"usr/{LONG}", b"x").build()
    message = _error(_mkfs_layers, backend_module, _streams(repo, long_name), [1])
    assert message == f'"/usr/{LONG}": file name too long (300 bytes; EROFS allows 255)'
    long_link = Tar().dir("usr").symlink("usr/l", "t" * 5000).build()
    message = _error(_mkfs_layers, backend_module, _streams(repo, long_link), [1, 2])
    assert message == '"/usr/l": symlink target too long (5000 bytes; EROFS allows 4095)'
    longest = _streams(repo, Tar().dir("usr").symlink("usr/l", "t" * 4095).build())
    for image in _mkfs_layers(backend_module, longest, [0, 1]):
        _fsck_erofs(image, tmp_path)
    # V2 keeps every target inline, after the inode: 4,095 bytes cannot share its block (the
    # kernel refuses inline data crossing a block); V0/V1 move the target to a data block
    message = _error(_mkfs_layers, backend_module, longest, [2])
    assert message == (
        '"/usr/l": inline data of 4095 bytes does not fit in one 4096-byte EROFS block after '
        "the inode and its xattrs"
    )


def test_whiteout_of_a_long_name_is_fine(backend_module: Backend, repo: Repository) -> None:
    """Only the final tree counts: ``.wh.`` + 252 bytes (256 bytes) removes a 252-byte name,
    and a long name a later layer deletes never reaches the image."""
    name = "w" * 252
    lower = Tar().dir("usr").file(f"usr/{name}", b"x").file(f"usr/{LONG}", b"y").build()
    upper = Tar().dir("usr").file(f"usr/.wh.{name}").file(f"usr/.wh.{LONG}").build()
    assert _mkfs_layers(backend_module, _streams(repo, lower, upper), [0, 1, 2])


# -- the pure writer's tree checks --------------------------------------------------------------


def _fs(entries: dict[bytes, Directory | Leaf], root: Stat | None = None) -> FileSystem:
    return FileSystem(Directory(root or Stat(0o755), entries))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({b"": Leaf(FILE, Stat(), inline=b"")}, '"/": invalid file name'),
        ({b".": Leaf(FILE, Stat(), inline=b"")}, '"/.": invalid file name'),
        ({b"..": Directory(Stat())}, '"/..": invalid file name'),
        ({b"a/b": Leaf(FILE, Stat(), inline=b"")}, '"/a/b": invalid file name'),
        ({b"a\0": Leaf(FILE, Stat(), inline=b"")}, '"/a\\0": invalid file name'),
        ({b"f": Leaf(FILE, Stat(xattrs={b"": b"v"}), inline=b"")}, '"/f": empty xattr name'),
        (
            {b"f": Leaf(FILE, Stat(mtime_nsec=1_000_000_000), inline=b"")},
            '"/f": mtime nanoseconds 1000000000 out of range',
        ),
        ({b"f": Leaf(FILE, Stat(uid=1 << 32), inline=b"")}, '"/f": uid 4294967296 out of range'),
        ({b"f": Leaf(FILE, Stat(gid=-1), inline=b"")}, '"/f": gid -1 out of range'),
        ({b"f": Leaf(FILE, Stat(mtime=1 << 63), inline=b"")}, '"/f": mtime 9223372036854775808'),
        ({b"f": Leaf(FILE, Stat(), size=1 << 64)}, '"/f": file size 18446744073709551616'),
        (
            {b"f": Leaf(FILE, Stat(), size=(1 << 53) + 1)},
            '"/f": file too large (9007199254740993 bytes; EROFS format V0/V1 allows',
        ),
        ({b"s": Leaf(SYMLINK, Stat(), target=b"t" * 4096)}, '"/s": symlink target too long'),
    ],
)
def test_tree_limits_pure(entries: dict[bytes, Directory | Leaf], message: str) -> None:
    for version in (0, 1) if "V0/V1" in message else (0, 1, 2):
        assert _error(pure_erofs.write, _fs(entries), version).startswith(message)


def test_file_size_per_format() -> None:
    fs = _fs({b"f": Leaf(FILE, Stat(), size=(1 << 43) + 1)})
    assert pure_erofs.write(fs, 1)
    message = _error(pure_erofs.write, fs, 2)
    assert message == (
        '"/f": file too large (8796093022209 bytes; EROFS format V2 allows 8796093022208)'
    )


@pytest.mark.parametrize(
    ("name", "version", "fits"),
    [
        (b"user." + b"u" * 255, 1, True),
        (b"user." + b"u" * 256, 1, False),
        # stored as trusted.overlay.overlay.*: 16 + n bytes after the "trusted." prefix
        (b"trusted.overlay." + b"o" * 239, 1, True),
        (b"trusted.overlay." + b"o" * 240, 1, False),
        # lustre. is a prefix in V2 only
        (b"lustre." + b"l" * 248, 1, True),
        (b"lustre." + b"l" * 249, 1, False),
        (b"lustre." + b"l" * 255, 2, True),
    ],
)
def test_xattr_name_suffix(name: bytes, version: int, fits: bool) -> None:
    fs = _fs({b"f": Leaf(FILE, Stat(xattrs={name: b"v"}), inline=b"")})
    if fits:
        assert pure_erofs.write(fs, version)
    else:
        message = _error(pure_erofs.write, fs, version)
        assert message.startswith('"/f": xattr name "') and "EROFS allows 255)" in message


def test_hard_link_reported_at_first_name() -> None:
    leaf = Leaf(FILE, Stat(xattrs={b"user.x": b"v" * 65_536}), inline=b"")
    fs = _fs({b"b": leaf, b"a": Directory(Stat(0o755), {b"z": leaf})})
    assert _error(pure_erofs.write, fs, 1).startswith('"/a/z": xattr "user.x" value too large')


# -- directories (create-image) -----------------------------------------------------------------


def test_directory_with_a_65536_byte_xattr(backend_module: Backend) -> None:
    """Linux allows xattr values of 65,536 bytes (tmpfs, XFS): one more than EROFS holds."""
    import os
    import tempfile

    base = Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        (Path(tmp) / "usr").mkdir()
        f = Path(tmp) / "usr" / "f"
        f.write_bytes(b"x")
        try:
            os.setxattr(f, "user.big", b"v" * 65_536)
        except OSError as e:
            pytest.skip(f"this kernel's tmpfs cannot hold a 65,536-byte user xattr: {e}")
        message = _error(
            backend_module.fs.mkfs_directory, tmp, "sha256", None, True, "keep-user-xattrs", [1]
        )
    assert message == '"/usr/f": xattr "user.big" value too large (65536 bytes; EROFS allows 65535)'
