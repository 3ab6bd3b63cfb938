"""The native ``docker://`` source against Debian's ``docker-registry`` on 127.0.0.1.

Nothing is mocked: images are written as OCI layouts by hand, pushed with skopeo, and pulled
with :func:`composefs.oci.pull` (natively: a failing ``skopeo`` is first on ``PATH``), then
compared with what the skopeo path and the ``oci:`` path store. Faults come from a TCP proxy
between the client and the registry (``support.faultproxy``); TLS from a second registry with a
certificate signed by a CA the fixture makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from composefs import oci
from composefs.errors import (
    DigestMismatchError,
    TagNotFoundError,
    TransportError,
    error_chain,
    format_error,
)
from composefs.oci import names as oci_names
from composefs.oci import registry as registry_module
from composefs.oci.http import RetryPolicy
from composefs.oci.pull import PullCancelled, PullError
from composefs.oci.registry import RegistryImageSource
from composefs.oci.tls import CERTS_DIRS_ENV
from composefs.repository import Repository
from composefs.testing import LayoutWriter as ImageLayoutWriter
from composefs.testing import TarBuilder
from support import pulls
from support.faultproxy import Fault, FaultProxy
from support.registry import (
    LayoutWriter,
    OciImage,
    Registry,
    TlsRegistry,
    image_files,
)

FAST = RetryPolicy(
    tries=3, backoff=0.01, max_backoff=0.05, max_retry_after=3, connect_timeout=2, read_timeout=1
)


def chain(exc: BaseException) -> str:
    return "\n".join(error_chain(exc))


@pytest.fixture(autouse=True)
def no_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``skopeo`` that fails (and leaves a mark) first on ``PATH``: the native source must
    never run it. Tests that want the real skopeo call :func:`real_skopeo`."""
    bin_dir = tmp_path / "no-skopeo"
    bin_dir.mkdir()
    mark = tmp_path / "skopeo-was-run"
    script = bin_dir / "skopeo"
    script.write_text(f"#!/bin/sh\ntouch {mark}\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield mark
    assert not mark.exists(), "skopeo was run"


def real_skopeo(monkeypatch: pytest.MonkeyPatch, original_path: str) -> None:
    monkeypatch.setenv("PATH", original_path)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "DEFAULT_RETRY", FAST)


def new_repo(path: Path) -> Repository:
    repo, _ = Repository.init(path, insecure=True)
    return repo


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every file, directory and symlink below ``root``: links with their targets, files with
    their sha256."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def tags(repo: Repository) -> list[str]:
    return [i.name for i in oci.list_images(repo)]


@pytest.fixture(scope="module")
def pushed(registry: Registry, oci_image: OciImage) -> str:
    return registry.push(oci_image.ref, "native:tag")


# -- the same image through the three paths -----------------------------------------------------


def test_native_skopeo_and_layout_store_the_same(
    tmp_path: Path,
    registry: Registry,
    oci_image: OciImage,
    pushed: str,
    monkeypatch: pytest.MonkeyPatch,
    no_skopeo: Path,
) -> None:
    results = {}
    with new_repo(tmp_path / "native") as repo:
        results["native"] = oci.pull(repo, pushed, "img", tls_verify=False)
    with new_repo(tmp_path / "layout") as repo:
        results["layout"] = oci.pull(repo, oci_image.ref, "img")
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])  # the real skopeo
    with new_repo(tmp_path / "skopeo") as repo:
        results["skopeo"] = oci.pull(repo, pushed, "img", tls_verify=False, via_skopeo=True)
    assert no_skopeo.exists() is False
    native = results["native"]
    assert native.manifest_digest == oci_image.manifest.digest
    assert native.config_digest == oci_image.config.digest
    assert native.stats.layers == 3
    for other in ("layout", "skopeo"):
        r = results[other]
        assert (r.manifest_digest, r.manifest_verity, r.config_verity, r.image_id) == (
            native.manifest_digest,
            native.manifest_verity,
            native.config_verity,
            native.image_id,
        )
        assert tree(tmp_path / other) == tree(tmp_path / "native"), other
    pulls.check_repository(tmp_path / "native")


