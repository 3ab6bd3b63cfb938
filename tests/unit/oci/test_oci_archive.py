"""Pulls from ``oci-archive:`` and ``docker-archive:`` (read natively, nothing unpacked), and from
layouts with Docker schema 2 media types (issues 11 and 13). Archives are made here by hand
(``composefs.testing``); the comparisons with skopeo are in ``tests/integration``."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import oci
from composefs.errors import (
    ComposefsError,
    DigestMismatchError,
    ImageReferenceError,
    TagNotFoundError,
    error_chain,
)
from composefs.oci import archive as arc
from composefs.oci.archive import (
    DockerArchiveReference,
    normalize_docker_reference,
    parse_docker_archive_name,
    parse_oci_archive_name,
)
from composefs.oci.media_types import (
    DOCKER_CONFIG_MEDIA_TYPE,
    DOCKER_LAYER_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
)
from composefs.oci.platform import host_platform
from composefs.oci.reference import LayoutReference
from composefs.oci.source import Descriptor
from composefs.repository import Repository
from composefs.testing import (
    DockerImage,
    LayoutWriter,
    TarBuilder,
    compress,
    docker_archive,
    oci_archive,
)

HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"
pull_module = importlib.import_module("composefs.oci.pull")


def _tar(seed: str, size: int = 5000) -> bytes:
    t = TarBuilder().dir("usr").dir("usr/lib")
    t.file(f"usr/lib/{seed}-big", (seed.encode() * size)[:size])
    t.file(f"usr/lib/{seed}-small", seed.encode())
    return t.build()


TARS = [_tar("base", 30_000), _tar("mid", 9000), _tar("top", 100)]


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """Tags: ``v1`` (a manifest: three layers, gzip, zstd, none), ``multi`` (an index over
    another platform's manifest and this host's)."""
    w = LayoutWriter(tmp_path / "layout")
    layers = [w.layer(t, c) for t, c in zip(TARS, ("gzip", "zstd", "none"), strict=True)]
    plain = w.image(layers, architecture=HOST)
    multi = w.index(
        [w.image(layers[1:], architecture=OTHER), w.image(layers[:2], architecture=HOST)]
    )
    w.write_index([w.tagged(plain, "v1"), w.tagged(multi, "multi")])
    return tmp_path / "layout"


@pytest.fixture
def repos(tmp_path: Path) -> Iterator[tuple[Repository, Repository]]:
    a, _ = Repository.init(tmp_path / "a", "sha256", insecure=True)
    b, _ = Repository.init(tmp_path / "b", "sha256", insecure=True)
    with a, b:
        yield a, b


def tree(repo: Repository) -> dict[str, str]:
    """Every file of the repository: a symlink's target, a file's sha256."""
    out = {}
    root = Path(repo.path)
    for path in sorted(root.rglob("*")):
        rel = os.fspath(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def chain(e: BaseException) -> str:
    return "\n".join(error_chain(e))


def caused_by(e: BaseException, cls: type[BaseException]) -> bool:
    """``e`` or one of its causes is a ``cls`` (a pull wraps its causes in ``PullError``)."""
    current: BaseException | None = e
    while current is not None:
        if isinstance(current, cls):
            return True
        current = current.__cause__
    return False


# -- oci-archive: ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("spec", [":v1", ":multi", ""])
def test_oci_archive_equals_the_layout(
    layout: Path,
    tmp_path: Path,
    repos: tuple[Repository, Repository],
    spec: str,
    compression: str,
) -> None:
    """The same repository, byte for byte, as pulling the layout directory."""
    archive = tmp_path / "image.tar"
    oci_archive(layout, archive, compression=compression)
    a, b = repos
    from_dir = oci.pull(a, f"oci:{layout}{spec}", "x")
    from_tar = oci.pull(b, f"oci-archive:{archive}{spec}", "x")
    assert from_tar == from_dir
    assert tree(b) == tree(a)
    assert oci.oci_fsck(b).ok


def test_layers_stream_from_a_pipe_and_nothing_is_unpacked(
    layout: Path, tmp_path: Path, repos: tuple[Repository, Repository], monkeypatch: Any
) -> None:
    archive = tmp_path / "image.tar"
    oci_archive(layout, archive)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", os.fspath(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    layer_module = importlib.import_module("composefs.oci.layer")
    real = layer_module.import_layer
    kinds = []

    def spy(repo: Repository, source: Any, *args: Any, **kwargs: Any) -> Any:
        kinds.append(stat.S_IFMT(os.fstat(source).st_mode))
        return real(repo, source, *args, **kwargs)

    monkeypatch.setattr(layer_module, "import_layer", spy)
    oci.pull(repos[0], f"oci-archive:{archive}:v1")
    assert kinds == [stat.S_IFIFO] * 3
    assert list(tmp.iterdir()) == []


def test_oci_archive_names() -> None:
    """containers/image's ``path[:image]``: split at the first colon; ``@N`` an entry."""
    assert parse_oci_archive_name("/a.tar") == LayoutReference("/a.tar")
    assert parse_oci_archive_name("/a.tar:") == LayoutReference("/a.tar")
    assert parse_oci_archive_name("/a.tar:v1") == LayoutReference("/a.tar", tag="v1")
    assert parse_oci_archive_name("/a:b/c.tar:t") == LayoutReference("/a", tag="b/c.tar:t")
    assert parse_oci_archive_name("x.tar:@2") == LayoutReference("x.tar", index=2)
    for name, message in [
        ("x.tar:@x", "Invalid source index @x: not an integer"),
        ("x.tar:@-1", "Invalid source index @-1: must not be negative"),
        ("x.tar:a b", "Invalid image a b"),
        ("x.tar:-a", "Invalid image -a"),
        (":t", "Invalid empty path in oci-archive::t"),
    ]:
        with pytest.raises(ImageReferenceError, match=message):
            parse_oci_archive_name(name)


