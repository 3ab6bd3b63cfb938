"""Every transport that reference parsing accepts has an entry in pull's transport table."""

from __future__ import annotations

from pathlib import Path

from composefs.oci.layout import LayoutSource
from composefs.oci.pull import SOURCES, open_source
from composefs.oci.reference import PROXY_TRANSPORTS, TRANSPORTS, parse_reference
from composefs.oci.registry import RegistryImageSource
from composefs.testing import LayoutWriter


def test_every_transport_has_a_source() -> None:
    assert set(TRANSPORTS.values()) == set(SOURCES)
    for prefix in TRANSPORTS:
        text = f"{prefix}://x" if prefix == "docker" else f"{prefix}:x"
        assert parse_reference(text).transport in SOURCES


def test_oci_and_docker_are_native_the_rest_proxied(tmp_path: Path) -> None:
    assert set(SOURCES) - PROXY_TRANSPORTS == {"oci"}
    w = LayoutWriter(tmp_path)
    w.write_index([])
    source = open_source(parse_reference(f"oci:{tmp_path}"))
    try:
        assert isinstance(source, LayoutSource)
    finally:
        source.close()
    # nothing is sent before the first request: opening needs no network
    registry = open_source(parse_reference("docker://example.com/a/b:1"))
    try:
        assert isinstance(registry, RegistryImageSource)
        assert str(registry.ref) == "example.com/a/b:1"
    finally:
        registry.close()
    for transport, factory in SOURCES.items():
        native = {"oci": "_open_layout", "docker": "_open_registry"}
        assert factory.__name__ == native.get(transport, "_open_proxy")
