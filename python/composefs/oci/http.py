"""HTTP for the registry client: one urllib3 pool per source, proxies, retries, safe messages.

* :class:`ProxySettings`: ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (and the lower-case
  names) read as Go's ``net/http`` does (containers/image, and so skopeo, use it): loopback
  hosts are never proxied; ``NO_PROXY`` lists host names (``example.com`` also covers its
  subdomains, ``.example.com`` and ``*.example.com`` only the subdomains), IP addresses, CIDR
  ranges, each optionally with ``:port``, or ``*`` (no proxy at all).
* :class:`RetryPolicy`: how often and how long to try. Connection errors, timeouts, ``429``
  and ``5xx`` (but ``501``) are retried with exponential backoff and jitter; a ``Retry-After``
  header is honoured up to a cap (:func:`parse_retry_after`).
* :class:`HttpClient`: requests with those retries, redirects followed by hand (an
  ``Authorization`` header never goes to another origin, an ``https`` URL never redirects to
  ``http`` unless plain HTTP is allowed), and errors as
  :class:`~composefs.errors.TransportError` whose messages show URLs without their query
  string (signed blob URLs carry credentials there) and never a header.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import ipaddress
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import urllib3
import urllib3.exceptions

from composefs.errors import TransportError

__all__ = [
    "ConnectError",
    "HttpClient",
    "ProxySettings",
    "RetryPolicy",
    "TlsError",
    "TransferCancelled",
    "describe_error",
    "parse_content_range",
    "parse_retry_after",
    "safe_url",
]

USER_AGENT: Final = "composefs-python"
_M = TypeVar("_M", bound=urllib3.PoolManager)
_MAX_REDIRECTS: Final = 10
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


class TlsError(TransportError):
    """The TLS handshake with the server failed (certificate, protocol): not retried."""


class ConnectError(TransportError):
    """The server could not be reached (refused, unreachable, name unknown, timed out)."""


class TransferCancelled(TransportError):
    """The pull was cancelled while a request waited (for the network or a backoff)."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How requests are tried. ``tries`` counts every attempt (the first one too);
    the delay before try ``n + 1`` is ``min(backoff * 2**(n-1), max_backoff)`` times a random
    factor in [0.5, 1) (jitter), or the server's ``Retry-After`` capped at
    ``max_retry_after``. Timeouts are per request and per socket read, in seconds."""

    tries: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 60.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        base = min(self.backoff * float(2 ** (attempt - 1)), self.max_backoff)
        return float(base * (0.5 + random.random() / 2))

    @property
    def timeout(self) -> urllib3.Timeout:
        return urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout)


def _digits(text: str) -> bool:
    """``text`` is a decimal number a header may carry: ASCII digits only (``str.isdigit``
    also accepts ``²`` and other digits ``int`` refuses), at most 19 of them (``int`` refuses
    thousands of digits, and no size or delay needs more)."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds from ``now``: delta-seconds or an HTTP date;
    ``None`` when absent or malformed (then the usual backoff applies)."""
    if value is None:
        return None
    value = value.strip()
    if _digits(value):
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """``Content-Range: bytes START-END/TOTAL`` (``TOTAL`` may be ``*``) as
    ``(start, end, total)``; ``None`` when absent or malformed."""
    if value is None:
        return None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, slash, total_text = spec.strip().partition("/")
    start_text, dash, end_text = span.partition("-")
    if not slash or not dash:
        return None
    if not (_digits(start_text) and _digits(end_text)):
        return None
    start, end = int(start_text), int(end_text)
    if end < start:
        return None
    total: int | None
    if total_text == "*":
        total = None
    elif _digits(total_text):
        total = int(total_text)
        if end >= total:
            return None
    else:
        return None
    return start, end, total


def safe_url(url: str) -> str:
    """``url`` for a message: scheme, host, port and path only (no user info, query or
    fragment: a redirect to blob storage carries a signature in its query)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), port


