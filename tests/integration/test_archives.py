"""``oci-archive:``, ``docker-archive:`` and Docker schema 2 layouts read natively, against skopeo.

Archives are written by ``skopeo copy`` and by hand (``composefs.testing``: the legacy ``docker
save`` form and the one Docker 25+ writes, since Docker is not installed). Each is pulled
natively, with a failing ``skopeo`` first on ``PATH`` (the native path never runs it), and
through skopeo's image proxy (the pull's ``SOURCES`` entry replaced by the proxy source). Both
give the same manifest digest, the same layer streams and objects, the same config and the same
composefs image; where skopeo converts a Docker schema 2 manifest to OCI, the only difference is
the stored manifest (ours: the original bytes, hashing to the digest; skopeo's: the converted
bytes under the original digest). Uncompressed ``oci-archive:`` files are compared with cfsctl
0.9.4 too, which reads them directly.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import oci, splitstream
from composefs.oci.media_types import (
    DOCKER_CONFIG_MEDIA_TYPE,
    DOCKER_LAYER_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
)
from composefs.oci.platform import host_platform
from composefs.oci.proxy import ProxyImageSource
from composefs.oci.pull import SourceOptions
from composefs.oci.reference import ImageReference
from composefs.oci.source import ImageSource
from composefs.repository import Repository
from composefs.testing import DockerImage, TarBuilder, compress, docker_archive
from support import run, tool
from support.registry import OciImage, Registry

pull_module = importlib.import_module("composefs.oci.pull")
HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"


@pytest.fixture
def no_skopeo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``skopeo`` that records being run and fails, first on ``PATH``: yields the record."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    record = tmp_path / "skopeo-was-run"
    script = bin_dir / "skopeo"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    yield record
    assert not record.exists(), record.read_text()


def skopeo_sources(
    monkeypatch: pytest.MonkeyPatch, skopeo: str, *transports: str, extra_args: tuple[str, ...] = ()
) -> None:
    """Sends ``transports`` through skopeo's image proxy (the real ``skopeo``)."""

    def factory(ref: ImageReference, options: SourceOptions) -> ImageSource:
        return ProxyImageSource(
            ref.for_skopeo(), platform=options.platform, skopeo=skopeo, extra_args=extra_args
        )

    for transport in transports:
        monkeypatch.setitem(pull_module.SOURCES, transport, factory)


def new_repo(path: Path) -> Repository:
    repo, _ = Repository.init(path, "sha256", insecure=True)
    return repo


def document_objects(repo: Repository, result: Any) -> set[str]:
    """The manifest and config streams a pull wrote (before and after the EROFS step), the
    index stream (ours only: skopeo resolves lists itself) and the objects holding their JSON."""
    out: set[str] = set()
    for verity in (
        result.manifest_verity,
        result.stored_manifest_verity,
        result.config_verity,
        result.stored_config_verity,
        *([result.index_verity] if result.index_verity else []),
    ):
        stream = splitstream.parse(repo.read_object(verity))
        out |= {verity.hex(), *(r.hex() for r in stream.object_refs)}
    return out


def all_objects(repo: Repository) -> set[str]:
    root = Path(repo.path) / "objects"
    return {d.name + f.name for d in root.iterdir() for f in d.iterdir()}


def links(repo: Repository, sub: str) -> dict[str, str]:
    root = Path(repo.path) / sub
    return {p.name: os.readlink(p) for p in root.iterdir() if p.is_symlink()}


