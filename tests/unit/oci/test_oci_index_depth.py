"""The index nesting limit (``media_types.MAX_INDEX_DEPTH``) is the same for a pull from a
layout and for re-resolving the indexes stored by a pull: that many nested indexes work, one
more is an error."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from composefs import oci
from composefs.oci.image import ImageError
from composefs.oci.index import resolve_index, write_index
from composefs.oci.layout import LayoutError, LayoutSource
from composefs.oci.media_types import INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, MAX_INDEX_DEPTH
from composefs.oci.platform import host_platform
from composefs.oci.reference import parse_layout_name
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture


def _layout(path: Path, depth: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A layout tagged ``t``: ``depth`` indexes nested in one another around one manifest."""
    w = LayoutWriter(path)
    manifest = w.image([w.layer(TarBuilder().dir("usr").build(), "none")], architecture=HOST)
    chain = [w.index([manifest])]
    for _ in range(depth - 1):
        chain.insert(0, w.index([chain[0]]))
    w.write_index([w.tagged(chain[0], "t")])
    return manifest, chain


def _resolve(path: Path) -> Any:
    source = LayoutSource(parse_layout_name(f"{path}:t"))
    try:
        return source.resolve(None)
    finally:
        source.close()


def test_constant() -> None:
    assert MAX_INDEX_DEPTH == 16


def test_layout_boundary(tmp_path: Path) -> None:
    manifest, chain = _layout(tmp_path / "ok", MAX_INDEX_DEPTH)
    resolved = _resolve(tmp_path / "ok")
    assert resolved.digest == manifest["digest"]
    assert [d for d, _ in resolved.indexes] == [c["digest"] for c in chain]
    _layout(tmp_path / "deep", MAX_INDEX_DEPTH + 1)
    with pytest.raises(LayoutError) as e:
        _resolve(tmp_path / "deep")
    assert "nests too deep" in str(e.value.__cause__)


def _index(entry: dict[str, Any]) -> tuple[str, bytes, dict[str, Any]]:
    raw = json.dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]})
    data = raw.encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return digest, data, {"mediaType": INDEX_MEDIA_TYPE, "digest": digest, "size": len(data)}


@pytest.mark.parametrize("depth", [MAX_INDEX_DEPTH, MAX_INDEX_DEPTH + 1])
def test_stored_index_boundary(tmp_path: Path, depth: int) -> None:
    manifest, _ = _layout(tmp_path / "layout", 1)
    repo, _ = Repository.init(tmp_path / "repo", "sha256", insecure=True)
    with repo:
        result = oci.pull(repo, f"oci:{tmp_path / 'layout'}:t")
        assert result.manifest_digest == manifest["digest"]
        entry: dict[str, Any] = {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": manifest["platform"],
        }
        chain: list[tuple[str, bytes]] = []
        for _ in range(depth):
            digest, raw, entry = _index(entry)
            chain.insert(0, (digest, raw))
        verity = result.stored_manifest_verity
        assert verity is not None
        write_index(repo, chain, manifest["digest"], verity)
        if depth <= MAX_INDEX_DEPTH:
            assert resolve_index(repo, chain[0][0]) == (manifest["digest"], verity)
        else:
            with pytest.raises(ImageError, match="nests too deep"):
                resolve_index(repo, chain[0][0])
