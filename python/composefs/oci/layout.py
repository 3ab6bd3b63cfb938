"""OCI image layouts: reading one for a pull (``oci:`` directories, ``oci-archive:`` tars).

:class:`LayoutSource` implements :class:`~composefs.oci.source.ImageSource` for a layout: it
checks ``oci-layout``, finds the tagged ``index.json`` entries, resolves image indexes (nested
up to :data:`~composefs.oci.media_types.MAX_INDEX_DEPTH` deep) for a platform and hands out
verified blobs. Where the files are is behind :class:`LayoutFiles`: a directory
(:class:`DirectoryFiles`) or a tar archive (:class:`composefs.oci.archive.ArchiveFiles`), so a
layout and a layout in a tar are resolved by the same code. OCI and Docker schema 2 media types
are read alike. (Writing layouts, for tests and tools: :mod:`composefs.testing`.)
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from composefs._record import replace
from composefs.errors import (
    ComposefsError,
    DigestMismatchError,
    ImageNotFoundError,
    SourceError,
    TagNotFoundError,
    wrap,
)
from composefs.oci.documents import (
    SIZE_LIMITS,
    DocumentError,
    open_file,
    parse_index,
    parse_json_object,
    parse_manifest,
    quote,
    read_regular_file,
)
from composefs.oci.media_types import (
    INDEX_MEDIA_TYPE,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPES,
    MAX_INDEX_DEPTH,
    REF_NAME_ANNOTATION,
)
from composefs.oci.platform import Platform, host_platform, parse_platform
from composefs.oci.reference import ImageReferenceError, LayoutReference, parse_digest
from composefs.oci.resolve import Chain, IndexWalker, PlatformNotFound
from composefs.oci.source import Descriptor, ResolvedManifest

__all__ = [
    "INDEX_MEDIA_TYPE",
    "LAYOUT_VERSION",
    "MANIFEST_MEDIA_TYPE",
    "REF_NAME_ANNOTATION",
    "BlobFile",
    "DirectoryFiles",
    "LayoutError",
    "LayoutFiles",
    "LayoutSource",
    "NoMatchingPlatform",
]

LAYOUT_VERSION = "1.0.0"


class LayoutError(SourceError):
    """An OCI layout cannot be read, or does not hold what was asked for."""


class LayoutTagNotFound(LayoutError, TagNotFoundError):
    """The tag is not in the layout's ``index.json``."""


class LayoutNotFound(LayoutError, ImageNotFoundError):
    """The layout directory does not exist."""


class LayoutBlobNotFound(LayoutError, ImageNotFoundError):
    """A blob named by digest is not in the layout."""


class LayoutDigestMismatch(LayoutError, DigestMismatchError):
    """A blob of the layout does not match its descriptor's size or digest."""


class NoMatchingPlatform(LayoutError, PlatformNotFound):
    """No manifest of the image matches the wanted platform."""


#: blobs kept in memory once read (small ones: manifests, configs, indexes), in bytes in all
_CACHE_BUDGET = 16 << 20
_CACHE_ENTRY_MAX = 1 << 20


#: tags listed in the message of a missing tag, at most
_TAGS_SHOWN = 10


def _tags_present(entries: Sequence[Descriptor]) -> str:
    """``tags present: a, b`` (at most :data:`_TAGS_SHOWN`, then how many more), or ``no tags
    present``: the hint of a tag typo."""
    tags: dict[str, None] = {}
    for desc in entries:
        tag = (desc.annotations or {}).get(REF_NAME_ANNOTATION)
        if isinstance(tag, str):
            tags[tag] = None
    if not tags:
        return "no tags present"
    shown = ", ".join(quote(t) for t in list(tags)[:_TAGS_SHOWN])
    more = len(tags) - _TAGS_SHOWN
    return f"tags present: {shown}" + (f", and {more} more" if more > 0 else "")


def _blob_limit(media_type: str) -> int:
    """The largest blob :meth:`LayoutSource.read_blob` reads for a media type."""
    if media_type in INDEX_MEDIA_TYPES or media_type in MANIFEST_MEDIA_TYPES:
        return SIZE_LIMITS["manifest"]
    return SIZE_LIMITS["config"]


# -- where the files are -------------------------------------------------------------------


