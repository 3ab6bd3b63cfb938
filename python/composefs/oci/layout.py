"""OCI image layout directories: reading one for a pull (the ``oci:`` fast path), and writing one.

:class:`LayoutSource` implements :class:`~composefs.oci.source.ImageSource` for a layout on
disk: it checks ``oci-layout``, finds the tagged ``index.json`` entries, resolves image indexes
(nested up to :data:`~composefs.oci.media_types.MAX_INDEX_DEPTH` deep) for a platform and hands
out verified blobs. (Writing layouts, for tests and tools: :mod:`composefs.testing`.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from composefs.errors import ComposefsError
from composefs.oci.media_types import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MAX_INDEX_DEPTH,
    REF_NAME_ANNOTATION,
)
from composefs.oci.platform import (
    Platform,
    format_platforms,
    host_platform,
    match_rank,
    parse_platform,
)
from composefs.oci.reference import LayoutReference, ReferenceError, parse_digest
from composefs.oci.source import Descriptor, ResolvedManifest

__all__ = [
    "INDEX_MEDIA_TYPE",
    "LAYOUT_VERSION",
    "MANIFEST_MEDIA_TYPE",
    "REF_NAME_ANNOTATION",
    "LayoutError",
    "LayoutSource",
    "NoMatchingPlatform",
]

LAYOUT_VERSION = "1.0.0"


class LayoutError(ComposefsError):
    """An OCI layout cannot be read, or does not hold what was asked for."""


class NoMatchingPlatform(LayoutError):
    """No manifest of the image matches the wanted platform."""


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{what} is not valid JSON") from e


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    doc = _load_json(data, what)
    if not isinstance(doc, dict):
        raise LayoutError(f"{what} is not a JSON object")
    return doc


def _descriptor(doc: Any, where: str) -> Descriptor:
    if not isinstance(doc, dict):
        raise LayoutError(f"invalid descriptor in {where}: not a JSON object")
    try:
        desc = Descriptor.from_json(doc)
    except (KeyError, TypeError, ValueError) as e:
        raise LayoutError(f"invalid descriptor in {where}: missing or bad {e}") from None
    if desc.size < 0:
        raise LayoutError(f"invalid descriptor in {where}: negative size")
    return desc


def descriptors_of(index: dict[str, Any], where: str) -> list[Descriptor]:
    """The ``manifests`` of an image index, checked."""
    entries = index.get("manifests")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise LayoutError(f"{where}: 'manifests' is not a list")
    return [_descriptor(e, where) for e in entries]


@dataclasses.dataclass
class _Search:
    wanted: Platform
    best: tuple[int, int, Descriptor, tuple[tuple[str, bytes], ...]] | None = None
    order: int = 0
    seen: list[Platform | None] = dataclasses.field(default_factory=list)


class LayoutSource:
    """An image in an OCI layout directory (``oci:PATH[:TAG]`` or ``oci:PATH@DIGEST``)."""

    def __init__(self, ref: LayoutReference | str) -> None:
        if isinstance(ref, str):
            ref = LayoutReference(ref)
        self.ref = ref
        self.path = ref.path
        self._dir = -1
        self._blobs = -1
        self._cache: dict[str, bytes] = {}
        try:
            self._dir = os.open(ref.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise LayoutError(f"Opening OCI layout directory {ref.path}") from e
        try:
            self._check_layout_file()
            try:
                self._blobs = os.open(
                    "blobs/sha256", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dir
                )
            except OSError as e:
                raise LayoutError(f"Opening {ref.path}/blobs/sha256") from e
        except BaseException:
            self.close()
            raise

    def _check_layout_file(self) -> None:
        try:
            data = self._read_file("oci-layout")
        except FileNotFoundError:
            raise LayoutError(
                f"{self.path} is not an OCI image layout (no oci-layout file)"
            ) from None
        except OSError as e:
            raise LayoutError(f"Reading {self.path}/oci-layout") from e
        doc = _json_object(data, "oci-layout")
        version = doc.get("imageLayoutVersion")
        if not isinstance(version, str) or version.split(".")[:2] != ["1", "0"]:
            raise LayoutError(
                f"unsupported OCI layout version {version!r} in {self.path}/oci-layout "
                f"(expected {LAYOUT_VERSION!r})"
            )

    def _read_file(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def close(self) -> None:
        for attr in ("_blobs", "_dir"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def __enter__(self) -> LayoutSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs -----------------------------------------------------------------------------

    def _open(self, desc: Descriptor) -> int:
        try:
            hexdigest = parse_digest(desc.digest)[len("sha256:") :]
        except ReferenceError as e:
            raise LayoutError(f"Opening blob {desc.digest}") from e
        try:
            fd = os.open(hexdigest, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._blobs)
        except OSError as e:
            raise LayoutError(f"Opening blob {desc.digest}") from e
        size = os.fstat(fd).st_size
        if size != desc.size:
            os.close(fd)
            raise LayoutError(f"Opening blob {desc.digest}") from LayoutError(
                f"Expected size {desc.size} but found {size}"
            )
        return fd

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """The blob's bytes, checked against the descriptor's size and sha256 digest."""
        cached = self._cache.get(descriptor.digest)
        if cached is not None and len(cached) == descriptor.size:
            return cached
        fd = self._open(descriptor)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != descriptor.digest:
            raise LayoutError(f"Reading blob {descriptor.digest}") from LayoutError(
                f"Expected digest {descriptor.digest} but found {found}"
            )
        if len(data) <= (1 << 20):
            self._cache[descriptor.digest] = data
        return data

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[int]:
        """A file descriptor of the blob (size checked; the reader verifies the digest)."""
        fd = self._open(descriptor)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- resolution ------------------------------------------------------------------------

    def read_index(self) -> tuple[bytes, dict[str, Any]]:
        """The raw and parsed ``index.json``."""
        try:
            raw = self._read_file("index.json")
        except FileNotFoundError:
            raise LayoutError("Cannot find the Image Index (index.json)") from None
        except OSError as e:
            raise LayoutError("Reading index.json") from e
        return raw, _json_object(raw, "index.json")

    def resolve(self, platform: str | None) -> ResolvedManifest:
        """The manifest for ``platform`` (``os/arch[/variant]``; default: this host)."""
        try:
            return self._resolve(platform)
        except LayoutError as e:
            raise type(e)("Resolving manifest for platform") from e

    def _resolve(self, platform: str | None) -> ResolvedManifest:
        wanted = parse_platform(platform) if platform is not None else host_platform()
        if self.ref.digest is not None:
            return self._resolve_digest(self.ref.digest, wanted, explicit=platform is not None)
        _, index = self.read_index()
        entries = descriptors_of(index, "index.json")
        if self.ref.tag is not None:
            tag = self.ref.tag
            entries = [d for d in entries if (d.annotations or {}).get(REF_NAME_ANNOTATION) == tag]
            if not entries:
                raise LayoutError(f"Tag '{tag}' not found in image index")
        elif not entries:
            raise LayoutError("Image index contains no manifests")
        search = _Search(wanted)
        self._walk(entries, (), search, 0)
        return self._finish(search)

    def _finish(self, search: _Search) -> ResolvedManifest:
        if search.best is None:
            raise NoMatchingPlatform(
                f"No manifest found for platform {search.wanted}; available: "
                f"{format_platforms(search.seen)}"
            )
        _, _, desc, chain = search.best
        return ResolvedManifest(desc.digest, self.read_blob(desc), chain)

    def _walk(
        self,
        entries: Sequence[Descriptor],
        chain: tuple[tuple[str, bytes], ...],
        search: _Search,
        depth: int,
    ) -> bool:
        """Ranks every manifest below ``entries``; ``True`` once an exact match was found."""
        for desc in entries:
            if desc.media_type == MANIFEST_MEDIA_TYPE:
                plat = self._platform_of(desc)
                search.seen.append(plat)
                rank = None if plat is None else match_rank(plat, search.wanted)
                if rank is not None:
                    key = (rank, search.order, desc, chain)
                    search.order += 1
                    if search.best is None or key[:2] < search.best[:2]:
                        search.best = key
                    if rank == 0:
                        return True
            elif desc.media_type == INDEX_MEDIA_TYPE:
                if depth >= MAX_INDEX_DEPTH or any(d == desc.digest for d, _ in chain):
                    raise LayoutError(f"image index {desc.digest} nests too deep (a loop?)")
                raw = self.read_blob(desc)
                children = descriptors_of(_json_object(raw, f"index {desc.digest}"), desc.digest)
                if self._walk(children, (*chain, (desc.digest, raw)), search, depth + 1):
                    return True
            elif not desc.media_type:
                raise LayoutError(f"descriptor {desc.digest} has no mediaType")
            else:
                raise LayoutError(f"Unexpected media type {desc.media_type}")
        return False

    def _platform_of(self, desc: Descriptor) -> Platform | None:
        """The descriptor's platform, else the one in the image's config (``None``: none)."""
        if desc.platform:
            return Platform.from_json(desc.platform)
        manifest = _json_object(self.read_blob(desc), f"manifest {desc.digest}")
        config = manifest.get("config")
        if not isinstance(config, dict) or config.get("mediaType") != CONFIG_MEDIA_TYPE:
            return None
        config_desc = _descriptor(config, f"manifest {desc.digest}")
        doc = _json_object(self.read_blob(config_desc), f"config {config_desc.digest}")
        if not doc.get("architecture") or not doc.get("os"):
            return None
        return Platform.from_json(doc)

    def _resolve_digest(self, digest: str, wanted: Platform, *, explicit: bool) -> ResolvedManifest:
        """A digest names a manifest (taken as it is) or an index (resolved from there)."""
        desc = self._find_descriptor(digest)
        if desc.media_type == INDEX_MEDIA_TYPE:
            raw = self.read_blob(desc)
            children = descriptors_of(_json_object(raw, f"index {digest}"), digest)
            search = _Search(wanted)
            self._walk(children, ((digest, raw),), search, 1)
            return self._finish(search)
        if desc.media_type != MANIFEST_MEDIA_TYPE:
            raise LayoutError(f"Unexpected media type {desc.media_type}")
        if explicit:
            plat = self._platform_of(desc)
            if plat is None or match_rank(plat, wanted) is None:
                raise NoMatchingPlatform(
                    f"No manifest found for platform {wanted}; available: "
                    f"{format_platforms([plat])}"
                )
        return ResolvedManifest(digest, self.read_blob(desc))

    def _find_descriptor(self, digest: str) -> Descriptor:
        """The descriptor of ``digest``: from ``index.json`` (and its nested indexes) if it is
        listed there, else made from the blob itself (media type from its JSON)."""
        _, index = self.read_index()
        pending = [(d, 0) for d in descriptors_of(index, "index.json")]
        visited: set[str] = set()
        while pending:
            desc, depth = pending.pop(0)
            if desc.digest == digest:
                return desc
            if desc.media_type == INDEX_MEDIA_TYPE and desc.digest not in visited:
                visited.add(desc.digest)
                if depth >= MAX_INDEX_DEPTH:
                    continue
                with contextlib.suppress(LayoutError):
                    raw = self.read_blob(desc)
                    children = descriptors_of(_json_object(raw, desc.digest), desc.digest)
                    pending.extend((c, depth + 1) for c in children)
        hexdigest = digest[len("sha256:") :]
        try:
            size = os.stat(hexdigest, dir_fd=self._blobs).st_size
        except FileNotFoundError:
            raise LayoutError(f"Blob {digest} not found in {self.path}") from None
        probe = Descriptor(media_type="", digest=digest, size=size)
        doc = _json_object(self.read_blob(probe), f"blob {digest}")
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            media_type = INDEX_MEDIA_TYPE if "manifests" in doc else MANIFEST_MEDIA_TYPE
        return dataclasses.replace(probe, media_type=media_type)
