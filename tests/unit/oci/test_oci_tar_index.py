"""The tar index of ``oci-archive:``/``docker-archive:`` (``composefs.oci.archive``) against
well-formed and hostile archives: every tar dialect a tool writes, truncation, members past the
end, huge counts and headers, names and links that lead out of the archive, duplicates."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from composefs.oci import archive as arc
from composefs.oci.archive import Archive, ArchiveError, ArchiveFormatError, Member, TarIndex
from composefs.testing import compress
from support.tars import set_field


def header(
    name: bytes,
    size: int = 0,
    typeflag: bytes = b"0",
    link: bytes = b"",
    *,
    size_field: bytes | None = None,
) -> bytes:
    """One ustar header block with a right checksum (``size_field`` overrides the octal size)."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def member(name: bytes, data: bytes = b"", typeflag: bytes = b"0", link: bytes = b"") -> bytes:
    padded = data + bytes(-len(data) % 512)
    return header(name, len(data), typeflag, link) + padded


END = bytes(1024)


def index_of(data: bytes, tmp_path: Path, **limits: int) -> TarIndex:
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return TarIndex(fd, len(data), **limits)
    finally:
        os.close(fd)


def read(path: Path, name: str) -> bytes:
    with Archive(os.fspath(path)) as a:
        return a.read(a.lookup(name), 1 << 30, name)


def tar_bytes(fmt: int, entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=fmt) as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type = kind
    i.linkname = link
    return i


