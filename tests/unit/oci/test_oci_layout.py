"""Reading OCI layouts: the layout checks, tag lookup and platform resolution through indexes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from composefs.oci.layout import LayoutError, LayoutSource, NoMatchingPlatform
from composefs.oci.media_types import DOCKER_MANIFEST_LIST_MEDIA_TYPE, INDEX_MEDIA_TYPE
from composefs.oci.platform import host_platform
from composefs.oci.reference import parse_layout_name
from composefs.oci.source import Descriptor
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"


def _layer(w: LayoutWriter, name: str = "usr/x") -> Any:
    return w.layer(TarBuilder().dir("usr").file(name, name.encode() * 30).build(), "gzip")


def _source(path: Path, spec: str = "") -> LayoutSource:
    return LayoutSource(parse_layout_name(f"{path}{spec}"))


def _resolve(path: Path, spec: str = "", platform: str | None = None) -> Any:
    with _source(path, spec) as src:
        return src.resolve(platform)


def _chain(resolved: Any) -> list[str]:
    return [d for d, _ in resolved.indexes]


def test_tags_and_file_order(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    a = w.image([_layer(w, "usr/a")], architecture=HOST)
    b = w.image([_layer(w, "usr/b")], architecture=HOST)
    w.write_index([w.tagged(a, "one"), w.tagged(b, "two"), w.tagged(b, "one")])
    assert _resolve(tmp_path, ":one").digest == a["digest"]
    assert _resolve(tmp_path, ":two").digest == b["digest"]
    assert _resolve(tmp_path).digest == a["digest"]  # no tag: every entry, first match wins
    resolved = _resolve(tmp_path, ":two")
    assert resolved.raw == (tmp_path / "blobs/sha256" / b["digest"][7:]).read_bytes()
    assert resolved.indexes == ()
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path, ":three")
    assert str(e.value.__cause__) == "Tag 'three' not found in image index (tags present: one, two)"
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path, ":")  # the empty tag matches nothing
    assert "Tag '' not found" in str(e.value.__cause__)


def test_empty_index(tmp_path: Path) -> None:
    LayoutWriter(tmp_path).write_index([])
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path)
    assert str(e.value.__cause__) == "Image index contains no manifests"


def test_platform_selection(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    la = _layer(w)
    other = w.image([la], architecture=OTHER)
    host = w.image([la], architecture=HOST, created="2024-02-02T00:00:00Z")
    arm6 = w.image([la], architecture="arm", variant="v6")
    arm7 = w.image([la], architecture="arm", variant="v7")
    arm64 = w.image([la], architecture="arm64", variant="v8")
    index = w.index([other, arm6, arm7, host, arm64])
    w.write_index([w.tagged(index, "latest")])
    r = _resolve(tmp_path, ":latest")
    assert r.digest == host["digest"]
    assert _chain(r) == [index["digest"]]
    assert _resolve(tmp_path, ":latest", f"linux/{OTHER}").digest == other["digest"]
    assert _resolve(tmp_path, ":latest", "linux/arm").digest == arm7["digest"]  # exact first
    assert _resolve(tmp_path, ":latest", "linux/armv7l").digest == arm7["digest"]
    assert _resolve(tmp_path, ":latest", "linux/arm/v6").digest == arm6["digest"]
    assert _resolve(tmp_path, ":latest", "linux/aarch64").digest == arm64["digest"]
    assert _resolve(tmp_path, ":latest", "linux/arm64/v8").digest == arm64["digest"]
    with pytest.raises(NoMatchingPlatform) as e:
        _resolve(tmp_path, ":latest", "linux/riscv64")
    assert str(e.value.__cause__) == (
        f"No manifest found for platform linux/riscv64; available: linux/{OTHER}, "
        f"linux/arm/v6, linux/arm/v7, linux/{HOST}, linux/arm64/v8"
    )
    with pytest.raises(LayoutError, match="Resolving manifest for platform"):
        _resolve(tmp_path, ":latest", "windows/amd64")


def test_older_arm_variant_is_accepted(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    la = _layer(w)
    arm5 = w.image([la], architecture="arm", variant="v5")
    arm6 = w.image([la], architecture="arm", variant="v6")
    w.write_index([w.tagged(w.index([arm5, arm6]), "t")])
    assert _resolve(tmp_path, ":t", "linux/arm/v7").digest == arm6["digest"]


def test_entries_without_platform_use_the_config(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    la = _layer(w)
    other = w.image([la], architecture=OTHER, platform_in_descriptor=False)
    host = w.image(
        [la], architecture="x86_64" if HOST == "amd64" else HOST, platform_in_descriptor=False
    )
    w.write_index([w.tagged(other, "t"), w.tagged(host, "t")])
    assert _resolve(tmp_path, ":t").digest == host["digest"]
    with pytest.raises(NoMatchingPlatform) as e:
        _resolve(tmp_path, ":t", "linux/riscv64")
    assert str(e.value.__cause__).endswith(f"available: linux/{OTHER}, linux/{HOST}")


def test_artifact_without_platform_never_matches(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    config = w.blob(b"{}", "application/vnd.example.config")
    manifest = w.json_blob(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [],
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    w.write_index([manifest])
    with pytest.raises(NoMatchingPlatform) as e:
        _resolve(tmp_path)
    assert str(e.value.__cause__).endswith("available: (no platform info)")


def test_nested_indexes_any_depth(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    la = _layer(w)
    host = w.image([la], architecture=HOST)
    inner = w.index([w.image([la], architecture=OTHER), host])
    middle = w.index([inner])
    outer = w.index([middle])  # skopeo --all writes a single entry pointing at an index
    w.write_index([w.tagged(outer, "deep")])
    r = _resolve(tmp_path, ":deep")
    assert r.digest == host["digest"]
    assert _chain(r) == [outer["digest"], middle["digest"], inner["digest"]]
    assert r.indexes[0][1] == (tmp_path / "blobs/sha256" / outer["digest"][7:]).read_bytes()


def test_digest_references(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = LayoutWriter(tmp_path)
    la = _layer(w)
    host = w.image([la], architecture=HOST)
    other = w.image([la], architecture=OTHER)
    index = w.index([other, host])
    unlisted = w.image([_layer(w, "usr/u")], architecture=OTHER, platform_in_descriptor=False)
    w.write_index([w.tagged(index, "t")])
    # a manifest listed in an index: taken directly (the index was not walked)
    r = _resolve(tmp_path, f"@{other['digest']}")
    assert r.digest == other["digest"] and r.indexes == ()
    caplog.clear()
    # an explicit manifest digest is taken as it is, whatever the platform (skopeo's rule: a
    # platform selects among the manifests of an index); a platform that differs is a warning
    with caplog.at_level(logging.WARNING, "composefs.oci"):
        r = _resolve(tmp_path, f"@{unlisted['digest']}")
        assert r.digest == unlisted["digest"] and r.indexes == ()
        r = _resolve(tmp_path, f"@{unlisted['digest']}", f"linux/{HOST}")
        assert r.digest == unlisted["digest"] and r.indexes == ()
        assert (
            _resolve(tmp_path, f"@{unlisted['digest']}", f"linux/{OTHER}").digest
            == (unlisted["digest"])
        )
    assert [(r.name, r.levelname) for r in caplog.records] == [("composefs.oci", "WARNING")] * 2
    assert (
        caplog.records[0]
        .getMessage()
        .startswith(
            f"{unlisted['digest']} of {tmp_path} is an image for linux/{OTHER}, not linux/{HOST} "
            "(this host): a single manifest is the image"
        )
    )
    assert f"not linux/{HOST} (the platform asked for)" in caplog.records[1].getMessage()
    # an index digest is resolved for the platform
    r = _resolve(tmp_path, f"@{index['digest']}")
    assert r.digest == host["digest"] and _chain(r) == [index["digest"]]
    assert _resolve(tmp_path, f"@{index['digest']}", f"linux/{OTHER}").digest == other["digest"]
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path, "@sha256:" + "0" * 64)
    assert "not found" in str(e.value.__cause__)


def test_media_types(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    host = w.image([_layer(w)], architecture=HOST)
    # a descriptor calling a manifest an index (OCI or Docker) is an error, not an empty index
    for index_type in (INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE):
        w.write_index([{**host, "mediaType": index_type}])
        with pytest.raises(LayoutError) as e:
            _resolve(tmp_path)
        assert str(e.value.__cause__) == (
            f"index {host['digest']} is not an image index (its mediaType is "
            "application/vnd.oci.image.manifest.v1+json)"
        )
    w.write_index([{**host, "mediaType": "application/vnd.example+json"}])
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path)
    assert str(e.value.__cause__) == "Unexpected media type application/vnd.example+json"
    w.write_index([{k: v for k, v in host.items() if k != "mediaType"}])
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path)
    assert "has no mediaType" in str(e.value.__cause__)


def test_layout_checks(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="Opening OCI layout directory") as e:
        _source(tmp_path / "missing")
    assert isinstance(e.value.__cause__, FileNotFoundError)
    tmp_path.joinpath("blobs/sha256").mkdir(parents=True)
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        _source(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.1.0"}')
    with pytest.raises(LayoutError, match=r"unsupported OCI layout version '1\.1\.0'"):
        _source(tmp_path)
    (tmp_path / "oci-layout").write_text("not json")
    with pytest.raises(LayoutError, match="oci-layout is not valid JSON"):
        _source(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path)
    assert str(e.value.__cause__) == "Cannot find the Image Index (index.json)"
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path)
    assert str(e.value.__cause__) == "index.json is not a JSON object"
    os.rmdir(tmp_path / "blobs/sha256")
    with pytest.raises(LayoutError, match="blobs/sha256"):
        _source(tmp_path)


def test_blobs_are_verified(tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path)
    desc = Descriptor.from_json(w.blob(b'{"a": 1}', "application/json"))
    with _source(tmp_path) as src:
        assert src.read_blob(desc) == b'{"a": 1}'
        with src.open_blob(desc) as fd:
            assert os.read(fd, 100) == b'{"a": 1}'
    path = tmp_path / "blobs/sha256" / desc.digest[7:]
    path.write_bytes(b'{"a": 2}')
    with _source(tmp_path) as src, pytest.raises(LayoutError) as e:
        src.read_blob(desc)
    assert str(e.value.__cause__).startswith(f"Expected digest {desc.digest} but found sha256:")
    path.write_bytes(b'{"a": 22}')
    with _source(tmp_path) as src, pytest.raises(LayoutError) as e:
        src.read_blob(desc)
    assert str(e.value.__cause__) == "Expected size 8 but found 9"
    bad = Descriptor("application/json", "sha512:" + "0" * 128, 1)
    with _source(tmp_path) as src, pytest.raises(LayoutError) as e:
        src.read_blob(bad)
    assert "Expected digest algorithm sha256" in str(e.value.__cause__)


def test_writer_is_deterministic(tmp_path: Path) -> None:
    def make(path: Path) -> dict[str, bytes]:
        w = LayoutWriter(path)
        layers = [
            w.layer(TarBuilder().dir("usr").file("usr/f", b"x" * 100).build(), c)
            for c in ("gzip", "zstd", "none")
        ]
        w.write_index([w.tagged(w.image(layers), "t")])
        return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}

    first, second = make(tmp_path / "a"), make(tmp_path / "b")
    assert first == second
    assert json.loads(first["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