def compare(
    native: Repository,
    proxied: Repository,
    ours: Any,
    theirs: Any,
    *,
    converted: bool,
) -> None:
    """The two pulls stored the same image. ``converted``: skopeo converted a Docker schema 2
    manifest (and maybe its config) to OCI; the manifest and config streams may differ then,
    nothing else does."""
    assert ours.manifest_digest == theirs.manifest_digest
    assert ours.layers == theirs.layers
    assert ours.image_id == theirs.image_id
    layer_streams = {k: v for k, v in links(native, "streams").items() if "oci-layer-" in k}
    assert layer_streams
    assert layer_streams == {
        k: v for k, v in links(proxied, "streams").items() if "oci-layer-" in k
    }
    assert links(native, "streams/refs/oci") == links(proxied, "streams/refs/oci")
    assert links(native, "images") == links(proxied, "images")
    ours_image = oci.OciImage.open(native, ours.manifest_digest)
    # skopeo's converted manifest does not hash to its digest: opened by its stream's id
    theirs_image = oci.OciImage.open(proxied, ours.manifest_digest, theirs.stored_manifest_verity)
    # ours: the bytes the source holds, hashing to their digests
    assert "sha256:" + hashlib.sha256(ours_image.manifest_raw).hexdigest() == ours.manifest_digest
    assert "sha256:" + hashlib.sha256(ours_image.config_raw).hexdigest() == ours.config_digest
    if not converted:
        assert ours == theirs
        assert all_objects(native) == all_objects(proxied)
        assert links(native, "streams") == links(proxied, "streams")
        return
    assert json.loads(ours_image.manifest_raw)["mediaType"] == DOCKER_MANIFEST_MEDIA_TYPE
    assert json.loads(theirs_image.manifest_raw)["mediaType"] == (
        "application/vnd.oci.image.manifest.v1+json"
    )
    assert theirs_image.manifest_raw != ours_image.manifest_raw
    assert json.loads(theirs_image.config_raw) == {
        k: v
        for k, v in json.loads(ours_image.config_raw).items()
        if k in json.loads(theirs_image.config_raw)
    }
    ours_rest = all_objects(native) - document_objects(native, ours)
    assert ours_rest == all_objects(proxied) - document_objects(proxied, theirs)


# -- oci-archive: -------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_oci_archive_from_skopeo(
    tmp_path: Path,
    oci_image: OciImage,
    monkeypatch: pytest.MonkeyPatch,
    compression: str,
) -> None:
    skopeo = tool("skopeo")
    archive = tmp_path / "image.tar"
    run(skopeo, "--insecure-policy", "copy", "--quiet", oci_image.ref, f"oci-archive:{archive}:v1")
    if compression != "none":
        archive.write_bytes(compress(archive.read_bytes(), compression))
    ref = f"oci-archive:{archive}:v1"
    with new_repo(tmp_path / "proxy") as proxied, monkeypatch.context() as m:
        skopeo_sources(m, skopeo, "oci-archive")
        theirs = oci.pull(proxied, ref, "x")
    with new_repo(tmp_path / "native") as native:
        ours = _native_pull(native, ref, tmp_path, monkeypatch)
        assert ours.manifest_digest == oci_image.manifest.digest
        with new_repo(tmp_path / "proxy") as proxied:
            compare(native, proxied, ours, theirs, converted=False)


def _native_pull(repo: Repository, ref: str, tmp_path: Path, monkeypatch: Any, **kw: Any) -> Any:
    """``oci.pull`` with a failing ``skopeo`` first on ``PATH``, which must not be run."""
    record = tmp_path / "skopeo-was-run"
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "skopeo"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit 1\n')
    script.chmod(0o755)
    with monkeypatch.context() as m:
        m.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        result = oci.pull(repo, ref, "x", **kw)
    assert not record.exists(), record.read_text()
    return result


