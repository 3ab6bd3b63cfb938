"""``oci-archive:`` and ``docker-archive:``: images read straight from a tar archive.

Nothing is unpacked. The archive's members are indexed once (:class:`TarIndex`: name ->
offset and size, from the headers alone), then every document is read with ``pread`` and every
layer is streamed from its byte range of the archive into a pipe (``splice``, by a thread), so
a layer goes from the archive to the importer without a copy on disk or in memory.

* ``oci-archive:PATH[:IMAGE]`` is a tar of an OCI image layout (``skopeo copy ...
  oci-archive:x.tar:tag``, also what Docker 25+ ``docker save`` writes). It is read by the same
  :class:`~composefs.oci.layout.LayoutSource` as a layout directory, through
  :class:`ArchiveFiles`; ``PATH[:IMAGE]`` splits at the first colon as containers/image does,
  ``IMAGE`` is a ``org.opencontainers.image.ref.name`` or ``@N`` (the N-th ``index.json``
  entry).
* ``docker-archive:PATH[:NAME:TAG|:@N]`` is ``docker save`` output: ``manifest.json`` lists
  each image's config and layer tars (the legacy ``<id>/layer.tar`` form, or the
  ``blobs/sha256/<hex>`` of the form Docker 25+ writes). Like containers/image (which skopeo
  uses), :class:`DockerArchiveSource` synthesises the Docker schema 2 manifest of the image
  (layers named by their diff_ids, uncompressed sizes) byte for byte, so the manifest digest is
  skopeo's, and serves every layer uncompressed.

An archive is untrusted input: the member count, name lengths and extended headers are bounded
(:data:`MAX_MEMBERS`, :data:`MAX_NAME`, :data:`MAX_NAMES_TOTAL`, :data:`MAX_EXTENDED_HEADER`),
a member that runs past the end of the file, a name or link that leads out of the archive, or
a malformed header is an error, and a member name given twice means the later member (as
extracting the tar would leave it). A compressed archive (gzip, zstd, bzip2 or xz, as
containers/image accepts) is decompressed once into an unnamed temporary file, then read the
same way.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import lzma
import os
import posixpath
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, Final

from composefs.errors import (
    ComposefsError,
    ImageReferenceError,
    SourceError,
    TagNotFoundError,
)
from composefs.oci.documents import (
    SIZE_LIMITS,
    DocumentError,
    config_diff_ids,
    open_file,
    parse_json,
    parse_json_object,
    quote,
)
from composefs.oci.layout import BlobFile, LayoutSource
from composefs.oci.media_types import (
    DOCKER_CONFIG_MEDIA_TYPE,
    DOCKER_LAYER_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
)
from composefs.oci.platform import (
    Platform,
    host_platform,
    parse_platform,
    warn_other_platform,
)
from composefs.oci.reference import ImageReference, LayoutReference
from composefs.oci.source import Descriptor, ResolvedManifest

__all__ = [
    "MAX_EXTENDED_HEADER",
    "MAX_MEMBERS",
    "MAX_NAME",
    "MAX_NAMES_TOTAL",
    "Archive",
    "ArchiveError",
    "ArchiveFiles",
    "ArchiveFormatError",
    "DockerArchiveReference",
    "DockerArchiveSource",
    "DockerArchiveTagNotFound",
    "Member",
    "TarIndex",
    "normalize_docker_reference",
    "open_docker_archive",
    "open_oci_archive",
    "parse_docker_archive_name",
    "parse_oci_archive_name",
]

#: The most members (headers, extended headers included) an archive may have.
MAX_MEMBERS: Final = 100_000
#: The longest member or link name, in bytes (Linux ``PATH_MAX``).
MAX_NAME: Final = 4096
#: The most bytes of member names kept for one archive.
MAX_NAMES_TOTAL: Final = 32 << 20
#: The largest PAX extended header (``x`` or ``g``) read.
MAX_EXTENDED_HEADER: Final = 1 << 20
#: The largest ``manifest.json`` of a Docker archive (containers/image's
#: ``MaxTarFileManifestSize``).
MAX_TAR_MANIFEST: Final = 1 << 20
#: Symbolic links followed from one name (containers/image follows one).
MAX_LINK_HOPS: Final = 8

_BLOCK: Final = 512
_CHUNK: Final = 1 << 20
_ZERO_BLOCK: Final = bytes(_BLOCK)


class ArchiveError(SourceError):
    """An image archive cannot be read, or does not hold what was asked for."""


class ArchiveFormatError(ArchiveError):
    """The archive is not a well-formed tar, or breaks one of the rules for untrusted ones (a
    member past the end of the file, a name leading out of the archive, too many members)."""


class DockerArchiveTagNotFound(ArchiveError, TagNotFoundError):
    """No image of a Docker archive's ``manifest.json`` has the tag asked for."""


