"""Where a pull reads an image from: the contract between ``pull`` and its transports.

``oci:`` references are read directly from the layout directory (:mod:`composefs.oci.layout`),
``oci-archive:`` and ``docker-archive:`` from the archive (:mod:`composefs.oci.archive`),
``docker://`` from the registry (:mod:`composefs.oci.registry`); other transports go through
skopeo's image proxy (:mod:`composefs.oci.proxy`). All implement
:class:`ImageSource`, so :mod:`composefs.oci.pull` does the same work for each: resolve the
manifest for a platform, read the config, import the layers in parallel, write the streams.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

# The descriptor is a document type: defined with its parser, named here for the sources.
from composefs._record import record
from composefs.oci.documents import Descriptor

__all__ = ["Descriptor", "ImageSource", "ReferrerSource", "ResolvedManifest", "served_media_type"]


@record
class ResolvedManifest:
    """The image manifest chosen for a platform, and how it was reached.

    ``indexes`` lists the image indexes walked to reach the manifest, outermost first, as
    ``(digest, raw bytes)``; empty when the reference named a manifest directly. ``raw`` are the
    manifest bytes exactly as they will be stored.
    """

    digest: str
    raw: bytes
    indexes: tuple[tuple[str, bytes], ...] = ()


class ImageSource(Protocol):
    """A source of one image's manifest and blobs."""

    def resolve(self, platform: str | None) -> ResolvedManifest:
        """Finds the manifest (resolving image indexes for ``platform`` or the host's)."""
        ...

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """A small blob (a config), verified against its descriptor's digest and size."""
        ...

    def open_blob(self, descriptor: Descriptor) -> contextlib.AbstractContextManager[int]:
        """A readable file descriptor for a (layer) blob, read to EOF by the caller.

        Leaving the context finishes the transfer; transport errors detected only at the end
        (skopeo reports digest mismatches in ``FinishPipe``) are raised there.
        """
        ...

    def close(self) -> None: ...


def served_media_type(source: ImageSource, descriptor: Descriptor) -> str:
    """The media type of the bytes ``source.open_blob(descriptor)`` yields.

    Usually the descriptor's. A source whose manifest does not describe the bytes it serves
    says so with an optional ``blob_media_type(descriptor)`` method: a Docker archive's
    manifest (made as containers/image makes it) calls every layer gzip, named by its diff_id,
    and the layers are served uncompressed.
    """
    method = getattr(source, "blob_media_type", None)
    if method is None:
        return descriptor.media_type
    media_type: str = method(descriptor)
    return media_type


class ReferrerSource(ImageSource, Protocol):
    """A source that can also list the artifacts referring to a manifest (OCI 1.1 referrers:
    signatures, SBOMs, attestations) and read their manifests."""

    def referrers(self, subject: str) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is the manifest ``subject``."""
        ...

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        """A manifest's bytes, verified against the descriptor's digest and size."""
        ...
