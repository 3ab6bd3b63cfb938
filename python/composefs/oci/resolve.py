"""Choosing the manifest of an image for a platform: the index walk shared by every source.

An OCI layout (:mod:`composefs.oci.layout`) and a registry (:mod:`composefs.oci.registry`)
resolve image indexes (and Docker manifest lists) with the same rules and the same messages
(``docs/oci.md``, "Platforms"):

* every manifest reachable from the candidates is ranked (:func:`~composefs.oci.platform.
  match_rank`); its platform is its descriptor's ``platform``, else the one of its config (read
  once per manifest); an artifact without platform never matches;
* indexes are followed to :data:`~composefs.oci.media_types.MAX_INDEX_DEPTH`, each walked once
  per resolution (linear in the distinct entries, whatever the fan-out), a loop is an error;
* the best rank wins, the first in file order among equals; the walk stops at an exact match;
* no match: ``No manifest found for platform P; available: ...``;
* a reference that names one manifest (a tag or an ``@N`` entry naming a manifest, a digest of
  one) names the image: no platform is selected, one that differs is only a warning
  (:func:`~composefs.oci.platform.warn_other_platform`), as skopeo and containers/image do.

The source supplies one function, ``read(descriptor) -> bytes``, that returns the verified bytes
of a small blob (an index, a manifest or a config), and the error classes to raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence

from composefs.errors import ComposefsError, ImageNotFoundError
from composefs.oci.documents import (
    Descriptor,
    parse_index,
    parse_json_object,
    parse_manifest,
    quote,
)
from composefs.oci.media_types import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_INDEX_DEPTH,
)
from composefs.oci.platform import Platform, format_platforms, match_rank, warn_other_platform

__all__ = [
    "Chain",
    "IndexWalker",
    "PlatformNotFound",
]

#: the indexes walked to reach a manifest, outermost first, as ``(digest, raw bytes)``
Chain = tuple[tuple[str, bytes], ...]


class PlatformNotFound(ImageNotFoundError):
    """No manifest of the image matches the wanted platform (whatever the source)."""


@dataclasses.dataclass
class _Search:
    wanted: Platform
    best: tuple[int, int, Descriptor, Chain] | None = None
    order: int = 0
    #: the distinct platforms met, in order (for the error message); a dict: linear
    seen: dict[Platform | None, None] = dataclasses.field(default_factory=dict)
    #: the indexes already walked: an index listed twice (or by several parents) is walked
    #: once, so hostile fan-out (20k entries naming one 20k-entry index) stays linear
    walked: set[str] = dataclasses.field(default_factory=set)


class IndexWalker:
    """Resolves indexes for a platform on behalf of one source.

    ``read`` returns the verified bytes of a small blob named by a descriptor (an index, a
    manifest or a config). ``error`` is the class of structural errors (a loop, an unexpected
    media type) and ``no_match`` the class raised when nothing matches (a
    :class:`PlatformNotFound`). ``manifest_types``/``index_types``/``config_types`` are the
    media types the source accepts (by default OCI and Docker schema 2, read alike).
    """

    def __init__(
        self,
        read: Callable[[Descriptor], bytes],
        *,
        error: type[ComposefsError],
        no_match: type[ComposefsError],
        manifest_types: Collection[str] = MANIFEST_MEDIA_TYPES,
        index_types: Collection[str] = INDEX_MEDIA_TYPES,
        config_types: Collection[str] = CONFIG_MEDIA_TYPES,
    ) -> None:
        self._read = read
        self._error = error
        self._no_match = no_match
        self.manifest_types = frozenset(manifest_types)
        self.index_types = frozenset(index_types)
        self._config_types = frozenset(config_types)
        #: manifest digest -> its platform from the config (entries without ``platform``)
        self._config_platforms: dict[str, Platform | None] = {}

    def select(
        self, entries: Sequence[Descriptor], wanted: Platform, chain: Chain = ()
    ) -> tuple[Descriptor, Chain]:
        """The best manifest below ``entries`` for ``wanted``, and the indexes walked to it
        (``chain`` first: the indexes already walked above ``entries``)."""
        search = _Search(wanted, walked={d for d, _ in chain})
        self._walk(entries, chain, search, len(chain))
        if search.best is None:
            raise self._no_match(
                f"No manifest found for platform {quote(search.wanted)}; available: "
                f"{format_platforms(search.seen)}"
            )
        _, _, desc, found = search.best
        return desc, found

    def choose(
        self, entries: Sequence[Descriptor], wanted: Platform, *, explicit: bool, what: str
    ) -> tuple[Descriptor, Chain]:
        """The manifest for ``wanted`` among ``entries`` (a source's top-level entries). When
        ``what`` names a selection (a tag, an ``@N`` entry: non-empty) that is a single
        manifest, that manifest is the image whatever its platform (:meth:`single`)."""
        if what and len(entries) == 1 and entries[0].media_type in self.manifest_types:
            # a tag naming one manifest names the image: platforms select among the entries
            # of an index, and there is none here
            self.single(entries[0], wanted, explicit=explicit, what=what)
            return entries[0], ()
        return self.select(entries, wanted)

    def children(self, raw: bytes, digest: str) -> tuple[Descriptor, ...]:
        """The checked entries of the index ``raw``, which must be one: a descriptor that
        calls a manifest an index is an error, not an index without entries."""
        what = f"index {digest}"
        doc = parse_json_object(raw, what)
        index = parse_index(doc, what)
        if index.media_type is not None and index.media_type not in self.index_types:
            raise self._error(
                f"{what} is not an image index (its mediaType is {quote(index.media_type)})"
            )
        if "manifests" not in doc:
            raise self._error(f"{what} is not an image index (it has no manifests)")
        return index.manifests

    def single(self, desc: Descriptor, wanted: Platform, *, explicit: bool, what: str) -> None:
        """A manifest named directly (by a tag, a digest, an archive) is the image, whatever
        its platform: skopeo and containers/image select platforms only in indexes, so
        ``--platform`` (or the host's) does not refuse it; a platform that differs is logged
        as a warning (``explicit``: ``wanted`` was asked for). A manifest or config that
        cannot be read here gives no warning: the import reads them again and reports the
        error in its own context."""
        try:
            plat = self.platform_of(desc)
        except ComposefsError:
            return
        warn_other_platform(plat, wanted, explicit=explicit, what=what)

    def _walk(
        self, entries: Sequence[Descriptor], chain: Chain, search: _Search, depth: int
    ) -> bool:
        """Ranks every manifest below ``entries``; ``True`` once an exact match was found.

        Linear in the entries of the distinct indexes: each index is read and walked once
        (walking it again could only find the same candidates later in file order, which
        never win), and each manifest's config platform is looked up once.
        """
        for desc in entries:
            if desc.media_type in self.manifest_types:
                plat = self.platform_of(desc)
                search.seen.setdefault(plat)
                rank = None if plat is None else match_rank(plat, search.wanted)
                if rank is not None:
                    key = (rank, search.order, desc, chain)
                    search.order += 1
                    if search.best is None or key[:2] < search.best[:2]:
                        search.best = key
                    if rank == 0:
                        return True
            elif desc.media_type in self.index_types:
                if depth >= MAX_INDEX_DEPTH or any(d == desc.digest for d, _ in chain):
                    raise self._error(f"image index {desc.digest} nests too deep (a loop?)")
                if desc.digest in search.walked:
                    continue
                search.walked.add(desc.digest)
                raw = self._read(desc)
                children = self.children(raw, desc.digest)
                if self._walk(children, (*chain, (desc.digest, raw)), search, depth + 1):
                    return True
            elif not desc.media_type:
                raise self._error(f"descriptor {desc.digest} has no mediaType")
            else:
                raise self._error(f"Unexpected media type {quote(desc.media_type)}")
        return False

    def platform_of(self, desc: Descriptor) -> Platform | None:
        """The descriptor's platform, else the one in the image's config (``None``: none)."""
        if desc.platform:
            return Platform.from_json(desc.platform)
        if desc.digest in self._config_platforms:
            return self._config_platforms[desc.digest]
        what = f"manifest {desc.digest}"
        manifest = parse_manifest(parse_json_object(self._read(desc), what), what)
        plat = None
        if manifest.config.media_type in self._config_types:
            config_what = f"config {manifest.config.digest}"
            doc = parse_json_object(self._read(manifest.config), config_what)
            if doc.get("architecture") and doc.get("os"):
                plat = Platform.from_json(doc)
        self._config_platforms[desc.digest] = plat
        return plat
