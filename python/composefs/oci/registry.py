"""Reading an image from a registry over the OCI distribution API (``docker://``), natively.

:class:`RegistryImageSource` implements :class:`~composefs.oci.source.ImageSource`:

* ``GET /v2/`` first (the *ping*): ``https://``, and only when TLS verification is off
  (``tls_verify=False``) plain ``http://`` after an ``https://`` failure, as containers/image
  does for insecure registries; never plain HTTP otherwise.
* manifests by tag or digest (``GET /v2/<name>/manifests/<ref>``, ``Accept``: OCI manifest and
  index, Docker schema 2 manifest and manifest list), at most 4 MiB; our own sha256 of the
  bytes is the digest stored, and it must equal the digest asked for (by digest) or the
  ``Docker-Content-Digest`` header (by tag, when sent). Image indexes and manifest lists are
  resolved by :class:`~composefs.oci.resolve.IndexWalker`, with the rules and messages of
  ``oci:`` layouts, and reported in :attr:`ResolvedManifest.indexes` so pull stores them.
* blobs (``GET /v2/<name>/blobs/<digest>``), following redirects to blob storage without
  the registry's ``Authorization``: configs read whole (8 MiB cap) and verified; layers
  streamed into a pipe by a thread (:meth:`RegistryImageSource.open_blob`), resumed with
  ``Range`` after a cut (or the first bytes skipped when the server ignores ``Range``), the
  consumer hashing every byte.
* 401 challenges through :class:`~composefs.oci.auth.Authenticator`; retries, timeouts and
  proxies in :mod:`composefs.oci.http`; TLS from :mod:`composefs.oci.tls`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import urllib3
import urllib3.exceptions

from composefs.errors import (
    AuthenticationError,
    DigestMismatchError,
    ImageNotFoundError,
    SourceError,
    TagNotFoundError,
    TransportError,
)
from composefs.oci import auth as _auth
from composefs.oci.docker_reference import DockerReference, parse_docker_reference
from composefs.oci.documents import (
    SIZE_LIMITS,
    Descriptor,
    DocumentError,
    parse_index,
    parse_json,
    parse_json_object,
    quote,
)
from composefs.oci.http import (
    ConnectError,
    HttpClient,
    ProxySettings,
    RetryPolicy,
    TlsError,
    TransferCancelled,
    describe_error,
    parse_content_range,
    read_limited,
    safe_url,
    status_text,
)
from composefs.oci.media_types import (
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPES,
)
from composefs.oci.platform import host_platform, parse_platform
from composefs.oci.resolve import IndexWalker, PlatformNotFound
from composefs.oci.source import ResolvedManifest
from composefs.oci.tls import ssl_context

__all__ = [
    "DEFAULT_RETRY",
    "RegistryBlobNotFound",
    "RegistryDigestMismatch",
    "RegistryError",
    "RegistryImageSource",
    "RegistryManifestNotFound",
    "RegistryNoMatchingPlatform",
    "RegistryTagNotFound",
]

#: the retry and timeout policy of new sources (tests make it small)
DEFAULT_RETRY = RetryPolicy()

ACCEPT: Final = ", ".join(
    (
        MANIFEST_MEDIA_TYPE,
        INDEX_MEDIA_TYPE,
        DOCKER_MANIFEST_MEDIA_TYPE,
        DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    )
)
_CHUNK: Final = 1 << 20
_ERROR_BODY_LIMIT: Final = 64 << 10
_TOKEN_BODY_LIMIT: Final = 1 << 20
#: 401 answers handled for one request (the authenticator refuses a second one for the same
#: credentials itself; this only bounds a misbehaving one)
_MAX_CHALLENGES: Final = 3
#: manifests, indexes and configs kept once read (platform matching reads them twice)
_CACHE_BUDGET: Final = 16 << 20


class RegistryError(SourceError):
    """The registry does not have what was asked, or answered something unusable."""


class RegistryTagNotFound(RegistryError, TagNotFoundError):
    """The tag is not in the registry's repository (``404``, ``MANIFEST_UNKNOWN``)."""