def test_oci_archive_entry_by_position(
    layout: Path, tmp_path: Path, repos: tuple[Repository, Repository]
) -> None:
    archive = tmp_path / "image.tar"
    oci_archive(layout, archive)
    index = json.loads((layout / "index.json").read_bytes())
    assert (
        oci.pull(repos[0], f"oci-archive:{archive}:@0").manifest_digest
        == (index["manifests"][0]["digest"])
    )
    result = oci.pull(repos[0], f"oci-archive:{archive}:@1")  # the index: resolved for us
    assert result.index_digest == index["manifests"][1]["digest"]
    with pytest.raises(ComposefsError) as e:
        oci.pull(repos[0], f"oci-archive:{archive}:@2")
    assert caused_by(e.value, TagNotFoundError)
    assert "Invalid source index @2, only 2 manifest items available" in chain(e.value)


def test_oci_archive_errors(
    layout: Path, tmp_path: Path, repos: tuple[Repository, Repository]
) -> None:
    repo = repos[0]
    archive = tmp_path / "image.tar"
    oci_archive(layout, archive)
    raw = archive.read_bytes()
    # a tampered layer: the digest check fails, nothing is tagged
    manifest = json.loads((layout / "index.json").read_bytes())["manifests"][0]
    doc = json.loads((layout / "blobs/sha256" / manifest["digest"][7:]).read_bytes())
    big = doc["layers"][2]["digest"][7:]  # the uncompressed one: no gzip CRC before the digest
    blob = (layout / "blobs/sha256" / big).read_bytes()
    at = raw.index(blob) + len(blob) // 2
    archive.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"oci-archive:{archive}:v1", "x")
    assert caused_by(e.value, DigestMismatchError)
    assert oci.list_refs(repo) == []
    # not an archive, a missing one, a missing tag
    archive.write_bytes(b"{}" * 1000)
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"oci-archive:{archive}:v1")
    assert chain(e.value).splitlines()[:3] == [
        f"Importing OCI layout from {archive}",
        f"Reading archive {archive}",
        "not a tar archive, or a damaged one: bad header checksum at offset 0",
    ]
    with pytest.raises(ComposefsError, match=f"Importing OCI layout from {tmp_path}/none.tar"):
        oci.pull(repo, f"oci-archive:{tmp_path}/none.tar")
    oci_archive(layout, archive)
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"oci-archive:{archive}:v2")
    assert caused_by(e.value, TagNotFoundError)
    assert "Tag 'v2' not found in image index" in chain(e.value)
    # an archive that is no layout
    docker_archive(archive, [DockerImage([TARS[2]])])
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"oci-archive:{archive}")
    assert f"{archive} is not an OCI image layout (no oci-layout file)" in chain(e.value)