class BlobFile(Protocol):
    """One opened blob of a layout (read once, then closed)."""

    #: the blob's size as stored (``st_size``, or the tar member's size)
    size: int
    #: a regular file (a FIFO, device or directory is refused by the caller)
    regular: bool

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, sequentially from the start; ``b""`` at the end."""
        ...

    def stream(self) -> contextlib.AbstractContextManager[int]:
        """A readable file descriptor of the whole blob, read to its end by the caller."""
        ...

    def close(self) -> None: ...


class LayoutFiles(Protocol):
    """The files of an OCI layout, wherever they are: a directory (:class:`DirectoryFiles`)
    or a tar archive (:class:`composefs.oci.archive.ArchiveFiles`). Names are fixed ones
    (``oci-layout``, ``index.json``) and validated hex digests, never paths from a document."""

    def read_document(self, name: str, limit: int) -> bytes:
        """A top-level file of the layout, at most ``limit`` bytes, only if it is a regular
        file: a :class:`~composefs.oci.documents.DocumentError` otherwise (whose cause is a
        :class:`FileNotFoundError` when the file is missing)."""
        ...

    def prepare(self) -> None:
        """Readies the blob store, once ``oci-layout`` was checked."""
        ...

    def open_blob(self, hexdigest: str) -> BlobFile:
        """``blobs/sha256/<hexdigest>``; an :class:`OSError` (``FileNotFoundError``) when it
        cannot be opened."""
        ...

    def blob_size(self, hexdigest: str) -> int:
        """The size of ``blobs/sha256/<hexdigest>`` (:class:`FileNotFoundError` if absent)."""
        ...

    def close(self) -> None: ...


class _FdBlob:
    """A blob of a layout directory: its open file descriptor."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.size = st.st_size
        self.regular = stat.S_ISREG(st.st_mode)

    def read(self, n: int) -> bytes:
        return os.read(self.fd, n)

    @contextlib.contextmanager
    def stream(self) -> Iterator[int]:
        yield self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DirectoryFiles:
    """A layout directory, read through directory descriptors (names never leave it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._blobs = -1
        try:
            self._dir = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            cls = LayoutNotFound if isinstance(e, FileNotFoundError) else LayoutError
            raise cls(f"Opening OCI layout directory {path}") from e

    def read_document(self, name: str, limit: int) -> bytes:
        return read_regular_file(name, limit, name, dir_fd=self._dir)

    def prepare(self) -> None:
        try:
            self._blobs = os.open(
                "blobs/sha256", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dir
            )
        except OSError as e:
            raise LayoutError(f"Opening {self.path}/blobs/sha256") from e

    def open_blob(self, hexdigest: str) -> BlobFile:
        # opened non-blocking (:func:`~composefs.oci.documents.open_file`): a FIFO is not
        # waited on
        return _FdBlob(*open_file(hexdigest, dir_fd=self._blobs))

    def blob_size(self, hexdigest: str) -> int:
        return os.stat(hexdigest, dir_fd=self._blobs).st_size

    def close(self) -> None:
        for attr in ("_blobs", "_dir"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


class LayoutSource:
    """An image in an OCI layout (``oci:PATH[:TAG]``, ``oci:PATH@DIGEST``, or a layout in a
    tar archive: ``files`` is then a :class:`composefs.oci.archive.ArchiveFiles`).

    Everything in the layout is untrusted: only regular files are read (a FIFO is refused,
    never waited on), every JSON document with a size cap
    (:data:`~composefs.oci.documents.SIZE_LIMITS`) and type-checked, and blobs are named only
    by validated ``sha256:<64 hex>`` digests (``blobs/sha256/<hex>``, never a path from a
    document).
    """

    def __init__(self, ref: LayoutReference | str, files: LayoutFiles | None = None) -> None:
        if isinstance(ref, str):
            ref = LayoutReference(ref)
        self.ref = ref
        self.path = ref.path
        self._cache: dict[str, bytes] = {}
        self._cached_bytes = 0
        #: the index walk and platform choice, shared with the registry source
        self._walker = IndexWalker(self.read_blob, error=LayoutError, no_match=NoMatchingPlatform)
        self._files: LayoutFiles | None = None
        self._files = files if files is not None else DirectoryFiles(ref.path)
        try:
            self._check_layout_file()
            self._files.prepare()
        except BaseException:
            self.close()
            raise

    def _check_layout_file(self) -> None:
        try:
            data = self._read_file("oci-layout", "oci-layout")
            doc = parse_json_object(data, "oci-layout")
        except DocumentError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                raise LayoutError(
                    f"{self.path} is not an OCI image layout (no oci-layout file)"
                ) from None
            # keep the document's message as the error itself (with its cause, if any)
            raise LayoutError(str(e)) from e.__cause__
        version = doc.get("imageLayoutVersion")
        if not isinstance(version, str) or version.split(".")[:2] != ["1", "0"]:
            shown = repr(version)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise LayoutError(
                f"unsupported OCI layout version {shown} in {self.path}/oci-layout "
                f"(expected {LAYOUT_VERSION!r})"
            )

    def _read_file(self, name: str, kind: str) -> bytes:
        """A document of the layout, read with ``kind``'s size cap (regular files only); a
        :class:`~composefs.oci.documents.DocumentError` otherwise."""
        assert self._files is not None
        return self._files.read_document(name, SIZE_LIMITS[kind])

    def close(self) -> None:
        files, self._files = self._files, None
        if files is not None:
            files.close()

    def __enter__(self) -> LayoutSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs -----------------------------------------------------------------------------

    def _open(self, desc: Descriptor) -> BlobFile:
        """``blobs/sha256/<hex>`` of a checked digest: a regular file of the descriptor's size.

        A FIFO is refused, not waited on (:meth:`LayoutFiles.open_blob`).
        """
        assert self._files is not None
        try:
            hexdigest = parse_digest(desc.digest)[len("sha256:") :]
        except ImageReferenceError as e:
            raise wrap(LayoutError, f"Opening blob {quote(desc.digest)}", e) from e
        try:
            blob = self._files.open_blob(hexdigest)
        except (OSError, ComposefsError) as e:
            raise LayoutError(f"Opening blob {desc.digest}") from e
        try:
            if not blob.regular:
                raise LayoutError(f"Opening blob {desc.digest}") from LayoutError(
                    "not a regular file"
                )
            if blob.size != desc.size:
                raise LayoutDigestMismatch(f"Opening blob {desc.digest}") from LayoutError(
                    f"Expected size {desc.size} but found {blob.size}"
                )
        except BaseException:
            blob.close()
            raise
        return blob

    def read_blob(self, descriptor: Descriptor, limit: int | None = None) -> bytes:
        """The blob's bytes, checked against the descriptor's size and sha256 digest.

        At most ``limit`` bytes (default: the cap of the descriptor's media type, 4 MiB for
        manifests and indexes, 8 MiB for anything else: this reads documents, not layers).
        """
        cached = self._cache.get(descriptor.digest)
        if cached is not None and len(cached) == descriptor.size:
            return cached
        if limit is None:
            limit = _blob_limit(descriptor.media_type)
        if descriptor.size > limit:
            raise LayoutError(f"Reading blob {descriptor.digest}") from DocumentError(
                f"blob is too large ({descriptor.size} bytes, the limit is {limit})"
            )
        blob = self._open(descriptor)
        try:
            chunks = []
            total = 0
            while total <= descriptor.size:
                chunk = blob.read(min(descriptor.size + 1 - total, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except (OSError, ComposefsError) as e:
            raise LayoutError(f"Reading blob {descriptor.digest}") from e
        finally:
            blob.close()
        data = b"".join(chunks)
        if len(data) != descriptor.size:
            raise LayoutDigestMismatch(f"Reading blob {descriptor.digest}") from LayoutError(
                f"Expected size {descriptor.size} but read {len(data)} bytes"
            )
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != descriptor.digest:
            raise LayoutDigestMismatch(f"Reading blob {descriptor.digest}") from LayoutError(
                f"Expected digest {descriptor.digest} but found {found}"
            )
        if len(data) <= _CACHE_ENTRY_MAX and self._cached_bytes + len(data) <= _CACHE_BUDGET:
            self._cache[descriptor.digest] = data
            self._cached_bytes += len(data)
        return data

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[int]:
        """A file descriptor of the blob (a regular file, size checked; the reader verifies
        the digest): the file itself in a directory, a pipe fed from the archive in a tar."""
        blob = self._open(descriptor)
        try:
            with blob.stream() as fd:
                yield fd
        finally:
            blob.close()

    # -- resolution ------------------------------------------------------------------------

    def read_index(self) -> tuple[bytes, dict[str, Any]]:
        """The raw and parsed ``index.json`` (at most 4 MiB, a regular file)."""
        try:
            raw = self._read_file("index.json", "index")
        except DocumentError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                raise LayoutError("Cannot find the Image Index (index.json)") from None
            raise
        return raw, parse_json_object(raw, "index.json")

    def _index_entries(self) -> tuple[Descriptor, ...]:
        _, index = self.read_index()
        return parse_index(index, "index.json", check_version=False).manifests

    def resolve(self, platform: str | None) -> ResolvedManifest:
        """The manifest for ``platform`` (``os/arch[/variant]``; default: this host)."""
        try:
            return self._resolve(platform)
        except (LayoutError, DocumentError) as e:
            cls = type(e) if isinstance(e, LayoutError) else LayoutError
            raise wrap(cls, "Resolving manifest for platform", e) from e

    def _resolve(self, platform: str | None) -> ResolvedManifest:
        wanted = parse_platform(platform) if platform is not None else host_platform()
        explicit = platform is not None
        if self.ref.digest is not None:
            return self._resolve_digest(self.ref.digest, wanted, explicit=explicit)
        entries: Sequence[Descriptor] = self._index_entries()
        if self.ref.tag is not None:
            tag = self.ref.tag
            tagged = [d for d in entries if (d.annotations or {}).get(REF_NAME_ANNOTATION) == tag]
            if not tagged:
                raise LayoutTagNotFound(
                    f"Tag '{quote(tag)}' not found in image index ({_tags_present(entries)})"
                )
            entries = tagged
            what = f"tag '{quote(tag)}'"
        elif self.ref.index is not None:
            if self.ref.index >= len(entries):
                raise LayoutTagNotFound(
                    f"Invalid source index @{self.ref.index}, only {len(entries)} manifest "
                    "items available"
                )
            entries = [entries[self.ref.index]]
            what = f"entry @{self.ref.index}"
        elif not entries:
            raise LayoutError("Image index contains no manifests")
        else:
            what = ""
        return self._finish(
            *self._walker.choose(
                entries, wanted, explicit=explicit, what=f"{what} of {self.path}" if what else ""
            )
        )

    def _finish(self, desc: Descriptor, chain: Chain) -> ResolvedManifest:
        return ResolvedManifest(desc.digest, self.read_blob(desc), chain)

    def _resolve_digest(self, digest: str, wanted: Platform, *, explicit: bool) -> ResolvedManifest:
        """A digest names a manifest (taken as it is, like a tag naming one) or an index
        (resolved from there)."""
        desc = self._find_descriptor(digest)
        if desc.media_type in INDEX_MEDIA_TYPES:
            raw = self.read_blob(desc)
            children = self._walker.children(raw, digest)
            return self._finish(*self._walker.select(children, wanted, ((digest, raw),)))
        if desc.media_type not in MANIFEST_MEDIA_TYPES:
            raise LayoutError(f"Unexpected media type {quote(desc.media_type)}")
        self._walker.single(desc, wanted, explicit=explicit, what=f"{digest} of {self.path}")
        return ResolvedManifest(digest, self.read_blob(desc))

    # -- referrers -------------------------------------------------------------------------

    def referrers(self, subject: str) -> list[Descriptor]:
        """The manifests listed in ``index.json`` whose ``subject`` is ``subject`` (how the
        image-layout spec 1.1 keeps referrers: as manifests of the layout)."""
        found = []
        for desc in self._index_entries():
            if desc.media_type != MANIFEST_MEDIA_TYPE or desc.digest == subject:
                continue
            what = f"manifest {desc.digest}"
            try:
                manifest = parse_manifest(parse_json_object(self.read_blob(desc), what), what)
            except (LayoutError, DocumentError):
                continue  # not this image's business: a pull of it would report the problem
            if manifest.subject is not None and manifest.subject.digest == subject:
                found.append(desc)
        return found

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        return self.read_blob(descriptor)

    def _find_descriptor(self, digest: str) -> Descriptor:
        """The descriptor of ``digest``: from ``index.json`` (and its nested indexes) if it is
        listed there, else made from the blob itself (media type from its JSON).

        Breadth first, each index read once (a queue, not ``list.pop(0)``: linear).
        """
        pending = collections.deque((d, 0) for d in self._index_entries())
        visited: set[str] = set()
        while pending:
            desc, depth = pending.popleft()
            if desc.digest == digest:
                return desc
            if desc.media_type in INDEX_MEDIA_TYPES and desc.digest not in visited:
                visited.add(desc.digest)
                if depth >= MAX_INDEX_DEPTH:
                    continue
                with contextlib.suppress(LayoutError, DocumentError):
                    children = self._walker.children(self.read_blob(desc), desc.digest)
                    pending.extend((c, depth + 1) for c in children)
        hexdigest = parse_digest(digest)[len("sha256:") :]
        assert self._files is not None
        try:
            size = self._files.blob_size(hexdigest)
        except FileNotFoundError:
            raise LayoutBlobNotFound(f"Blob {digest} not found in {self.path}") from None
        except (OSError, ComposefsError) as e:
            raise LayoutError(f"Opening blob {digest}") from e
        probe = Descriptor(media_type="", digest=digest, size=size)
        doc = parse_json_object(self.read_blob(probe, SIZE_LIMITS["manifest"]), f"blob {digest}")
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            media_type = INDEX_MEDIA_TYPE if "manifests" in doc else MANIFEST_MEDIA_TYPE
        return replace(probe, media_type=media_type)
