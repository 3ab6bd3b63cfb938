"""The registry client's HTTP behaviour against small loopback servers: redirects never carry
``Authorization`` to another origin, a 401 goes through the authenticator, an https registry
is retried a bounded number of times with one clear message."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from composefs.errors import AuthenticationError, TransportError
from composefs.oci import auth as auth_module
from composefs.oci import registry as registry_module
from composefs.oci.http import HttpClient, ProxySettings, RetryPolicy
from composefs.oci.registry import RegistryImageSource
from composefs.oci.tls import ssl_context

FAST = RetryPolicy(tries=2, backoff=0.01, connect_timeout=2, read_timeout=2)

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


class Server:
    """A loopback HTTP server whose GET handler is ``handle``; requests are recorded."""

    def __init__(self, handle: Handler) -> None:
        seen: list[tuple[str, dict[str, str]]] = []
        self.seen = seen

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                seen.append((self.path, dict(self.headers.items())))
                handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(
    h: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"", **hdr: str
) -> None:
    h.send_response(status)
    for k, v in hdr.items():
        h.send_header(k.replace("_", "-"), v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


def client() -> HttpClient:
    return HttpClient(
        ssl_context=ssl_context("x", roots=[]),
        policy=FAST,
        proxies=ProxySettings(),
        allow_http=False,
    )


def test_redirect_drops_authorization_for_another_origin(servers: list[Server]) -> None:
    storage = Server(lambda h: reply(h, 200, b"blob"))
    servers.append(storage)
    same = {"n": 0}

    def registry(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/same":
            same["n"] += 1
            reply(h, 200, b"same")
        elif h.path == "/to-same":
            reply(h, 307, Location="/same")
        else:
            reply(h, 307, Location=f"http://{storage.host}/data?sig=secret")

    origin = Server(registry)
    servers.append(origin)
    c = client()
    headers = {"Authorization": "Bearer t0ken"}
    response = c.request("GET", f"http://{origin.host}/v2/x/blobs/d", headers)
    assert response.read() == b"blob"
    response.release_conn()
    assert "Authorization" not in storage.seen[0][1]
    assert storage.seen[0][0] == "/data?sig=secret"
    response = c.request("GET", f"http://{origin.host}/to-same", headers)
    assert response.read() == b"same"
    response.release_conn()
    assert origin.seen[-1][1]["Authorization"] == "Bearer t0ken"  # the same origin keeps it
    c.close()


def test_redirect_loop(servers: list[Server]) -> None:
    loop = Server(lambda h: reply(h, 302, Location=h.path))
    servers.append(loop)
    c = client()
    with pytest.raises(TransportError) as info:
        c.request("GET", f"http://{loop.host}/a", {})
    assert str(info.value) == f"GET http://{loop.host}/a: more than 10 redirects"
    c.close()


def test_persistent_5xx_message_and_tries(servers: list[Server]) -> None:
    s = Server(lambda h: reply(h, 503))
    servers.append(s)
    c = client()
    with pytest.raises(TransportError) as info:
        c.request("GET", f"http://{s.host}/v2/?token=secret", {})
    assert str(info.value) == f"GET http://{s.host}/v2/: 503 Service Unavailable after 2 tries"
    assert len(s.seen) == 2
    c.close()


def test_401_goes_through_the_authenticator(
    servers: list[Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authenticator refuses (the token server says no): one clear error, no secret shown;
    an authenticator that answers the challenge gets the request retried with its header."""
    monkeypatch.setattr(registry_module, "DEFAULT_RETRY", FAST)

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/v2/":
            reply(h, 200)
        elif h.path.startswith("/token"):
            reply(h, 401)  # the token server refuses these credentials
        elif h.headers.get("Authorization") == "Bearer good":
            reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"nope"}]}')
        else:
            realm = f"http://{h.headers['Host']}/token"
            reply(h, 401, WWW_Authenticate=f'Bearer realm="{realm}",service="s"')

    s = Server(handle)
    servers.append(s)
    creds = auth_module.Credentials("user", "hunter2")
    with RegistryImageSource(f"{s.host}/a/b:t", tls_verify=False, credentials=creds) as source:
        with pytest.raises(AuthenticationError) as info:
            source.resolve(None)
        text = repr(info.value) + str(info.value.__cause__)
        assert "hunter2" not in text
        assert f"GET http://{s.host}/v2/a/b/manifests/t: 401 Unauthorized" in str(info.value)

    class Answering(auth_module.Authenticator):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.challenges: list[tuple[str | None, str]] = []

        def headers(self, scope: str) -> dict[str, str]:
            return {"Authorization": "Bearer good"} if self.challenges else {}

        def challenge(self, www_authenticate: str | None, scope: str) -> None:
            self.challenges.append((www_authenticate, scope))

    made: list[Answering] = []

    def factory(registry: str, credentials: Any, request: Any) -> Answering:
        made.append(Answering(registry, credentials, request))
        return made[-1]

    monkeypatch.setattr(auth_module, "Authenticator", factory)
    source = RegistryImageSource(f"{s.host}/a/b:t", tls_verify=False, lookup=False)
    with source, pytest.raises(registry_module.RegistryTagNotFound):
        source.resolve(None)
    assert made[0].challenges == [
        (f'Bearer realm="http://{s.host}/token",service="s"', "repository:a/b:pull")
    ]
    assert made[0].registry == s.host


def test_lookup_gets_the_registry_and_authfile(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Mapping[str, str] | None]] = []

    def lookup(registry: str, *, env: Mapping[str, str] | None = None) -> None:
        calls.append((registry, env))

    monkeypatch.setattr(auth_module, "lookup_credentials", lookup)
    RegistryImageSource("alpine", authfile="/x/auth.json", env={"A": "1"}).close()
    assert calls == [("docker.io", {"A": "1", "REGISTRY_AUTH_FILE": "/x/auth.json"})]
    calls.clear()
    RegistryImageSource("alpine", credentials=auth_module.Credentials("u", "p")).close()
    assert calls == []
