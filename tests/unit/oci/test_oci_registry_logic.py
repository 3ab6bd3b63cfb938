"""The registry client's pure logic: reference normalization, Retry-After, Content-Range,
NO_PROXY matching, safe URLs, backoff, certs.d reading, registry error bodies."""

from __future__ import annotations

import email.utils
import ssl
from pathlib import Path

import pytest

from composefs.errors import ImageReferenceError
from composefs.oci.docker_reference import parse_docker_reference
from composefs.oci.http import (
    ProxySettings,
    RetryPolicy,
    parse_content_range,
    parse_retry_after,
    retryable_status,
    safe_url,
)
from composefs.oci.registry import _error_codes, _error_detail
from composefs.oci.tls import TlsConfigError, certs_dir_for, certs_roots, ssl_context
from support.registry_auth import make_ca

D = "sha256:" + "ab" * 32

# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest", "endpoint"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None, "registry-1.docker.io"),
        ("library/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
        ("user/img:t", "docker.io", "user/img", "t", None, "registry-1.docker.io"),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
        ("index.docker.io/x/y", "docker.io", "x/y", "latest", None, "registry-1.docker.io"),
        ("quay.io/fedora/fedora:42", "quay.io", "fedora/fedora", "42", None, "quay.io"),
        ("localhost/x", "localhost", "x", "latest", None, "localhost"),
        ("localhost:5000/a/b:c", "localhost:5000", "a/b", "c", None, "localhost:5000"),
        ("127.0.0.1:5000/x:1", "127.0.0.1:5000", "x", "1", None, "127.0.0.1:5000"),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None, "[::1]:5000"),
        ("Registry/x", "Registry", "x", "latest", None, "Registry"),
        (f"alpine@{D}", "docker.io", "library/alpine", None, D, "registry-1.docker.io"),
        (f"h.io/a:1@{D}", "h.io", "a", "1", D, "h.io"),
        ("a/b/c/d-e__f.g:T_1.x-y", "docker.io", "a/b/c/d-e__f.g", "T_1.x-y", None, None),
    ],
)
def test_reference_normalization(
    text: str,
    registry: str,
    repository: str,
    tag: str | None,
    digest: str | None,
    endpoint: str | None,
) -> None:
    ref = parse_docker_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    if endpoint is not None:
        assert ref.endpoint == endpoint
    # the digest names the manifest when both are given
    assert ref.manifest_reference == (digest or tag)
    assert ref.scope == f"repository:{repository}:pull"
    assert parse_docker_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty name"),
        ("Alpine", "repository name must be lowercase"),
        ("quay.io/Fedora/x", "repository name must be lowercase"),
        ("a//b", "invalid repository path component"),
        ("a/-b", "invalid repository path component"),
        ("a:", "invalid tag"),
        ("a:-x", "invalid tag"),
        ("a:" + "t" * 129, "invalid tag"),
        ("a@sha256:1234", "invalid digest"),
        ("a@sha512:" + "ab" * 64, "Expected digest algorithm sha256"),
        ("quay.io/", "empty repository path"),
        ("-bad.io/x", "invalid registry name"),
        ("a/" + "b" * 260, "must not be more than 255 characters"),
        ("a/b c", "invalid"),
    ],
)
def test_reference_errors(text: str, why: str) -> None:
    with pytest.raises(ImageReferenceError) as info:
        parse_docker_reference(text)
    assert why in str(info.value)
    assert str(info.value).startswith("invalid registry reference ")


# -- Retry-After, backoff, statuses ---------------------------------------------------------------


def test_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 120 ") == 120.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    for bad in ("", "-1", "1.5", "soon", "Mon, 99 Foo 2024"):
        assert parse_retry_after(bad, now=now) is None


