"""Registry credentials and authentication: where credentials come from, and the token flow.

(Interface fixed for the registry client in :mod:`composefs.oci.registry`; the implementation
lands with the auth work.)

* :func:`lookup_credentials` finds the credentials for a registry as containers-auth.json(5)
  describes: ``--creds``, then ``REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json``,
  ``~/.config/containers/auth.json``, ``~/.docker/config.json`` (with ``credHelpers`` and
  ``credsStore`` through ``docker-credential-*`` programs).
* :class:`Authenticator` answers, for one registry, which ``Authorization`` header a request for
  a scope needs, and handles a ``401`` challenge (``WWW-Authenticate: Bearer realm=...,
  service=..., scope=...`` -> a token from the realm, cached per scope; ``Basic`` -> the
  credentials). Secrets never appear in a ``repr``, an error message or a log line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from composefs.errors import AuthenticationError

__all__ = [
    "Authenticator",
    "Credentials",
    "HttpResponse",
    "RequestFunction",
    "lookup_credentials",
    "parse_creds",
]


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A user name and a secret (a password, or an identity token for the OAuth2 flow)."""

    username: str
    password: str = dataclasses.field(repr=False)
    #: docker config's ``identitytoken``: sent as ``refresh_token`` to the token endpoint
    identity_token: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class HttpResponse:
    """What the token flow needs of an HTTP response (header names lower-case)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


#: ``(method, url, headers, body) -> response``: the registry client's own request function
#: (same connection pool, TLS settings, proxies and timeouts), used to reach token endpoints;
#: it raises :class:`~composefs.errors.TransportError` when the request cannot be made.
RequestFunction = Callable[[str, str, Mapping[str, str], bytes | None], HttpResponse]


def parse_creds(text: str) -> Credentials:
    """``USER[:PASSWORD]`` as ``--creds`` takes it."""
    username, _, password = text.partition(":")
    if not username:
        raise AuthenticationError("--creds: the user name is empty")
    return Credentials(username, password)


def lookup_credentials(
    registry: str, *, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The stored credentials for ``registry`` (``host[:port]``; ``docker.io`` for Docker Hub),
    or ``None`` when no auth file has any."""
    return None


class Authenticator:
    """The authentication state for one registry; thread-safe."""

    def __init__(
        self, registry: str, credentials: Credentials | None, request: RequestFunction
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        self._request = request

    def headers(self, scope: str) -> dict[str, str]:
        """The headers (``Authorization``) to send with a request needing ``scope``
        (``repository:library/alpine:pull``); empty while no challenge has been seen."""
        return {}

    def challenge(self, www_authenticate: str | None, scope: str) -> None:
        """Handles a ``401`` for a request needing ``scope``: after it returns, :meth:`headers`
        gives what to retry with. Raises :class:`AuthenticationError` when no retry can help
        (no credentials for ``Basic``, the token endpoint refused them, an unknown scheme)."""
        raise AuthenticationError(f"{self.registry}: authentication required")