def test_registry_prefix_and_digest_reference(
    tmp_path: Path, registry: Registry, oci_image: OciImage, pushed: str
) -> None:
    digest = oci_image.manifest.digest
    with new_repo(tmp_path / "r") as repo:
        by_digest = oci.pull(
            repo, f"registry:{registry.host}/native:ignored@{digest}", "d", tls_verify=False
        )
        assert by_digest.manifest_digest == digest
        assert by_digest.index_digest is None
        with pytest.raises(PullError) as info:
            oci.pull(repo, f"docker://{registry.host}/native:nope", "x", tls_verify=False)
        assert isinstance(info.value.__cause__, TagNotFoundError)
        assert "tag nope not found" in chain(info.value)
        with pytest.raises(PullError) as info:
            oci.pull(repo, f"docker://{registry.host}/NoSuch:1", "x", tls_verify=False)
        assert "repository name must be lowercase" in chain(info.value)


@pytest.fixture(scope="module")
def multiarch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An image index over an amd64 and an arm64 image (each with ``/usr``, so the EROFS
    step runs), tagged ``multi`` in an OCI layout."""
    path = tmp_path_factory.mktemp("multiarch") / "layout"
    w = ImageLayoutWriter(path)
    digests = {}
    entries = []
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        layer = w.layer(TarBuilder().dir("usr").file("usr/arch", arch.encode()).build(), "gzip")
        manifest = w.image([layer], architecture=arch, variant=variant)
        digests[arch] = manifest["digest"]
        entries.append(manifest)
    index = w.index(entries)
    w.write_index([w.tagged(index, "multi")])
    return {"layout": f"oci:{path}:multi", "index": index["digest"], **digests}


def test_multiarch_index_is_stored_like_a_layout_pull(
    tmp_path: Path, registry: Registry, multiarch: dict[str, str]
) -> None:
    subprocess.run(
        [
            registry.skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            multiarch["layout"],
            registry.ref("multi:tag"),
        ],
        check=True,
        env={**os.environ, "PATH": os.environ["PATH"].split(os.pathsep, 1)[1]},
    )
    ref = registry.ref("multi:tag")
    for name, source in (("native", ref), ("layout", multiarch["layout"])):
        with new_repo(tmp_path / name) as repo:
            result = oci.pull(repo, source, "multi", platform="linux/arm64", tls_verify=False)
            assert result.manifest_digest == multiarch["arm64"]
            assert result.index_digest == multiarch["index"]
            again = oci.pull(repo, source, "multi-amd", platform="linux/amd64", tls_verify=False)
            assert again.manifest_digest == multiarch["amd64"]
            # --platform re-resolution of the stored index
            found, _ = oci.resolve_index(
                repo, multiarch["index"], oci.parse_platform("linux/arm64")
            )
            assert found == multiarch["arm64"]
    assert tree(tmp_path / "native") == tree(tmp_path / "layout")
    with new_repo(tmp_path / "none") as repo, pytest.raises(PullError) as info:
        oci.pull(repo, ref, "x", platform="linux/s390x", tls_verify=False)
    assert isinstance(info.value.__cause__, oci.PlatformNotFound)
    assert (
        "No manifest found for platform linux/s390x; available: linux/amd64, linux/arm64/v8"
        in chain(info.value)
    )
    pulls.check_repository(tmp_path / "native")


def test_docker_schema2_manifest(
    tmp_path: Path, registry: Registry, oci_image: OciImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])
        ref = registry.push(oci_image.ref, "native:v2s2", "--format", "v2s2")
    with new_repo(tmp_path / "docker") as repo:
        result = oci.pull(repo, ref, "d", tls_verify=False)
        manifest = json.loads(oci.OciImage.open_ref(repo, "d").manifest_raw)
        assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert (
            result.manifest_digest
            == "sha256:" + hashlib.sha256(oci.OciImage.open_ref(repo, "d").manifest_raw).hexdigest()
        )
    with new_repo(tmp_path / "layout") as repo:
        layout = oci.pull(repo, oci_image.ref, "d")
    assert result.image_id == layout.image_id
    pulls.check_repository(tmp_path / "docker")


# -- integrity ---------------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path, registry: Registry, request: pytest.FixtureRequest) -> OciImage:
    """An image of its own (no blob shared with another test), pushed as ``<test>:tag``."""
    seed = request.node.name
    writer = LayoutWriter(tmp_path / "layout")
    manifest, config, layers, diff_ids = writer.image(image_files(seed), seed=seed)
    writer.tag(manifest, "t")
    writer.finish()
    image = OciImage(writer.path, "t", manifest, config, layers, diff_ids)
    path = os.environ["PATH"].split(os.pathsep, 1)[1]
    subprocess.run(
        [
            registry.skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            image.ref,
            registry.ref(_name(request) + ":tag"),
        ],
        check=True,
        env={**os.environ, "PATH": path},
    )
    return image


def _name(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("_", "-").replace("[", "-").replace("]", "").lower()


@pytest.mark.parametrize("where", ["gzip-header", "middle"])
def test_tampered_blob_is_refused(
    tmp_path: Path,
    registry: Registry,
    fresh: OciImage,
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    """A layer blob changed in the registry's storage: a byte of the gzip header's mtime
    (still valid gzip of the same tar: only the blob digest can tell) or one in the middle
    (the gzip check fails first). Either way nothing is tagged."""
    big = fresh.layers[0]
    data = bytearray(registry.blob_data(big.digest).read_bytes())
    data[4 if where == "gzip-header" else len(data) // 2] ^= 0xFF
    registry.blob_data(big.digest).write_bytes(bytes(data))
    ref = registry.ref(_name(request) + ":tag")
    with new_repo(tmp_path / "r") as repo:
        with pytest.raises(PullError) as info:
            oci.pull(repo, ref, "t", tls_verify=False)
        assert tags(repo) == []
        text = chain(info.value)
        assert f"Failed to import layer {big.digest}" in text
        if where == "gzip-header":
            assert any(isinstance(e, DigestMismatchError) for e in _exceptions(info.value)), text
        else:
            assert "decompressing gzip" in text
    pulls.check_repository(tmp_path / "r")


def test_tampered_config_is_a_digest_error(
    tmp_path: Path, registry: Registry, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    path = registry.blob_data(fresh.config.digest)
    path.write_bytes(path.read_bytes().replace(b"linux", b"LINUX"))
    with new_repo(tmp_path / "r") as repo, pytest.raises(PullError) as info:
        oci.pull(repo, registry.ref(_name(request) + ":tag"), "t", tls_verify=False)
    assert isinstance(info.value.__cause__, PullError)
    assert any(isinstance(e, DigestMismatchError) for e in _exceptions(info.value))
    assert f"Expected digest {fresh.config.digest} but found" in chain(info.value)


def _exceptions(exc: BaseException) -> Iterator[BaseException]:
    current: BaseException | None = exc
    while current is not None:
        yield current
        current = current.__cause__ or current.__context__


# -- faults --------------------------------------------------------------------------------------


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


def pull_through(
    tmp_path: Path, proxy: FaultProxy, image: OciImage, request: pytest.FixtureRequest
) -> tuple[Repository, oci.PullResult | BaseException]:
    repo = new_repo(tmp_path / "r")
    ref = f"docker://{proxy.host}/{_name(request)}:tag"
    try:
        return repo, oci.pull(repo, ref, "t", tls_verify=False)
    except PullError as e:
        return repo, e


def test_connection_cut_mid_blob_resumes_with_range(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    big = fresh.layers[0]
    proxy.faults = [Fault(f"/blobs/{big.digest}", cut_after=1_000_000)]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
        assert tags(repo) == ["t"]
    blob_requests = [r for r in proxy.requests if big.digest in r.path]
    assert len(blob_requests) == 2
    assert "Range" not in blob_requests[0].headers
    resumed_at = int(blob_requests[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_000_000
    pulls.check_repository(tmp_path / "r")


def test_server_ignoring_range_skips_what_was_passed_on(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    big = fresh.layers[0]
    proxy.faults = [
        Fault(f"/blobs/{big.digest}", cut_after=1_500_000),
        Fault(f"/blobs/{big.digest}", strip_range=True),
    ]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
    blob_requests = [r for r in proxy.requests if big.digest in r.path]
    assert len(blob_requests) == 2 and "Range" in blob_requests[1].headers
    pulls.check_repository(tmp_path / "r")


def test_server_errors_then_success(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    proxy.faults = [
        Fault("/manifests/", status=500, times=2),
        Fault(f"/blobs/{fresh.layers[1].digest}", status=502, times=2),
    ]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
    assert len(proxy.paths("/manifests/")) == 3
    assert len(proxy.paths(fresh.layers[1].digest)) == 3


def test_429_honours_retry_after(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    proxy.faults = [Fault("/blobs/", status=429, headers={"Retry-After": "1"})]
    start = time.monotonic()
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
    assert time.monotonic() - start >= 1.0


def test_stalled_connection_times_out_and_resumes(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    big = fresh.layers[0]
    proxy.faults = [Fault(f"/blobs/{big.digest}", stall_after=200_000)]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
    blob_requests = [r for r in proxy.requests if big.digest in r.path]
    assert len(blob_requests) == 2 and blob_requests[1].headers["Range"].startswith("bytes=")


def test_redirect_to_another_host_is_followed(
    tmp_path: Path,
    registry: Registry,
    proxy: FaultProxy,
    fresh: OciImage,
    request: pytest.FixtureRequest,
) -> None:
    name = _name(request)
    proxy.faults = [
        Fault(
            f"/blobs/{blob.digest}",
            status=307,
            headers={"Location": f"http://{registry.host}/v2/{name}/blobs/{blob.digest}?sig=x"},
        )
        for blob in (fresh.config, *fresh.layers)
    ]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, oci.PullResult), chain(result)
    assert all(f.times == 0 for f in proxy.faults)


def test_persistent_failure_is_one_clear_error(
    tmp_path: Path, proxy: FaultProxy, fresh: OciImage, request: pytest.FixtureRequest
) -> None:
    big = fresh.layers[0]
    proxy.faults = [Fault(f"/blobs/{big.digest}", status=503, times=1000)]
    repo, result = pull_through(tmp_path, proxy, fresh, request)
    with repo:
        assert isinstance(result, PullError)
        assert tags(repo) == []
    assert any(isinstance(e, TransportError) for e in _exceptions(result))
    expected = (
        f"GET http://{proxy.host}/v2/{_name(request)}/blobs/{big.digest}: "
        "503 Service Unavailable after 3 tries"
    )
    assert error_chain(result)[-1] == expected, chain(result)
    assert len(proxy.paths(big.digest)) == 3
    assert "Traceback" not in format_error(result)
    pulls.check_repository(tmp_path / "r")


def test_cancel_stops_a_stalled_transfer_within_a_second(
    tmp_path: Path,
    proxy: FaultProxy,
    fresh: OciImage,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        registry_module, "DEFAULT_RETRY", RetryPolicy(tries=3, read_timeout=60, backoff=0.01)
    )
    big = fresh.layers[0]
    proxy.faults = [Fault(f"/blobs/{big.digest}", stall_after=200_000)]
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with new_repo(tmp_path / "r") as repo:
        start = time.monotonic()
        with pytest.raises(PullCancelled):
            oci.pull(
                repo,
                f"docker://{proxy.host}/{_name(request)}:tag",
                "t",
                tls_verify=False,
                cancel=cancel,
            )
        assert time.monotonic() - start < 3.0
        assert tags(repo) == []
    pulls.check_repository(tmp_path / "r")


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pushed(tls_registry: TlsRegistry, oci_image: OciImage) -> str:
    return tls_registry.push(oci_image.ref, "secure:tag")


def test_tls_registry_needs_its_ca(
    tmp_path: Path,
    tls_registry: TlsRegistry,
    tls_pushed: str,
    oci_image: OciImage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(CERTS_DIRS_ENV, str(tmp_path / "empty"))
    with new_repo(tmp_path / "r") as repo:
        with pytest.raises(PullError) as info:
            oci.pull(repo, tls_pushed, "t")
        text = chain(info.value)
        assert f"pinging container registry {tls_registry.host}" in text
        assert "TLS certificate verification failed" in text
        assert "--tls-verify=false" in text
        # with the CA in a certs.d directory
        monkeypatch.setenv(CERTS_DIRS_ENV, str(tls_registry.certs_root(tmp_path)))
        result = oci.pull(repo, tls_pushed, "t")
        assert result.manifest_digest == oci_image.manifest.digest
        # without verification
        monkeypatch.setenv(CERTS_DIRS_ENV, str(tmp_path / "empty"))
        again = oci.pull(repo, tls_pushed, "u", tls_verify=False)
        assert again.manifest_digest == oci_image.manifest.digest
    with RegistryImageSource(tls_pushed.removeprefix("docker://"), tls_verify=False) as source:
        source.resolve(None)
        assert source.base_url == f"https://{tls_registry.host}"  # https first, and it worked


def test_plain_http_only_when_asked(
    tmp_path: Path, registry: Registry, pushed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with new_repo(tmp_path / "r") as repo, pytest.raises(PullError) as info:
        oci.pull(repo, pushed, "t")
    text = chain(info.value)
    assert f"pinging container registry {registry.host}" in text
    assert "--tls-verify=false" in text
    with RegistryImageSource(pushed.removeprefix("docker://"), tls_verify=False) as source:
        source.resolve(None)
        assert source.base_url == f"http://{registry.host}"


# -- the command line -----------------------------------------------------------------------------


def test_cli_pull(tmp_path: Path, registry: Registry, pushed: str, no_skopeo: Path) -> None:
    repo = tmp_path / "r"
    pulls.init(repo)
    base = [sys.executable, "-m", "composefs.cli", "--repo", str(repo), "oci", "pull"]
    proc = subprocess.run([*base, pushed, "x", "--tls-verify=false"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines()[3] == "tagged   x"
    proc = subprocess.run([*base, pushed, "y"], capture_output=True)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith(f"Error: Unable to pull container image {pushed}\n")
    assert "--tls-verify=false" in err and "Traceback" not in err
    assert not no_skopeo.exists()


def test_layers_above_8_mib_through_both_paths(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers are streamed, never capped like documents (the skopeo path capped them at the
    8 MiB config limit)."""
    w = ImageLayoutWriter(tmp_path / "layout")
    big = TarBuilder().dir("usr").file("usr/big", os.urandom(9 << 20)).build()
    manifest = w.image([w.layer(big, "gzip")], architecture=pulls.HOST)
    w.write_index([w.tagged(manifest, "t")])
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])  # the real skopeo
    ref = registry.push(f"oci:{tmp_path / 'layout'}:t", "big:t")
    for via_skopeo in (False, True):
        with new_repo(tmp_path / f"r{via_skopeo}") as repo:
            result = oci.pull(repo, ref, "t", tls_verify=False, via_skopeo=via_skopeo)
            assert result.manifest_digest == manifest["digest"]
    assert tree(tmp_path / "rFalse") == tree(tmp_path / "rTrue")


