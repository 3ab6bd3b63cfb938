"""OCI JSON documents (``composefs.oci.documents``): any JSON value, and mutated bytes of real
manifests, indexes and configs, end in a typed result or a ``DocumentError`` — never another
exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from composefs.oci import documents
from composefs.oci.documents import DocumentError
from fuzz.conftest import FUZZ, bounded
from support.mutations import seeded

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64
MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 2},
    "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 10}
    ],
    "annotations": {"a": "b"},
}
INDEX = {
    "schemaVersion": 2,
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": D1,
            "size": 3,
            "platform": {"architecture": "amd64", "os": "linux", "os.features": ["x"]},
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }
    ],
}
CONFIG = {"rootfs": {"type": "layers", "diff_ids": [D1, D2]}, "architecture": "amd64"}
SEEDS = [json.dumps(d).encode() for d in (MANIFEST, INDEX, CONFIG)]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "schemaVersion",
                    "mediaType",
                    "config",
                    "layers",
                    "manifests",
                    "digest",
                    "size",
                    "platform",
                    "annotations",
                    "rootfs",
                    "diff_ids",
                    "architecture",
                    "os",
                    "subject",
                    "urls",
                    "variant",
                    "os.features",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def _all_parsers(doc: Any) -> None:
    for parse in (
        lambda: documents.parse_manifest(doc, "manifest"),
        lambda: documents.parse_index(doc, "index"),
        lambda: documents.parse_index(doc, "index.json", check_version=False),
        lambda: documents.config_diff_ids(doc, "config"),
        lambda: documents.parse_descriptor(doc, "descriptor"),
    ):
        try:
            parse()
        except DocumentError as e:
            assert str(e)


@FUZZ
@given(doc=json_values)
def test_any_json_value(doc: Any) -> None:
    if isinstance(doc, dict):
        _all_parsers(doc)
    with contextlib.suppress(DocumentError):
        documents.parse_descriptor(doc, "descriptor")


@FUZZ
@given(raw=seeded(SEEDS, max_ops=6))
def test_mutated_documents(raw: bytes) -> None:
    with bounded():
        try:
            doc = documents.parse_json_object(raw, "document")
        except DocumentError:
            return
        _all_parsers(doc)


def test_deep_nesting() -> None:
    for raw in (b"[" * 100_000, b'{"a":' * 100_000):
        try:
            documents.parse_json(raw, "document")
        except DocumentError as e:
            assert "nested too deeply" in str(e) or "not valid JSON" in str(e)