# -- what tools write --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_dialect(tmp_path: Path, fmt: int) -> None:
    """Long names (ustar ``prefix``, GNU ``L``/``K``, PAX ``path``/``linkpath``), links,
    directories; offsets and sizes are the member's data."""
    long_dir = "d" * 90 + "/" + "e" * 60
    long_name = f"{long_dir}/file"  # > 100 bytes: prefix, GNU L or PAX path
    entries = [
        info("./blobs", tarfile.DIRTYPE),
        info("blobs/sha256/aa"),
        info(long_name),
        info("link", tarfile.SYMTYPE, "blobs/sha256/aa"),
        info("hard", tarfile.LNKTYPE, "blobs/sha256/aa"),
        info("fifo", tarfile.FIFOTYPE),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        entries.append(info("longlink", tarfile.SYMTYPE, long_name))
    data = {"blobs/sha256/aa": b"A" * 1000, long_name: b"long"}
    raw = tar_bytes(fmt, entries, data)
    path = tmp_path / "a.tar"
    path.write_bytes(raw)
    with Archive(os.fspath(path)) as a:
        index = a.index.members
        assert index["blobs"].kind == "dir"
        blob = a.lookup("blobs/sha256/aa")
        assert raw[blob.offset : blob.offset + blob.size] == b"A" * 1000
        assert a.read(a.lookup("./blobs//sha256/aa"), 1000, "x") == b"A" * 1000
        assert a.read(a.lookup(long_name), 10, "x") == b"long"
        assert a.lookup("link") == blob and a.lookup("hard") == blob
        assert index["fifo"].kind == "other"
        with pytest.raises(ArchiveError, match="'fifo' is not a regular file"):
            a.lookup("fifo")
        with pytest.raises(ArchiveError, match="not a regular file"):
            a.lookup("blobs")
        if fmt != tarfile.USTAR_FORMAT:
            assert a.read(a.lookup("longlink"), 10, "x") == b"long"
        with pytest.raises(FileNotFoundError):
            a.lookup("missing")


def test_end_of_archive(tmp_path: Path) -> None:
    one = member(b"a", b"x" * 10)
    # two zero blocks, one zero block, or none (the end of the file on a header boundary)
    for tail in (END, END[:512], b""):
        assert set(index_of(one + tail, tmp_path).members) == {"a"}
    # whatever follows the end-of-archive marker is not read
    assert set(index_of(one + END + b"garbage" * 100, tmp_path).members) == {"a"}


def test_pax_size_and_global_headers(tmp_path: Path) -> None:
    """A PAX ``size`` record gives the data length; global headers are skipped."""
    big = b"B" * 700
    records = b"12 size=700\n"
    raw = (
        member(b"pax_global", b"20 comment=anything\n", b"g")
        + member(b"pax", records, b"x")
        + header(b"big", 0)  # the header says 0: the PAX record wins
        + big
        + bytes(-len(big) % 512)
        + member(b"after", b"z")
        + END
    )
    index = index_of(raw, tmp_path)
    assert index.members["big"].size == 700
    after = index.members["after"]
    assert raw[after.offset : after.offset + 1] == b"z"


def test_base256_size(tmp_path: Path) -> None:
    field = bytes([0x80]) + (5).to_bytes(11, "big")
    raw = header(b"b", size_field=field) + b"12345" + bytes(507) + END
    assert index_of(raw, tmp_path).members["b"].size == 5


# -- hostile archives ----------------------------------------------------------------------------


def test_truncated_archives(tmp_path: Path) -> None:
    whole = member(b"a", b"x" * 1000) + member(b"b", b"y" * 10) + END
    # cut inside a header
    with pytest.raises(ArchiveFormatError, match="truncated: a header at offset 1536"):
        index_of(whole[:1600], tmp_path)
    # cut inside a member's data
    with pytest.raises(ArchiveFormatError, match="the member at offset 1536 has 10 bytes, past"):
        index_of(whole[:2050], tmp_path)
    # cut inside the padding of the last member: its data is whole, it is readable
    assert index_of(whole[: 1536 + 512 + 10], tmp_path).members["b"].size == 10


def test_member_past_the_end(tmp_path: Path) -> None:
    """A size field claiming more than the file holds (octal or base-256, up to 2^95)."""
    for field in (b"%011o\0" % (1 << 30), bytes([0x80]) + (1 << 80).to_bytes(11, "big")):
        raw = header(b"a", size_field=field) + b"x" * 512 + END
        with pytest.raises(ArchiveFormatError, match="past the end of the file"):
            index_of(raw, tmp_path)
    negative = header(b"a", size_field=b"\xff" * 12) + END
    with pytest.raises(ArchiveFormatError, match="negative size"):
        index_of(negative, tmp_path)


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(ArchiveFormatError, match="bad header checksum at offset 0"):
        index_of(b"{" + b"x" * 2000, tmp_path)
    bad = bytearray(member(b"a", b"x") + END)
    bad[0] = ord("b")  # the checksum no longer matches
    with pytest.raises(ArchiveFormatError, match="bad header checksum"):
        index_of(bytes(bad), tmp_path)
    with pytest.raises(ArchiveFormatError, match="invalid size"):
        index_of(header(b"a", size_field=b"12345678zzz\0") + END, tmp_path)


def test_huge_member_counts(tmp_path: Path) -> None:
    raw = b"".join(member(b"m%d" % i) for i in range(50)) + END
    assert len(index_of(raw, tmp_path, max_members=50).members) == 50
    with pytest.raises(ArchiveFormatError, match="more than 49 members"):
        index_of(raw, tmp_path, max_members=49)
    # extended headers count too: a stream of PAX headers cannot run forever
    pax = member(b"p", b"11 a=bcdef\n", b"x")
    with pytest.raises(ArchiveFormatError, match="more than 100 members"):
        index_of(pax * 101 + member(b"m") + END, tmp_path, max_members=100)
    assert arc.MAX_MEMBERS == 100_000


def test_the_default_member_limit(tmp_path: Path) -> None:
    """100,001 empty members: refused, in well under a few seconds, without reading data."""
    one = header(b"m")
    path = tmp_path / "many.tar"
    with open(path, "wb") as f:
        f.write(one * (arc.MAX_MEMBERS + 1) + END)
    start = time.monotonic()
    with pytest.raises(ArchiveError) as e:
        Archive(os.fspath(path))
    assert "more than 100000 members" in str(e.value.__cause__)
    assert time.monotonic() - start < 20


def test_huge_headers(tmp_path: Path) -> None:
    # a PAX header past the cap is refused before it is read
    raw = header(b"p", arc.MAX_EXTENDED_HEADER + 1, b"x") + bytes(arc.MAX_EXTENDED_HEADER + 512)
    with pytest.raises(ArchiveFormatError, match="PAX header of 1048577 bytes"):
        index_of(raw + END, tmp_path)
    # GNU long names and names from PAX are bounded
    with pytest.raises(ArchiveFormatError, match="member name of 5000 bytes"):
        index_of(member(b"././@LongLink", b"n" * 5000, b"L") + member(b"x") + END, tmp_path)
    long_path = b"p" * 5000
    record = b"path=" + long_path + b"\n"
    pax = b"%d " % (len(record) + 5) + record
    with pytest.raises(ArchiveFormatError, match="member name of 5000 bytes"):
        index_of(member(b"p", pax, b"x") + member(b"x") + END, tmp_path)
    # and so are all the names together
    names = b"".join(member(b"n%03d" % i + b"x" * 90) for i in range(10))
    with pytest.raises(ArchiveFormatError, match="names are too long in all"):
        index_of(names + END, tmp_path, max_names_total=500)
    # malformed PAX records
    for bad in (b"zz path=x\n", b"99 path=x\n", b"9 pathx\n\n"):
        with pytest.raises(ArchiveFormatError, match="malformed PAX header"):
            index_of(member(b"p", bad, b"x") + member(b"x") + END, tmp_path)


@pytest.mark.parametrize("name", [b"../x", b"a/../../x", b"./../x", b"a/b/../../../x"])
def test_names_out_of_the_archive(tmp_path: Path, name: bytes) -> None:
    with pytest.raises(ArchiveFormatError, match="would be outside the archive's root"):
        index_of(member(name, b"x") + END, tmp_path)


def test_absolute_and_dotted_names_are_relative(tmp_path: Path) -> None:
    """As tar extracts them: a leading ``/`` is dropped, ``.`` and empty components and a
    ``..`` that stays inside are resolved."""
    raw = member(b"/abs/x", b"1") + member(b"./a//b/./c", b"2") + member(b"d/../e", b"3") + END
    assert set(index_of(raw, tmp_path).members) == {"abs/x", "a/b/c", "e"}


def test_duplicate_names_the_last_wins(tmp_path: Path) -> None:
    """As extracting the tar would leave it (``tar -r`` appends a newer copy)."""
    raw = member(b"blob", b"first") + member(b"other", b"o") + member(b"./blob", b"second") + END
    path = tmp_path / "dup.tar"
    path.write_bytes(raw)
    assert read(path, "blob") == b"second"
    # a hard link made before the newer copy names the copy it saw
    raw = member(b"blob", b"first") + member(b"h", b"", b"1", b"blob") + member(b"blob", b"2nd")
    path.write_bytes(raw + END)
    assert read(path, "h") == b"first"
    assert read(path, "blob") == b"2nd"


def test_symlinked_blobs(tmp_path: Path) -> None:
    """Links are followed inside the archive, relative to their directory, at most 8 deep."""
    raw = (
        member(b"data/real", b"content")
        + member(b"blobs/sha256/aa", b"", b"2", b"../../data/real")
        + member(b"blobs/sha256/bb", b"", b"2", b"aa")  # a chain
        + member(b"l1", b"", b"2", b"l2")
        + member(b"l2", b"", b"2", b"l1")  # a loop
        + member(b"dangling", b"", b"2", b"nothing")
        + END
    )
    path = tmp_path / "links.tar"
    path.write_bytes(raw)
    assert read(path, "blobs/sha256/aa") == b"content"
    assert read(path, "blobs/sha256/bb") == b"content"
    with pytest.raises(OSError, match="too many levels of symbolic links"):
        read(path, "l1")
    with pytest.raises(FileNotFoundError):
        read(path, "dangling")


@pytest.mark.parametrize(
    ("typeflag", "target", "message"),
    [
        (b"2", b"../../../etc/passwd", "symbolic link 'blobs/x' points out of the archive"),
        (b"2", b"/etc/passwd", "symbolic link 'blobs/x' points out of the archive"),
        (b"2", b"..", "symbolic link 'blobs/x' points out of the archive"),
        (b"1", b"../etc/passwd", "hard link 'blobs/x' points out of the archive"),
        (b"1", b"/", "hard link 'blobs/x' points out of the archive"),
        (b"1", b"later", "hard link 'blobs/x' names 'later', which is not an earlier member"),
    ],
)
def test_links_out_of_the_archive(
    tmp_path: Path, typeflag: bytes, target: bytes, message: str
) -> None:
    raw = member(b"blobs/x", b"", typeflag, target) + member(b"later", b"l") + END
    with pytest.raises(ArchiveFormatError, match=message):
        index_of(raw, tmp_path)


def test_gnu_sparse_members_are_not_files(tmp_path: Path) -> None:
    raw = member(b"s", b"x" * 512, b"S") + END
    path = tmp_path / "s.tar"
    path.write_bytes(raw)
    with pytest.raises(ArchiveError, match="not a regular file"):
        read(path, "s")


# -- the archive file ----------------------------------------------------------------------------


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.tar"
    os.mkfifo(fifo)
    with pytest.raises(ArchiveError) as e:
        Archive(os.fspath(fifo))  # refused at once, never waited on
    assert str(e.value.__cause__) == "not a regular file"
    with pytest.raises(ArchiveError) as e:
        Archive(os.fspath(tmp_path))
    assert str(e.value.__cause__) == "not a regular file"
    with pytest.raises(ArchiveError) as e:
        Archive(os.fspath(tmp_path / "missing.tar"))
    assert isinstance(e.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "bzip2", "xz"])
