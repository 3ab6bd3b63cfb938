"""Layer import (decompression, tar → splitstream) and the reverse path: mutated layer blobs
(tar, gzip, zstd) give the same result or the same ``ValueError`` text in both backends, and
what one imports reads back (``read_entries``) and merges (``merge_layers``) alike."""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from composefs import constants
from composefs._backend import Backend
from fuzz.conftest import FUZZ
from support import load_backend
from support.mutations import seeded
from support.tars import Tar, seeded_bytes


def _tar() -> bytes:
    t = Tar()
    t.dir("usr")
    t.dir("usr/bin")
    t.file("usr/bin/small", b"#!/bin/sh\necho hi\n", mode=0o755)
    t.file("usr/bin/large", seeded_bytes("large", 3000), xattrs={"security.capability": "x"})
    t.link("usr/bin/hard", "usr/bin/large")
    t.symlink("usr/lib", "bin")
    t.add("dev-null", b"3", major=1, minor=3)
    t.file("usr/.wh.gone")
    t.file("long/" + "n" * 150, b"y" * 65, pax={"mtime": "1700000000.5"})
    return t.build()


TAR = _tar()
SEEDS = {
    "none": [TAR],
    "gzip": [gzip.compress(TAR, mtime=0)],
    "zstd": [zstandard.ZstdCompressor().compress(TAR)],
}


@pytest.fixture(scope="module")
def objects() -> Iterator[dict[str, int]]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        fds = {"python": os.open(a, os.O_RDONLY), "native": os.open(b, os.O_RDONLY)}
        try:
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)


def _split(b: Backend, objects_fd: int, blob: bytes, compression: str) -> tuple[str, Any]:
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.seek(0)
        try:
            return (
                "ok",
                b.tar_split.split_layer(
                    f.fileno(),
                    compression,
                    objects_fd,
                    "sha256",
                    constants.LAYER_CONTENT_TYPE,
                    False,
                ),
            )
        except ValueError as e:
            return ("error", str(e))


def _call(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except ValueError as e:
        return ("error", str(e))


def _comparable(outcome: tuple[str, Any]) -> tuple[str, Any]:
    """The outcome, except the reason libzstd gives for a damaged zstd frame: it depends on how
    the input is cut into calls (the same bytes fed whole give "Data corruption detected",
    fed block by block "Destination buffer is too small"), and the backends cut differently.
    That both fail, and that they fail in the zstd decoder, is still compared."""
    kind, value = outcome
    if kind == "error" and value.startswith(_ZSTD_ERROR) and value != _ZSTD_TRUNCATED:
        return (kind, _ZSTD_ERROR)
    return outcome


_ZSTD_ERROR = "decompressing zstd: "
_ZSTD_TRUNCATED = "decompressing zstd: zstd stream did not finish"


@FUZZ
@given(data=st.data(), compression=st.sampled_from(("none", "gzip", "zstd")))
def test_backends_agree(objects: dict[str, int], data: st.DataObject, compression: str) -> None:
    blob = data.draw(seeded(SEEDS[compression]), label="blob")
    pure, native = load_backend("python"), load_backend("native")
    ours = _split(pure, objects["python"], blob, compression)
    theirs = _split(native, objects["native"], blob, compression)
    assert _comparable(ours) == _comparable(theirs)
    if ours[0] != "ok":
        return
    stream = ours[1].stream_file
    assert _call(pure.tar_split.read_entries, stream) == _call(
        native.tar_split.read_entries, stream
    )
    assert _call(pure.merge.merge_layers, [stream]) == _call(native.merge.merge_layers, [stream])


# --- regression cases found by the fuzzer (pure and native disagreed) -----------------------

_MEMBER = gzip.compress(TAR, mtime=0)
_BODY = _MEMBER[10:]


def _named(name: bytes, flags: int = 0x08, hcrc: bytes = b"") -> bytes:
    return b"\x1f\x8b\x08" + bytes([flags]) + b"\0\0\0\0\0\3" + name + b"\0" + hcrc + _BODY


GZIP_CASES = {
    # zlib's own words ("Error -3 while decompressing data: invalid block type") were reported
    "corrupt deflate data": (
        _MEMBER[:10] + bytes([_MEMBER[10] ^ 0x06]) + _MEMBER[11:],
        "decompressing gzip: corrupt deflate stream",
    ),
    # zlib checks the header CRC with its own message; flate2 says "checksum"
    "header crc mismatch": (
        _named(b"x", 0x0A, b"\0\0"),
        "decompressing gzip: corrupt gzip stream does not have a matching checksum",
    ),
    "trailer crc mismatch": (
        _MEMBER[:-8] + bytes(4) + _MEMBER[-4:],
        "decompressing gzip: corrupt gzip stream does not have a matching checksum",
    ),
    "trailer size mismatch": (
        _MEMBER[:-4] + bytes(4),
        "decompressing gzip: corrupt gzip stream does not have a matching checksum",
    ),
    "truncated trailer": (_MEMBER[:-3], "decompressing gzip: unexpected end of file"),
    "truncated name field": (_named(b"n" * 40)[:30], "decompressing gzip: unexpected end of file"),
    "reserved flag bits": (
        _MEMBER[:3] + b"\x20" + _MEMBER[4:],
        "decompressing gzip: Invalid gzip header",
    ),
    "name of 65535 bytes": (_named(b"n" * 65535), None),
    # flate2 caps FNAME/FCOMMENT; zlib does not
    "name of 65536 bytes": (_named(b"n" * 65536), "decompressing gzip: gzip header field too long"),
    "garbage after the member": (_MEMBER + b"\x1f\x8c", "decompressing gzip: Invalid gzip header"),
}


@pytest.mark.parametrize("case", sorted(GZIP_CASES))
def test_gzip_regressions(objects: dict[str, int], case: str) -> None:
    blob, message = GZIP_CASES[case]
    for name in ("python", "native"):
        result = _split(load_backend(name), objects[name], blob, "gzip")
        if message is None:
            assert result[0] == "ok", (name, result)
        else:
            assert result == ("error", message), name
