"""The registry client's response parsing: hostile or broken answers from a registry (status
lines, headers, bodies) end in a result or one of our errors -- never another exception, a
hang or unbounded memory.

Two layers: the parsers of what a registry sends (``WWW-Authenticate``, ``Retry-After``,
``Content-Range``, error bodies, references), fed mutated real-world values; and the whole
client (:class:`~composefs.oci.registry.RegistryImageSource`) against a loopback HTTP server
that answers each request with a response hypothesis draws (status, headers, mutated manifest,
index and error bodies).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs.errors import ComposefsError
from composefs.oci import registry as registry_module
from composefs.oci.auth import parse_www_authenticate
from composefs.oci.docker_reference import parse_docker_reference
from composefs.oci.documents import Descriptor
from composefs.oci.http import RetryPolicy, parse_content_range, parse_retry_after
from composefs.oci.registry import RegistryImageSource
from fuzz.conftest import FUZZ, bounded
from support.mutations import seeded

CHALLENGES = [
    b'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    b'scope="repository:library/alpine:pull"',
    b'Basic realm="Registry Realm"',
    b'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull",'
    b'error="insufficient_scope"',
    b'Negotiate abc==, Basic realm="x", Bearer realm="y"',
]


@FUZZ
@given(raw=seeded(CHALLENGES, max_ops=6))
def test_www_authenticate(raw: bytes) -> None:
    with bounded(), contextlib.suppress(ComposefsError):
        for challenge in parse_www_authenticate(raw.decode("latin-1")):
            assert challenge.scheme


@FUZZ
@given(
    retry_after=st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["5", "-1", "1e9"])),
    content_range=st.one_of(
        st.none(),
        st.text(max_size=40),
        st.sampled_from(["bytes 5-9/10", "bytes */10", "bytes 9-5/10", "bytes 0-99999999999/*"]),
    ),
)
def test_header_values(retry_after: str | None, content_range: str | None) -> None:
    delay = parse_retry_after(retry_after, now=0.0)
    assert delay is None or delay >= 0
    parsed = parse_content_range(content_range)
    if parsed is not None:
        first, last, total = parsed
        assert 0 <= first <= last and (total is None or last < total)


@FUZZ
@given(body=seeded([b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}']))
def test_error_bodies(body: bytes) -> None:
    detail = registry_module._error_detail(body)
    assert isinstance(detail, str) and "\n" not in detail
    assert isinstance(registry_module._error_codes(body), set)


@FUZZ
@given(
    name=seeded(
        [b"alpine", b"docker.io/library/alpine:latest", b"localhost:5000/a/b:t@sha256:" + b"a" * 64]
    )
)
def test_references(name: bytes) -> None:
    with contextlib.suppress(ComposefsError):
        ref = parse_docker_reference(name.decode("utf-8", "replace"))
        assert ref.registry and ref.repository


# -- the whole client against a hostile server --------------------------------------------------

LAYER = b"layer bytes" * 10
D_LAYER = "sha256:" + hashlib.sha256(LAYER).hexdigest()
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D_LAYER]}}
).encode()
D_CONFIG = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D_CONFIG,
            "size": len(CONFIG),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": D_LAYER,
                "size": len(LAYER),
            }
        ],
    }
).encode()
D_MANIFEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
INDEX = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": D_MANIFEST,
                "size": len(MANIFEST),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
).encode()
ERROR = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}'

response = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            [200, 200, 200, 206, 301, 307, 400, 401, 403, 404, 416, 429, 500]
        ),
        "body": st.one_of(
            seeded([MANIFEST, INDEX, CONFIG, ERROR, LAYER], max_ops=4), st.binary(max_size=64)
        ),
        "content_type": st.sampled_from(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/json",
                "",
                "text/html; charset=\x01",
            ]
        ),
        "extra": st.dictionaries(
            st.sampled_from(
                [
                    "Docker-Content-Digest",
                    "WWW-Authenticate",
                    "Retry-After",
                    "Content-Range",
                    "Location",
                    "Content-Length",
                ]
            ),
            st.one_of(
                st.sampled_from([D_MANIFEST, "sha256:00", 'Bearer realm="http://127.0.0.1:1/t"']),
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
            ),
            max_size=3,
        ),
    }
)


class _Server:
    """Answers each request with the next scripted response (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    item = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                body = item["body"]
                try:
                    self.send_response(item["status"])
                    self.send_header("Content-Type", item["content_type"])
                    length = str(len(body))
                    for key, value in item["extra"].items():
                        if key == "Content-Length":
                            length = value
                        else:
                            self.send_header(key, value)
                    self.send_header("Content-Length", length)
                    self.end_headers()
                    self.wfile.write(body)
                except (OSError, ValueError):
                    pass
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


RETRY = RetryPolicy(
    tries=2, backoff=0.0, max_backoff=0.0, max_retry_after=0, connect_timeout=1, read_timeout=1
)


@FUZZ
@given(script=st.lists(response, min_size=1, max_size=6))
def test_hostile_registry_responses(server: _Server, script: list[dict[str, Any]]) -> None:
    ping = {"status": 200, "body": b"{}", "content_type": "application/json", "extra": {}}
    server.script = [ping, *script]
    with bounded(20):
        source = RegistryImageSource(
            f"{server.host}/fuzz/img:tag",
            tls_verify=False,
            retry=RETRY,
            lookup=False,
            env={},
        )
        try:
            resolved = source.resolve("linux/amd64")
            source.read_blob(
                Descriptor("application/vnd.oci.image.config.v1+json", D_CONFIG, len(CONFIG))
            )
            source.referrers(resolved.digest)
            layer = Descriptor("application/vnd.oci.image.layer.v1.tar", D_LAYER, len(LAYER))
            with source.open_blob(layer) as fd:
                while os.read(fd, 1 << 16):
                    pass
        except ComposefsError as e:
            assert str(e)
        finally:
            source.close()


@pytest.mark.parametrize("value", ["\u00b2", "\uff11\uff12", "9" * 5000, "\u0663"])
def test_found_non_ascii_and_huge_numbers(value: str) -> None:
    """Found by this fuzzer: ``str.isdigit`` accepts ``²`` (a header decoded as latin-1 can
    carry it) and ``int`` then raised ``ValueError`` out of the pull; thousands of digits hit
    ``int``'s digit limit."""
    assert parse_retry_after(value, now=0.0) is None
    assert parse_content_range(f"bytes {value}-{value}/{value}") is None