def test_oci_archive_matches_cfsctl(tmp_path: Path, oci_image: OciImage) -> None:
    """cfsctl 0.9.4 reads an uncompressed oci-archive directly: the same summary, layer
    streams, config stream and composefs image."""
    cfsctl, skopeo = tool("cfsctl"), tool("skopeo")
    archive = tmp_path / "image.tar"
    run(skopeo, "--insecure-policy", "copy", "--quiet", oci_image.ref, f"oci-archive:{archive}:v1")
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    run(cfsctl, "--repo", a, "init", "--insecure", a)
    run(sys.executable, "-m", "composefs.cli", "--repo", b, "init", "--insecure")
    ref = f"oci-archive:{archive}:v1"
    theirs = run(cfsctl, "--repo", a, "oci", "pull", ref, "x").stdout
    ours = run(sys.executable, "-m", "composefs.cli", "--repo", b, "oci", "pull", ref, "x").stdout
    assert ours == theirs
    with Repository.open(a) as ra, Repository.open(b) as rb:
        layer_streams = {k: v for k, v in links(ra, "streams").items() if "oci-layer-" in k}
        assert layer_streams == {k: v for k, v in links(rb, "streams").items() if "oci-layer-" in k}
        config = f"oci-config-{oci_image.config.digest}"
        assert ra.has_stream(config) == rb.has_stream(config)
        assert links(ra, "images") == links(rb, "images")
    for repo in (a, b):
        assert run(cfsctl, "--repo", repo, "oci", "fsck").returncode == 0


# -- docker-archive: ----------------------------------------------------------------------------


def test_docker_archive_from_skopeo(
    tmp_path: Path, oci_image: OciImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``skopeo copy ... docker-archive:`` (the legacy form, layers linked by name)."""
    skopeo = tool("skopeo")
    archive = tmp_path / "docker.tar"
    target = f"docker-archive:{archive}:example.com/test:v1"
    run(skopeo, "--insecure-policy", "copy", "--quiet", oci_image.ref, target)
    _compare_docker_archive(tmp_path, skopeo, monkeypatch, f"docker-archive:{archive}")
    _compare_docker_archive(tmp_path, skopeo, monkeypatch, target, "again")


def _compare_docker_archive(
    tmp_path: Path,
    skopeo: str,
    monkeypatch: pytest.MonkeyPatch,
    ref: str,
    sub: str = "",
    *,
    skopeo_ref: str | None = None,
) -> None:
    """``ref`` pulled natively equals ``skopeo_ref`` (default: ``ref``) pulled by skopeo."""
    base = tmp_path / sub if sub else tmp_path
    base.mkdir(exist_ok=True)
    with new_repo(base / "proxy") as proxied, monkeypatch.context() as m:
        skopeo_sources(m, skopeo, "docker-archive")
        theirs = oci.pull(proxied, skopeo_ref or ref, "x")
    with new_repo(base / "native") as native, Repository.open(base / "proxy") as proxied:
        ours = _native_pull(native, ref, base, monkeypatch)
        compare(native, proxied, ours, theirs, converted=True)
        assert oci.oci_fsck(native).ok


def _layer(seed: str, size: int) -> bytes:
    t = TarBuilder().dir("usr").dir("usr/share")
    block = hashlib.sha256(seed.encode()).digest() * (size // 32 + 1)
    t.file(f"usr/share/{seed}", block[:size])
    t.file(f"usr/share/{seed}.txt", seed.encode() * 3)
    return t.build()


LAYERS = [_layer("base", 400_000), _layer("mid", 30_000), _layer("top", 10)]


@pytest.mark.parametrize(
    ("form", "compression"),
    [
        ("legacy", "none"),
        ("legacy", "gzip"),
        ("docker25", "none"),
        ("docker25", "gzip"),
        ("legacy-links", "none"),
        ("compressed-archive", "none"),
    ],
)
def test_hand_made_docker_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str, compression: str
) -> None:
    """``docker save`` output as Docker writes it (before and since 25): the manifest skopeo
    makes (uncompressed sizes, diff_ids) is the one we make.

    skopeo 1.9.3 (containers/image 5.23) cannot read two forms newer containers/image reads:
    layer files named through a symbolic link (it sizes the link, "expected 0 bytes in blob")
    and a gzip'd archive ("loading tar component manifest.json: unexpected EOF"). Those are
    compared with skopeo's pull of the same image in the plain legacy form.
    """
    skopeo = tool("skopeo")
    config = {"container_config": {"Cmd": ["/bin/sh"]}, "docker_version": "24.0.7"}
    image = DockerImage(
        LAYERS, repo_tags=["busybox:latest"], compression=compression, config=config
    )
    archive = tmp_path / "docker.tar"
    docker_archive(
        archive, [image], oci_layout=form == "docker25", layer_links=form == "legacy-links"
    )
    skopeo_ref = None
    if form in ("legacy-links", "compressed-archive"):
        plain = tmp_path / "plain.tar"
        docker_archive(plain, [image])
        skopeo_ref = f"docker-archive:{plain}:busybox"
    if form == "compressed-archive":
        archive.write_bytes(compress(archive.read_bytes(), "gzip"))
    _compare_docker_archive(
        tmp_path, skopeo, monkeypatch, f"docker-archive:{archive}:busybox", skopeo_ref=skopeo_ref
    )


def test_docker_25_archive_is_also_an_oci_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Docker 25+ writes is an OCI layout too: ``oci-archive:`` reads its OCI manifest,
    as skopeo does; the layers and the composefs image are the same as through
    ``docker-archive:``."""
    skopeo = tool("skopeo")
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage(LAYERS, repo_tags=["busybox:latest"])], oci_layout=True)
    ref = f"oci-archive:{archive}:latest"
    with new_repo(tmp_path / "proxy") as proxied, monkeypatch.context() as m:
        skopeo_sources(m, skopeo, "oci-archive")
        theirs = oci.pull(proxied, ref, "x")
    with new_repo(tmp_path / "native") as native, Repository.open(tmp_path / "proxy") as proxied:
        ours = _native_pull(native, ref, tmp_path, monkeypatch)
        compare(native, proxied, ours, theirs, converted=False)
        as_docker = oci.pull(native, f"docker-archive:{archive}", "y")
        assert as_docker.image_id == ours.image_id and as_docker.layers == ours.layers


