"""Registry image names (the part after ``docker://``), normalised as container tools do.

The grammar is the one of the distribution project's reference package, which
containers/image (and so skopeo and podman) and Docker use:

* ``[REGISTRY/]PATH[:TAG][@DIGEST]``. The first ``/``-separated component is a registry when
  it contains a ``.`` or a ``:`` or is ``localhost`` (or has an upper-case letter, which a path
  component cannot have); otherwise the registry is Docker Hub, ``docker.io``.
* ``index.docker.io`` is another name of ``docker.io``; a one-component path on Docker Hub is
  in ``library/`` (``alpine`` -> ``docker.io/library/alpine``); Docker Hub's API is served by
  ``registry-1.docker.io`` (:attr:`DockerReference.endpoint`).
* path components are lower-case ``[a-z0-9]`` runs joined by ``.``, ``_``, ``__`` or dashes; a
  tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; the whole name (registry included) is at most
  255 characters.
* no tag and no digest means ``:latest``. With both a tag and a digest the digest names the
  manifest and the tag is only kept for display (as Docker and podman do; skopeo refuses such
  references).

Only ``sha256`` digests are accepted (the only algorithm composefs-rs stores).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Final

from composefs.errors import ImageReferenceError
from composefs.oci.documents import quote
from composefs.oci.reference import parse_digest

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_ENDPOINT",
    "DockerReference",
    "parse_docker_reference",
]

#: the registry name of Docker Hub, and the host that serves its API
DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_ENDPOINT: Final = "registry-1.docker.io"
_DOCKER_HUB_ALIASES: Final = frozenset({"docker.io", "index.docker.io"})
_DEFAULT_TAG: Final = "latest"
_MAX_NAME: Final = 255

_PATH_COMPONENT: Final = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT: Final = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN: Final = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
)
_TAG: Final = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST: Final = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")


@dataclasses.dataclass(frozen=True)
class DockerReference:
    """A normalised registry image reference."""

    #: ``docker.io``, ``quay.io``, ``127.0.0.1:5000``, ``[::1]:5000``, ...
    registry: str
    #: ``library/alpine``, ``fedora/fedora``, ...
    repository: str
    #: the tag (``latest`` when neither tag nor digest was given); may accompany a digest
    tag: str | None = None
    #: ``sha256:<hex>``: when set, it names the manifest (the tag is only shown)
    digest: str | None = None

    @property
    def endpoint(self) -> str:
        """The ``host[:port]`` that serves the registry API (``registry-1.docker.io`` for
        Docker Hub)."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str:
        """What ``/v2/<repository>/manifests/<reference>`` asks for: the digest if any, else
        the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None
        return self.tag

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def scope(self) -> str:
        """The token scope a pull of this repository needs."""
        return f"repository:{self.repository}:pull"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _invalid(text: str, why: str) -> ImageReferenceError:
    return ImageReferenceError(f"invalid registry reference {quote(text)!r}: {why}")


def parse_docker_reference(text: str) -> DockerReference:
    """Parses and normalises ``[REGISTRY/]PATH[:TAG][@DIGEST]`` (the name after
    ``docker://``). Raises :class:`~composefs.errors.ImageReferenceError`."""
    if not text:
        raise _invalid(text, "empty name")
    rest = text
    digest: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        rest, digest_text = rest[:at], rest[at + 1 :]
        if not _DIGEST.fullmatch(digest_text):
            raise _invalid(text, "invalid digest")
        try:
            digest = parse_digest(digest_text)
        except ImageReferenceError as e:
            raise _invalid(text, str(e)) from None
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(text, "invalid tag (expected [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
    if not rest:
        raise _invalid(text, "empty repository name")
    registry, path = _split_registry(rest)
    if not _DOMAIN.fullmatch(registry):
        raise _invalid(text, f"invalid registry name {quote(registry)!r}")
    if not path:
        raise _invalid(text, "empty repository path")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise _invalid(text, "repository name must be lowercase")
        raise _invalid(
            text,
            f"invalid repository path component {quote(component)!r} (lower-case letters and "
            "digits, joined by '.', '_', '__' or '-')",
        )
    if len(rest) > _MAX_NAME:
        raise _invalid(text, f"repository name must not be more than {_MAX_NAME} characters")
    registry_name = DOCKER_HUB if registry in _DOCKER_HUB_ALIASES else registry
    if registry_name == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = _DEFAULT_TAG
    return DockerReference(registry_name, path, tag, digest)


def _split_registry(name: str) -> tuple[str, str]:
    """``(registry, path)``: the first component is a registry when it has a ``.`` or ``:``,
    is ``localhost``, or has an upper-case letter; otherwise the name is on Docker Hub."""
    first, slash, remainder = name.partition("/")
    if not slash:
        return DOCKER_HUB, name
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first, remainder
    return DOCKER_HUB, name