def test_backoff_and_retry_after_cap() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0, max_retry_after=10.0)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)):
        for _ in range(20):
            assert base * 0.5 <= policy.delay(attempt) < base
    assert policy.delay(1, retry_after=3.0) == 3.0
    assert policy.delay(1, retry_after=3600.0) == 10.0
    assert policy.delay(1, retry_after=-5.0) == 0.0


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        *((s, False) for s in (200, 401, 404, 501, 505)),
        *((s, True) for s in (429, 500, 502, 503, 504, 599)),
    ],
)
def test_retryable_statuses(status: int, retried: bool) -> None:
    assert retryable_status(status) is retried


# -- Content-Range --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 100-199/200", (100, 199, 200)),
        ("bytes 0-0/1", (0, 0, 1)),
        ("bytes 5-9/*", (5, 9, None)),
        ("BYTES 5-9/10", (5, 9, 10)),
        (None, None),
        ("bytes 100-99/200", None),
        ("bytes 100-200/200", None),
        ("bytes */200", None),
        ("items 1-2/3", None),
        ("bytes 1-2", None),
        ("bytes a-b/c", None),
        ("bytes -1-2/3", None),
    ],
)
def test_content_range(value: str | None, parsed: tuple[int, int, int | None] | None) -> None:
    assert parse_content_range(value) == parsed


# -- proxies --------------------------------------------------------------------------------------

P = "http://proxy:3128"


def proxied(no_proxy: str, url: str, **env: str) -> str | None:
    settings = ProxySettings.from_env(
        {"HTTPS_PROXY": P, "HTTP_PROXY": P, "NO_PROXY": no_proxy, **env}
    )
    return settings.proxy_for(url)


@pytest.mark.parametrize(
    ("no_proxy", "url", "direct"),
    [
        ("", "https://quay.io/v2/", False),
        ("*", "https://quay.io/v2/", True),
        ("quay.io", "https://quay.io/v2/", True),
        ("quay.io", "https://cdn.quay.io/v2/", True),  # a plain name covers its subdomains
        ("quay.io", "https://notquay.io/v2/", False),
        (".quay.io", "https://quay.io/v2/", False),  # a leading dot: subdomains only
        (".quay.io", "https://cdn.quay.io/v2/", True),
        ("*.quay.io", "https://quay.io/v2/", False),
        ("*.quay.io", "https://cdn.quay.io/v2/", True),
        ("quay.io:443", "https://quay.io/v2/", True),  # the scheme's default port
        ("quay.io:5000", "https://quay.io/v2/", False),
        ("quay.io:5000", "https://quay.io:5000/v2/", True),
        ("10.0.0.0/8", "https://10.1.2.3/v2/", True),
        ("10.0.0.0/8", "https://11.1.2.3/v2/", False),
        ("192.168.1.5", "https://192.168.1.5:5000/v2/", True),
        ("192.168.1.5:80", "https://192.168.1.5:5000/v2/", False),
        ("[2001:db8::1]:443", "https://[2001:db8::1]/v2/", True),
        ("2001:db8::/32", "https://[2001:db8::1]/v2/", True),
        (" a.io , QUAY.IO ", "https://quay.io/v2/", True),
        ("", "https://localhost:5000/v2/", True),  # loopback is never proxied
        ("", "https://127.0.0.1:5000/v2/", True),
        ("", "https://[::1]:5000/v2/", True),
    ],
)
def test_no_proxy(no_proxy: str, url: str, direct: bool) -> None:
    assert (proxied(no_proxy, url) is None) is direct


def test_proxy_per_scheme_and_environment() -> None:
    env = {"https_proxy": "proxy.example:8080", "http_proxy": "http://p2:1"}
    settings = ProxySettings.from_env(env)
    assert settings.proxy_for("https://quay.io/v2/") == "http://proxy.example:8080"
    assert settings.proxy_for("http://quay.io/v2/") == "http://p2:1"
    # upper case wins; CGI (REQUEST_METHOD) disables HTTP_PROXY
    settings = ProxySettings.from_env({"HTTPS_PROXY": "http://A:1", "https_proxy": "http://b:1"})
    assert settings.proxy_for("https://x.io/") == "http://A:1"
    cgi = ProxySettings.from_env({"HTTP_PROXY": P, "REQUEST_METHOD": "GET"})
    assert cgi.proxy_for("http://x.io/") is None
    assert ProxySettings.from_env({}).proxy_for("https://x.io/") is None