def test_cli_pulls_archives_without_skopeo(tmp_path: Path, no_skopeo: Path) -> None:
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage(LAYERS, repo_tags=["example.com/x:1"])])
    repo = tmp_path / "repo"
    cli = [sys.executable, "-m", "composefs.cli", "--repo", os.fspath(repo)]
    run(*cli, "init", "--insecure")
    proc = subprocess.run(
        [*cli, "oci", "pull", f"docker-archive:{archive}:example.com/x:1", "x"],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert [line.split()[0] for line in lines] == [
        "manifest",
        "config",
        "verity",
        "tagged",
        "objects",
    ]
    assert lines[3] == "tagged   x"


# -- Docker schema 2 media types in an oci: layout --------------------------------------------


def test_v2s2_layout_from_skopeo(
    tmp_path: Path, oci_image: OciImage, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``skopeo copy --format v2s2 ... oci:X`` (which skopeo 1.9.3 itself cannot read back)
    pulled natively equals the same image pushed as v2s2 to a registry and pulled through
    skopeo: the registry path."""
    skopeo = tool("skopeo")
    layout = tmp_path / "v2s2"
    run(
        skopeo,
        "--insecure-policy",
        "copy",
        "--quiet",
        "--format",
        "v2s2",
        oci_image.ref,
        f"oci:{layout}:v1",
    )
    index = json.loads((layout / "index.json").read_bytes())
    assert index["manifests"][0]["mediaType"] == DOCKER_MANIFEST_MEDIA_TYPE
    pushed = registry.push(oci_image.ref, "archives-v2s2:v1", "--format", "v2s2")
    with new_repo(tmp_path / "proxy") as proxied, monkeypatch.context() as m:
        skopeo_sources(m, skopeo, "docker", extra_args=("--tls-verify=false",))
        theirs = oci.pull(proxied, pushed, "x")
    with new_repo(tmp_path / "native") as native, Repository.open(tmp_path / "proxy") as proxied:
        ours = _native_pull(native, f"oci:{layout}:v1", tmp_path, monkeypatch)
        assert ours.manifest_digest == index["manifests"][0]["digest"]
        compare(native, proxied, ours, theirs, converted=True)
        assert oci.oci_fsck(native).ok


def _registry_put(registry: Registry, path: str, data: bytes, media_type: str) -> None:
    request = urllib.request.Request(
        f"http://{registry.host}{path}",
        data=data,
        method="PUT",
        headers={"Content-Type": media_type},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status


def _registry_push_blob(registry: Registry, name: str, data: bytes) -> None:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{name}/blobs/uploads/", data=b"", method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        location = response.headers["Location"]
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    separator = "&" if "?" in location else "?"
    if location.startswith("/"):
        location = f"http://{registry.host}{location}"
    request = urllib.request.Request(
        f"{location}{separator}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status


def test_hand_made_docker_layout(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Docker manifest list over v2s2 manifests (Docker config, gzip and uncompressed Docker
    layers), written by hand into a layout and, byte for byte, into the registry: the native
    ``oci:`` pull equals skopeo's registry pull for this host and for another platform."""
    skopeo = tool("skopeo")
    layout = tmp_path / "layout"
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    name = "archives-docker-layout"

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "size": len(data), "digest": f"sha256:{digest}"}

    def manifest(arch: str, tars: list[bytes]) -> tuple[dict[str, Any], bytes]:
        config = DockerImage(tars, architecture=arch).config_bytes()
        layers = []
        for number, tar in enumerate(tars):
            if number % 2:
                layers.append(blob(tar, DOCKER_LAYER_MEDIA_TYPE))
            else:
                layers.append(blob(compress(tar, "gzip"), DOCKER_LAYER_MEDIA_TYPE + ".gzip"))
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": blob(config, DOCKER_CONFIG_MEDIA_TYPE),
            "layers": layers,
        }
        raw = json.dumps(doc, indent=3).encode()
        return {
            **blob(raw, DOCKER_MANIFEST_MEDIA_TYPE),
            "platform": {"architecture": arch, "os": "linux"},
        }, raw

    host, host_raw = manifest(HOST, LAYERS)
    other, other_raw = manifest(OTHER, LAYERS[1:])
    listing_raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST_MEDIA_TYPE,
            "manifests": [other, host],
        }
    ).encode()
    listing = blob(listing_raw, DOCKER_MANIFEST_LIST_MEDIA_TYPE)
    listing["annotations"] = {"org.opencontainers.image.ref.name": "list"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [listing]}))
    for path in blobs.iterdir():
        _registry_push_blob(registry, name, path.read_bytes())
    for desc, raw in ((host, host_raw), (other, other_raw)):
        _registry_put(registry, f"/v2/{name}/manifests/{desc['digest']}", raw, desc["mediaType"])
    _registry_put(
        registry, f"/v2/{name}/manifests/list", listing_raw, DOCKER_MANIFEST_LIST_MEDIA_TYPE
    )

    for platform in (None, f"linux/{OTHER}"):
        sub = tmp_path / (platform or "host").replace("/", "-")
        sub.mkdir()
        with new_repo(sub / "proxy") as proxied, monkeypatch.context() as m:
            skopeo_sources(m, skopeo, "docker", extra_args=("--tls-verify=false",))
            theirs = oci.pull(proxied, registry.ref(f"{name}:list"), "x", platform=platform)
        with new_repo(sub / "native") as native, Repository.open(sub / "proxy") as proxied:
            ours = _native_pull(native, f"oci:{layout}:list", sub, monkeypatch, platform=platform)
            assert ours.index_digest == listing["digest"]
            expected = host if platform is None else other
            assert ours.manifest_digest == expected["digest"]
            compare(native, proxied, ours, theirs, converted=True)
            assert oci.oci_fsck(native).ok


def test_the_failing_skopeo_is_the_one_a_proxy_pull_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of the native pulls above is sound: with the fake first on ``PATH``, a
    transport that needs skopeo runs it (and fails)."""
    record = tmp_path / "skopeo-was-run"
    with new_repo(tmp_path / "repo") as repo, pytest.raises(oci.PullError):
        _native_pull(repo, f"dir:{tmp_path}", tmp_path, monkeypatch)
    assert "experimental-image-proxy" in record.read_text()