# -- referrers -----------------------------------------------------------------------------------


def _put(registry: Registry, path: str, data: bytes, content_type: str, method: str = "PUT") -> str:
    import urllib.request

    request = urllib.request.Request(
        f"http://{registry.host}{path}",
        data=data,
        method=method,
        headers={"Content-Type": content_type},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.headers.get("Location", ""))


def _push_blob(registry: Registry, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = _put(registry, f"/v2/{name}/blobs/uploads/", b"", "application/octet-stream", "POST")
    location = location.removeprefix(f"http://{registry.host}")
    sep = "&" if "?" in location else "?"
    _put(registry, f"{location}{sep}digest={digest}", data, "application/octet-stream")
    return digest


def test_referrers_through_the_tag_schema(
    tmp_path: Path, registry: Registry, oci_image: OciImage
) -> None:
    """The registry (distribution 2.8) has no referrers API: the artifacts are found through
    the ``sha256-<hex>`` tag listing them, fetched, stored and linked to their subject."""
    name = "referrers/img"
    ref = registry.push(oci_image.ref, f"{name}:v1")
    subject = {
        "mediaType": oci_image.manifest.media_type,
        "digest": oci_image.manifest.digest,
        "size": oci_image.manifest.size,
    }
    empty = _push_blob(registry, name, b"{}")
    artifacts = []
    for kind in ("signature", "sbom"):
        payload = f"{kind} payload".encode() * 40
        blob = _push_blob(registry, name, payload)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": f"application/vnd.example.{kind}",
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": empty,
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": f"application/vnd.example.{kind}",
                        "digest": blob,
                        "size": len(payload),
                    }
                ],
                "subject": subject,
            }
        ).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        _put(
            registry,
            f"/v2/{name}/manifests/{digest}",
            manifest,
            "application/vnd.oci.image.manifest.v1+json",
        )
        artifacts.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(manifest),
                "artifactType": f"application/vnd.example.{kind}",
            }
        )
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": artifacts,
        }
    ).encode()
    fallback = "sha256-" + oci_image.manifest.digest.removeprefix("sha256:")
    _put(
        registry,
        f"/v2/{name}/manifests/{fallback}",
        index,
        "application/vnd.oci.image.index.v1+json",
    )

    repo = new_repo(tmp_path / "repo")
    with repo:
        result = oci.pull(repo, ref, "img", tls_verify=False, referrers=True)
        wanted = sorted(a["digest"] for a in artifacts)
        assert sorted(result.referrers) == wanted
        assert [d for d, _ in oci_names.list_referrers(repo, result.manifest_digest)] == wanted
        assert oci.oci_fsck(repo).ok
        # an image without referrers: none, no error
        other = new_repo(tmp_path / "other")
        with other:
            plain = registry.push(oci_image.ref, "referrers/plain:v1")
            assert oci.pull(other, plain, "p", tls_verify=False, referrers=True).referrers == ()