def describe_error(error: BaseException) -> str:
    """A short description of a urllib3 or socket error, without object reprs."""
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        inner: BaseException = error
        while isinstance(inner, urllib3.exceptions.SSLError) and inner.args:
            nested = inner.args[0]
            if not isinstance(nested, BaseException):
                break
            inner = nested
        if isinstance(inner, ssl.SSLCertVerificationError) and inner.verify_message:
            return f"TLS certificate verification failed: {inner.verify_message}"
        if isinstance(inner, ssl.SSLError) and inner.reason in _NOT_TLS_REASONS:
            return "TLS handshake failed: the server answered in plain HTTP, not TLS"
        if isinstance(inner, ssl.SSLError) and inner.reason:
            return f"TLS handshake failed: {inner.reason}"
        return f"TLS error: {inner}"
    if isinstance(error, urllib3.exceptions.ProxyError):
        cause = getattr(error, "original_error", None)
        return "proxy error" + (f": {describe_error(cause)}" if cause is not None else "")
    # (urllib3 2: NameResolutionError < NewConnectionError < ConnectTimeoutError)
    if isinstance(error, urllib3.exceptions.NameResolutionError):
        return "cannot resolve the host name"
    os_error = _find_os_error(error)
    if isinstance(error, urllib3.exceptions.NewConnectionError) and os_error:
        return f"connection failed: {os_error}"
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(error, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "timed out waiting for data"
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return "connection failed"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        if os_error:
            return f"connection broken: {os_error}"
        if error.args and isinstance(error.args[-1], urllib3.exceptions.IncompleteRead):
            return "connection closed before the end of the response"
        return "connection broken"
    if os_error:
        return os_error
    return type(error).__name__


#: OpenSSL's reasons for a reply that is not TLS at all (3.0; 3.2 and later)
_NOT_TLS_REASONS: Final = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})