# -- the tar index -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member of the archive: ``kind`` is ``file``, ``dir``, ``symlink`` or ``other`` (a hard
    link is recorded as a copy of the member it names). ``link`` is a symbolic link's target as
    a name in the archive."""

    kind: str
    offset: int
    size: int
    link: str = ""


def clean_name(name: str) -> str | None:
    """A member name as a relative, normalised path (``./a//b/`` -> ``a/b``, a leading ``/``
    dropped as tar does when extracting); ``None`` when ``..`` climbs above the archive root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def _number(field: bytes, what: str, offset: int) -> int:
    """A numeric header field: octal ASCII, or GNU base-256 (first byte ``0x80``)."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise ArchiveFormatError(f"negative {what} in the tar header at offset {offset}")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveFormatError(
            f"invalid {what} {text[:20]!r} in the tar header at offset {offset}"
        ) from None


def _checksum_ok(block: bytes, offset: int) -> bool:
    try:
        stored = _number(block[148:156], "checksum", offset)
    except ArchiveFormatError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return stored == signed


def _pax_records(data: bytes, offset: int) -> dict[str, bytes]:
    """The records of a PAX extended header: ``"<length> <key>=<value>\\n"`` each."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding after the last record
            break
        space = data.find(b" ", pos, pos + 20)
        if space < 0:
            raise ArchiveFormatError(f"malformed PAX header at offset {offset}")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ArchiveFormatError(f"malformed PAX header at offset {offset}") from None
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveFormatError(f"malformed PAX header at offset {offset}")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ArchiveFormatError(f"malformed PAX header at offset {offset}")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