def test_links_in_an_oci_archive(
    layout: Path, tmp_path: Path, repos: tuple[Repository, Repository]
) -> None:
    """A blob that is a symbolic link to another member is read through it; one
    that leads out of the archive makes the archive unreadable."""
    blobs = layout / "blobs/sha256"
    names = sorted(p.name for p in blobs.iterdir())
    store = layout / "store"
    store.mkdir()
    for name in names:
        (blobs / name).rename(store / name)
        (blobs / name).symlink_to(f"../../store/{name}")
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    expected = oci.pull(repos[0], f"oci:{layout}:v1", "x")
    assert oci.pull(repos[1], f"oci-archive:{archive}:v1", "x") == expected
    assert tree(repos[1]) == tree(repos[0])
    (blobs / names[0]).unlink()
    (blobs / names[0]).symlink_to("/etc/passwd")
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    with pytest.raises(ComposefsError) as e:
        oci.pull(repos[1], f"oci-archive:{archive}:v1")
    assert f"symbolic link 'blobs/sha256/{names[0]}' points out of the archive" in chain(e.value)


# -- docker-archive: ------------------------------------------------------------------------------


def expected_manifest(config: bytes, tars: list[bytes]) -> bytes:
    """The manifest containers/image generates for a ``docker save`` image: Go's
    ``encoding/json`` of its ``manifest.Schema2`` (field order, no spaces)."""
    layers = ",".join(
        '{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip",'
        f'"size":{len(t)},"digest":"sha256:{hashlib.sha256(t).hexdigest()}"}}'
        for t in tars
    )
    return (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        '"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
        f'"size":{len(config)},"digest":"sha256:{hashlib.sha256(config).hexdigest()}"}},'
        f'"layers":[{layers}]}}'
    ).encode()


@pytest.mark.parametrize(
    ("form", "compression"),
    [
        ("legacy", "none"),
        ("legacy-links", "none"),
        ("legacy", "gzip"),
        ("legacy", "zstd"),
        ("oci", "none"),
        ("oci", "gzip"),
    ],
)
def test_docker_archive(
    tmp_path: Path,
    layout: Path,
    repos: tuple[Repository, Repository],
    form: str,
    compression: str,
) -> None:
    """The manifest containers/image makes, the config as it is; the layers, the EROFS image
    and every object of them equal pulling the same layers from a layout."""
    image = DockerImage(TARS, repo_tags=["example.com/test:v1"], compression=compression)
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [image], oci_layout=form == "oci", layer_links=form == "legacy-links")
    a, b = repos
    result = oci.pull(a, f"docker-archive:{archive}", "x")
    config = image.config_bytes()
    manifest = expected_manifest(config, TARS)
    assert result.manifest_digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert result.config_digest == "sha256:" + hashlib.sha256(config).hexdigest()
    assert [d for d, _ in result.layers] == [
        "sha256:" + hashlib.sha256(t).hexdigest() for t in TARS
    ]
    img = oci.OciImage.open_ref(a, "x")
    assert img.manifest_raw == manifest and img.config_raw == config
    assert img.is_container_image and img.architecture == "amd64"
    assert oci.oci_fsck(a).ok
    same = oci.pull(b, f"oci:{layout}:v1", "x")
    assert result.image_id == same.image_id
    assert result.layers == same.layers
    layer_streams = {k: v for k, v in tree(a).items() if "oci-layer-" in k}
    assert layer_streams == {k: v for k, v in tree(b).items() if "oci-layer-" in k}
    # every name form picks the image
    for ref in (":example.com/test:v1", ":@0", ":example.com/test:v1".replace(":v1", ":v1")):
        assert (
            oci.pull(a, f"docker-archive:{archive}{ref}").manifest_digest == result.manifest_digest
        )


