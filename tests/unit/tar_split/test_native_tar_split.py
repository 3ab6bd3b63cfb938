"""The native layer importer (``composefs._native.tar_split``) against cfsctl 0.9.4.

For tars made by GNU tar (ustar, gnu and posix formats of a tree with long names, hard links,
symlinks, fifos, devices and xattrs), by Python's tarfile (GNU, PAX, USTAR, with record
padding) and synthetic ones (garbage after the end blocks, no end blocks), the stream file we
return is the one ``cfsctl oci import-layer`` stores, byte for byte, and we write the same
objects, in sha256 and sha512 repositories. Also: every gzip member / zstd frame is decoded,
broken input raises ValueError, a 2 GiB "decompression bomb" stays in bounded memory, and
``read_entries`` agrees with ``cfsctl oci layer --dumpfile``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
import zstandard

from composefs.oci.layer import dumpfile_line
from support import load_backend, need, run, tool

OCILAYER = int.from_bytes(b"ocilayer", "little")
ALGORITHMS = ("sha256", "sha512")


@pytest.fixture(scope="module")
def native() -> ModuleType:
    mod = load_backend("native")
    need(hasattr(mod, "tar_split"), "the native backend has no tar_split (rebuild it)")
    return mod.tar_split  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


# -- helpers ----------------------------------------------------------------------------------


def diff_id(tar: bytes) -> str:
    return "sha256:" + hashlib.sha256(tar).hexdigest()


def objects_of(objects: Path) -> dict[str, bytes]:
    """``xx/rest -> content`` of every object under ``objects``."""
    found = {}
    for sub in sorted(objects.iterdir()):
        assert sub.is_dir() and len(sub.name) == 2, f"stray entry {sub}"
        for f in sub.iterdir():
            found[f"{sub.name}/{f.name}"] = f.read_bytes()
    return found


def import_with_cfsctl(cfsctl: str, repo: Path, tar: bytes, algorithm: str) -> bytes:
    """The stream file cfsctl stores for ``tar``; its repository stays at ``repo``."""
    alg = f"fsverity-{algorithm}-12"
    run(cfsctl, "--repo", repo, "init", "--insecure", "--algorithm", alg, repo)
    run(cfsctl, "--repo", repo, "oci", "import-layer", diff_id(tar), input=tar)
    return (repo / "streams" / f"oci-layer-{diff_id(tar)}").resolve().read_bytes()


def split(
    native: ModuleType,
    blob: bytes | Path,
    objects: Path,
    algorithm: str,
    compression: str = "none",
    **kw: object,
) -> tuple:  # type: ignore[type-arg]
    objects.mkdir(parents=True, exist_ok=True)
    if isinstance(blob, bytes):
        path = objects.parent / "blob"
        path.write_bytes(blob)
    else:
        path = blob
    src = os.open(path, os.O_RDONLY)
    ofd = os.open(objects, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return native.split_layer(  # type: ignore[no-any-return]
            src, compression, ofd, algorithm, OCILAYER, False, **kw
        )
    finally:
        os.close(src)
        os.close(ofd)


def check_against_cfsctl(
    native: ModuleType, cfsctl: str, tmp_path: Path, tar: bytes, algorithm: str
) -> tuple:  # type: ignore[type-arg]
    theirs = import_with_cfsctl(cfsctl, tmp_path / "cfsctl", tar, algorithm)
    result = split(native, tar, tmp_path / "ours" / "objects", algorithm)
    (
        stream_file,
        blob_sha,
        tar_sha,
        blob_size,
        tar_size,
        written,
        _present,
        ext,
        inline,
        written_bytes,
    ) = result
    assert 0 <= written_bytes <= ext
    assert stream_file == theirs
    assert blob_sha == tar_sha == hashlib.sha256(tar).digest()
    assert blob_size == tar_size == ext + inline == len(tar)
    their_objects = objects_of(tmp_path / "cfsctl" / "objects")
    # cfsctl's store also holds the splitstream itself
    ours = objects_of(tmp_path / "ours" / "objects")
    extra = set(their_objects) - set(ours)
    assert len(extra) == 1, extra
    assert their_objects[extra.pop()] == theirs
    assert ours == {k: v for k, v in their_objects.items() if k in ours}
    assert written == len(ours)
    return result


# -- tars -------------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    """A tree with long names, hard links, symlinks, a fifo, xattrs and (as root) devices."""
    root.mkdir()
    (root / "small").write_bytes(b"tiny")
    (root / "exactly64").write_bytes(b"6" * 64)
    (root / "just65").write_bytes(b"6" * 65)
    (root / "empty").write_bytes(b"")
    (root / "random").write_bytes(os.urandom(300_000))
    (root / "zeros").write_bytes(bytes(70_000))
    (root / "zeros-copy").write_bytes(bytes(70_000))  # same object, twice
    deep = root / ("d" * 60) / ("e" * 70) / ("f" * 80)
    deep.mkdir(parents=True)
    (deep / ("long-name-" * 15)).write_bytes(b"x" * 5000)
    (root / "sub").mkdir()
    (root / "sub" / "file").write_bytes(b"y" * 513)
    os.link(root / "sub" / "file", root / "hardlink")
    os.symlink("sub/file", root / "symlink")
    os.symlink("/" + "t" * 150, root / "long-symlink")
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
        os.mknod(root / "loop", 0o60660, os.makedev(7, 300))
    try:
        os.setxattr(root / "small", "user.composefs.test", b"value\x00\xff")
        os.setxattr(root / "sub", "user.b", b"2")
        os.setxattr(root / "sub", "user.a", b"1")
    except OSError:
        pass  # no user xattrs on this filesystem
    os.utime(root / "small", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "root"
    make_tree(root)
    return root


def gnu_tar(tree: Path, fmt: str) -> bytes:
    exe = tool("tar")
    args = [exe, "-C", str(tree), f"--format={fmt}", "--sort=name", "-cf", "-"]
    if fmt == "posix":
        args.insert(1, "--xattrs")
        args.insert(1, "--xattrs-include=*")
    args.append(".")
    return subprocess.run(args, check=True, capture_output=True).stdout


def python_tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            ti = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)

        add("dir", type=tarfile.DIRTYPE, mode=0o755)
        for size in (0, 1, 63, 64, 65, 511, 512, 513, 100_000):
            add(f"dir/f{size}", os.urandom(size), mtime=1_700_000_000)
        add("dir/" + "n" * 120, b"long name" * 20)
        add("link", type=tarfile.SYMTYPE, linkname="dir/f1")
        add("hard", type=tarfile.LNKTYPE, linkname="dir/f100000")
        add("fifo", type=tarfile.FIFOTYPE)
        add("chr", type=tarfile.CHRTYPE, devmajor=5, devminor=1)
        if fmt == tarfile.PAX_FORMAT:
            ti = tarfile.TarInfo("pax-file")
            ti.pax_headers = {"mtime": "1700000000.5", "SCHILY.xattr.user.k": "v"}
            ti.size = 100
            t.addfile(ti, io.BytesIO(b"p" * 100))
    return buf.getvalue()  # tarfile pads to a 10240-byte record


def synthetic(kind: str) -> bytes:
    base = python_tar(tarfile.GNU_FORMAT)
    body = base[: base.index(b"\0" * 1024, len(base) - 10240)]  # up to the end blocks
    body = body[: len(body) // 512 * 512]
    # cut exactly after the last entry: strip trailing zero blocks that are end blocks
    while body.endswith(b"\0" * 512) and len(body) > 512:
        body = body[:-512]
    if kind == "no-end-blocks":
        # a tar that ends after its last entry's padding
        return body
    if kind == "garbage-after-end":
        return body + bytes(1024) + b"garbage, not a multiple of 512 bytes" * 100
    if kind == "one-end-block-and-zeros":
        return body + bytes(1024) + bytes(7 * 512)
    if kind == "huge-pax-size-on-a-directory":
        # composefs-rs rounds the size up wrapping (a release build): no body at all
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            info = tarfile.TarInfo("d")
            info.type = tarfile.DIRTYPE
            info.pax_headers = {"size": str((1 << 64) - 1)}
            t.addfile(info)
            info = tarfile.TarInfo("d/f")
            info.size = 1000
            t.addfile(info, io.BytesIO(b"f" * 1000))
        return buf.getvalue()
    raise AssertionError(kind)


# -- byte identity with cfsctl ----------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("fmt", ["ustar", "gnu", "posix"])
def test_gnu_tar_formats(
    native: ModuleType, cfsctl: str, tree: Path, tmp_path: Path, fmt: str, algorithm: str
) -> None:
    if fmt == "ustar":
        # ustar cannot hold the 150-byte symlink target or the long names
        base = tmp_path / "short"
        base.mkdir()
        (base / "a").write_bytes(b"a" * 1000)
        (base / "b").write_bytes(b"b")
        os.symlink("a", base / "c")
        os.link(base / "a", base / "d")
        os.mkfifo(base / "e")
        tar = gnu_tar(base, fmt)
    else:
        tar = gnu_tar(tree, fmt)
    check_against_cfsctl(native, cfsctl, tmp_path, tar, algorithm)


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "fmt",
    [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT],
    ids=["gnu", "pax", "ustar"],
)
def test_python_tarfile(
    native: ModuleType, cfsctl: str, tmp_path: Path, fmt: int, algorithm: str
) -> None:
    if fmt == tarfile.USTAR_FORMAT:
        # ustar cannot store the 120-byte name: build without it
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for size in (0, 64, 65, 4096, 200_000):
                ti = tarfile.TarInfo(f"f{size}")
                ti.size = size
                t.addfile(ti, io.BytesIO(os.urandom(size)))
        tar = buf.getvalue()
    else:
        tar = python_tar(fmt)
    assert len(tar) % 10240 == 0  # record padding
    check_against_cfsctl(native, cfsctl, tmp_path, tar, algorithm)


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(
    "kind",
    [
        "no-end-blocks",
        "garbage-after-end",
        "one-end-block-and-zeros",
        "huge-pax-size-on-a-directory",
    ],
)
def test_synthetic_tars(
    native: ModuleType, cfsctl: str, tmp_path: Path, kind: str, algorithm: str
) -> None:
    check_against_cfsctl(native, cfsctl, tmp_path, synthetic(kind), algorithm)


@pytest.mark.interop
def test_empty_and_tiny(native: ModuleType, cfsctl: str, tmp_path: Path) -> None:
    for i, tar in enumerate([b"", bytes(1024), bytes(10240)]):
        check_against_cfsctl(native, cfsctl, tmp_path / str(i), tar, "sha256")


@pytest.mark.interop
def test_many_large_files_in_parallel(native: ModuleType, cfsctl: str, tmp_path: Path) -> None:
    """Bodies spanning the reader's segments, duplicates, all thread counts."""
    buf = io.BytesIO()
    rnd = __import__("random").Random(7)
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(60):
            size = rnd.choice([65, 700, 5000, 1 << 20, (1 << 20) + 1, 3_000_000])
            data = rnd.randbytes(size) if i % 5 else b"dup" * (size // 3)
            ti = tarfile.TarInfo(f"f{i}")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    tar = buf.getvalue()
    first = check_against_cfsctl(native, cfsctl, tmp_path, tar, "sha256")
    for threads in (1, 2, 5):
        again = split(native, tar, tmp_path / f"t{threads}" / "objects", "sha256", threads=threads)
        assert again[0] == first[0]


# -- compression ------------------------------------------------------------------------------


def test_gzip_members_and_zstd_frames(native: ModuleType, tmp_path: Path) -> None:
    tar = python_tar(tarfile.PAX_FORMAT)
    want = split(native, tar, tmp_path / "plain" / "objects", "sha256")
    cuts = [0, 700, 5000, len(tar) // 2, len(tar)]
    parts = [tar[a:b] for a, b in itertools.pairwise(cuts)]
    gz = b"".join(gzip.compress(p, mtime=0) for p in parts)
    cctx = zstandard.ZstdCompressor(level=3)
    frames = [cctx.compress(p) for p in parts]
    # with a skippable frame in between
    zst = frames[0] + b"\x50\x2a\x4d\x18\x03\x00\x00\x00abc" + b"".join(frames[1:])
    for blob, compression in [(gz, "gzip"), (zst, "zstd")]:
        got = split(native, blob, tmp_path / compression / "objects", "sha256", compression)
        assert got[0] == want[0]
        assert got[1] == hashlib.sha256(blob).digest()
        assert got[2] == hashlib.sha256(tar).digest()
        assert got[3:5] == (len(blob), len(tar))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_and_corrupt_blobs(native: ModuleType, tmp_path: Path, compression: str) -> None:
    tar = python_tar(tarfile.GNU_FORMAT)
    blob = gzip.compress(tar) if compression == "gzip" else zstandard.compress(tar)
    truncated = "unexpected end of file" if compression == "gzip" else "zstd stream did not finish"
    for n, cut in enumerate([1, len(blob) // 2, len(blob) - 1]):
        with pytest.raises(ValueError, match=f"^decompressing {compression}: {truncated}$"):
            split(native, blob[:cut], tmp_path / f"t{n}" / "objects", "sha256", compression)
    with pytest.raises(ValueError, match=rf"^decompressing {compression}: "):
        split(native, b"\x00" * 100 + blob, tmp_path / "c" / "objects", "sha256", compression)
    with pytest.raises(ValueError, match=f"^decompressing {compression}: {truncated}$"):
        split(native, b"", tmp_path / "e" / "objects", "sha256", compression)
    if compression == "gzip":
        # bytes after the last member that do not start another one, however few
        for n, junk in enumerate([b"junk", b"\0" * 10]):
            with pytest.raises(ValueError, match=r"^decompressing gzip: Invalid gzip header$"):
                split(native, blob + junk, tmp_path / f"j{n}" / "objects", "sha256", "gzip")
    if compression == "gzip":
        bad = bytearray(blob)
        bad[-8] ^= 0xFF  # the CRC
        with pytest.raises(ValueError, match=r"^decompressing gzip: "):
            split(native, bytes(bad), tmp_path / "crc" / "objects", "sha256", compression)


def test_malformed_tars(native: ModuleType, tmp_path: Path) -> None:
    tar = python_tar(tarfile.GNU_FORMAT)
    cases = {
        "unexpected EOF in tar stream": tar[:100],
        "unexpected EOF reading tar entry": tar[: 512 + 512 + 512 + 100],
    }
    for n, (message, data) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=f"^{message}$"):
            split(native, data, tmp_path / str(n) / "objects", "sha256")
    bad = bytearray(tar)
    bad[0] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        split(native, bytes(bad), tmp_path / "sum" / "objects", "sha256")
    with pytest.raises(ValueError, match="unsupported compression 'lz4'"):
        split(native, tar, tmp_path / "x" / "objects", "sha256", "lz4")
    with pytest.raises(ValueError, match="unsupported hash algorithm 'md5'"):
        split(native, tar, tmp_path / "y" / "objects", "md5")


def test_os_errors(native: ModuleType, tmp_path: Path) -> None:
    ofd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(IsADirectoryError):
            native.split_layer(ofd, "none", ofd, "sha256", OCILAYER, False)
        with pytest.raises(OSError) as e:
            native.split_layer(12345, "none", ofd, "sha256", OCILAYER, False)
        assert e.value.errno == 9  # EBADF
    finally:
        os.close(ofd)


def test_pipe_source_and_progress(native: ModuleType, tmp_path: Path) -> None:
    tar = python_tar(tarfile.PAX_FORMAT) + os.urandom(9 << 20)  # trailing data after the end
    want = split(native, tar, tmp_path / "a" / "objects", "sha256")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        view = memoryview(tar)
        while view:
            view = view[os.write(w, view[: 1 << 16]) :]
        os._exit(0)
    os.close(w)
    seen: list[int] = []
    (tmp_path / "b" / "objects").mkdir(parents=True)
    ofd = os.open(tmp_path / "b" / "objects", os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = native.split_layer(r, "none", ofd, "sha256", OCILAYER, False, 0, seen.append)
    finally:
        os.close(r)
        os.close(ofd)
        os.waitpid(pid, 0)
    assert got == want
    assert seen[-1] == len(tar)
    assert seen == sorted(seen) and 2 <= len(seen) <= len(tar) // (4 << 20) + 2

    def stop(n: int) -> None:
        raise KeyboardInterrupt("stop")

    with pytest.raises(KeyboardInterrupt, match="stop"):
        split(native, tar, tmp_path / "c" / "objects", "sha256", progress=stop)


# -- memory -----------------------------------------------------------------------------------

BOMB = textwrap.dedent(
    """
    import os, sys, zlib
    from composefs._native import tar_split
    objects, compression = sys.argv[1], sys.argv[2]
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        # 2 GiB of zeros after a tiny tar, compressed on the fly
        if compression == "gzip":
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
        else:
            import zstandard
            c = zstandard.ZstdCompressor(level=3).compressobj()
        hdr = bytearray(512)
        hdr[:5] = b"hello"
        hdr[100:108] = b"0000644\\0"
        hdr[124:136] = b"00000000012\\0"
        hdr[156:157] = b"0"
        hdr[257:265] = b"ustar\\x0000"
        hdr[148:156] = b" " * 8
        hdr[148:156] = b"%06o\\0 " % sum(hdr)
        out = c.compress(bytes(hdr) + b"hello world" + bytes(501))
        zeros = bytes(1 << 20)
        for _ in range(2048):
            out += c.compress(zeros)
            while out:
                out = out[os.write(w, out):]
        out += c.flush()
        while out:
            out = out[os.write(w, out):]
        os._exit(0)
    os.close(w)
    ofd = os.open(objects, os.O_RDONLY | os.O_DIRECTORY)
    res = tar_split.split_layer(r, compression, ofd, "sha256", 1, False)
    os.wait()
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print(res[4], len(res[0]), hwm)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_decompression_bomb_bounded_memory(tmp_path: Path, compression: str) -> None:
    load_backend("native")
    (tmp_path / "objects").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", BOMB, str(tmp_path / "objects"), compression],
        check=True,
        capture_output=True,
        timeout=900,
    ).stdout.split()
    tar_size, stream_len, hwm_kib = (int(x) for x in out)
    assert tar_size == 1024 + (2 << 30)
    assert stream_len < 1 << 20  # 2 GiB of zeros compress to almost nothing
    assert hwm_kib < 200 * 1024, f"peak RSS {hwm_kib} KiB"
    # the spill file was anonymous: nothing but the object directory is left
    assert [p.name for p in (tmp_path / "objects").iterdir()] == []


# -- the reverse path -------------------------------------------------------------------------


def entries_dumpfile(native: ModuleType, stream_file: bytes) -> str:
    lines = []
    for entry in native.read_entries(stream_file):
        lines.append(dumpfile_line(entry) + "\n")
    return "".join(lines)


@pytest.mark.interop
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("source", ["gnu-posix", "gnu-gnu", "python-pax", "python-gnu"])
def test_read_entries_matches_cfsctl_dumpfile(
    native: ModuleType, cfsctl: str, tree: Path, tmp_path: Path, source: str, algorithm: str
) -> None:
    tar = {
        "gnu-posix": lambda: gnu_tar(tree, "posix"),
        "gnu-gnu": lambda: gnu_tar(tree, "gnu"),
        "python-pax": lambda: python_tar(tarfile.PAX_FORMAT),
        "python-gnu": lambda: python_tar(tarfile.GNU_FORMAT),
    }[source]()
    repo = tmp_path / "repo"
    stream_file = import_with_cfsctl(cfsctl, repo, tar, algorithm)
    theirs = run(cfsctl, "--repo", repo, "oci", "layer", diff_id(tar), "--dumpfile").stdout
    assert entries_dumpfile(native, stream_file) == theirs.decode()


def test_read_entries_fields(native: ModuleType, tmp_path: Path) -> None:
    tar = python_tar(tarfile.PAX_FORMAT)
    stream_file = split(native, tar, tmp_path / "objects", "sha256")[0]
    entries = {e[0]: e for e in native.read_entries(stream_file)}
    assert entries[b"/dir"][1] == "dir"
    assert entries[b"/dir/f64"][11] is not None and entries[b"/dir/f64"][12] is None
    f65 = entries[b"/dir/f65"]
    assert f65[1] == "file" and f65[7] == 65 and f65[11] is None and len(f65[12]) == 32
    assert entries[b"/hard"][8] == b"/dir/f100000"
    assert entries[b"/link"][8] == b"dir/f1"
    assert entries[b"/chr"][9] == os.makedev(5, 1)
    pax = entries[b"/pax-file"]
    assert (pax[5], pax[6]) == (1_700_000_000, 500_000_000)
    assert pax[10] == [(b"user.k", b"v")]
    with pytest.raises(ValueError, match="Invalid splitstream header magic value"):
        native.read_entries(b"x" * 200)


def test_bad_splitstreams_for_read_entries(native: ModuleType) -> None:
    """Splitstreams composefs-rs refuses to read back (written directly with the Writer)."""
    from composefs._native import splitstream

    w = splitstream.Writer("sha256", OCILAYER)
    small = bytearray(tarfile.TarInfo("small").tobuf(tarfile.GNU_FORMAT))
    w.write_inline(small)
    w.write_external(b"\x01" * 32, 0)
    with pytest.raises(ValueError, match=r"incorrectly stored a small \(0 byte\) file external"):
        native.read_entries(w.finish())
    info = tarfile.TarInfo("big")
    info.size = 100
    w = splitstream.Writer("sha256", OCILAYER)
    w.write_inline(info.tobuf(tarfile.GNU_FORMAT) + b"b" * 100 + bytes(412))
    with pytest.raises(ValueError, match=r"incorrectly stored a large \(100 byte\) file inline"):
        native.read_entries(w.finish())