class TarIndex:
    """The members of a tar archive by name, read from its headers only.

    Understands POSIX ustar (with ``prefix``), PAX extended headers (``path``, ``linkpath``,
    ``size``; global headers are skipped) and GNU long names and links (``L``, ``K``). The
    archive ends at a zero block or at the end of the file on a header boundary. Hard links
    name an earlier member; symbolic links are resolved relative to their directory. A name
    given twice means the later member.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        max_members: int = MAX_MEMBERS,
        max_name: int = MAX_NAME,
        max_names_total: int = MAX_NAMES_TOTAL,
    ) -> None:
        self.members: dict[str, Member] = {}
        self._fd = fd
        self._size = size
        self._max_members = max_members
        self._max_name = max_name
        self._names_left = max_names_total
        self._scan()

    def _read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise ArchiveFormatError(
                    f"the archive is truncated: {length} bytes at offset {offset} run past its end"
                )
            data += more
        return data

    def _name(self, raw: bytes, offset: int) -> bytes:
        if len(raw) > self._max_name:
            raise ArchiveFormatError(
                f"member name of {len(raw)} bytes at offset {offset} "
                f"(the limit is {self._max_name})"
            )
        return raw

    def _scan(self) -> None:
        pos = 0
        count = 0
        pax: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while pos < self._size:
            if pos + _BLOCK > self._size:
                raise ArchiveFormatError(
                    f"the archive is truncated: a header at offset {pos} runs past its end"
                )
            block = self._read(pos, _BLOCK)
            if block == _ZERO_BLOCK:
                break  # the end-of-archive marker (one zero block is enough)
            if not _checksum_ok(block, pos):
                raise ArchiveFormatError(
                    f"not a tar archive, or a damaged one: bad header checksum at offset {pos}"
                )
            count += 1
            if count > self._max_members:
                raise ArchiveFormatError(f"the archive has more than {self._max_members} members")
            typeflag = block[156:157]
            size = _number(block[124:136], "size", pos)
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise ArchiveFormatError(f"invalid PAX size at offset {pos}") from None
            header_only = typeflag in (b"1", b"2", b"3", b"4", b"5", b"6")
            data = pos + _BLOCK
            length = 0 if header_only else size
            if size < 0 or data + length > self._size:
                raise ArchiveFormatError(
                    f"the archive is truncated: the member at offset {pos} has {size} bytes, "
                    "past the end of the file"
                )
            following = data + (length + _BLOCK - 1) // _BLOCK * _BLOCK
            if typeflag in (b"x", b"g"):
                if size > MAX_EXTENDED_HEADER:
                    raise ArchiveFormatError(
                        f"PAX header of {size} bytes at offset {pos} "
                        f"(the limit is {MAX_EXTENDED_HEADER})"
                    )
                if typeflag == b"x":
                    pax = _pax_records(self._read(data, size), pos)
            elif typeflag in (b"L", b"K"):
                if size > self._max_name + 1:
                    raise ArchiveFormatError(
                        f"member name of {size} bytes at offset {pos} (the limit is "
                        f"{self._max_name})"
                    )
                value = self._read(data, size).split(b"\0", 1)[0]
                if typeflag == b"L":
                    long_name = value
                else:
                    long_link = value
            else:
                name = pax.get("path", long_name)
                if name is None:
                    name = block[0:100].split(b"\0", 1)[0]
                    prefix = block[345:500].split(b"\0", 1)[0]
                    if block[257:263] == b"ustar\0" and prefix:
                        name = prefix + b"/" + name
                link = pax.get("linkpath", long_link)
                if link is None:
                    link = block[157:257].split(b"\0", 1)[0]
                self._add(
                    self._name(name, pos), self._name(link, pos), typeflag, data, size, pos, pax
                )
                pax, long_name, long_link = {}, None, None
            pos = following

    def _add(
        self,
        raw_name: bytes,
        raw_link: bytes,
        typeflag: bytes,
        offset: int,
        size: int,
        at: int,
        pax: dict[str, bytes],
    ) -> None:
        self._names_left -= len(raw_name) + len(raw_link)
        if self._names_left < 0:
            raise ArchiveFormatError("the archive's member names are too long in all")
        text = _decode(raw_name)
        name = clean_name(text)
        if name is None:
            raise ArchiveFormatError(
                f"member {quote(text)!r} (offset {at}) would be outside the archive's root"
            )
        if not name:
            return  # the root directory itself
        if typeflag in (b"0", b"\0", b"7"):
            sparse = typeflag == b"0" and any(k.startswith("GNU.sparse.") for k in pax)
            member = Member("other" if sparse else "file", offset, size)
        elif typeflag == b"S":
            member = Member("other", offset, size)  # GNU sparse: not a plain byte range
        elif typeflag == b"5":
            member = Member("dir", offset, 0)
        elif typeflag == b"1":
            target_text = _decode(raw_link)
            target = clean_name(target_text)
            if not target:
                raise ArchiveFormatError(
                    f"hard link {quote(name)!r} points out of the archive ({quote(target_text)!r})"
                )
            found = self.members.get(target)
            if found is None:
                raise ArchiveFormatError(
                    f"hard link {quote(name)!r} names {quote(target)!r}, which is not an "
                    "earlier member"
                )
            member = found
        elif typeflag == b"2":
            target_text = _decode(raw_link)
            target = (
                None
                if target_text.startswith("/")
                else clean_name(posixpath.join(posixpath.dirname(name), target_text))
            )
            if not target:
                raise ArchiveFormatError(
                    f"symbolic link {quote(name)!r} points out of the archive "
                    f"({quote(target_text)!r})"
                )
            member = Member("symlink", 0, 0, target)
        else:
            member = Member("other", offset, 0)
        self.members.pop(name, None)  # a later member replaces an earlier one, in order too
        self.members[name] = member

    def lookup(self, name: str) -> Member:
        """The member ``name`` names, following symbolic links inside the archive (at most
        :data:`MAX_LINK_HOPS`); :class:`FileNotFoundError` when there is none. Its ``kind``
        says whether it is a regular file."""
        cleaned = clean_name(name)
        member = self.members.get(cleaned) if cleaned else None
        hops = 0
        while member is not None and member.kind == "symlink":
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise OSError(errno.ELOOP, "too many levels of symbolic links", name)
            member = self.members.get(member.link)
        if member is None:
            raise FileNotFoundError(errno.ENOENT, "not found in the archive", name)
        return member


# -- the archive file --------------------------------------------------------------------------

_MAGICS: Final = (
    (b"\x1f\x8b\x08", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


def detect_compression(head: bytes) -> str:
    """``none``, ``gzip``, ``zstd``, ``bzip2`` or ``xz`` from the first bytes of a stream (the
    formats and magic numbers containers/image detects)."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return "none"