def test_docker_archive_choosing_the_image(
    tmp_path: Path, repos: tuple[Repository, Repository]
) -> None:
    archive = tmp_path / "docker.tar"
    first = DockerImage([TARS[0]], repo_tags=["example.com/a:1", "busybox:latest"])
    second = DockerImage([TARS[1]], repo_tags=["localhost:5000/x/y:2"], architecture="arm64")
    untagged = DockerImage([TARS[2]])
    docker_archive(archive, [first, second, untagged])
    repo = repos[0]

    def pulled(ref: str) -> list[str]:
        return [d for d, _ in oci.pull(repo, f"docker-archive:{archive}{ref}").layers]

    diff = ["sha256:" + hashlib.sha256(t).hexdigest() for t in TARS]
    assert pulled(":busybox") == [diff[0]]
    assert pulled(":docker.io/library/busybox:latest") == [diff[0]]
    assert pulled(":example.com/a:1") == [diff[0]]
    assert pulled(":localhost:5000/x/y:2") == [diff[1]]
    assert pulled(":@1") == [diff[1]]
    assert pulled(":@2") == [diff[2]]
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"docker-archive:{archive}")
    assert "Unexpected tar manifest.json: expected 1 item, got 3" in chain(e.value)
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"docker-archive:{archive}:example.com/a:2")
    assert caused_by(e.value, TagNotFoundError)
    assert 'Tag "example.com/a:2" not found' in chain(e.value)
    with pytest.raises(ComposefsError) as e:
        oci.pull(repo, f"docker-archive:{archive}:@3")
    assert "Invalid source index @3, only 3 manifest items available" in chain(e.value)


def test_docker_reference_names() -> None:
    """``reference.ParseNormalizedNamed`` + ``TagNameOnly``, as containers/image does."""
    cases = {
        "busybox": "docker.io/library/busybox:latest",
        "busybox:1.36": "docker.io/library/busybox:1.36",
        "library/busybox": "docker.io/library/busybox:latest",
        "docker.io/busybox": "docker.io/library/busybox:latest",
        "index.docker.io/busybox": "docker.io/library/busybox:latest",
        "user/repo:t": "docker.io/user/repo:t",
        "quay.io/a/b/c:v1.0-rc_1": "quay.io/a/b/c:v1.0-rc_1",
        "localhost/x": "localhost/x:latest",
        "localhost:5000/x": "localhost:5000/x:latest",
        "Registry/x": "Registry/x:latest",
        "[::1]:5000/x": "[::1]:5000/x:latest",
        "a__b/c--d.e": "docker.io/a__b/c--d.e:latest",
    }
    for text, expected in cases.items():
        assert normalize_docker_reference(text) == expected, text
    assert normalize_docker_reference("x", default_tag=False) == "docker.io/library/x"
    for text, message in [
        ("Busybox", "repository name (library/Busybox) must be lowercase"),
        ("a" * 64, "cannot specify 64-byte hexadecimal strings"),
        ("x@sha256:" + "a" * 64, "docker-archive doesn't support digest references"),
        ("x:-bad", "invalid reference format"),
        ("x/" * 130 + "x", "must not be more than 255 characters"),
        ("", "invalid reference format"),
    ]:
        with pytest.raises(ImageReferenceError, match=re.escape(message)):
            normalize_docker_reference(text)
    assert parse_docker_archive_name("/a.tar") == DockerArchiveReference("/a.tar")
    assert parse_docker_archive_name("/a.tar:x") == DockerArchiveReference(
        "/a.tar", tag="docker.io/library/x:latest"
    )
    assert parse_docker_archive_name("/a.tar:@1") == DockerArchiveReference("/a.tar", index=1)
    with pytest.raises(ImageReferenceError, match="docker-archive parsing reference"):
        parse_docker_archive_name("/a.tar:")
    with pytest.raises(ImageReferenceError, match="isn't of the form <path>"):
        parse_docker_archive_name(":x")