class RegistryManifestNotFound(RegistryError, ImageNotFoundError):
    """A manifest named by digest, or the repository, does not exist in the registry."""


class RegistryBlobNotFound(RegistryError, ImageNotFoundError):
    """A blob named by a manifest is not in the registry (``404``, ``BLOB_UNKNOWN``)."""


class RegistryDigestMismatch(RegistryError, DigestMismatchError):
    """A manifest or blob does not hash to the digest (or size) that names it."""


class RegistryNoMatchingPlatform(RegistryError, PlatformNotFound):
    """No manifest of the image index matches the wanted platform."""


def _error_detail(body: bytes | None) -> str:
    """``CODE: message`` pairs from a distribution error body, escaped and bounded."""
    if not body:
        return ""
    try:
        doc = parse_json(body, "error")
    except DocumentError:
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for item in errors[:3]:
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        message = item.get("message")
        text = ": ".join(str(x) for x in (code, message) if isinstance(x, str) and x)
        if text:
            parts.append(quote(text[:200]))
    return "; ".join(parts)


def _error_codes(body: bytes | None) -> set[str]:
    try:
        doc = parse_json(body or b"", "error")
    except DocumentError:
        return set()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)}


class RegistryImageSource:
    """One image in a registry (``docker://NAME``), read over HTTP(S).

    ``ref`` is a :class:`~composefs.oci.docker_reference.DockerReference` or the text after
    ``docker://``. ``credentials``: used as they are; when ``None`` and ``lookup`` is true,
    :func:`~composefs.oci.auth.lookup_credentials` finds them (``authfile`` is then searched
    first, as ``REGISTRY_AUTH_FILE``). ``tls_verify=False``: no certificate checks, and plain
    HTTP allowed (``None`` or ``True``: verified HTTPS only). ``retry``: tries, backoff and
    timeouts (default :data:`DEFAULT_RETRY`). ``certs_roots``/``cert_dir``: see
    :mod:`composefs.oci.tls`. ``env`` replaces ``os.environ`` for proxies, certs and auth
    files. ``cancel`` is polled by waits and transfers (pull passes its stop flag).

    Nothing is sent before the first request (:meth:`resolve`). Thread-safe: several blobs
    are streamed at once over the pool's connections.
    """

    def __init__(
        self,
        ref: DockerReference | str,
        *,
        credentials: _auth.Credentials | None = None,
        lookup: bool = True,
        authfile: str | None = None,
        tls_verify: bool | None = None,
        retry: RetryPolicy | None = None,
        certs_roots: list[Path] | None = None,
        cert_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> None:
        self.ref = parse_docker_reference(ref) if isinstance(ref, str) else ref
        environ = dict(os.environ if env is None else env)
        self._insecure = tls_verify is False
        self._policy = retry or DEFAULT_RETRY
        self._cancel = cancel
        context = ssl_context(
            self.ref.registry, verify=not self._insecure, roots=certs_roots, cert_dir=cert_dir
        )
        self._client = HttpClient(
            ssl_context=context,
            policy=self._policy,
            proxies=ProxySettings.from_env(environ),
            cancel=self.cancelled,
            allow_http=self._insecure,
        )
        if credentials is None and lookup:
            lookup_env = (
                environ if authfile is None else {**environ, "REGISTRY_AUTH_FILE": authfile}
            )
            credentials = _auth.lookup_credentials(self.ref.registry, env=lookup_env)
        self._auth = _auth.Authenticator(self.ref.registry, credentials, self._auth_request)
        self._base: str | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._cache: dict[str, bytes] = {}
        self._cached = 0
        self._relays: set[_BlobRelay] = set()
        self._watcher: threading.Thread | None = None
        self._walker = IndexWalker(
            self._read_small,
            error=RegistryError,
            no_match=RegistryNoMatchingPlatform,
        )

    # -- lifetime -----------------------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._closed.is_set() or (self._cancel is not None and self._cancel())

    def close(self) -> None:
        """Stops every transfer still running and closes the connections."""
        self._closed.set()
        with self._lock:
            relays = list(self._relays)
        for relay in relays:
            relay.abort()
        for relay in relays:
            relay.join()
        self._client.close()

    def __enter__(self) -> RegistryImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``https://HOST[:PORT]`` (or ``http://`` for an insecure registry), after the ping."""
        with self._lock:
            if self._base is None:
                self._base = self._ping()
            return self._base

    def _ping(self) -> str:
        """``GET /v2/`` over https; with ``tls_verify=False`` over plain http when https
        reached the server but failed (a TLS error or an error status), as containers/image
        does for insecure registries. A refused connection is not tried again over http (the
        same port would refuse it too)."""
        endpoint = self.ref.endpoint
        what = f"pinging container registry {self.ref.registry}"
        try:
            self._ping_one(f"https://{endpoint}")
            return f"https://{endpoint}"
        except TransferCancelled:
            raise
        except TlsError as e:
            if not self._insecure:
                if "plain HTTP" in str(e):
                    hint = (
                        "the registry speaks plain HTTP: pull with --tls-verify=false to allow it"
                    )
                else:
                    hint = (
                        f"put the CA that signed its certificate in certs.d/{self.ref.registry}/"
                        "ca.crt, or pull with --tls-verify=false"
                    )
                raise TransportError(f"{what} ({hint})") from e
            https_error: TransportError = e
        except ConnectError as e:
            raise TransportError(what) from e
        except TransportError as e:
            if not self._insecure:
                raise TransportError(what) from e
            https_error = e
        try:
            self._ping_one(f"http://{endpoint}")
        except TransportError as e:
            raise TransportError(f"{what}: over https, {https_error}") from e
        return f"http://{endpoint}"

    def _ping_one(self, base: str) -> None:
        url = f"{base}/v2/"
        response = self._client.request("GET", url, {})
        try:
            if response.status not in (200, 401):
                body = read_limited(response, _ERROR_BODY_LIMIT)
                detail = _error_detail(body)
                raise TransportError(
                    f"GET {safe_url(url)}: {status_text(response)}"
                    + (f" ({detail})" if detail else "")
                )
        finally:
            response.drain_conn()
            response.release_conn()

    def _auth_request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> _auth.HttpResponse:
        """The token flow's requests (token endpoints), over our pool, TLS and retries."""
        response = self._client.request(method, url, headers, body)
        try:
            data = read_limited(response, _TOKEN_BODY_LIMIT)
            if data is None:
                raise TransportError(
                    f"{method} {safe_url(url)}: response larger than {_TOKEN_BODY_LIMIT} bytes"
                )
            return _auth.HttpResponse(
                response.status, {k.lower(): v for k, v in response.headers.items()}, data
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._client.failure(method, url, describe_error(e), 1) from None
        finally:
            response.release_conn()

    def _get(
        self, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        """``GET base/path`` with authentication: each ``401`` goes to
        :meth:`Authenticator.challenge <composefs.oci.auth.Authenticator.challenge>`, which
        prepares the retry (a token, Basic credentials, a fresh token for an expired one) or
        raises when no retry can help (a retry refused again: "credentials rejected")."""
        url = self.base_url + path
        scope = self.ref.scope
        extra = dict(headers or {})
        for _ in range(_MAX_CHALLENGES):
            response = self._client.request("GET", url, {**extra, **self._auth.headers(scope)})
            if response.status != 401:
                return response, url
            challenge = response.headers.get("WWW-Authenticate")
            response.drain_conn()
            response.release_conn()
            try:
                self._auth.challenge(challenge, scope)
            except AuthenticationError as e:
                raise AuthenticationError(f"GET {safe_url(url)}: 401 Unauthorized") from e
        raise AuthenticationError(
            f"GET {safe_url(url)}: 401 Unauthorized after {_MAX_CHALLENGES} authentications"
        )

    def _status_error(
        self,
        response: urllib3.BaseHTTPResponse,
        url: str,
        what: str,
        *,
        blob: bool = False,
        tag: bool = False,
    ) -> Exception:
        body = read_limited(response, _ERROR_BODY_LIMIT)
        detail = _error_detail(body)
        message = f"GET {safe_url(url)}: {status_text(response)}" + (
            f" ({detail})" if detail else ""
        )
        if response.status == 404:
            codes = _error_codes(body)
            if blob:
                return RegistryBlobNotFound(f"{what} not found: {message}")
            if "NAME_UNKNOWN" in codes:
                return RegistryManifestNotFound(
                    f"repository {self.ref.repository} not found in {self.ref.registry}: {message}"
                )
            if tag:
                return RegistryTagNotFound(f"{what} not found in {self.ref.name}: {message}")
            return RegistryManifestNotFound(f"{what} not found in {self.ref.name}: {message}")
        if response.status in (401, 403):
            return AuthenticationError(message)
        return TransportError(message)

    def _get_small(
        self,
        path: str,
        headers: Mapping[str, str],
        limit: int,
        status_error: Callable[[urllib3.BaseHTTPResponse, str], Exception],
    ) -> tuple[bytes | None, Mapping[str, str]]:
        """The body of ``GET path`` (``None`` when larger than ``limit``) and the response
        headers; a body cut off is fetched again (the retry policy's tries)."""
        failures = 0
        while True:
            response, url = self._get(path, headers)
            try:
                if response.status != 200:
                    raise status_error(response, url)
                try:
                    return read_limited(response, limit), response.headers
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    failures += 1
                    if failures >= self._policy.tries:
                        why = describe_error(e)
                        raise self._client.failure("GET", url, why, failures) from None
            finally:
                response.release_conn()
            self._client.wait(self._policy.delay(failures))

    # -- manifests ------------------------------------------------------------------------------

    def _fetch_manifest(
        self, reference: str, what: str, *, tag: bool = False
    ) -> tuple[bytes, str, str]:
        """``(raw, media type, sha256 digest)`` of the manifest or index ``reference``."""
        limit = SIZE_LIMITS["manifest"]
        path = f"/v2/{self.ref.repository}/manifests/{reference}"
        found, headers = self._get_small(
            path, {"Accept": ACCEPT}, limit, lambda r, u: self._status_error(r, u, what, tag=tag)
        )
        if found is None:
            raise RegistryError(f"{what} is too large (more than {limit} bytes)")
        raw = found
        header_digest = headers.get("Docker-Content-Digest")
        content_type = headers.get("Content-Type", "")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryDigestMismatch(
                f"{what}: the registry sent content of digest {digest}, expected {reference}"
            )
        if header_digest and header_digest.strip() != digest:
            expected = header_digest.strip()
            algorithm, _, value = expected.partition(":")
            if algorithm == "sha256" or algorithm not in ("sha384", "sha512"):
                raise RegistryDigestMismatch(
                    f"{what}: content of digest {digest}, but Docker-Content-Digest is "
                    f"{quote(expected[:100])}"
                )
            if hashlib.new(algorithm, raw).hexdigest() != value:
                raise RegistryDigestMismatch(
                    f"{what}: content does not match Docker-Content-Digest {quote(expected[:160])}"
                )
        doc = parse_json_object(raw, what)
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            media_type = content_type.split(";", 1)[0].strip()
            if media_type not in MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES:
                media_type = INDEX_MEDIA_TYPE if "manifests" in doc else MANIFEST_MEDIA_TYPE
        return raw, media_type, digest

    def _remember(self, digest: str, data: bytes) -> None:
        with self._lock:
            if digest not in self._cache and self._cached + len(data) <= _CACHE_BUDGET:
                self._cache[digest] = data
                self._cached += len(data)

    def _read_small(self, desc: Descriptor) -> bytes:
        """A manifest, an index or a config named by a descriptor, verified (digest, size)."""
        cached = self._cache.get(desc.digest)
        if cached is not None and len(cached) == desc.size:
            return cached
        if desc.media_type in MANIFEST_MEDIA_TYPES or desc.media_type in INDEX_MEDIA_TYPES:
            limit = SIZE_LIMITS["manifest"]
            if desc.size > limit:
                raise RegistryError(
                    f"manifest {desc.digest} is too large ({desc.size} bytes, the limit is {limit})"
                )
            raw, _, _ = self._fetch_manifest(desc.digest, f"manifest {desc.digest}")
            if len(raw) != desc.size:
                raise RegistryDigestMismatch(
                    f"manifest {desc.digest}: expected {desc.size} bytes, got {len(raw)}"
                )
            self._remember(desc.digest, raw)
            return raw
        return self.read_blob(desc)

    def resolve(self, platform: str | None) -> ResolvedManifest:
        """The manifest for ``platform`` (default: this host): the one the reference names, or
        the best match of the index (manifest list) it names.

        A manifest named directly (by tag or digest) is the image whatever its platform (one
        that differs is logged as a warning), as ``oci:`` layouts and skopeo take it.
        """
        wanted = parse_platform(platform) if platform is not None else host_platform()
        ref = self.ref
        what = f"manifest {ref.digest}" if ref.digest is not None else f"tag {ref.tag}"
        try:
            raw, media_type, digest = self._fetch_manifest(
                ref.manifest_reference, what, tag=ref.digest is None
            )
            self._remember(digest, raw)
            if media_type in INDEX_MEDIA_TYPES:
                children = self._walker.children(raw, digest)
                desc, chain = self._walker.select(children, wanted, ((digest, raw),))
                return ResolvedManifest(desc.digest, self._read_small(desc), chain)
            if media_type not in MANIFEST_MEDIA_TYPES:
                raise RegistryError(f"Unexpected media type {quote(media_type)}")
            self._walker.single(
                Descriptor(media_type, digest, len(raw)),
                wanted,
                explicit=platform is not None,
                what=f"{what} of {ref}",
            )
            return ResolvedManifest(digest, raw)
        except (RegistryError, DocumentError) as e:
            cls = type(e) if isinstance(e, RegistryError) else RegistryError
            raise cls(f"Resolving manifest of {ref} for platform") from e

    # -- referrers (OCI 1.1) ----------------------------------------------------------------------

    def referrers(self, subject: str) -> list[Descriptor]:
        """The manifests whose ``subject`` is ``subject``: the referrers API
        (``GET /v2/<name>/referrers/<digest>``, an image index), or, where the registry does not
        offer it (a 404), the index tagged ``sha256-<hex>`` (the tag schema of the distribution
        spec); none when neither exists."""
        what = f"referrers of {subject}"
        limit = SIZE_LIMITS["index"]
        path = f"/v2/{self.ref.repository}/referrers/{subject}"
        response, url = self._get(path, {"Accept": INDEX_MEDIA_TYPE})
        try:
            if response.status == 200:
                body = read_limited(response, limit)
                if body is None:
                    raise RegistryError(f"{what}: the list is larger than {limit} bytes")
                return self._referrer_entries(body, subject, what)
            if response.status != 404:
                raise self._status_error(response, url, what)
        finally:
            response.release_conn()
        fallback = "sha256-" + subject.removeprefix("sha256:")
        try:
            raw, media_type, _ = self._fetch_manifest(fallback, f"tag {fallback}", tag=True)
        except (RegistryTagNotFound, RegistryManifestNotFound):
            return []
        if media_type not in INDEX_MEDIA_TYPES:
            raise RegistryError(f"{what}: tag {fallback} is not an image index")
        return self._referrer_entries(raw, subject, what)

    @staticmethod
    def _referrer_entries(raw: bytes, subject: str, what: str) -> list[Descriptor]:
        index = parse_index(parse_json_object(raw, what), what, check_version=False)
        return [d for d in index.manifests if d.digest != subject]

    def read_manifest(self, descriptor: Descriptor) -> bytes:
        """A manifest named by a descriptor, verified (digest and size)."""
        return self._read_small(descriptor)

    # -- blobs ----------------------------------------------------------------------------------

    def _blob_path(self, desc: Descriptor) -> str:
        return f"/v2/{self.ref.repository}/blobs/{desc.digest}"

    def read_blob(self, descriptor: Descriptor) -> bytes:
        """A config (or another small blob), at most 8 MiB, checked against the descriptor's
        size and sha256 digest."""
        context = f"Fetching blob {descriptor.digest}"
        cached = self._cache.get(descriptor.digest)
        if cached is not None and len(cached) == descriptor.size:
            return cached
        limit = SIZE_LIMITS["config"]
        if descriptor.size > limit:
            raise RegistryError(context) from RegistryError(
                f"blob is too large ({descriptor.size} bytes, the limit is {limit})"
            )
        try:
            data, _ = self._get_small(
                self._blob_path(descriptor),
                {},
                descriptor.size,
                lambda r, u: self._status_error(r, u, f"blob {descriptor.digest}", blob=True),
            )
        except (RegistryError, TransportError) as e:
            raise type(e)(context) from e
        if data is None:
            raise RegistryDigestMismatch(context) from RegistryDigestMismatch(
                f"the blob is larger than its descriptor's {descriptor.size} bytes"
            )
        if len(data) != descriptor.size:
            raise RegistryDigestMismatch(context) from RegistryDigestMismatch(
                f"expected {descriptor.size} bytes, got {len(data)}"
            )
        found = "sha256:" + hashlib.sha256(data).hexdigest()
        if found != descriptor.digest:
            raise RegistryDigestMismatch(context) from RegistryDigestMismatch(
                f"Expected digest {descriptor.digest} but found {found}"
            )
        self._remember(descriptor.digest, data)
        return data

    def _open_blob_response(
        self, desc: Descriptor, start: int
    ) -> tuple[urllib3.BaseHTTPResponse, str]:
        headers = {"Range": f"bytes={start}-"} if start else {}
        response, url = self._get(self._blob_path(desc), headers)
        if response.status not in (200, 206):
            try:
                raise self._status_error(response, url, f"blob {desc.digest}", blob=True)
            finally:
                response.release_conn()
        return response, url

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[int]:
        """A readable file descriptor streaming the blob (read it to the end).

        A thread copies the HTTP response into a pipe in 1 MiB chunks (bounded memory) and
        resumes a cut transfer (:class:`_BlobRelay`); the reader verifies the digest. Leaving
        the block stops the transfer; an error of the transfer is raised there (it explains
        a failure of the reader, such as a truncated stream)."""
        context = f"Fetching blob {descriptor.digest}"
        relay = _BlobRelay(self, descriptor)
        with self._lock:
            self._relays.add(relay)
            self._start_watcher()
        try:
            relay.start()
            try:
                yield relay.read_fd
            except BaseException as body_error:
                relay.abort()
                relay.join()
                error = relay.error
                if error is not None and isinstance(body_error, Exception):
                    raise RegistryError(context) from error
                raise
            relay.close_reader()
            relay.join()
            if relay.error is not None:
                raise RegistryError(context) from relay.error
        finally:
            relay.abort()
            relay.join()
            with self._lock:
                self._relays.discard(relay)

    def _start_watcher(self) -> None:
        """One thread per source, while transfers run: when the pull is cancelled it cuts
        the connections of the transfers (a blocked read returns at once)."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        if self._cancel is None:
            return

        def watch() -> None:
            while True:
                with self._lock:
                    relays = list(self._relays)
                if not relays or self._closed.is_set():
                    return
                if self.cancelled():
                    for relay in relays:
                        relay.abort()
                    return
                self._closed.wait(0.05)

        self._watcher = threading.Thread(target=watch, name="composefs-registry-watch", daemon=True)
        self._watcher.start()


class _BlobRelay:
    """Copies one blob from HTTP responses into a pipe, resuming after failures.

    Bytes *passed on* (written to the pipe) are never sent again: after a cut, the next
    request asks for ``Range: bytes=N-``; a ``206`` must start at ``N`` (``Content-Range``),
    a ``200`` (the server ignores ``Range``) has its first ``N`` bytes skipped. Failures
    (connection errors, timeouts, retryable statuses) are retried per the source's
    :class:`~composefs.oci.http.RetryPolicy`; the count starts again after a try that passed
    bytes on. More bytes than the descriptor's size is an error (never passed on).
    """

    def __init__(self, source: RegistryImageSource, desc: Descriptor) -> None:
        self._source = source
        self._desc = desc
        self.error: BaseException | None = None
        self.passed = 0
        self.resumed = 0
        self._aborted = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._response_lock = threading.Lock()
        self._reader_open = True
        self.read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, _CHUNK)
        os.set_blocking(self._write_fd, False)
        self._thread = threading.Thread(
            target=self._run, name="composefs-registry-blob", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def abort(self) -> None:
        """Stops the transfer: the thread's blocked read returns, its pipe is closed."""
        self._aborted.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    def close_reader(self) -> None:
        if self._reader_open:
            self._reader_open = False
            os.close(self.read_fd)

    def join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()
        self.close_reader()

    def _stopping(self) -> bool:
        return self._aborted.is_set() or self._source.cancelled()

    def _run(self) -> None:
        try:
            self._transfer()
        except BaseException as e:
            if not self._aborted.is_set():
                self.error = e
        finally:
            os.close(self._write_fd)

    def _set_response(self, response: urllib3.BaseHTTPResponse | None) -> None:
        with self._response_lock:
            self._response = response
        if response is not None and self._aborted.is_set():
            with contextlib.suppress(Exception):
                response.shutdown()

    def _transfer(self) -> None:
        source, desc = self._source, self._desc
        policy = source._policy
        client = source._client
        failures = 0
        url = source._blob_path(desc)
        while True:
            if self._stopping():
                raise TransferCancelled("cancelled")
            start = self.passed
            response, url = source._open_blob_response(desc, start)
            self._set_response(response)
            skip = 0
            try:
                if start:
                    self.resumed += 1
                    if response.status == 206:
                        span = parse_content_range(response.headers.get("Content-Range"))
                        if span is None or span[0] != start or span[2] not in (None, desc.size):
                            shown = quote(str(response.headers.get("Content-Range"))[:100])
                            raise TransportError(
                                f"GET {safe_url(url)}: asked for bytes {start}-, got the range "
                                f"{shown}"
                            )
                    else:
                        skip = start  # the server ignored Range: the whole blob again
                elif response.status == 206:
                    raise TransportError(f"GET {safe_url(url)}: 206 without a Range request")
                progressed = False
                try:
                    while True:
                        # what has arrived (up to 1 MiB), not a full MiB: bytes already
                        # received are passed on before a cut or a stall
                        chunk = response.read1(_CHUNK, decode_content=False)
                        if not chunk:
                            break
                        if skip:
                            dropped = min(skip, len(chunk))
                            skip -= dropped
                            chunk = chunk[dropped:]
                            if not chunk:
                                continue
                        if self.passed + len(chunk) > desc.size:
                            raise RegistryDigestMismatch(
                                f"GET {safe_url(url)}: the blob is larger than its "
                                f"descriptor's {desc.size} bytes"
                            )
                        if not self._write(chunk):
                            return  # the reader is gone
                        self.passed += len(chunk)
                        progressed = True
                except (urllib3.exceptions.HTTPError, OSError) as e:
                    if self._stopping():
                        raise TransferCancelled("cancelled") from None
                    failures = 1 if progressed else failures + 1
                    if failures >= policy.tries:
                        raise client.failure("GET", url, describe_error(e), failures) from None
                    client.wait(policy.delay(failures))
                    continue
            finally:
                self._set_response(None)
                response.release_conn()
            if self.passed < desc.size:
                raise RegistryDigestMismatch(
                    f"GET {safe_url(url)}: the registry sent {self.passed} bytes, the blob has "
                    f"{desc.size}"
                )
            return

    def _write(self, data: bytes) -> bool:
        """Writes all of ``data`` into the pipe; ``False`` when the reader has closed it."""
        view = memoryview(data)
        poller: select.poll | None = None
        while view:
            try:
                view = view[os.write(self._write_fd, view) :]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return False
            # the pipe is full: wait for the reader, looking at the stop flags
            if self._stopping():
                raise TransferCancelled("cancelled")
            if poller is None:
                poller = select.poll()
                poller.register(self._write_fd, select.POLLOUT)
            poller.poll(50)
        return True
