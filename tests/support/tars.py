"""Tar layers written entry by entry for the tests, and the file contents that go into them.

:class:`Tar` writes a deterministic PAX tar with :mod:`tarfile` (names verbatim, so ``..`` and
``./`` survive) and patches raw header fields afterwards for what :mod:`tarfile` cannot write
(modes with file-type bits, negative base-256 mtimes). The library's own builder,
``TarBuilder``, is the one to use for ordinary OCI layers; this one is for the layer merge.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any

MTIME = 1_700_000_000


def seeded_bytes(seed: str, size: int, hash_name: str = "sha512") -> bytes:
    """``size`` deterministic, poorly compressible bytes: hashes of ``"{seed}/{i}"``."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.new(hash_name, f"{seed}/{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def set_field(tar: bytes, name: str, start: int, value: bytes) -> bytes:
    """Rewrites a header field of the entry ``name`` (tarfile masks modes to 0o7777 and puts
    negative mtimes into PAX records, which tar-core rejects)."""
    data = bytearray(tar)
    for offset in range(0, len(data), 512):
        block = data[offset : offset + 512]
        if block[:100].rstrip(b"\0") == name.encode() and block[257:262] == b"ustar":
            data[offset + start : offset + start + len(value)] = value
            data[offset + 148 : offset + 156] = b" " * 8
            checksum = sum(data[offset : offset + 512])
            data[offset + 148 : offset + 156] = b"%06o\0 " % checksum
            return bytes(data)
    raise AssertionError(f"no header {name}")


class Tar:
    """A PAX tar built entry by entry, with per-entry PAX records and raw header patches."""

    fields: list[tuple[str, int, bytes]]

    def __init__(self, mtime: int = MTIME, global_pax: dict[str, str] | None = None) -> None:
        self.mtime = mtime
        self.buf = io.BytesIO()
        self.tar = tarfile.TarFile(
            fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers=global_pax or {}
        )
        self.fields = []

    def add(
        self,
        name: str,
        kind: bytes = tarfile.REGTYPE,
        data: bytes | None = None,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        link: str = "",
        xattrs: dict[str, str] | None = None,
        pax: dict[str, str] | None = None,
        mtime: int | None = None,
        major: int = 0,
        minor: int = 0,
    ) -> Tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime if mtime is None else mtime
        info.linkname = link
        info.devmajor, info.devminor = major, minor
        headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
        headers.update(pax or {})
        info.pax_headers = headers
        if data is not None:
            info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> Tar:
        return self.add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def file(self, name: str, data: bytes = b"", **kw: Any) -> Tar:
        return self.add(name, tarfile.REGTYPE, data, **kw)

    def link(self, name: str, target: str, **kw: Any) -> Tar:
        return self.add(name, tarfile.LNKTYPE, link=target, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> Tar:
        return self.add(name, tarfile.SYMTYPE, link=target, mode=0o777, **kw)

    def patch(self, name: str, start: int, value: bytes) -> Tar:
        """Overwrites bytes ``start``.. of the header of ``name`` when the tar is built."""
        self.fields.append((name, start, value))
        return self

    def raw_mode(self, name: str, mode: int) -> Tar:
        """Gives the header ``name`` a mode with file-type bits."""
        return self.patch(name, 100, b"%07o\0" % mode)

    def raw_mtime(self, name: str, mtime: int) -> Tar:
        """Gives the header ``name`` a base-256 (possibly negative) mtime."""
        return self.patch(name, 136, (mtime % (1 << 96)).to_bytes(12, "big"))

    def build(self) -> bytes:
        self.tar.close()
        data = self.buf.getvalue()
        for name, start, value in self.fields:
            data = set_field(data, name, start, value)
        return data