def test_docker_archive_errors(tmp_path: Path, repos: tuple[Repository, Repository]) -> None:
    repo = repos[0]
    archive = tmp_path / "docker.tar"

    def fails(*expected: str, ref: str = "") -> ComposefsError:
        with pytest.raises(ComposefsError) as e:
            oci.pull(repo, f"docker-archive:{archive}{ref}", "x")
        text = chain(e.value)
        assert text.startswith(f"Importing Docker archive {archive}\n"), text
        for part in expected:
            assert part in text, text
        assert oci.list_refs(repo) == []
        return e.value

    # a layer whose content is not what the config says
    zero = "sha256:" + "0" * 64
    wrong = DockerImage([TARS[0]], config={"rootfs": {"type": "layers", "diff_ids": [zero]}})
    docker_archive(archive, [wrong])
    assert caused_by(fails("layer blob digest mismatch: expected " + zero), DigestMismatchError)
    # config and manifest.json disagree on the layers
    docker_archive(
        archive, [DockerImage(TARS[:2], config={"rootfs": {"type": "layers", "diff_ids": []}})]
    )
    fails("Inconsistent layer count: 2 in manifest, 0 in config")
    docker_archive(archive, [DockerImage(TARS[:1], config={"rootfs": None})])
    fails("no rootfs.diff_ids")
    # manifest.json missing, not a list, an item of the wrong shape, a layer missing
    oci_archive(_layout_dir(tmp_path), archive)
    fails("loading 'manifest.json' from the archive", "not found in the archive")
    for doc, message in [
        ({}, "manifest.json is not a JSON list"),
        ([{"Config": 1}], "manifest.json[0].Config: expected a string"),
        ([{"Config": "c", "Layers": "x"}], "manifest.json[0].Layers: expected a list of strings"),
        ([{"Config": "c.json", "Layers": []}], "loading 'c.json' from the archive"),
    ]:
        _archive_with(archive, {"manifest.json": json.dumps(doc).encode()})
        fails(message)
    _archive_with(archive, {"manifest.json": b"[" + b" " * (1 << 20) + b"]"})
    fails("manifest.json is too large (1048578 bytes, the limit is 1048576)")
    config = DockerImage([TARS[0]]).config_bytes()
    items = [{"Config": "c.json", "Layers": ["nope/layer.tar"]}]
    _archive_with(archive, {"manifest.json": json.dumps(items).encode(), "c.json": config})
    fails("loading layer 'nope/layer.tar'", "not found in the archive")
    # two diff_ids from one layer file
    config = DockerImage(TARS[:2]).config_bytes()
    items = [{"Config": "c.json", "Layers": ["l.tar", "./l.tar"]}]
    _archive_with(
        archive, {"manifest.json": json.dumps(items).encode(), "c.json": config, "l.tar": TARS[0]}
    )
    fails('Layer tarfile "./l.tar" used for two different DiffID values')


def _layout_dir(tmp_path: Path) -> Path:
    w = LayoutWriter(tmp_path / "other-layout")
    w.write_index([w.tagged(w.image([w.layer(TARS[2])]), "t")])
    return tmp_path / "other-layout"


def _archive_with(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_docker_archive_same_layer_twice(
    tmp_path: Path, repos: tuple[Repository, Repository]
) -> None:
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage([TARS[0], TARS[2], TARS[0]])])
    result = oci.pull(repos[0], f"docker-archive:{archive}", "x")
    assert [d for d, _ in result.layers] == [
        "sha256:" + hashlib.sha256(t).hexdigest() for t in (TARS[0], TARS[2], TARS[0])
    ]


def test_docker_archive_of_another_platform_warns(
    tmp_path: Path, repos: tuple[Repository, Repository], caplog: pytest.LogCaptureFixture
) -> None:
    """An archive holds one image per item: it is pulled whatever its platform."""
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage([TARS[0]], architecture=OTHER)])
    with caplog.at_level(logging.WARNING, "composefs.oci"):
        result = oci.pull(repos[0], f"docker-archive:{archive}", "x")
        assert result.platform is not None and result.platform.architecture == OTHER
        oci.pull(repos[0], f"docker-archive:{archive}", platform=f"linux/{OTHER}")
    assert [r.getMessage() for r in caplog.records] == [
        f"the image in {archive} is an image for linux/{OTHER}, not linux/{HOST} (this host): a "
        "single manifest is the image, it is pulled as it is (a platform selects among the "
        "manifests of an index)"
    ]


def test_compressed_docker_archive(tmp_path: Path, repos: tuple[Repository, Repository]) -> None:
    """``docker save | gzip``: decompressed once into an unnamed temporary file."""
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage(TARS)])
    plain = oci.pull(repos[0], f"docker-archive:{archive}", "x")
    packed = tmp_path / "docker.tar.gz"
    packed.write_bytes(compress(archive.read_bytes(), "gzip"))
    assert oci.pull(repos[1], f"docker-archive:{packed}", "x") == plain
    assert tree(repos[1]) == tree(repos[0])


