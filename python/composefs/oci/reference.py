"""Image references: where a pull reads from, and how images are named inside a repository.

A *source reference* is ``TRANSPORT:NAME`` (containers-image-proxy-rs rules: split at the
first colon, ``docker:`` needs ``//``). ``oci:`` references are read directly from the layout
directory; their name is ``PATH[:TAG]``, split at the **last** colon unless a ``/`` follows it
(composefs-rs ``parse_oci_layout_ref``), plus our extension ``PATH@sha256:<hex>`` naming a
manifest or index blob of the layout by digest. ``docker://`` names are registry references
(:mod:`composefs.oci.docker_reference` parses them; read natively). ``oci-archive:`` and
``docker-archive:`` are read natively too (their names are parsed in
:mod:`composefs.oci.archive`); every other transport goes to skopeo.

A *repository reference* (``oci inspect`` and friends) is a tag name, or ``@sha256:<hex>``
for a manifest digest (cfsctl's ``OciReference``).
"""

from __future__ import annotations

import re

from composefs._record import record
from composefs.errors import ImageReferenceError

__all__ = [
    "NATIVE_TRANSPORTS",
    "PROXY_TRANSPORTS",
    "TRANSPORTS",
    "ImageReference",
    "ImageReferenceError",
    "LayoutReference",
    "RepoReference",
    "parse_digest",
    "parse_layout_name",
    "parse_reference",
    "parse_repo_reference",
]


def __getattr__(name: str) -> type[ImageReferenceError]:
    # ``ReferenceError`` was this module's name for the error; it shadows a builtin
    if name == "ReferenceError":
        import warnings

        warnings.warn(
            "composefs.oci.reference.ReferenceError is renamed ImageReferenceError",
            DeprecationWarning,
            stacklevel=2,
        )
        return ImageReferenceError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: transport prefix -> canonical transport name (``docker`` and ``registry`` are one transport)
TRANSPORTS: dict[str, str] = {
    "docker": "docker",
    "registry": "docker",
    "oci": "oci",
    "oci-archive": "oci-archive",
    "docker-archive": "docker-archive",
    "containers-storage": "containers-storage",
    "dir": "dir",
    "docker-daemon": "docker-daemon",
}

#: the transports read without skopeo (``docker`` is read natively unless the pull asks for
#: skopeo: ``via_skopeo``)
NATIVE_TRANSPORTS = frozenset({"oci", "oci-archive", "docker-archive", "docker"})

#: the transports handled by skopeo's image proxy
PROXY_TRANSPORTS = frozenset(t for t in TRANSPORTS.values() if t not in NATIVE_TRANSPORTS)

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_DIGEST_SUFFIX = re.compile(r"^(?P<path>.*)@(?P<digest>(?:sha256|sha384|sha512):[0-9A-Za-z]+)$")


@record
class ImageReference:
    """A parsed ``TRANSPORT:NAME`` source reference."""

    #: canonical transport: ``oci``, ``docker``, ``oci-archive``, ``docker-archive``,
    #: ``containers-storage``, ``dir`` or ``docker-daemon``
    transport: str
    #: the part after the transport (without ``//`` for ``docker://``)
    name: str
    #: the reference as given
    text: str

    @property
    def uses_proxy(self) -> bool:
        """Whether skopeo *can* read this transport (``docker`` is native by default, through
        skopeo with ``via_skopeo``)."""
        return self.transport in PROXY_TRANSPORTS or self.transport == "docker"

    def for_skopeo(self) -> str:
        """The reference as skopeo expects it (``registry:`` becomes ``docker://``)."""
        if self.transport == "docker":
            return f"docker://{self.name}"
        return f"{self.transport}:{self.name}"

    def __str__(self) -> str:
        return self.text


def parse_reference(text: str) -> ImageReference:
    """Parses ``TRANSPORT:NAME`` (the messages are containers-image-proxy-rs 0.11's)."""
    prefix, colon, name = text.partition(":")
    if not colon:
        raise ImageReferenceError(f"Missing ':' in {text}{_transport_hint(text)}")
    transport = TRANSPORTS.get(prefix)
    if transport is None:
        known = ", ".join(sorted(set(TRANSPORTS) - {"registry"}))
        raise ImageReferenceError(
            f"Invalid transport: {prefix} (known transports: {known}){_transport_hint(text)}"
        )
    if prefix == "docker":
        if not name.startswith("//"):
            raise ImageReferenceError(f"Missing // in docker:// in {text}")
        name = name[2:]
    if not name:
        raise ImageReferenceError(f"Invalid empty name in {text}")
    return ImageReference(transport, name, text)


def _transport_hint(text: str) -> str:
    """What a reference without a transport probably meant: a directory (``oci:PATH``) or a
    registry image (``docker://NAME``: a host with a dot or a port, ``localhost``, a path of
    names, a ``NAME:TAG``); nothing when it names some other scheme (``ftp:/x``)."""
    import os

    path, _, rest = text.partition(":")
    if path.startswith(("/", "./", "../", "~")) or os.path.isdir(path):
        return f"; for an OCI layout directory use oci:{text}"
    if rest.startswith("/"):
        return ""
    head = text.split("/", 1)[0]
    if "." in head or ":" in head or head == "localhost" or "/" in text:
        return f"; for a registry image use docker://{text}"
    return f"; name the transport: oci:{text} (an OCI layout directory) or docker://{text}"


def parse_digest(text: str) -> str:
    """Checks an OCI digest string; only ``sha256:<64 lower-case hex>`` is supported."""
    if _SHA256.fullmatch(text):
        return text
    algorithm, colon, value = text.partition(":")
    if not colon or not algorithm or not value:
        raise ImageReferenceError(f"invalid digest {text!r} (expected sha256:<hex>)")
    if algorithm != "sha256":
        raise ImageReferenceError(f"Expected digest algorithm sha256 but found {text!r}")
    raise ImageReferenceError(f"invalid sha256 digest {text!r} (expected 64 lower-case hex digits)")


@record
class LayoutReference:
    """The name part of an ``oci:`` reference."""

    path: str
    #: ``org.opencontainers.image.ref.name`` to look for; ``None``: every ``index.json`` entry
    tag: str | None = None
    #: ``sha256:<hex>`` of a manifest or index blob (our extension); excludes ``tag``
    digest: str | None = None
    #: the ``index.json`` entry at this position (``oci-archive:PATH:@N``, as containers/image)
    index: int | None = None


def parse_layout_name(name: str) -> LayoutReference:
    """Splits ``PATH[:TAG]`` or ``PATH@sha256:<hex>``.

    ``PATH[:TAG]`` follows composefs-rs: the last colon separates the tag unless the text after
    it contains a ``/`` (then there is no tag); ``/x:`` has the empty tag, which matches nothing.
    """
    m = _DIGEST_SUFFIX.match(name)
    if m is not None:
        return LayoutReference(m["path"], digest=parse_digest(m["digest"]))
    before, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return LayoutReference(name)
    return LayoutReference(before, tag=tag)


@record
class RepoReference:
    """An image inside a repository: a tag name, or ``@sha256:<hex>`` (a digest)."""

    name: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"@{self.digest}" if self.digest is not None else str(self.name)


def parse_repo_reference(text: str) -> RepoReference:
    """``@sha256:<hex>`` is a digest, anything else a tag name (cfsctl's ``OciReference``)."""
    if text.startswith("@"):
        try:
            return RepoReference(digest=parse_digest(text[1:]))
        except ImageReferenceError as e:
            raise ImageReferenceError("Invalid OCI digest after '@'") from e
    return RepoReference(name=text)