#: what a damaged compressed stream raises (gzip and zstd: the layer decoders' ValueError)
_DECODE_ERRORS: Final = (OSError, EOFError, ValueError, lzma.LZMAError)


def _decoder(compression: str, raw: IO[bytes]) -> Callable[[int], bytes]:
    """``read(n)`` of the decompressed ``raw``: gzip and zstd by the layer import's streaming
    decoders (every member and frame, truncation an error), bzip2 and xz by the standard
    library (a truncated stream is an :class:`EOFError`)."""
    if compression in ("gzip", "zstd"):
        from composefs._pure.decompress import open_decoder

        return open_decoder(compression, raw.read).read
    if compression == "bzip2":
        return bz2.BZ2File(raw, "rb").read
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb").read
    raise ValueError(f"unknown compression {compression!r}")


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Exactly ``size`` bytes at ``offset`` (an :class:`ArchiveError` if the file is shorter)."""
    chunks = []
    done = 0
    while done < size:
        chunk = os.pread(fd, min(size - done, _CHUNK), offset + done)
        if not chunk:
            raise ArchiveError("the archive ended early (was it changed while being read?)")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


class _RangeReader(io.RawIOBase):
    """Reads ``size`` bytes of ``fd`` from ``offset`` with ``pread`` (no shared position)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._pos = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._end - self._pos)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [view[:want]], self._pos)
        if n == 0:
            raise ArchiveError("the archive ended early (was it changed while being read?)")
        self._pos += n
        return n


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Archive:
    """An open tar archive and the index of its members (see the module's doc).

    ``path`` is opened non-blocking and must be a regular file (a FIFO is refused, not waited
    on). A compressed archive is first decompressed into an unnamed temporary file.
    """

    def __init__(self, path: str, **limits: int) -> None:
        self.path = path
        self.compression = "none"
        self._fd = -1
        try:
            fd, st = open_file(path)
        except OSError as e:
            raise ArchiveError(f"Opening archive {path}") from e
        self._fd = fd
        try:
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"Opening archive {path}") from ArchiveError(
                    "not a regular file"
                )
            self.compression = detect_compression(os.pread(fd, 8, 0))
            if self.compression != "none":
                self._fd = self._decompressed(fd, st.st_size)
                os.close(fd)
            try:
                self.index = TarIndex(self._fd, os.fstat(self._fd).st_size, **limits)
            except (OSError, ArchiveError) as e:
                raise ArchiveError(f"Reading archive {path}") from e
        except BaseException:
            if self._fd != fd:
                os.close(fd)
            self.close()
            raise

    def _decompressed(self, fd: int, size: int) -> int:
        """The archive decompressed into an unnamed temporary file (``$TMPDIR``), as
        containers/image does; a new descriptor of it."""
        what = f"Decompressing archive {self.path} ({self.compression})"
        with tempfile.TemporaryFile(prefix="composefs-archive-") as out:
            try:
                read = _decoder(self.compression, io.BufferedReader(_RangeReader(fd, 0, size)))
                while block := read(_CHUNK):
                    out.write(block)
                out.flush()
            except ComposefsError:
                raise
            except _DECODE_ERRORS as e:
                raise ArchiveError(what) from e
            return os.dup(out.fileno())

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fd(self) -> int:
        return self._fd

    def lookup(self, name: str) -> Member:
        """The regular file ``name`` names (:meth:`TarIndex.lookup`; an :class:`ArchiveError`
        for anything else)."""
        member = self.index.lookup(name)
        if member.kind != "file":
            raise ArchiveError(f"{quote(name)!r} is not a regular file in the archive")
        return member

    def read(self, member: Member, limit: int, what: str) -> bytes:
        """The whole member, at most ``limit`` bytes (a :class:`DocumentError` past it)."""
        if member.size > limit:
            raise DocumentError(f"{what} is too large ({member.size} bytes, the limit is {limit})")
        return _pread_all(self._fd, member.size, member.offset)

    def reader(self, member: Member) -> IO[bytes]:
        """A buffered reader of the member's bytes."""
        return io.BufferedReader(_RangeReader(self._fd, member.offset, member.size), _CHUNK)

    @contextlib.contextmanager
    def stream(self, member: Member, what: str, compression: str = "none") -> Iterator[int]:
        """A pipe carrying the member's bytes (decompressed when ``compression`` says so),
        fed by a thread: ``splice`` from the archive, no copy. Leaving the block closes the
        read end, which stops the thread; an error of the thread (the archive shrank, the
        data does not decompress) is raised then."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, _CHUNK)
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                if compression == "none":
                    self._splice(member, write_fd)
                else:
                    self._inflate(member, write_fd, compression)
            except BrokenPipeError:
                pass  # the reader is gone: it stopped, or failed on its own
            except BaseException as e:
                errors.append(e)
            finally:
                os.close(write_fd)

        thread = threading.Thread(target=feed, name="composefs-archive-feed", daemon=True)
        try:
            thread.start()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            yield read_fd
        except BaseException as body_error:
            os.close(read_fd)
            thread.join()
            if errors and isinstance(body_error, Exception):
                raise ArchiveError(f"Reading {what} from {self.path}") from errors[0]
            raise
        os.close(read_fd)
        thread.join()
        if errors:
            raise ArchiveError(f"Reading {what} from {self.path}") from errors[0]

    def _splice(self, member: Member, out: int) -> None:
        pos, end = member.offset, member.offset + member.size
        while pos < end:
            want = min(_CHUNK, end - pos)
            try:
                n = os.splice(self._fd, out, want, offset_src=pos)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                data = os.pread(self._fd, want, pos)  # a file system without splice
                _write_all(out, data)
                n = len(data)
            if n == 0:
                raise ArchiveError(
                    f"the archive ended {end - pos} bytes early (was it changed while being read?)"
                )
            pos += n

    def _inflate(self, member: Member, out: int, compression: str) -> None:
        read = _decoder(compression, self.reader(member))
        while True:
            try:
                block = read(_CHUNK)
            except ComposefsError:
                raise
            except _DECODE_ERRORS as e:
                raise ArchiveError(f"decompressing ({compression})") from e
            if not block:
                break
            _write_all(out, block)


# -- oci-archive: a layout in a tar ------------------------------------------------------------


class _MemberBlob:
    """A blob of a layout in an archive (:class:`~composefs.oci.layout.BlobFile`)."""

    def __init__(self, archive: Archive, member: Member, name: str) -> None:
        self._archive = archive
        self._member = member
        self._name = name
        self.size = member.size
        self.regular = member.kind == "file"
        self._reader: IO[bytes] | None = None

    def read(self, n: int) -> bytes:
        if self._reader is None:
            self._reader = self._archive.reader(self._member)
        return self._reader.read(n)

    def stream(self) -> contextlib.AbstractContextManager[int]:
        return self._archive.stream(self._member, self._name)

    def close(self) -> None:
        self._reader = None


class ArchiveFiles:
    """The files of an OCI layout stored in a tar archive
    (:class:`~composefs.oci.layout.LayoutFiles`), for :class:`LayoutSource`."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.path

    def _member(self, name: str) -> Member:
        return self.archive.index.lookup(name)

    def read_document(self, name: str, limit: int) -> bytes:
        try:
            member = self._member(name)
        except OSError as e:
            raise DocumentError(f"cannot open {name}") from e
        if member.kind != "file":
            raise DocumentError(f"{name} is not a regular file")
        try:
            return self.archive.read(member, limit, name)
        except ArchiveError as e:
            raise DocumentError(f"reading {name}") from e

    def prepare(self) -> None:
        pass

    def open_blob(self, hexdigest: str) -> BlobFile:
        name = f"blobs/sha256/{hexdigest}"
        return _MemberBlob(self.archive, self._member(name), name)

    def blob_size(self, hexdigest: str) -> int:
        return self._member(f"blobs/sha256/{hexdigest}").size

    def close(self) -> None:
        self.archive.close()