def test_docker_archive_source_serves_uncompressed_layers(tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage([TARS[0]], compression="zstd")])
    with arc.open_docker_archive(os.fspath(archive)) as source:
        resolved = source.resolve(None)
        manifest = json.loads(resolved.raw)
        assert manifest["mediaType"] == DOCKER_MANIFEST_MEDIA_TYPE
        layer = Descriptor.from_json(manifest["layers"][0])
        assert layer.media_type == DOCKER_LAYER_MEDIA_TYPE + ".gzip"
        assert layer.size == len(TARS[0])
        assert source.blob_media_type(layer) == DOCKER_LAYER_MEDIA_TYPE
        with source.open_blob(layer) as fd:
            data = b""
            while chunk := os.read(fd, 1 << 16):
                data += chunk
        assert data == TARS[0]
        config = Descriptor.from_json(manifest["config"])
        assert config.media_type == DOCKER_CONFIG_MEDIA_TYPE
        assert source.read_blob(config) == DockerImage([TARS[0]]).config_bytes()
        with pytest.raises(arc.ArchiveError, match="Unknown blob"):
            source.read_blob(layer)


# -- Docker schema 2 media types in a layout (issue 13) ------------------------------------------


def docker_layout(path: Path, tag_manifest: bool = False) -> dict[str, Any]:
    """The images of :func:`layout` written with Docker schema 2 types: a manifest list over
    this host's and another platform's v2s2 manifests (tag ``list``), a v2s2 manifest tagged
    directly (tag ``v2s2``, no mediaType in index.json, as ``skopeo --format v2s2`` writes)."""
    w = LayoutWriter(path)

    def layer(tar: bytes, compression: str) -> dict[str, Any]:
        data = compress(tar, compression)
        suffix = {"none": "", "gzip": ".gzip", "zstd": ".zstd"}[compression]
        return w.blob(data, DOCKER_LAYER_MEDIA_TYPE + suffix)

    def manifest(tars: list[bytes], arch: str) -> dict[str, Any]:
        config = DockerImage(tars, architecture=arch).config_bytes()
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_MEDIA_TYPE,
            "config": w.blob(config, DOCKER_CONFIG_MEDIA_TYPE),
            "layers": [layer(t, c) for t, c in zip(tars, ("gzip", "zstd", "none"), strict=False)],
        }
        return w.blob(json.dumps(doc, indent=3).encode(), DOCKER_MANIFEST_MEDIA_TYPE)

    host = manifest(TARS, HOST)
    other = manifest(TARS[1:], OTHER)
    entries = [
        {**other, "platform": {"architecture": OTHER, "os": "linux"}},
        {**host, "platform": {"architecture": HOST, "os": "linux"}},
    ]
    listing = w.blob(
        json.dumps(
            {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST_MEDIA_TYPE, "manifests": entries}
        ).encode(),
        DOCKER_MANIFEST_LIST_MEDIA_TYPE,
    )
    doc = {"schemaVersion": 2, "manifests": [w.tagged(listing, "list"), w.tagged(host, "v2s2")]}
    (path / "index.json").write_text(json.dumps(doc))
    return {"host": host, "other": other, "list": listing}


def test_docker_media_types_in_a_layout(
    tmp_path: Path, layout: Path, repos: tuple[Repository, Repository]
) -> None:
    """Read as a registry path would: the documents stored as they are (digests unchanged), the
    layers, objects and EROFS image those of the same image in OCI types."""
    info = docker_layout(tmp_path / "docker-layout")
    a, b = repos
    ref = f"oci:{tmp_path / 'docker-layout'}"
    tagged = oci.pull(a, f"{ref}:v2s2", "v2s2")
    assert tagged.manifest_digest == info["host"]["digest"]
    listed = oci.pull(a, f"{ref}:list", "list")
    assert listed.manifest_digest == info["host"]["digest"]
    assert listed.index_digest == info["list"]["digest"]
    raw = (tmp_path / "docker-layout/blobs/sha256" / info["host"]["digest"][7:]).read_bytes()
    img = oci.OciImage.open_ref(a, "list")
    assert img.manifest_raw == raw
    assert img.is_container_image and img.architecture == HOST
    stored = oci.open_index(a, info["list"]["digest"])
    assert json.loads(stored.raw)["mediaType"] == DOCKER_MANIFEST_LIST_MEDIA_TYPE
    assert oci.resolve_index(a, info["list"]["digest"])[0] == info["host"]["digest"]
    other = oci.pull(a, f"{ref}:list", platform=f"linux/{OTHER}")
    assert other.manifest_digest == info["other"]["digest"]
    assert oci.oci_fsck(a).ok
    assert [i.architecture for i in oci.list_images(a)] == [HOST, HOST]
    same = oci.pull(b, f"oci:{layout}:v1", "x")
    assert tagged.image_id == same.image_id
    assert tagged.layers == same.layers


