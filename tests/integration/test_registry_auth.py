"""The authentication flow (``composefs.oci.auth``) against real servers: Debian's
``docker-registry`` with htpasswd Basic auth over TLS, and with Bearer token auth from the token
server the tests run (``support.registry_auth``). Images are pushed with skopeo.

The requests go through a minimal client built on urllib3 (``MiniClient``): the Authenticator's
headers, one challenge and one retry on a ``401``, as the registry client does. The end-to-end
pulls through ``composefs.oci.pull`` are in ``test_registry_auth_pull.py``.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import urllib3

from composefs.errors import AuthenticationError, TransportError, error_chain, format_error
from composefs.oci.auth import (
    Authenticator,
    Credentials,
    HttpResponse,
    lookup_credentials,
)
from support.registry import OCI_MANIFEST, OciImage
from support.registry_auth import AuthRegistry, TokenServer

#: a bound on what the minimal client reads of a reply
RESPONSE_LIMIT = 16 << 20
ACCEPT = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


class Urllib3Request:
    """A ``RequestFunction`` on a urllib3 pool (no redirects, no retries), counting the
    statuses it saw."""

    def __init__(self, ca: Path | None) -> None:
        self.pool = urllib3.PoolManager(
            ca_certs=str(ca) if ca is not None else None,
            retries=False,
            timeout=urllib3.Timeout(connect=5, read=30),
        )
        self.statuses: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        host = urllib.parse.urlsplit(url).netloc
        try:
            response = self.pool.request(
                method,
                url,
                headers=dict(headers),
                body=body,
                redirect=False,
                preload_content=False,
            )
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{method} {host}: {type(e).__name__}") from e
        try:
            data = response.read(RESPONSE_LIMIT + 1)
        finally:
            response.release_conn()
        with self.lock:
            self.statuses.append((urllib.parse.urlsplit(url).path, response.status))
        headers_out = {k.lower(): v for k, v in response.headers.itermerged()}
        return HttpResponse(response.status, headers_out, data)


class MiniClient:
    """GETs from a registry the way the registry client does: the Authenticator's headers, and
    on a 401 one challenge and one retry (a second 401 makes ``challenge`` raise)."""

    def __init__(self, registry: AuthRegistry, credentials: Credentials | None) -> None:
        self.registry = registry
        self.request = Urllib3Request(registry.ca)
        self.auth = Authenticator(registry.host, credentials, self.request)

    def get(self, path: str, scope: str, accept: str = ACCEPT) -> HttpResponse:
        url = self.registry.url + path
        for _ in range(3):
            headers = {"Accept": accept, **self.auth.headers(scope)}
            response = self.request("GET", url, headers, None)
            if response.status != 401:
                return response
            self.auth.challenge(response.headers.get("www-authenticate"), scope)
        raise AssertionError("a third 401: challenge() should have raised")

    def pull(self, repository: str, tag: str, image: OciImage) -> None:
        """The manifest and every blob of ``image``, checked byte for byte."""
        scope = f"repository:{repository}:pull"
        assert self.get("/v2/", "").status == 200
        manifest = self.get(f"/v2/{repository}/manifests/{tag}", scope)
        assert manifest.status == 200, manifest.body
        assert manifest.body == image.blob_path(image.manifest.digest).read_bytes()
        for blob in (image.config, *image.layers):
            response = self.get(f"/v2/{repository}/blobs/{blob.digest}", scope, "*/*")
            assert response.status == 200
            assert "sha256:" + hashlib.sha256(response.body).hexdigest() == blob.digest

    def registry_401s(self) -> int:
        return sum(1 for _, status in self.request.statuses if status == 401)


def chain_text(exc: BaseException) -> str:
    return format_error(exc)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


@pytest.fixture(scope="module")
def basic_pushed(basic_registry: AuthRegistry, oci_image: OciImage) -> str:
    basic_registry.push(oci_image.ref, "private/app:v1")
    return "private/app"


@pytest.fixture(scope="module")
def token_pushed(token_registry: AuthRegistry, oci_image: OciImage) -> str:
    token_registry.push(oci_image.ref, "private/app:v1")
    token_registry.push(oci_image.ref, "public/app:v1")
    return "private/app"


@pytest.fixture
def token_server(token_registry: AuthRegistry) -> Iterator[TokenServer]:
    server = token_registry.token_server
    assert server is not None
    server.reset()
    lifetime = server.expires_in
    try:
        yield server
    finally:
        server.expires_in = lifetime


# -- Basic (htpasswd over TLS) ----------------------------------------------------------------


def test_basic_auth(basic_registry: AuthRegistry, basic_pushed: str, oci_image: OciImage) -> None:
    client = MiniClient(basic_registry, basic_registry.credentials())
    client.pull(basic_pushed, "v1", oci_image)
    # one 401 (the first request); every later request carried the credentials
    assert client.registry_401s() == 1
    # the other user may pull too (htpasswd has no per-repository rules)
    bob, password = next(iter(basic_registry.others.items()))
    MiniClient(basic_registry, Credentials(bob, password)).pull(basic_pushed, "v1", oci_image)


def test_basic_auth_wrong_password(basic_registry: AuthRegistry, basic_pushed: str) -> None:
    wrong = "not-" + basic_registry.password
    client = MiniClient(basic_registry, Credentials(basic_registry.username, wrong))
    with pytest.raises(AuthenticationError) as info:
        client.get(f"/v2/{basic_pushed}/manifests/v1", f"repository:{basic_pushed}:pull")
    text = chain_text(info.value)
    assert text == f"Error: authentication failed for {basic_registry.host} (credentials rejected)"
    assert_no_secret(text, wrong)
    assert client.registry_401s() == 2


def test_basic_auth_without_credentials(basic_registry: AuthRegistry, basic_pushed: str) -> None:
    client = MiniClient(basic_registry, None)
    with pytest.raises(AuthenticationError) as info:
        client.get("/v2/", "")
    text = chain_text(info.value)
    assert f"authentication required for {basic_registry.host} (Basic)" in text
    assert "--creds USER:PASSWORD" in text


def test_basic_registry_needs_the_ca(basic_registry: AuthRegistry) -> None:
    """The registry really is TLS with the test CA: without the CA the connection fails."""
    request = Urllib3Request(None)
    with pytest.raises(TransportError) as info:
        request("GET", basic_registry.url + "/v2/", {}, None)
    assert any("SSL" in m or "Max" in m for m in error_chain(info.value))


# -- Bearer tokens ----------------------------------------------------------------------------


def test_token_auth_anonymous_public(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer, oci_image: OciImage
) -> None:
    client = MiniClient(token_registry, None)
    client.pull("public/app", "v1", oci_image)
    seen = token_server.seen()
    assert [r.method for r in seen] == ["GET", "GET"]
    assert not any(r.authorization for r in seen)
    assert seen[0].query == {"service": ["composefs-test-registry"]}  # /v2/: no scope
    assert seen[1].query["scope"] == ["repository:public/app:pull"]
    # the second token was fetched before the request (the realm was known): one 401 in all
    assert client.registry_401s() == 1


def test_token_auth_anonymous_private_refused(
    token_registry: AuthRegistry, token_pushed: str
) -> None:
    client = MiniClient(token_registry, None)
    with pytest.raises(AuthenticationError) as info:
        client.get(f"/v2/{token_pushed}/manifests/v1", f"repository:{token_pushed}:pull")
    text = chain_text(info.value)
    assert f"authentication failed for {token_registry.host}" in text
    assert "refused without credentials" in text


def test_token_auth_user(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer, oci_image: OciImage
) -> None:
    client = MiniClient(token_registry, token_registry.credentials())
    client.pull(token_pushed, "v1", oci_image)
    seen = token_server.seen()
    assert len(seen) == 2  # one token per scope ("" and the repository's), then cached
    for record in seen:
        assert (record.method, record.user, record.status) == ("GET", "alice", 200)
        assert record.query["account"] == ["alice"]
    assert client.registry_401s() == 1


def test_token_auth_user_without_access(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer, oci_image: OciImage
) -> None:
    bob, password = next(iter(token_registry.others.items()))
    client = MiniClient(token_registry, Credentials(bob, password))
    client.pull("public/app", "v1", oci_image)
    with pytest.raises(AuthenticationError) as info:
        client.get(f"/v2/{token_pushed}/manifests/v1", f"repository:{token_pushed}:pull")
    text = chain_text(info.value)
    assert text == f"Error: authentication failed for {token_registry.host} (credentials rejected)"
    assert_no_secret(text, password)


def test_token_auth_wrong_password(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer
) -> None:
    wrong = "wrong:" + token_registry.password
    client = MiniClient(token_registry, Credentials(token_registry.username, wrong))
    with pytest.raises(AuthenticationError) as info:
        client.get(f"/v2/{token_pushed}/manifests/v1", f"repository:{token_pushed}:pull")
    text = chain_text(info.value)
    assert text == (
        f"Error: authentication failed for {token_registry.host} (credentials rejected by the "
        f"token server 127.0.0.1:{token_server.port}: incorrect username or password)"
    )
    assert_no_secret(text, wrong, token_registry.password)
    assert [r.status for r in token_server.seen()] == [401]


def test_identity_token(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer, oci_image: OciImage
) -> None:
    identity = token_server.identity_token(token_registry.username)
    client = MiniClient(token_registry, Credentials("<token>", "", identity_token=identity))
    client.pull(token_pushed, "v1", oci_image)
    seen = token_server.seen()
    assert [(r.method, r.user, r.status) for r in seen] == [("POST", "alice", 200)] * 2
    assert seen[1].form["grant_type"] == ["refresh_token"]
    assert seen[1].form["scope"] == [f"repository:{token_pushed}:pull"]
    # an identity token the server does not know
    client = MiniClient(token_registry, Credentials("<token>", "", identity_token="made-up"))
    with pytest.raises(AuthenticationError) as info:
        client.get("/v2/", "")
    text = chain_text(info.value)
    assert "credentials rejected by the token server" in text
    assert_no_secret(text, "made-up", identity)


def test_token_refreshed_before_expiry(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer
) -> None:
    token_server.expires_in = 2  # refreshed 0.4 s before it runs out
    client = MiniClient(token_registry, token_registry.credentials())
    scope = f"repository:{token_pushed}:pull"
    path = f"/v2/{token_pushed}/manifests/v1"
    assert client.get(path, scope).status == 200
    assert client.get(path, scope).status == 200
    assert len(token_server.seen()) == 1
    time.sleep(1.7)
    assert client.get(path, scope).status == 200
    assert len(token_server.seen()) == 2
    assert client.registry_401s() == 1


def test_layers_fetched_at_once_share_one_token(
    token_registry: AuthRegistry, token_pushed: str, token_server: TokenServer, oci_image: OciImage
) -> None:
    client = MiniClient(token_registry, token_registry.credentials())
    scope = f"repository:{token_pushed}:pull"
    blobs = [oci_image.config, *oci_image.layers] * 3
    barrier = threading.Barrier(len(blobs))
    errors: list[BaseException] = []

    def fetch(digest: str) -> None:
        try:
            barrier.wait()
            response = client.get(f"/v2/{token_pushed}/blobs/{digest}", scope, "*/*")
            assert response.status == 200
            assert "sha256:" + hashlib.sha256(response.body).hexdigest() == digest
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=fetch, args=(b.digest,)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(token_server.seen()) == 1  # every thread got a 401, one token was fetched


# -- credentials from the auth file skopeo login writes ----------------------------------------


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_skopeo_login_auth_file(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    oci_image: OciImage,
) -> None:
    registry: AuthRegistry = request.getfixturevalue(f"{kind}_registry")
    repository: str = request.getfixturevalue(f"{kind}_pushed")
    auth_file = tmp_path / "auth.json"
    registry.login(auth_file)
    env = {"REGISTRY_AUTH_FILE": str(auth_file), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    creds = lookup_credentials(registry.host, env=env)
    assert creds == registry.credentials()
    assert lookup_credentials(f"{registry.host}/{repository}", env=env) == creds
    MiniClient(registry, creds).pull(repository, "v1", oci_image)
