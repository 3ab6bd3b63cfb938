"""Every transport that reference parsing accepts has an entry in pull's transport table; the
``oci:``, ``oci-archive:``, ``docker-archive:`` and ``docker://`` ones are read natively."""

from __future__ import annotations

from pathlib import Path

from composefs.oci.archive import DockerArchiveSource
from composefs.oci.layout import LayoutSource
from composefs.oci.pull import SOURCES, open_source
from composefs.oci.reference import (
    NATIVE_TRANSPORTS,
    PROXY_TRANSPORTS,
    TRANSPORTS,
    parse_reference,
)
from composefs.oci.registry import RegistryImageSource
from composefs.testing import DockerImage, LayoutWriter, TarBuilder, docker_archive, oci_archive


def test_every_transport_has_a_source() -> None:
    assert set(TRANSPORTS.values()) == set(SOURCES)
    for prefix in TRANSPORTS:
        text = f"{prefix}://x" if prefix == "docker" else f"{prefix}:x"
        assert parse_reference(text).transport in SOURCES


def test_layouts_archives_and_docker_are_native_the_rest_proxied(tmp_path: Path) -> None:
    assert set(SOURCES) - PROXY_TRANSPORTS == NATIVE_TRANSPORTS
    assert {"oci", "oci-archive", "docker-archive", "docker"} == NATIVE_TRANSPORTS
    w = LayoutWriter(tmp_path / "layout")
    w.write_index([])
    oci_archive(tmp_path / "layout", tmp_path / "oci.tar")
    docker_archive(tmp_path / "docker.tar", [DockerImage([TarBuilder().dir("usr").build()])])
    for ref, cls in (
        (f"oci:{tmp_path / 'layout'}", LayoutSource),
        (f"oci-archive:{tmp_path / 'oci.tar'}", LayoutSource),
        (f"docker-archive:{tmp_path / 'docker.tar'}:@0", DockerArchiveSource),
    ):
        source = open_source(parse_reference(ref))
        try:
            assert isinstance(source, cls)
        finally:
            source.close()
    # nothing is sent before the first request: opening needs no network
    registry = open_source(parse_reference("docker://example.com/a/b:1"))
    try:
        assert isinstance(registry, RegistryImageSource)
        assert str(registry.ref) == "example.com/a/b:1"
    finally:
        registry.close()
    native = {
        "oci": "_open_layout",
        "docker": "_open_registry",
        "oci-archive": "_open_oci_archive",
        "docker-archive": "_open_docker_archive",
    }
    for transport, factory in SOURCES.items():
        assert factory.__name__ == native.get(transport, "_open_proxy")