def test_compressed_archives(
    tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detected from their first bytes, decompressed once into an unnamed temporary file."""
    raw = member(b"a", b"x" * 3000) + member(b"b", b"y") + END
    path = tmp_path / "a.tar.x"
    path.write_bytes(compress(raw, compression))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", os.fspath(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with Archive(os.fspath(path)) as a:
        assert a.compression == compression
        assert a.read(a.lookup("a"), 3000, "a") == b"x" * 3000
        assert list(tmp.iterdir()) == []  # unnamed: nothing is left behind, even on a crash
    whole = compress(raw, compression)
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match=f"Decompressing archive .* \\({compression}\\)"):
        Archive(os.fspath(path))


def test_stream_is_a_pipe_fed_from_the_archive(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    path = tmp_path / "a.tar"
    path.write_bytes(member(b"big", data) + END)
    with Archive(os.fspath(path)) as a:
        big = a.lookup("big")
        with a.stream(big, "big") as fd:
            assert stat.S_ISFIFO(os.fstat(fd).st_mode)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        assert b"".join(chunks) == data
        # a reader that stops early stops the feeding thread (it is not left blocked)
        before = threading.active_count()
        with a.stream(big, "big") as fd:
            os.read(fd, 10)
        assert threading.active_count() == before
        # the archive shrinking under the reader is an error of the stream, not a short read
        with pytest.raises(ArchiveError, match="Reading big from") as e, a.stream(big, "big") as fd:
            os.truncate(path, 1 << 20)
            while os.read(fd, 1 << 16):
                pass
        assert "ended" in str(e.value.__cause__)


def test_compressed_member_stream(tmp_path: Path) -> None:
    data = b"layer" * 100_000
    path = tmp_path / "a.tar"
    path.write_bytes(
        member(b"l.gz", compress(data, "gzip")) + member(b"bad", b"\x1f\x8b\x08junk") + END
    )
    with Archive(os.fspath(path)) as a:
        with a.stream(a.lookup("l.gz"), "l", "gzip") as fd:
            out = b""
            while chunk := os.read(fd, 1 << 16):
                out += chunk
        assert out == data
        with (
            pytest.raises(ArchiveError, match="Reading bad") as e,
            a.stream(a.lookup("bad"), "bad", "gzip") as fd,
        ):
            while os.read(fd, 1 << 16):
                pass
        assert "decompressing (gzip)" in str(e.value.__cause__)


def test_set_field_helper_still_applies(tmp_path: Path) -> None:
    """Headers patched with the shared test helper keep a valid checksum for the index."""
    raw = tar_bytes(tarfile.USTAR_FORMAT, [info("f")], {"f": b"data"})
    raw = set_field(raw, "f", 100, b"0000600\0")
    assert index_of(raw, tmp_path).members["f"] == Member("file", 512, 4)