# ``separator``, ``alphanum`` and ``component`` of containers/image's OCI image names
_OCI_IMAGE_NAME = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*"
)


def _source_index(text: str) -> int:
    try:
        index = int(text, 10)
    except ValueError:
        raise ImageReferenceError(f"Invalid source index @{text}: not an integer") from None
    if index < 0:
        raise ImageReferenceError(f"Invalid source index @{index}: must not be negative")
    return index


def parse_oci_archive_name(name: str) -> LayoutReference:
    """``PATH[:IMAGE]`` of ``oci-archive:``, as containers/image splits it: at the **first**
    colon (so the path has none). ``IMAGE`` is a ref name (``org.opencontainers.image.ref.name``)
    or ``@N``, the N-th entry of ``index.json``; empty or absent: every entry is a candidate."""
    path, _, image = name.partition(":")
    if not path:
        raise ImageReferenceError(f"Invalid empty path in oci-archive:{name}")
    if image.startswith("@"):
        return LayoutReference(path, index=_source_index(image[1:]))
    if image and not _OCI_IMAGE_NAME.fullmatch(image):
        raise ImageReferenceError(f"Invalid image {image}")
    return LayoutReference(path, tag=image or None)


def open_oci_archive(ref: ImageReference | str) -> LayoutSource:
    """The :class:`LayoutSource` of an ``oci-archive:`` reference (or of its name part)."""
    name = ref.name if isinstance(ref, ImageReference) else ref
    layout = parse_oci_archive_name(name)
    archive = Archive(layout.path)
    try:
        return LayoutSource(layout, ArchiveFiles(archive))
    except BaseException:
        archive.close()
        raise