def _find_os_error(error: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        for arg in getattr(current, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                return arg.strerror
        current = current.__cause__ or current.__context__
    return ""


def _error_class(error: BaseException) -> type[TransportError]:
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        return TlsError
    if isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ProxyError):
        return ConnectError
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return ConnectError
    return TransportError


def _retryable_error(error: BaseException) -> bool:
    if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
        return False
    return isinstance(error, urllib3.exceptions.HTTPError | OSError)


def retryable_status(status: int) -> bool:
    """``429`` and ``5xx`` but ``501 Not Implemented`` and ``505``."""
    return status == 429 or (500 <= status <= 599 and status not in (501, 505))


# -- proxies ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _NoProxyEntry:
    host: str = ""  # ".example.com" (suffix), with match_host: "example.com" itself too
    match_host: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: str = ""


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """Which proxy a URL goes through (Go ``net/http``'s environment rules)."""

    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxySettings:
        def get(*names: str) -> str | None:
            for name in names:
                value = env.get(name)
                if value:
                    return value
            return None

        http = get("HTTP_PROXY", "http_proxy")
        if env.get("REQUEST_METHOD"):
            http = None  # a CGI environment: HTTP_PROXY may come from a request header
        return cls(http, get("HTTPS_PROXY", "https_proxy"), get("NO_PROXY", "no_proxy") or "")

    def _entries(self) -> tuple[bool, list[_NoProxyEntry]]:
        every = False
        entries: list[_NoProxyEntry] = []
        for raw in self.no_proxy.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "*":
                every = True
                continue
            with contextlib.suppress(ValueError):
                if "/" in item:
                    entries.append(_NoProxyEntry(network=ipaddress.ip_network(item, strict=False)))
                    continue
            host, port = _split_host_port(item)
            if not host:
                continue
            with contextlib.suppress(ValueError):
                address = ipaddress.ip_address(host)
                entries.append(_NoProxyEntry(network=ipaddress.ip_network(address), port=port))
                continue
            if host.startswith("*."):
                host = host[1:]
            match_host = not host.startswith(".")
            if match_host:
                host = "." + host
            entries.append(_NoProxyEntry(host=host, match_host=match_host, port=port))
        return every, entries

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for ``url``, or ``None`` for a direct connection."""
        parts = urllib.parse.urlsplit(url)
        proxy = self.https_proxy if parts.scheme == "https" else self.http_proxy
        if not proxy:
            return None
        host = (parts.hostname or "").lower()
        port = str(parts.port or (443 if parts.scheme == "https" else 80))
        if host == "localhost":
            return None
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host)
        if address is not None and address.is_loopback:
            return None
        every, entries = self._entries()
        if every:
            return None
        for entry in entries:
            if entry.port and entry.port != port:
                continue
            if entry.network is not None:
                if address is not None and address in entry.network:
                    return None
            elif host.endswith(entry.host) or (entry.match_host and host == entry.host[1:]):
                return None
        if "://" not in proxy:
            proxy = "http://" + proxy
        return proxy


def _split_host_port(item: str) -> tuple[str, str]:
    """``host:port``, ``[v6]:port``, ``host`` or a bare IPv6 address."""
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            return item, ""
        rest = item[end + 1 :]
        return item[1:end], rest[1:] if rest.startswith(":") and _digits(rest[1:]) else ""
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        if _digits(port):
            return host, port
        return host, ""
    return item, ""


# -- the client ------------------------------------------------------------------------------


class _UnverifiedHTTPSPool(urllib3.HTTPSConnectionPool):
    """The pool used when TLS verification is off on the user's request
    (``--tls-verify=false``): it connects without urllib3's ``InsecureRequestWarning``,
    which would only repeat, once per connection, what the user asked for."""

    def _validate_conn(self, conn: Any) -> None:
        if conn.is_closed:
            conn.connect()


class HttpClient:
    """Requests over one pool of connections (per proxy), with the :class:`RetryPolicy`.

    ``ssl_context`` is used for every ``https`` connection (registry and redirect targets).
    ``cancel``, when given, is polled while waiting (backoffs); it turns the wait into a
    :class:`TransferCancelled`. Thread-safe (urllib3's pools are).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        policy: RetryPolicy,
        proxies: ProxySettings,
        cancel: Callable[[], bool] | None = None,
        allow_http: bool = False,
        maxsize: int = 8,
    ) -> None:
        self.policy = policy
        self.allow_http = allow_http
        self._cancel = cancel
        self._proxies = proxies
        self._ssl_context = ssl_context
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._direct = self._quiet(
            urllib3.PoolManager(
                num_pools=8,
                maxsize=maxsize,
                ssl_context=ssl_context,
                headers={"User-Agent": USER_AGENT},
            )
        )
        self._proxied: dict[str, urllib3.ProxyManager] = {}

    def _quiet(self, manager: _M) -> _M:
        if self._ssl_context.verify_mode == ssl.CERT_NONE:
            manager.pool_classes_by_scheme = {
                **manager.pool_classes_by_scheme,
                "https": _UnverifiedHTTPSPool,
            }
        return manager

    def close(self) -> None:
        with self._lock:
            self._direct.clear()
            for manager in self._proxied.values():
                manager.clear()
            self._proxied.clear()

    def cancelled(self) -> bool:
        return self._cancel is not None and self._cancel()

    def _manager(self, url: str) -> urllib3.PoolManager:
        proxy = self._proxies.proxy_for(url)
        if proxy is None:
            return self._direct
        with self._lock:
            manager = self._proxied.get(proxy)
            if manager is None:
                parts = urllib.parse.urlsplit(proxy)
                headers = {}
                if parts.username is not None:
                    user = urllib.parse.unquote(parts.username)
                    password = urllib.parse.unquote(parts.password or "")
                    headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}")
                manager = self._quiet(
                    urllib3.ProxyManager(
                        proxy,
                        num_pools=8,
                        maxsize=self._maxsize,
                        proxy_headers=headers,
                        ssl_context=self._ssl_context,
                        headers={"User-Agent": USER_AGENT},
                    )
                )
                self._proxied[proxy] = manager
            return manager

    def wait(self, seconds: float) -> None:
        """Sleeps ``seconds``, polling ``cancel``."""
        deadline = time.monotonic() + seconds
        while True:
            if self.cancelled():
                raise TransferCancelled("cancelled")
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        what: str | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Sends the request, following redirects and retrying transient failures; returns
        the final response unread (``preload_content=False``: read it, then
        ``release_conn()``). A ``401`` and every other status that is not retried are
        returned as they are; after the last try the failure is a
        :class:`~composefs.errors.TransportError` ("GET URL: 503 Service Unavailable after 5
        tries")."""
        attempt = 0
        while True:
            attempt += 1
            if self.cancelled():
                raise TransferCancelled("cancelled")
            try:
                response, final_url = self._send(method, url, headers, body)
            except TransportError:
                raise
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if not _retryable_error(e) or attempt >= self.policy.tries:
                    cls = _error_class(e)
                    # the description is the error: urllib3's own text adds object reprs
                    raise self.failure(method, url, describe_error(e), attempt, cls) from None
                self.wait(self.policy.delay(attempt))
                continue
            if retryable_status(response.status):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                status = _status_text(response)
                response.drain_conn()
                response.release_conn()
                if attempt >= self.policy.tries:
                    raise self.failure(method, final_url, status, attempt)
                self.wait(self.policy.delay(attempt, retry_after))
                continue
            return response

    def failure(
        self,
        method: str,
        url: str,
        why: str,
        tries: int,
        cls: type[TransportError] = TransportError,
    ) -> TransportError:
        """``METHOD URL: why[ after N tries]`` (the URL without its query)."""
        suffix = f" after {tries} tries" if tries > 1 else ""
        return cls(f"{method} {safe_url(url)}: {why}{suffix}")

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        current = url
        current_headers = dict(headers)
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._manager(current).request(
                method,
                current,
                headers=current_headers,
                body=body,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=self.policy.timeout,
            )
            if response.status not in _REDIRECTS:
                return response, current
            location = response.headers.get("Location")
            response.drain_conn()
            response.release_conn()
            if not location:
                raise self.failure(
                    method, current, f"{response.status} redirect without a Location", 1
                )
            target = urllib.parse.urljoin(current, location)
            scheme = urllib.parse.urlsplit(target).scheme
            if scheme not in ("http", "https"):
                raise self.failure(method, current, "redirect to a URL that is not http(s)", 1)
            if scheme == "http" and not self.allow_http and _origin(current)[0] == "https":
                raise self.failure(
                    method, current, f"redirect from https to plain http ({safe_url(target)})", 1
                )
            if _origin(target) != _origin(current):
                # credentials are for the registry, never for blob storage elsewhere
                current_headers = {
                    k: v for k, v in current_headers.items() if k.lower() != "authorization"
                }
            current = target
        raise self.failure(method, url, f"more than {_MAX_REDIRECTS} redirects", 1)


def _status_text(response: urllib3.BaseHTTPResponse) -> str:
    import http

    try:
        phrase = http.HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    return f"{response.status} {phrase}".rstrip()


def status_text(response: urllib3.BaseHTTPResponse) -> str:
    """``503 Service Unavailable``."""
    return _status_text(response)


def read_limited(response: urllib3.BaseHTTPResponse, limit: int) -> bytes | None:
    """The whole body, or ``None`` when it is larger than ``limit`` bytes (not read further)."""
    length = response.headers.get("Content-Length")
    if length is not None and _digits(length) and int(length) > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = response.read(min(limit + 1 - total, 1 << 20) or 1, decode_content=False)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
