"""Where a pull reads an image from: the contract between ``pull`` and its two transports.

``oci:`` references are read directly from the layout directory (:mod:`composefs.oci.layout`);
every other transport goes through skopeo's image proxy (:mod:`composefs.oci.proxy`). Both
implement :class:`ImageSource`, so :mod:`composefs.oci.pull` does the same work for both: resolve
the manifest for a platform, read the config, import the layers in parallel, write the streams.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

# The descriptor is a document type: defined with its parser, named here for the sources.
from composefs.oci.documents import Descriptor

__all__ = ["Descriptor", "ImageSource", "ReferrerSource", "ResolvedManifest"]


@dataclasses.dataclass(frozen=True)
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


class ReferrerSource(ImageSource, Protocol):
    """A source that can also list the artifacts referring to a manifest (OCI 1.1 referrers:
    signatures, SBOMs, attestations) and read their manifests."""

    def referrers(self, subject: str) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is the manifest ``subject``."""
        ...

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        """A manifest's bytes, verified against the descriptor's digest and size."""
        ...
