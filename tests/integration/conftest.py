"""Fixtures for the integration tests: small OCI images written by hand, a local registry.

The registry is Debian's ``docker-registry`` (the distribution registry v2), run on 127.0.0.1 with
a free port, plain HTTP, no auth and a temporary filesystem storage; it is stopped at the end of
the session. Images are pushed into it with ``skopeo copy``. ``tls_registry`` is a second one
serving HTTPS with a certificate signed by a CA the fixture makes (``openssl``).
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

from support import run, tool
from support.registry import (
    OCI_INDEX,
    Blob,
    LayoutWriter,
    MultiArchImage,
    OciImage,
    Registry,
    TlsRegistry,
    image_files,
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


def _wait_ready(proc: subprocess.Popen[bytes], url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            # the TLS registry's CA is not trusted here: only readiness is checked
            context = ssl._create_unverified_context() if url.startswith("https:") else None
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    return False


def _start_registry(base: Path, http_extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """Starts ``docker-registry`` with its storage in ``base/storage`` on a free port
    (``http_extra``: more lines of its ``http:`` section, indented by four spaces)."""
    binary = tool("docker-registry")
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    scheme = "https" if "tls:" in http_extra else "http"
    for _attempt in range(5):
        port = _free_port()
        config = base / "config.yml"
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
            f"  addr: 127.0.0.1:{port}\n" + http_extra
        )
        with open(base / "registry.log", "wb") as log:
            proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
            )
        if _wait_ready(proc, f"{scheme}://127.0.0.1:{port}/v2/", time.monotonic() + 15):
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


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Debian's ``docker-registry`` on 127.0.0.1 (plain HTTP, no auth), for the session."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("registry")
    proc, port = _start_registry(base)
    registries_conf = base / "registries.conf"
    registries_conf.write_text(f'[[registry]]\nlocation = "127.0.0.1:{port}"\ninsecure = true\n')
    try:
        yield Registry(f"127.0.0.1:{port}", base / "storage", skopeo, registries_conf)
    finally:
        _stop(proc)


def _openssl(*args: str | Path) -> None:
    run(tool("openssl"), *map(str, args))


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    """``docker-registry`` on 127.0.0.1 over HTTPS, its certificate (for the IP address
    127.0.0.1) signed by a CA made here; the CA is trusted by nothing on the machine."""
    skopeo = tool("skopeo")
    base = tmp_path_factory.mktemp("tls-registry")
    ca_key, ca_cert = base / "ca.key", base / "ca.crt"
    key, csr, cert = base / "server.key", base / "server.csr", base / "server.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        ca_key,
        "-out",
        ca_cert,
        "-days",
        "2",
        "-subj",
        "/CN=composefs test CA",
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        csr,
        "-subj",
        "/CN=127.0.0.1",
    )
    ext = base / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca_cert,
        "-CAkey",
        ca_key,
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        ext,
    )
    proc, port = _start_registry(base, f"  tls:\n    certificate: {cert}\n    key: {key}\n")
    try:
        yield TlsRegistry(f"127.0.0.1:{port}", base / "storage", skopeo, base / "unused", ca_cert)
    finally:
        _stop(proc)
