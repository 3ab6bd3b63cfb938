"""Every transport that reference parsing accepts has an entry in pull's transport table; the
``oci:``, ``oci-archive:`` and ``docker-archive:`` ones are read natively."""

from __future__ import annotations

from pathlib import Path

from composefs.oci.archive import DockerArchiveSource
from composefs.oci.layout import LayoutSource
from composefs.oci.pull import SOURCES, open_source
from composefs.oci.reference import PROXY_TRANSPORTS, TRANSPORTS, parse_reference
from composefs.testing import DockerImage, LayoutWriter, TarBuilder, docker_archive, oci_archive


def test_every_transport_has_a_source() -> None:
    assert set(TRANSPORTS.values()) == set(SOURCES)
    for prefix in TRANSPORTS:
        text = f"{prefix}://x" if prefix == "docker" else f"{prefix}:x"
        assert parse_reference(text).transport in SOURCES


def test_layouts_and_archives_are_native_the_rest_proxied(tmp_path: Path) -> None:
    assert set(SOURCES) - PROXY_TRANSPORTS == {"oci", "oci-archive", "docker-archive"}
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