# -- docker-archive: docker save output --------------------------------------------------------

_DOCKER_DOMAIN: Final = "docker.io"
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN: Final = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT: Final = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOCKER_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)
_HEX64 = re.compile(r"[a-f0-9]{64}")


def normalize_docker_reference(text: str, *, default_tag: bool = True) -> str:
    """``name[:tag]`` normalised as Docker and containers/image do
    (``reference.ParseNormalizedNamed``): ``busybox`` -> ``docker.io/library/busybox:latest``,
    ``quay.io/a/b:1`` unchanged. The first component is a registry when it has a ``.`` or a
    ``:``, is ``localhost`` or has upper-case letters. Digests are refused (a Docker archive
    names images by tag)."""
    if _HEX64.fullmatch(text):
        raise ImageReferenceError(
            f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
        )
    first, slash, rest = text.partition("/")
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, remainder = first, rest
    else:
        domain, remainder = _DOCKER_DOMAIN, text
    if domain == "index.docker.io":
        domain = _DOCKER_DOMAIN
    if domain == _DOCKER_DOMAIN and "/" not in remainder:
        remainder = "library/" + remainder
    remote = remainder.split(":", 1)[0].split("@", 1)[0]
    if remote.lower() != remote:
        raise ImageReferenceError(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    m = _DOCKER_REFERENCE.fullmatch(f"{domain}/{remainder}")
    if m is None:
        raise ImageReferenceError(f"invalid reference format: {quote(text)}")
    if len(m["name"]) > 255:
        raise ImageReferenceError(
            "invalid reference format: repository name must not be more than 255 characters"
        )
    if m["digest"]:
        raise ImageReferenceError(f"docker-archive doesn't support digest references: {text}")
    tag = m["tag"] or ("latest" if default_tag else None)
    return m["name"] if tag is None else f"{m['name']}:{tag}"


@dataclasses.dataclass(frozen=True)
class DockerArchiveReference:
    """``docker-archive:PATH[:NAME[:TAG]|:@N]``: the archive, and which of its images."""

    path: str
    #: the normalised ``name:tag`` to look for in ``RepoTags``
    tag: str | None = None
    #: the ``manifest.json`` item at this position
    index: int | None = None


def parse_docker_archive_name(name: str) -> DockerArchiveReference:
    """``PATH[:REFERENCE]``, split at the first colon as containers/image does; the reference
    is a Docker name (normalised, ``:latest`` added) or ``@N``."""
    path, colon, rest = name.partition(":")
    if not path:
        raise ImageReferenceError(
            f"docker-archive reference {name} isn't of the form <path>[:<reference>]"
        )
    if not colon:
        return DockerArchiveReference(path)
    if rest.startswith("@"):
        return DockerArchiveReference(path, index=_source_index(rest[1:]))
    try:
        return DockerArchiveReference(path, tag=normalize_docker_reference(rest))
    except ImageReferenceError as e:
        raise ImageReferenceError("docker-archive parsing reference") from e


@dataclasses.dataclass(frozen=True)
class _Item:
    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def _items(raw: bytes) -> list[_Item]:
    doc = parse_json(raw, "manifest.json")
    if not isinstance(doc, list):
        raise DocumentError("manifest.json is not a JSON list")
    items = []
    for i, entry in enumerate(doc):
        where = f"manifest.json[{i}]"
        if not isinstance(entry, dict):
            raise DocumentError(f"{where}: expected an object")
        config = entry.get("Config")
        if not isinstance(config, str):
            raise DocumentError(f"{where}.Config: expected a string")
        tags = entry.get("RepoTags") or []
        layers = entry.get("Layers") or []
        for key, value in (("RepoTags", tags), ("Layers", layers)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DocumentError(f"{where}.{key}: expected a list of strings")
        items.append(_Item(config, tuple(tags), tuple(layers)))
    return items


@dataclasses.dataclass(frozen=True)
class _Layer:
    member: Member
    compression: str
    #: uncompressed size
    size: int


class DockerArchiveSource:
    """An image of a ``docker save`` archive (:class:`~composefs.oci.source.ImageSource`).

    The manifest is the Docker schema 2 manifest containers/image generates for the image:
    the config (``application/vnd.docker.container.image.v1+json``, named by the sha256 of its
    bytes), then one layer per ``rootfs.diff_ids`` entry, named by that diff_id, typed
    ``application/vnd.docker.image.rootfs.diff.tar.gzip`` and sized uncompressed, serialised as
    Go's ``encoding/json`` does. Layers are served uncompressed (whatever compression their
    content has, detected from its first bytes), so each hashes to its diff_id.
    """

    def __init__(self, ref: DockerArchiveReference, **limits: int) -> None:
        self.ref = ref
        self.path = ref.path
        self._archive = Archive(ref.path, **limits)
        self._resolved: ResolvedManifest | None = None
        self._config: tuple[str, bytes] | None = None
        self._layers: dict[str, _Layer] = {}
        self._platform: Platform | None = None
        try:
            self._item = self._choose()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> DockerArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, name: str, limit: int, what: str) -> bytes:
        try:
            member = self._archive.lookup(name)
        except OSError as e:
            raise ArchiveError(f"loading {quote(name)!r} from the archive") from e
        return self._archive.read(member, limit, what)

    def _choose(self) -> _Item:
        items = _items(self._read("manifest.json", MAX_TAR_MANIFEST, "manifest.json"))
        if self.ref.tag is not None:
            for i, item in enumerate(items):
                for tag in item.repo_tags:
                    try:
                        normalized = normalize_docker_reference(tag, default_tag=False)
                    except ImageReferenceError as e:
                        raise ArchiveError(
                            f"Invalid tag {json.dumps(tag)} in manifest.json item @{i}"
                        ) from e
                    if normalized == self.ref.tag:
                        return item
            raise DockerArchiveTagNotFound(f"Tag {json.dumps(self.ref.tag)} not found")
        if self.ref.index is not None:
            if self.ref.index >= len(items):
                raise ArchiveError(
                    f"Invalid source index @{self.ref.index}, only {len(items)} manifest "
                    "items available"
                )
            return items[self.ref.index]
        if len(items) != 1:
            raise ArchiveError(
                f"Unexpected tar manifest.json: expected 1 item, got {len(items)} "
                "(name one: docker-archive:PATH:NAME:TAG or docker-archive:PATH:@N)"
            )
        return items[0]

    # -- ImageSource -------------------------------------------------------------------------

    def resolve(self, platform: str | None) -> ResolvedManifest:
        """The synthesised manifest (see the class's doc). The archive holds one image per
        item, whatever its platform: a platform that differs from ``platform`` (or this
        host's) is only logged."""
        wanted = parse_platform(platform) if platform is not None else host_platform()
        if self._resolved is None:
            self._resolved = self._synthesize()
        warn_other_platform(
            self._platform,
            wanted,
            explicit=platform is not None,
            what=f"the image in {self.path}",
        )
        return self._resolved

    def _synthesize(self) -> ResolvedManifest:
        item = self._item
        config_raw = self._read(item.config, SIZE_LIMITS["config"], "config")
        config_doc = parse_json_object(config_raw, f"config {item.config}")
        diff_ids = config_diff_ids(config_doc, f"config {item.config}")
        if len(item.layers) != len(diff_ids):
            raise ArchiveError(
                f"Inconsistent layer count: {len(item.layers)} in manifest, "
                f"{len(diff_ids)} in config"
            )
        with contextlib.suppress(DocumentError, ComposefsError):
            if config_doc.get("os") and config_doc.get("architecture"):
                self._platform = Platform.from_json(config_doc)
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        self._config = (config_digest, config_raw)
        paths: set[str] = set()
        for diff_id, path in zip(diff_ids, item.layers, strict=True):
            if diff_id in self._layers:
                continue  # the same layer twice: docker save links the duplicates
            cleaned = posixpath.normpath(path)
            if cleaned in paths:
                raise ArchiveError(
                    f"Layer tarfile {json.dumps(path)} used for two different DiffID values"
                )
            paths.add(cleaned)
            self._layers[diff_id] = self._layer(path)
        layers = [
            {
                "mediaType": DOCKER_LAYER_MEDIA_TYPE + ".gzip",
                "size": self._layers[d].size,
                "digest": d,
            }
            for d in diff_ids
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": DOCKER_CONFIG_MEDIA_TYPE,
                "size": len(config_raw),
                "digest": config_digest,
            },
            "layers": layers,
        }
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        return ResolvedManifest("sha256:" + hashlib.sha256(raw).hexdigest(), raw)

    def _layer(self, path: str) -> _Layer:
        try:
            member = self._archive.lookup(path)
        except OSError as e:
            raise ArchiveError(f"loading layer {quote(path)!r}") from e
        head = os.pread(self._archive.fd, 8, member.offset) if member.size else b""
        compression = detect_compression(head[: member.size])
        if compression == "none":
            return _Layer(member, compression, member.size)
        # sized uncompressed, as containers/image does: the layer is read through once
        size = 0
        try:
            read = _decoder(compression, self._archive.reader(member))
            while block := read(_CHUNK):
                size += len(block)
        except ComposefsError:
            raise
        except _DECODE_ERRORS as e:
            raise ArchiveError(f"reading {quote(path)!r} to find its size") from e
        return _Layer(member, compression, size)

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """The config (the only small blob of a Docker archive)."""
        if self._config is None or descriptor.digest != self._config[0]:
            raise ArchiveError(f"Unknown blob {descriptor.digest}")
        data = self._config[1]
        if len(data) != descriptor.size:
            raise ArchiveError(
                f"blob {descriptor.digest}: expected {descriptor.size} bytes, found {len(data)}"
            )
        return data

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[int]:
        """A layer, uncompressed (``descriptor.digest`` is its diff_id)."""
        layer = self._layers.get(descriptor.digest)
        if layer is None:
            raise ArchiveError(f"Unknown blob {descriptor.digest}")
        with self._archive.stream(
            layer.member, f"layer {descriptor.digest}", layer.compression
        ) as fd:
            yield fd

    def blob_media_type(self, descriptor: Descriptor) -> str:
        """What :meth:`open_blob` serves: an uncompressed tar, whatever the manifest says."""
        if descriptor.digest in self._layers:
            return DOCKER_LAYER_MEDIA_TYPE
        return descriptor.media_type


def open_docker_archive(ref: ImageReference | str) -> DockerArchiveSource:
    """The :class:`DockerArchiveSource` of a ``docker-archive:`` reference (or its name)."""
    name = ref.name if isinstance(ref, ImageReference) else ref
    return DockerArchiveSource(parse_docker_archive_name(name))
