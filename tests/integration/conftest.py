"""Fixtures for the integration tests: small OCI images written by hand, a local registry.

The registry is Debian's ``docker-registry`` (the distribution registry v2), run on 127.0.0.1 with
a free port, plain HTTP, no auth and a temporary filesystem storage; it is stopped at the end of
the session. Images are pushed into it with ``skopeo copy``. Two more need credentials
(``support.registry_auth``): ``basic_registry`` (htpasswd, HTTPS with a CA made by the tests)
and ``token_registry`` (Bearer tokens from a token server the tests run).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import tool
from support.registry import (
    OCI_INDEX,
    Blob,
    LayoutWriter,
    MultiArchImage,
    OciImage,
    Registry,
    image_files,
)
from support.registry_auth import (
    AuthRegistry,
    KeyPair,
    TokenServer,
    make_ca,
    server_cert,
    token_acl,
    write_htpasswd,
)


@pytest.fixture(scope="session")
def oci_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    """A three-layer gzip image in an OCI layout, tagged ``v1``."""
    path = tmp_path_factory.mktemp("layout") / "image"
    writer = LayoutWriter(path)
    manifest, config, layers, diff_ids = writer.image(image_files("main"), seed="main")
    writer.tag(manifest, "v1")
    writer.finish()
    return OciImage(path, "v1", manifest, config, layers, diff_ids)


@pytest.fixture(scope="session")
def multiarch_image(tmp_path_factory: pytest.TempPathFactory) -> MultiArchImage:
    """An image index with an amd64 and an arm64 image (one small layer each), tagged ``multi``."""
    path = tmp_path_factory.mktemp("layout") / "multi"
    writer = LayoutWriter(path)
    manifests: dict[str, Blob] = {}
    entries = []
    for arch in ("amd64", "arm64"):
        files = [{"etc/arch": arch.encode() + b"\n"}]
        manifest, *_ = writer.image(files, architecture=arch, seed=arch)
        manifests[arch] = manifest
        entry = manifest.descriptor()
        entry["platform"] = {"os": "linux", "architecture": arch}
        if arch == "arm64":
            entry["platform"]["variant"] = "v8"
        entries.append(entry)
    index_doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    index = writer.blob(json.dumps(index_doc).encode(), OCI_INDEX)
    writer.tag(index, "multi")
    writer.finish()
    return MultiArchImage(path, "multi", index, manifests)


# -- the registry ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    deadline: float,
    context: ssl.SSLContext | None = None,
) -> bool:
    """Waits until ``url`` answers 200 (or 401: a registry that needs credentials)."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as e:
            if e.code == 401:
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


def _start_registry(
    base: Path,
    storage: Path,
    extra_config: str = "",
    tls: KeyPair | None = None,
    ca: KeyPair | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Starts ``docker-registry`` on a free port of 127.0.0.1 (``extra_config``: more YAML at
    the top level, e.g. ``auth:``; ``tls``: serve HTTPS with that certificate, issued by
    ``ca``)."""
    binary = tool("docker-registry")
    context = None
    if tls is not None:
        assert ca is not None
        context = ssl.create_default_context(cafile=str(ca.cert_path))
    for _attempt in range(5):
        port = _free_port()
        config = base / "config.yml"
        tls_config = (
            f"  tls:\n    certificate: {tls.cert_path}\n    key: {tls.key_path}\n"
            if tls is not None
            else ""
        )
        config.write_text(
            "version: 0.1\n"
            "log:\n"
            "  level: warn\n"
            "  accesslog:\n"
            "    disabled: true\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {storage}\n"
            "  delete:\n"
            "    enabled: true\n"
            "http:\n"
            f"  addr: 127.0.0.1:{port}\n" + tls_config + extra_config
        )
        with open(base / "registry.log", "wb") as log:
            proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
            )
        scheme = "https" if tls is not None else "http"
        if _wait_ready(proc, f"{scheme}://127.0.0.1:{port}/v2/", time.monotonic() + 15, context):
            return proc, port
        proc.kill()
        proc.wait()
    log_text = (base / "registry.log").read_text(errors="replace")
    pytest.fail(f"docker-registry did not start:\n{log_text}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _registries_conf(base: Path, host: str) -> Path:
    registries_conf = base / "registries.conf"
    registries_conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    return registries_conf


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, no auth), for the session."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("registry")
    storage = base / "storage"
    storage.mkdir()
    proc, port = _start_registry(base, storage)
    host = f"127.0.0.1:{port}"
    try:
        yield Registry(host, storage, skopeo, _registries_conf(base, host))
    finally:
        _stop(proc)


# -- registries that need credentials (support.registry_auth) ----------------------------------

#: the user of the registries below (may push and pull everything), and another one
AUTH_USER, AUTH_PASSWORD = "alice", "alice-Pa55:word"
OTHER_USER, OTHER_PASSWORD = "bob", "bob-password"


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """``docker-registry`` with htpasswd (Basic) authentication, over HTTPS with a certificate
    of a CA made for the session (``AuthRegistry.ca``), users ``alice`` and ``bob``."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("basic-registry")
    storage = base / "storage"
    storage.mkdir()
    ca = make_ca(base / "pki")
    cert = server_cert(ca, base / "pki" / "server")
    cert_dir = base / "cert-dir"
    cert_dir.mkdir()
    (cert_dir / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    htpasswd = write_htpasswd(
        base / "htpasswd", {AUTH_USER: AUTH_PASSWORD, OTHER_USER: OTHER_PASSWORD}
    )
    auth = f"auth:\n  htpasswd:\n    realm: composefs-test\n    path: {htpasswd}\n"
    proc, port = _start_registry(base, storage, auth, tls=cert, ca=ca)
    host = f"127.0.0.1:{port}"
    try:
        yield AuthRegistry(
            host,
            storage,
            skopeo,
            _registries_conf(base, host),
            kind="basic",
            username=AUTH_USER,
            password=AUTH_PASSWORD,
            ca=ca.cert_path,
            cert_dir=cert_dir,
            others={OTHER_USER: OTHER_PASSWORD},
        )
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """``docker-registry`` with token authentication (plain HTTP) and the token server the
    tests run (``AuthRegistry.token_server``): ``alice`` may push and pull everything, anyone
    (anonymous, ``bob``) may pull ``public/*``."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("token-registry")
    storage = base / "storage"
    storage.mkdir()
    server = TokenServer(
        base,
        service="composefs-test-registry",
        issuer="composefs-test-issuer",
        users={AUTH_USER: AUTH_PASSWORD, OTHER_USER: OTHER_PASSWORD},
        acl=token_acl(AUTH_USER),
    )
    auth = (
        "auth:\n"
        "  token:\n"
        f"    realm: {server.realm}\n"
        f"    service: {server.service}\n"
        f"    issuer: {server.issuer}\n"
        f"    rootcertbundle: {server.rootcertbundle}\n"
    )
    try:
        proc, port = _start_registry(base, storage, auth)
        host = f"127.0.0.1:{port}"
        try:
            yield AuthRegistry(
                host,
                storage,
                skopeo,
                _registries_conf(base, host),
                kind="token",
                username=AUTH_USER,
                password=AUTH_PASSWORD,
                token_server=server,
                others={OTHER_USER: OTHER_PASSWORD},
            )
        finally:
            _stop(proc)
    finally:
        server.close()
