"""Registry credentials and authentication: where credentials come from, and the token flow.

* :func:`lookup_credentials` finds the credentials for a registry as containers-auth.json(5)
  describes (and skopeo does): ``--creds`` is the caller's (:func:`parse_creds`); then
  ``REGISTRY_AUTH_FILE`` alone when it is set, else ``${XDG_RUNTIME_DIR}/containers/auth.json``
  (``/run/containers/UID/auth.json`` without ``XDG_RUNTIME_DIR``),
  ``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json``,
  ``${DOCKER_CONFIG:-~/.docker}/config.json`` and the legacy ``~/.dockercfg``; the first file
  with credentials for the registry wins. In one file: a ``credHelpers`` entry for the
  registry, then the ``auths`` entry of the repository or of its closest namespace or of the
  registry, then the global ``credsStore``. Helpers are the ``docker-credential-NAME``
  programs of docker-credential-helpers.
* :class:`Authenticator` answers, for one registry, which ``Authorization`` header a request for
  a scope needs, and handles a ``401`` challenge (``WWW-Authenticate: Bearer realm=...,
  service=..., scope=...`` -> a token from the realm, cached per scope; ``Basic`` -> the
  credentials). Secrets never appear in a ``repr``, an error message or a log line.

See ``docs/oci.md`` ("Authentication").
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import pwd
import re
import selectors
import shutil
import stat
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from composefs._text import printable
from composefs.errors import AuthenticationError, ImageReferenceError, TransportError

__all__ = [
    "AuthFileError",
    "Authenticator",
    "Challenge",
    "CredentialHelperError",
    "Credentials",
    "HttpResponse",
    "RequestFunction",
    "auth_file_paths",
    "lookup_credentials",
    "parse_creds",
    "parse_www_authenticate",
]

log = logging.getLogger(__name__)

#: an auth file larger than this is refused (real ones are a few KiB)
AUTH_FILE_LIMIT = 1 << 20
#: what a credential helper may print (stdout and stderr each)
HELPER_OUTPUT_LIMIT = 1 << 20
#: seconds a credential helper may take (a keychain may ask the user to unlock it)
HELPER_TIMEOUT = 60.0
#: a token server's reply larger than this is refused
TOKEN_RESPONSE_LIMIT = 1 << 20
#: a token longer than this is refused (it goes into every request's headers)
TOKEN_LIMIT = 64 << 10
#: a ``WWW-Authenticate`` header longer than this is refused
CHALLENGE_LIMIT = 64 << 10
#: a token's lifetime when the token server does not say (the distribution token spec)
DEFAULT_TOKEN_LIFETIME = 60.0
#: client_id sent in OAuth2 token requests
CLIENT_ID = "composefs"

#: docker config's key (and credential helpers' server URL) for Docker Hub
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: the clock of token lifetimes (tests replace it)
_clock = time.monotonic
#: what docker-credential-helpers print when they have nothing for a server
_HELPER_NOT_FOUND = "credentials not found in native keychain"


class AuthFileError(AuthenticationError):
    """An auth file (``auth.json``, docker's ``config.json``) cannot be read or is malformed.
    The message names the file and the entry, never a secret."""


class CredentialHelperError(AuthenticationError):
    """A ``docker-credential-*`` helper is missing, failed, timed out or answered nonsense."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A user name and a secret (a password, or an identity token for the OAuth2 flow).

    A credential helper's identity token (user name ``<token>``) and docker config's
    ``identitytoken`` come as ``identity_token``; the password is then usually empty. Neither
    secret is part of the ``repr``.
    """

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
    """``USER[:PASSWORD]`` as ``--creds`` takes it.

    The password is everything after the first colon (it may contain colons, and may be
    empty: ``USER:``). ``USER`` alone is accepted with an empty password: skopeo would prompt
    for the password on the terminal, which a library cannot do.
    """
    username, _, password = text.partition(":")
    if not username:
        raise AuthenticationError("--creds: the user name is empty")
    return Credentials(username, password)


# -- auth files ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _AuthFile:
    path: str
    #: ``~/.dockercfg``: the top-level object is the ``auths`` map, keys are registry URLs
    legacy: bool = False


def _home(environ: Mapping[str, str]) -> str:
    home = environ.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def _auth_files(environ: Mapping[str, str]) -> list[_AuthFile]:
    explicit = environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        # skopeo's --authfile default: the one file searched, as containers/image does for a
        # file the user named
        return [_AuthFile(explicit)]
    home = _home(environ)
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    docker_dir = environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    return [
        _AuthFile(
            os.path.join(runtime_dir, "containers", "auth.json")
            if runtime_dir
            else f"/run/containers/{os.getuid()}/auth.json"
        ),
        _AuthFile(os.path.join(config_home, "containers", "auth.json")),
        _AuthFile(os.path.join(docker_dir, "config.json")),
        _AuthFile(os.path.join(home, ".dockercfg"), legacy=True),
    ]


def auth_file_paths(*, env: Mapping[str, str] | None = None) -> list[str]:
    """The auth files :func:`lookup_credentials` reads, in order (they need not exist)."""
    return [f.path for f in _auth_files(os.environ if env is None else env)]


def _read_auth_file(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when the file does not exist or is empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise AuthFileError(f"cannot read the auth file {path}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuthFileError(f"the auth file {path} is not a regular file")
        if st.st_size > AUTH_FILE_LIMIT:
            raise AuthFileError(
                f"the auth file {path} is too large ({st.st_size} bytes, the limit is "
                f"{AUTH_FILE_LIMIT})"
            )
        chunks: list[bytes] = []
        total = 0
        while block := os.read(fd, 1 << 16):
            chunks.append(block)
            total += len(block)
            if total > AUTH_FILE_LIMIT:
                raise AuthFileError(
                    f"the auth file {path} is too large (more than {AUTH_FILE_LIMIT} bytes)"
                )
    except OSError as e:
        raise AuthFileError(f"cannot read the auth file {path}") from e
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data.strip():
        return None
    # The messages below never quote the file's content: it holds secrets.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFileError(f"the auth file {path} is not UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AuthFileError(
            f"the auth file {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise AuthFileError(f"the auth file {path} is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise AuthFileError(f"the auth file {path} does not hold a JSON object")
    return doc


def _normalize_registry(host: str) -> str:
    return "index.docker.io" if host in _DOCKER_HUB_HOSTS else host


def _normalize_key(key: str, legacy: bool) -> str:
    """An ``auths`` key as a registry host: ``https://index.docker.io/v1/`` -> the Docker Hub
    host, ``http://host:5000/v2/`` -> ``host:5000``; other keys are compared as they are."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.partition("/")[0]
    return _normalize_registry(stripped)


def _lookup_order(key: str) -> Iterator[str]:
    """``host/a/b/c``, ``host/a/b``, ``host/a``, ``host``: the most specific key first."""
    while True:
        yield key
        key, slash, _ = key.rpartition("/")
        if not slash:
            return


def _helper_keys(host: str) -> list[str]:
    if host == "docker.io":
        return ["docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_SERVER]
    return [host]


def _decode_entry(path: str, key: str, entry: object) -> Credentials | None:
    where = f"the auth file {path}: auths[{json.dumps(key)}]"
    if not isinstance(entry, dict):
        raise AuthFileError(f"{where} is not a JSON object")
    auth = entry.get("auth") or ""
    identity = entry.get("identitytoken") or ""
    if not isinstance(auth, str):
        raise AuthFileError(f'{where}: "auth" is not a string')
    if not isinstance(identity, str):
        raise AuthFileError(f'{where}: "identitytoken" is not a string')
    username = password = ""
    if auth:
        try:
            padded = auth.strip() + "=" * (-len(auth.strip()) % 4)
            decoded = base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise AuthFileError(f'{where}: "auth" is not valid base64') from None
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthFileError(f'{where}: "auth" does not decode to UTF-8 text') from None
        user, colon, secret = text.partition(":")
        if colon:
            username, password = user, secret.strip("\x00")
        else:
            # docker skips such an entry too; the decoded text is never shown (it is a secret)
            log.warning("%s: \"auth\" has no ':' between user and password; entry ignored", where)
            if not identity:
                return None
    if identity:
        return Credentials(username or "<token>", password, identity_token=identity)
    if not auth:
        return None  # "{}": the marker docker writes when a credential helper holds the secret
    return Credentials(username, password)


def _string_map(value: object, path: str, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise AuthFileError(f'the auth file {path}: "{field}" is not a JSON object')
    return value


def _lookup_in_file(
    auth_file: _AuthFile, key: str, host: str, environ: Mapping[str, str]
) -> Credentials | None:
    doc = _read_auth_file(auth_file.path)
    if doc is None:
        return None
    path = auth_file.path
    if auth_file.legacy:
        auths, helpers, store = doc, {}, None
    else:
        auths = _string_map(doc.get("auths"), path, "auths")
        helpers = _string_map(doc.get("credHelpers"), path, "credHelpers")
        store = doc.get("credsStore")
        if store is not None and not isinstance(store, str):
            raise AuthFileError(f'the auth file {path}: "credsStore" is not a string')

    # 1. a credential helper named for this registry (registry-wide: helpers have no namespaces)
    for helper_key in _helper_keys(host):
        if helper_key in helpers:
            name = helpers[helper_key]
            if not isinstance(name, str):
                raise AuthFileError(
                    f"the auth file {path}: credHelpers[{json.dumps(helper_key)}] is not a string"
                )
            origin = f"credHelpers[{json.dumps(helper_key)}] in {path}"
            return _from_helper(name, helper_key, origin, environ, missing_ok=False)

    # 2. the auths entry: the repository, its namespaces, the registry (exact keys); then keys
    #    written as URLs or under another Docker Hub name
    found = False
    if not auth_file.legacy:
        for candidate in _lookup_order(key):
            if candidate in auths:
                found = True
                creds = _decode_entry(path, candidate, auths[candidate])
                if creds is not None:
                    return creds
                break
    if not found:
        wanted = _normalize_registry(host)
        for entry_key, entry in auths.items():
            if _normalize_key(entry_key, auth_file.legacy) == wanted:
                creds = _decode_entry(path, entry_key, entry)
                if creds is not None:
                    return creds
                break

    # 3. the global credential store (docker's credsStore)
    if store:
        server = DOCKER_HUB_SERVER if host == "docker.io" else host
        return _from_helper(store, server, f"credsStore in {path}", environ, missing_ok=True)
    return None


def lookup_credentials(
    registry: str, *, env: Mapping[str, str] | None = None
) -> Credentials | None:
    """The stored credentials for ``registry`` (``host[:port]``; ``docker.io`` for Docker Hub),
    or ``None`` when no auth file has any.

    ``registry`` may also name a repository, ``host[:port]/namespace/repo``: an ``auths`` entry
    for the repository or one of its namespaces is then preferred to the registry's, as in
    containers-auth.json(5). ``env`` replaces ``os.environ`` (``HOME``, ``XDG_*``,
    ``REGISTRY_AUTH_FILE``, ``DOCKER_CONFIG``, and ``PATH`` for credential helpers).

    Raises :class:`AuthFileError` for an auth file that cannot be read or is malformed, and
    :class:`CredentialHelperError` when a helper named for this registry fails.
    """
    environ = os.environ if env is None else env
    host, _, repository = registry.partition("/")
    if (
        not host
        or "@" in registry
        or ":" in repository
        or any(c.isspace() or not c.isprintable() for c in registry)
    ):
        raise ImageReferenceError(f"invalid registry name {printable(registry)!r}")
    host = "docker.io" if host in _DOCKER_HUB_HOSTS else host
    key = f"{host}/{repository}" if repository else host
    for auth_file in _auth_files(environ):
        creds = _lookup_in_file(auth_file, key, host, environ)
        if creds is not None:
            log.debug("credentials for %s found in %s", key, auth_file.path)
            return creds
    return None


# -- credential helpers ---------------------------------------------------------------------------


_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _from_helper(
    name: str, server: str, origin: str, environ: Mapping[str, str], *, missing_ok: bool
) -> Credentials | None:
    """``docker-credential-NAME get`` with ``server`` on stdin."""
    if not _HELPER_NAME.fullmatch(name):
        raise AuthFileError(f"{origin}: invalid credential helper name {printable(name)!r}")
    program = f"docker-credential-{name}"
    executable = shutil.which(program, path=environ.get("PATH", os.defpath))
    if executable is None:
        if missing_ok:
            log.warning("%s names %s, which is not installed; ignored", origin, program)
            return None
        raise CredentialHelperError(f"the credential helper {program} ({origin}) is not installed")
    log.debug("asking %s for the credentials of %s", program, server)
    status, out, err = _run_helper(executable, program, server, environ)
    if status != 0:
        message = (out.strip() or err.strip()).decode("utf-8", "replace")
        if message == _HELPER_NOT_FOUND:
            return None
        first = message.splitlines()[0] if message else ""
        if first.startswith(("{", "[")):
            first = ""  # a JSON answer after all: it may hold the secret
        if len(first) > 200:
            first = first[:200] + "..."
        how = f"exit status {status}" if status > 0 else f"killed by signal {-status}"
        raise CredentialHelperError(
            f"the credential helper {program} failed for {server} ({how})"
            + (f": {printable(first)}" if first else "")
        )
    try:
        reply = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        reply = None
    if (
        not isinstance(reply, dict)
        or not isinstance(reply.get("Username", ""), str)
        or not isinstance(reply.get("Secret"), str)
    ):
        # the output is not shown: it may hold the secret
        raise CredentialHelperError(
            f"the credential helper {program} answered {server} with something else than "
            '{"Username": ..., "Secret": ...}'
        )
    username: str = reply.get("Username", "")
    secret: str = reply["Secret"]
    if not username and not secret:
        return None
    if username == "<token>":
        return Credentials(username, "", identity_token=secret)
    return Credentials(username, secret)


def _run_helper(
    executable: str, program: str, server: str, environ: Mapping[str, str]
) -> tuple[int, bytes, bytes]:
    """Runs ``executable get``: its exit status, stdout and stderr, each bounded."""
    try:
        proc = subprocess.Popen(
            [executable, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(environ),
            close_fds=True,
        )
    except OSError as e:
        raise CredentialHelperError(f"cannot run the credential helper {program}") from e
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + HELPER_TIMEOUT
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    output: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}
    try:
        try:
            proc.stdin.write(server.encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        with selectors.DefaultSelector() as sel:
            for fd in output:
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ)
            exited = False
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CredentialHelperError(
                        f"the credential helper {program} did not answer for {server} within "
                        f"{HELPER_TIMEOUT:g} s"
                    )
                # once the helper has exited, only what is already in the pipes is read (a
                # daemon it started may keep them open)
                events = sel.select(0 if exited else min(remaining, 0.2))
                if not events and exited:
                    break
                for key, _ in events:
                    fd = int(key.fd)
                    try:
                        block = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not block:
                        sel.unregister(fd)
                        continue
                    output[fd] += block
                    if len(output[fd]) > HELPER_OUTPUT_LIMIT:
                        raise CredentialHelperError(
                            f"the credential helper {program} wrote more than "
                            f"{HELPER_OUTPUT_LIMIT} bytes"
                        )
                if not exited and proc.poll() is not None:
                    exited = True
        status = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        raise CredentialHelperError(
            f"the credential helper {program} did not exit for {server} within {HELPER_TIMEOUT:g} s"
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
    return status, bytes(output[out_fd]), bytes(output[err_fd])


# -- WWW-Authenticate -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header (RFC 7235): the scheme in lower case,
    its parameters (names in lower case, quoted strings unescaped) or its ``token68``."""

    scheme: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)
    token68: str | None = None


_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*[ \t]*(?=,|$)")
_PARAM_NAME_RE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*")
_OWS_RE = re.compile(r"[ \t]*")
_QUOTED_PAIR_RE = re.compile(r"[\t \x21-\x7e\x80-\xff]")
_QDTEXT_RE = re.compile(r"[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]*")


def parse_www_authenticate(value: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` value (several may be comma-separated, and
    several headers are joined with commas), per RFC 7235 section 4.1: ``Bearer realm="...",
    service="...", scope="..."``, ``Basic realm="..."``, ``Negotiate token68``.

    Raises :class:`AuthenticationError` for a malformed value (position given, text escaped).
    """
    if len(value) > CHALLENGE_LIMIT:
        raise AuthenticationError(
            f"WWW-Authenticate header too long ({len(value)} characters, the limit is "
            f"{CHALLENGE_LIMIT})"
        )
    challenges: list[Challenge] = []
    pos, end = 0, len(value)

    def fail(what: str) -> AuthenticationError:
        near = printable(value[pos : pos + 20])
        return AuthenticationError(
            f"malformed WWW-Authenticate header: {what} at character {pos} ({near!r})"
        )

    while True:
        # empty list elements are allowed (RFC 7230 section 7)
        while pos < end and value[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        m = _TOKEN_RE.match(value, pos)
        if m is None:
            raise fail("expected an authentication scheme")
        scheme = m.group().lower()
        pos = m.end()
        params: dict[str, str] = {}
        token68: str | None = None
        if pos < end and value[pos] not in " \t,":
            raise fail("expected a space after the scheme")
        pos = _OWS_RE.match(value, pos).end()  # type: ignore[union-attr]
        m68 = _TOKEN68_RE.match(value, pos)
        if m68 is not None and pos < end and value[pos] != ",":
            token68 = m68.group().rstrip(" \t")
            pos = m68.end()
        else:
            while pos < end:
                m = _PARAM_NAME_RE.match(value, pos)
                if m is None:
                    break  # the next challenge (or an error there)
                name = m.group(1).lower()
                pos = m.end()
                if pos < end and value[pos] == '"':
                    pos += 1
                    parts: list[str] = []
                    while True:
                        q = _QDTEXT_RE.match(value, pos)
                        assert q is not None
                        parts.append(q.group())
                        pos = q.end()
                        if pos >= end:
                            raise fail("unterminated quoted string")
                        if value[pos] == '"':
                            pos += 1
                            break
                        if value[pos] == "\\" and pos + 1 < end:
                            escaped = value[pos + 1]
                            if not _QUOTED_PAIR_RE.fullmatch(escaped):
                                pos += 1
                                raise fail("invalid escaped character")
                            parts.append(escaped)
                            pos += 2
                            continue
                        raise fail("invalid character in a quoted string")
                    param_value = "".join(parts)
                else:
                    t = _TOKEN_RE.match(value, pos)
                    if t is None:
                        raise fail(f"expected a value for {name!r}")
                    param_value = t.group()
                    pos = t.end()
                if name in params:
                    raise fail(f"parameter {name!r} given twice")
                params[name] = param_value
                pos = _OWS_RE.match(value, pos).end()  # type: ignore[union-attr]
                if pos >= end:
                    break
                if value[pos] != ",":
                    raise fail("expected ',' between parameters")
                while pos < end and value[pos] in " \t,":
                    pos += 1
        challenges.append(Challenge(scheme, params, token68))
    return challenges


# -- the token flow -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Bearer:
    """Where tokens come from: a Bearer challenge's realm and service."""

    realm: str
    service: str | None


@dataclasses.dataclass(frozen=True)
class _Token:
    value: str = dataclasses.field(repr=False)
    bearer: _Bearer
    scopes: tuple[str, ...]
    #: _clock() after which the token is fetched again (before it expires)
    refresh_at: float
    #: bumped for every token fetched, so that a thread can tell whether another one already
    #: replaced the token its request was refused with
    generation: int


class _ThreadState(threading.local):
    def __init__(self) -> None:
        #: scope -> generation of the token handed out by the last headers() (0: none)
        self.used: dict[str, int] = {}
        #: scopes for which challenge() just prepared a retry
        self.pending: set[str] = set()
        #: scopes whose current request is that retry
        self.retrying: set[str] = set()


def _host_of(url_or_host: str) -> str:
    parts = urllib.parse.urlsplit(url_or_host if "//" in url_or_host else "//" + url_or_host)
    try:
        return (parts.hostname or "").lower()
    except ValueError:
        return ""


class Authenticator:
    """The authentication state for one registry; thread-safe.

    The registry client calls :meth:`headers` before each request and :meth:`challenge` on a
    ``401``, then retries once with :meth:`headers` again. Bearer tokens are fetched from the
    challenge's realm (``GET realm?service=...&scope=...`` with Basic credentials when there are
    any; an OAuth2 ``POST`` with ``grant_type=refresh_token`` when there is an identity token),
    cached per scope until shortly before ``expires_in`` (default 60 s) runs out, and shared
    by the threads asking for the same scope (one fetch). A ``401`` on a request made with a
    cached token fetches a new one; a ``401`` on the retry after that is
    "authentication failed for REGISTRY (credentials rejected)".
    """

    def __init__(
        self, registry: str, credentials: Credentials | None, request: RequestFunction
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        self._request = request
        self._lock = threading.Lock()
        self._scheme: str | None = None  # "basic" or "bearer", from the last challenge
        self._bearer: _Bearer | None = None
        self._tokens: dict[str, _Token] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._generation = 0
        #: the OAuth2 refresh token: the identity token, or one a token server returned
        self._refresh_token = credentials.identity_token if credentials else None
        self._state = _ThreadState()

    def __repr__(self) -> str:
        who = repr(self._credentials.username) if self._credentials else "anonymous"
        return f"Authenticator({self.registry!r}, {who})"

    # -- the interface -----------------------------------------------------------------------

    def headers(self, scope: str) -> dict[str, str]:
        """The headers (``Authorization``) to send with a request needing ``scope``
        (``repository:library/alpine:pull``); empty while no challenge has been seen.

        Once the registry asked for Bearer tokens, a scope with no token yet (or one about to
        expire) gets one here, before the request, so it raises what :meth:`challenge` raises
        when the token server refuses or cannot be reached."""
        with self._lock:
            scheme, bearer = self._scheme, self._bearer
        if scheme == "basic":
            self._note_request(scope, 0)
            return {"Authorization": self._basic()}
        if scheme != "bearer" or bearer is None:
            self._note_request(scope, 0)
            return {}
        token = self._valid_token(scope, bearer)
        self._note_request(scope, token.generation)
        return {"Authorization": f"Bearer {token.value}"}

    def challenge(self, www_authenticate: str | None, scope: str) -> None:
        """Handles a ``401`` for a request needing ``scope``: after it returns, :meth:`headers`
        gives what to retry with. Raises :class:`AuthenticationError` when no retry can help
        (no credentials for ``Basic``, the token endpoint refused them, an unknown scheme)."""
        state = self._state
        if scope in state.retrying:
            # the retry with what the previous challenge gave was refused too
            state.retrying.discard(scope)
            raise self._refused(scope)
        if not www_authenticate:
            raise AuthenticationError(
                f"authentication failed for {self.registry}: HTTP 401 without a "
                "WWW-Authenticate challenge"
            )
        try:
            challenges = parse_www_authenticate(www_authenticate)
        except AuthenticationError as e:
            raise AuthenticationError(
                f"authentication failed for {self.registry}: cannot read its challenge"
            ) from e
        by_scheme = {c.scheme: c for c in reversed(challenges)}  # the first of each scheme
        if "bearer" in by_scheme:
            self._bearer_challenge(by_scheme["bearer"], scope)
        elif "basic" in by_scheme:
            self._basic_challenge()
        else:
            schemes = ", ".join(printable(c.scheme) for c in challenges) or "none"
            raise AuthenticationError(
                f"authentication failed for {self.registry}: unsupported authentication "
                f"scheme ({schemes}; Bearer and Basic are supported)"
            )
        state.pending.add(scope)

    # -- challenges --------------------------------------------------------------------------

    def _bearer_challenge(self, challenge: Challenge, scope: str) -> None:
        realm = challenge.params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or not _host_of(realm):
            raise AuthenticationError(
                f"authentication failed for {self.registry}: its Bearer challenge has no "
                f"http(s) realm ({printable(realm)!r})"
            )
        if (
            parts.scheme == "http"
            and self._sends_secret()
            and _host_of(realm) != _host_of(self.registry)
        ):
            raise AuthenticationError(
                f"authentication failed for {self.registry}: refusing to send credentials "
                f"to the token server {printable(parts.netloc)} over plain HTTP"
            )
        bearer = _Bearer(realm, challenge.params.get("service"))
        asked = challenge.params.get("scope")
        scopes = tuple(asked.split()) if asked else ((scope,) if scope else ())
        with self._lock:
            self._scheme, self._bearer = "bearer", bearer
        used = self._state.used.get(scope, 0)
        with self._fetch_lock(scope):
            with self._lock:
                current = self._tokens.get(scope)
            if (
                current is not None
                and current.generation > used
                and current.bearer == bearer
                and _clock() < current.refresh_at
            ):
                return  # another thread replaced the refused token meanwhile
            self._fetch(scope, bearer, scopes)

    def _basic_challenge(self) -> None:
        creds = self._credentials
        if creds is None:
            raise AuthenticationError(
                f"authentication required for {self.registry} (Basic) and no credentials "
                "were found: pass --creds USER:PASSWORD (Python: auth=Credentials(...)) or "
                "log in first (skopeo login, podman login or docker login)"
            )
        if creds.identity_token and not creds.password:
            raise AuthenticationError(
                f"authentication failed for {self.registry}: it asks for Basic "
                "authentication and the stored credentials are an identity token"
            )
        with self._lock:
            self._scheme = "basic"

    def _refused(self, scope: str) -> AuthenticationError:
        if self._credentials is None:
            what = f" to {printable(scope)}" if scope else ""
            return AuthenticationError(
                f"authentication failed for {self.registry} (access{what} refused without "
                "credentials: pass --creds USER:PASSWORD or log in first)"
            )
        return AuthenticationError(
            f"authentication failed for {self.registry} (credentials rejected)"
        )

    # -- tokens ------------------------------------------------------------------------------

    def _note_request(self, scope: str, generation: int) -> None:
        state = self._state
        if scope in state.pending:
            state.pending.discard(scope)
            state.retrying.add(scope)
        else:
            state.retrying.discard(scope)
        state.used[scope] = generation

    def _fetch_lock(self, scope: str) -> threading.Lock:
        with self._lock:
            lock = self._fetch_locks.get(scope)
            if lock is None:
                lock = self._fetch_locks[scope] = threading.Lock()
            return lock

    def _valid_token(self, scope: str, bearer: _Bearer) -> _Token:
        """The cached token for ``scope``, or a new one when there is none or it is about to
        expire (one fetch however many threads ask)."""
        with self._lock:
            token = self._tokens.get(scope)
        if token is not None and _clock() < token.refresh_at:
            return token
        with self._fetch_lock(scope):
            with self._lock:
                token = self._tokens.get(scope)
            if token is not None and _clock() < token.refresh_at:
                return token
            if token is not None:
                return self._fetch(scope, token.bearer, token.scopes)
            return self._fetch(scope, bearer, (scope,) if scope else ())

    def _fetch(self, scope: str, bearer: _Bearer, scopes: tuple[str, ...]) -> _Token:
        """Fetches a token for ``scopes`` and caches it under ``scope``."""
        started = _clock()
        response = self._token_request(bearer, scopes)
        value, lifetime = self._parse_token_response(bearer, response)
        margin = min(lifetime * 0.2, 60.0)
        with self._lock:
            self._generation += 1
            token = _Token(value, bearer, scopes, started + lifetime - margin, self._generation)
            self._tokens[scope] = token
            if len(self._tokens) > 256:  # drop expired tokens of scopes no longer asked for
                now = _clock()
                for key in [k for k, t in self._tokens.items() if t.refresh_at <= now]:
                    del self._tokens[key]
        return token

    def _sends_secret(self) -> bool:
        creds = self._credentials
        return self._refresh_token is not None or (creds is not None and creds.password != "")

    def _basic(self) -> str:
        creds = self._credentials
        assert creds is not None
        raw = f"{creds.username}:{creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def _token_request(self, bearer: _Bearer, scopes: tuple[str, ...]) -> HttpResponse:
        host = printable(urllib.parse.urlsplit(bearer.realm).netloc)
        creds = self._credentials
        log.debug("token for %s from %s, scopes %s", self.registry, host, " ".join(scopes))
        try:
            if self._refresh_token is not None:
                return self._oauth(bearer, scopes, "refresh_token")
            query: list[tuple[str, str]] = []
            if bearer.service is not None:
                query.append(("service", bearer.service))
            query.extend(("scope", s) for s in scopes)
            headers: dict[str, str] = {}
            if creds is not None and not creds.identity_token:
                if creds.username:
                    query.append(("account", creds.username))
                headers["Authorization"] = self._basic()
            url = bearer.realm
            if query:
                url += ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode(
                    query
                )
            response = self._request("GET", url, headers, None)
            if response.status in (404, 405) and creds is not None and creds.password:
                # a token server that only speaks OAuth2 (POST)
                return self._oauth(bearer, scopes, "password")
            return response
        except TransportError as e:
            raise TransportError(f"fetching a token for {self.registry} from {host} failed") from e

    def _oauth(self, bearer: _Bearer, scopes: tuple[str, ...], grant: str) -> HttpResponse:
        form: list[tuple[str, str]] = [("grant_type", grant), ("client_id", CLIENT_ID)]
        if bearer.service is not None:
            form.append(("service", bearer.service))
        if scopes:
            form.append(("scope", " ".join(scopes)))
        if grant == "refresh_token":
            assert self._refresh_token is not None
            form.append(("refresh_token", self._refresh_token))
        else:
            creds = self._credentials
            assert creds is not None
            form += [("username", creds.username), ("password", creds.password)]
        body = urllib.parse.urlencode(form).encode("ascii")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self._request("POST", bearer.realm, headers, body)

    def _parse_token_response(self, bearer: _Bearer, response: HttpResponse) -> tuple[str, float]:
        """The token and its lifetime in seconds, from a token server's reply."""
        host = printable(urllib.parse.urlsplit(bearer.realm).netloc)
        if response.status in (401, 403):
            detail = self._server_message(response.body)
            if self._credentials is None:
                reason = "anonymous access refused by the token server"
            else:
                reason = "credentials rejected by the token server"
            raise AuthenticationError(
                f"authentication failed for {self.registry} ({reason} {host}"
                + (f": {detail})" if detail else ")")
            )
        if not 200 <= response.status < 300:
            detail = self._server_message(response.body)
            raise TransportError(
                f"fetching a token for {self.registry}: the token server {host} answered "
                f"HTTP {response.status}" + (f" ({detail})" if detail else "")
            )
        bad = f"fetching a token for {self.registry}: the token server {host} sent"
        if len(response.body) > TOKEN_RESPONSE_LIMIT:
            raise AuthenticationError(
                f"{bad} a reply too large ({len(response.body)} bytes, the limit is "
                f"{TOKEN_RESPONSE_LIMIT})"
            )
        try:
            reply = json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            raise AuthenticationError(f"{bad} something else than a JSON object")
        value = reply.get("token") or reply.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"{bad} no token")
        if len(value) > TOKEN_LIMIT or not _TOKEN_CHARS.fullmatch(value):
            # never shown: it is a secret, and may hold anything
            raise AuthenticationError(f"{bad} a malformed token")
        refresh = reply.get("refresh_token")
        if isinstance(refresh, str) and refresh and self._refresh_token is not None:
            self._refresh_token = refresh
        expires_in = reply.get("expires_in")
        lifetime = DEFAULT_TOKEN_LIFETIME
        if (
            isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and 0 < expires_in < 10 * 365 * 86400
        ):
            lifetime = float(expires_in)
        return value, lifetime

    def _server_message(self, body: bytes) -> str:
        """A short, escaped message from a token server's error reply, our secrets masked."""
        try:
            reply = json.loads(body[:65536].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            return ""
        message: object = None
        if isinstance(reply, dict):
            errors = reply.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                message = errors[0].get("message")
            for key in ("error_description", "details", "message", "error"):
                if not isinstance(message, str):
                    message = reply.get(key)
        if not isinstance(message, str):
            return ""
        for secret in self._secrets():
            # as sent (a query, a form, a Basic header, JSON) and as it is
            for form in (
                urllib.parse.quote(secret, safe=""),
                urllib.parse.quote_plus(secret, safe=""),
                json.dumps(secret)[1:-1],
                secret,
            ):
                message = message.replace(form, "***")
        message = printable(message)
        return message[:200] + "..." if len(message) > 200 else message

    def _secrets(self) -> list[str]:
        creds = self._credentials
        secrets = [creds.password, creds.identity_token or ""] if creds else []
        if creds is not None and creds.password:
            secrets.append(self._basic().removeprefix("Basic "))
        secrets.append(self._refresh_token or "")
        with self._lock:
            secrets += [t.value for t in self._tokens.values()]
        return [s for s in secrets if s]


#: what a token may contain: it goes into a header as it is (no CR/LF, no spaces)
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