def test_a_tag_naming_one_manifest_is_the_image(
    tmp_path: Path, repos: tuple[Repository, Repository], caplog: pytest.LogCaptureFixture
) -> None:
    """Its descriptor says another platform: no platform selection, a warning."""
    w = LayoutWriter(tmp_path / "l")
    arm = w.image([w.layer(TARS[0])], architecture=OTHER)
    w.write_index([w.tagged(arm, "t")])
    with caplog.at_level(logging.WARNING, "composefs.oci"):
        assert oci.pull(repos[0], f"oci:{tmp_path / 'l'}:t", "x").manifest_digest == arm["digest"]
        explicit = oci.pull(repos[0], f"oci:{tmp_path / 'l'}:t", platform="linux/riscv64")
        assert explicit.manifest_digest == arm["digest"]
        # without a tag, index.json's entries are the candidates: platforms select among them
        with pytest.raises(ComposefsError) as e:
            oci.pull(repos[0], f"oci:{tmp_path / 'l'}")
        assert caused_by(e.value, oci.NoMatchingPlatform)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"tag 't' of {tmp_path / 'l'} is an image for linux/{OTHER}, not linux/{HOST} (this "
        "host): a single manifest is the image, it is pulled as it is (a platform selects "
        "among the manifests of an index)",
        f"tag 't' of {tmp_path / 'l'} is an image for linux/{OTHER}, not linux/riscv64 (the "
        "platform asked for): a single manifest is the image, it is pulled as it is (a "
        "platform selects among the manifests of an index)",
    ]
    # through the CLI the warning reaches stderr; the pull succeeds
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "composefs.cli",
            "--repo",
            repos[1].path,
            "oci",
            "pull",
            f"oci:{tmp_path / 'l'}:t",
            "x",
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"is an image for linux/{OTHER}, not linux/{HOST} (this host)" in proc.stderr.decode()
    assert proc.stdout.decode().startswith(f"manifest {arm['digest']}\n")


@pytest.mark.parametrize("form", ["oci-archive", "docker-archive", "docker-archive-zstd"])
def test_cancel_stops_the_threads_feeding_the_layers(
    tmp_path: Path, repos: tuple[Repository, Repository], form: str
) -> None:
    """``pull(cancel=...)`` (what Ctrl-C sets) stops the import; the threads streaming the
    layers out of the archive (spliced or decompressed) end with it; nothing is tagged."""
    import threading

    big = [TarBuilder().dir("usr").file(f"usr/{i}", os.urandom(6 << 20)).build() for i in range(3)]
    archive = tmp_path / "big.tar"
    if form == "oci-archive":
        w = LayoutWriter(tmp_path / "layout")
        w.write_index([w.tagged(w.image([w.layer(t, "none") for t in big]), "t")])
        oci_archive(tmp_path / "layout", archive)
        ref = f"oci-archive:{archive}:t"
    else:
        compression = "zstd" if form.endswith("zstd") else "none"
        docker_archive(archive, [DockerImage(big, compression=compression)])
        ref = f"docker-archive:{archive}"
    before = {t.ident for t in threading.enumerate()}
    repos[0].objects_fd()  # opened once, kept by the repository
    fds = set(os.listdir("/proc/self/fd"))
    cancel = threading.Event()

    def on_event(event: oci.PullEvent) -> None:
        if event.kind == "progress":
            cancel.set()

    with pytest.raises(pull_module.PullCancelled):
        oci.pull(repos[0], ref, "x", progress=on_event, cancel=cancel, threads=2)
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    for t in leftover:
        t.join(timeout=5)
    assert not [t.name for t in leftover if t.is_alive()]
    extra = set(os.listdir("/proc/self/fd")) - fds
    assert not {os.readlink(f"/proc/self/fd/{fd}") for fd in extra}  # archive and pipes closed
    assert oci.list_refs(repos[0]) == []
    assert repos[0].fsck().ok