def test_safe_url_drops_secrets() -> None:
    url = "https://user:pw@blobs.example:8443/path/x?X-Amz-Signature=secret&t=1#frag"
    assert safe_url(url) == "https://blobs.example:8443/path/x"
    assert safe_url("http://[::1]:5000/v2/") == "http://[::1]:5000/v2/"


# -- registry error bodies ------------------------------------------------------------------------


def test_error_bodies() -> None:
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'
    assert _error_detail(body) == "MANIFEST_UNKNOWN: manifest unknown"
    assert _error_codes(body) == {"MANIFEST_UNKNOWN"}
    hostile = b'{"errors":[{"code":"X\\u001b[31m","message":"' + b"m" * 500 + b'"}]}'
    detail = _error_detail(hostile)
    assert "\x1b" not in detail and len(detail) < 300
    for junk in (b"", b"not json", b"[]", b'{"errors": 3}', b'{"errors": [1, {"code": 2}]}'):
        assert _error_detail(junk) == ""
        assert _error_codes(junk) == set()


# -- certs.d --------------------------------------------------------------------------------------


def test_certs_roots(tmp_path: Path) -> None:
    assert certs_roots({"COMPOSEFS_CERTS_DIRS": f"{tmp_path}/a:{tmp_path}/b"}) == [
        tmp_path / "a",
        tmp_path / "b",
    ]
    # the user's directory first, for root too (as skopeo 1.9.3 reads it)
    assert certs_roots({"HOME": "/home/u"}) == [
        Path("/home/u/.config/containers/certs.d"),
        Path("/etc/containers/certs.d"),
        Path("/etc/docker/certs.d"),
    ]
    (tmp_path / "b" / "h:5000").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    assert certs_dir_for("h:5000", [tmp_path / "a", tmp_path / "b"]) == tmp_path / "b/h:5000"
    assert certs_dir_for("other", [tmp_path / "a", tmp_path / "b"]) is None
    assert certs_dir_for("../b/h:5000", [tmp_path / "a"]) is None


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    ca = make_ca(tmp_path_factory.mktemp("pem"))
    return {"key": ca.key_path.read_bytes(), "cert": ca.cert_path.read_bytes()}


def test_certs_directory(tmp_path: Path, pem: dict[str, bytes]) -> None:
    host = tmp_path / "certs.d" / "h:1"
    host.mkdir(parents=True)
    roots = [tmp_path / "certs.d"]
    baseline = ssl_context("h:1", roots=[]).cert_store_stats()["x509_ca"]
    (host / "ca.crt").write_bytes(pem["cert"])
    context = ssl_context("h:1", roots=roots)
    assert context.cert_store_stats()["x509_ca"] == baseline + 1
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    insecure = ssl_context("h:1", roots=roots, verify=False)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    # a client certificate needs its key, and a key its certificate
    (host / "client.cert").write_bytes(pem["cert"])
    with pytest.raises(TlsConfigError, match=r"missing key client\.key for client certificate"):
        ssl_context("h:1", roots=roots)
    (host / "client.key").write_bytes(pem["key"])
    ssl_context("h:1", roots=roots)  # the pair loads
    (host / "client.cert").unlink()
    with pytest.raises(TlsConfigError, match=r"missing client certificate client\.cert for key"):
        ssl_context("h:1", roots=roots)
    (host / "client.key").unlink()
    (host / "bad.crt").write_bytes(b"not a certificate")
    with pytest.raises(TlsConfigError, match="loading the CA certificate"):
        ssl_context("h:1", roots=roots)
