"""The exception classes of the Python API (``composefs.errors``): a caller catches what went
wrong (a missing tag, a digest mismatch, a bad reference, ...) whatever layer raised it and
however deep it was wrapped, without walking ``__cause__``."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import composefs
from composefs import errors, oci
from composefs.errors import (
    AuthenticationError,
    ComposefsError,
    DigestMismatchError,
    FilesystemError,
    ImageNotFoundError,
    ImageReferenceError,
    SourceError,
    TagNotFoundError,
    TransportError,
    categories,
    with_categories,
    wrap,
)
from composefs.oci import filesystem, layer
from composefs.oci.platform import host_platform
from composefs.oci.pull import PullError
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with Repository.init(tmp_path / "repo", insecure=True) as r:
        yield r


def _layout(path: Path, *, compression: str = "none") -> dict[str, Any]:
    w = LayoutWriter(path)
    tar = TarBuilder().dir("usr").file("usr/f", b"f" * 4000).build()
    blob = w.layer(tar, compression)
    manifest = w.image([blob], architecture=HOST)
    w.write_index([w.tagged(manifest, "t"), w.tagged(manifest, "other")])
    return {"writer": w, "manifest": manifest, "layer": blob, "tar": tar}


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.removeprefix("sha256:")


def _corrupt(path: Path) -> None:
    """Same size, other bytes: only the digest tells."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def _config_digest(layout: Path, manifest: dict[str, Any]) -> str:
    import json

    doc = json.loads(_blob(layout, manifest["digest"]).read_bytes())
    digest: str = doc["config"]["digest"]
    return digest


def test_the_classes_are_exported_at_the_top() -> None:
    for name in (
        "ImageReferenceError",
        "ImageNotFoundError",
        "TagNotFoundError",
        "DigestMismatchError",
        "SourceError",
        "TransportError",
        "AuthenticationError",
        "FilesystemError",
    ):
        cls = getattr(composefs, name)
        assert cls is getattr(errors, name) and issubclass(cls, ComposefsError)
    assert issubclass(TagNotFoundError, ImageNotFoundError)
    assert issubclass(AuthenticationError, TransportError)
    assert issubclass(TransportError, SourceError)
    # the two that are also ValueErrors (what callers used to catch)
    assert issubclass(ImageReferenceError, ValueError)
    assert issubclass(FilesystemError, ValueError)


# -- ImageReferenceError -----------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["nonsense", "ftp:/x", "docker:no-slashes", "oci:"])
def test_image_reference_error(repo: Repository, ref: str) -> None:
    with pytest.raises(ImageReferenceError) as e:
        oci.pull(repo, ref)
    assert isinstance(e.value, PullError)  # what the pull says, with the parser's cause
    assert str(e.value) == "Parsing image reference transport"
    assert isinstance(e.value.__cause__, ImageReferenceError)


# -- ImageNotFoundError / TagNotFoundError -----------------------------------------------------


def test_tag_not_found_in_a_layout(repo: Repository, tmp_path: Path) -> None:
    _layout(tmp_path / "l")
    with pytest.raises(TagNotFoundError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:nope")
    assert isinstance(e.value, PullError) and isinstance(e.value, SourceError)
    assert isinstance(e.value, ImageNotFoundError)
    chain = errors.error_chain(e.value)
    assert chain[-1] == "Tag 'nope' not found in image index (tags present: t, other)"


def test_tag_not_found_in_the_repository(repo: Repository) -> None:
    with pytest.raises(TagNotFoundError):
        oci.resolve_ref(repo, "nope")
    with pytest.raises(TagNotFoundError):
        oci.OciImage.open_ref(repo, "nope")
    with pytest.raises(TagNotFoundError):
        filesystem.compute_id(repo, "nope")


def test_image_not_found(repo: Repository, tmp_path: Path) -> None:
    missing = "sha256:" + "0" * 64
    with pytest.raises(ImageNotFoundError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'no-such-layout'}")
    assert not isinstance(e.value, TagNotFoundError)
    with pytest.raises(ImageNotFoundError):
        oci.OciImage.open(repo, missing)
    with pytest.raises(ImageNotFoundError):
        filesystem.compute_id(repo, f"@{missing}")
    with pytest.raises(ImageNotFoundError):
        oci.open_index(repo, missing)
    _layout(tmp_path / "l")
    with pytest.raises(ImageNotFoundError):  # a digest the layout does not hold
        oci.pull(repo, f"oci:{tmp_path / 'l'}@{missing}")


# -- DigestMismatchError -----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_layer_digest_mismatch(repo: Repository, tmp_path: Path, compression: str) -> None:
    lay = _layout(tmp_path / "l", compression=compression)
    path = _blob(tmp_path / "l", lay["layer"].descriptor["digest"])
    if compression == "gzip":  # a valid gzip of the same tar, of the same size
        os.chmod(path, 0o644)
        path.write_bytes(gzip.compress(lay["tar"], compresslevel=6, mtime=1))
    else:
        _corrupt(path)
    with pytest.raises(DigestMismatchError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:t")
    assert isinstance(e.value, PullError)
    assert oci.list_refs(repo) == []


def test_layer_import_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    tar = TarBuilder().dir("usr").build()
    with pytest.raises(DigestMismatchError):
        layer.import_layer(repo, _write(tmp_path / "t", tar), "sha256:" + "1" * 64)
    good = "sha256:" + hashlib.sha256(tar).hexdigest()
    with pytest.raises(DigestMismatchError):
        layer.import_layer(repo, _write(tmp_path / "t", tar), good, digest="sha256:" + "2" * 64)


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_config_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    lay = _layout(tmp_path / "l")
    _corrupt(_blob(tmp_path / "l", _config_digest(tmp_path / "l", lay["manifest"])))
    with pytest.raises(DigestMismatchError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:t")
    assert "Expected digest sha256:" in errors.error_chain(e.value)[-1]


def test_manifest_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    lay = _layout(tmp_path / "l")
    _corrupt(_blob(tmp_path / "l", lay["manifest"]["digest"]))
    with pytest.raises(DigestMismatchError):
        oci.pull(repo, f"oci:{tmp_path / 'l'}:t")


def test_stored_manifest_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    """A manifest stream that does not hash to its name (read without its verity)."""
    lay = _layout(tmp_path / "l")
    first = oci.pull(repo, f"oci:{tmp_path / 'l'}:t")
    w = lay["writer"]
    other = w.image([lay["layer"]], architecture=HOST, created="2000-01-01T00:00:00Z")
    second = oci.pull(repo, f"oci:{tmp_path / 'l'}@{other['digest']}")
    streams = repo.path + "/streams"
    link = f"{streams}/oci-manifest-{first.manifest_digest}"
    os.unlink(link)
    os.symlink(os.readlink(f"{streams}/oci-manifest-{second.manifest_digest}"), link)
    with pytest.raises(DigestMismatchError, match="Manifest integrity failed"):
        oci.OciImage.open(repo, first.manifest_digest)


def test_artifact_blob_digest_mismatch(repo: Repository, tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "l")
    config = w.blob(b"{}", "application/vnd.oci.empty.v1+json")
    blob = w.blob(b"some artifact payload" * 10, "application/vnd.example.payload")
    manifest = w.json_blob(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example",
            "config": config,
            "layers": [blob],
        },
        "application/vnd.oci.image.manifest.v1+json",
    )
    w.write_index([w.tagged(manifest, "art")])
    _corrupt(_blob(tmp_path / "l", blob["digest"]))
    with pytest.raises(DigestMismatchError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}@{manifest['digest']}")
    assert errors.error_chain(e.value)[-1].startswith("blob digest mismatch: expected sha256:")


def test_object_digest_mismatch(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing object whose fs-verity measurement is not its name (a secure repository on
    a verity filesystem would report it; simulated here)."""
    object_id = repo.ensure_object(b"x" * 5000)
    monkeypatch.setattr(composefs.fsverity, "measure_verity_opt", lambda fd, alg: b"\1" * 64)
    with pytest.raises(DigestMismatchError, match="Verifying existing object integrity"):
        repo.ensure_object(b"x" * 5000)
    assert repo.has_object(object_id)


# -- SourceError, TransportError, AuthenticationError ------------------------------------------


def test_source_error(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "not-a-layout").mkdir()
    with pytest.raises(SourceError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'not-a-layout'}")
    assert not isinstance(e.value, TransportError | ImageNotFoundError)
    assert errors.error_chain(e.value)[-1].endswith(
        "is not an OCI image layout (no oci-layout file)"
    )


@pytest.mark.parametrize("cls", [TransportError, AuthenticationError])
def test_transport_errors_come_through_a_pull(
    repo: Repository, monkeypatch: pytest.MonkeyPatch, cls: type[TransportError]
) -> None:
    """Whatever a source raises keeps its class through the pull's context."""
    pull_module = importlib.import_module("composefs.oci.pull")

    def refuse(ref: Any, platform: str | None) -> Any:
        raise cls("401 Unauthorized" if cls is AuthenticationError else "connection refused")

    monkeypatch.setitem(pull_module.SOURCES, "docker", refuse)
    with pytest.raises(cls) as e:
        oci.pull(repo, "docker://registry.invalid/x:1")
    assert isinstance(e.value, PullError)
    assert str(e.value) == "Unable to pull container image docker://registry.invalid/x:1"


def test_skopeo_missing_names_the_package() -> None:
    from composefs.oci.proxy import ProxyError, ProxyImageSource

    with pytest.raises(ProxyError) as e:
        ProxyImageSource("docker://x/y", skopeo="/nonexistent/skopeo")
    assert isinstance(e.value, SourceError)
    assert "install the skopeo package (apt install skopeo / dnf install skopeo)" in str(e.value)


# -- FilesystemError ---------------------------------------------------------------------------


def test_filesystem_error(repo: Repository, tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "l")
    bad = w.layer(TarBuilder().dir("usr").file("usr/" + "n" * 300, b"x").build(), "none")
    w.write_index([w.tagged(w.image([bad], architecture=HOST), "bad")])
    with pytest.raises(FilesystemError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:bad")
    assert isinstance(e.value, PullError) and isinstance(e.value, ValueError)
    from composefs import fs

    with pytest.raises(FilesystemError):
        fs.read_directory(tmp_path / "no-such-directory")


# -- the mechanism ------------------------------------------------------------------------------


class Outer(ComposefsError):
    """A layer's own error class (module level: pickled by name)."""


def test_wrap_keeps_every_category_and_pickles() -> None:
    inner = with_categories(ComposefsError, TagNotFoundError, SourceError)("no tag")
    assert set(categories(inner)) == {TagNotFoundError, SourceError}
    try:
        try:
            raise inner
        except ComposefsError as e:
            raise wrap(Outer, "outer", e) from e
    except TagNotFoundError as e:
        outer = e
    assert isinstance(outer, Outer) and isinstance(outer, SourceError)
    assert type(outer).__name__ == "Outer" and str(outer) == "outer"
    # one class per combination
    assert type(wrap(Outer, "again", inner)) is type(outer)
    # the most specific only, across the chain
    chained = ComposefsError("top")
    chained.__cause__ = outer
    assert set(categories(chained)) == {TagNotFoundError, SourceError}
    copy = pickle.loads(pickle.dumps(outer))
    assert type(copy) is type(outer) and copy.args == ("outer",)
    # nothing to add: the class itself
    assert type(wrap(Outer, "plain", ValueError("x"))) is Outer


def test_repository_init_in_a_with_block(tmp_path: Path) -> None:
    with Repository.init(tmp_path / "r", insecure=True) as repo:
        assert repo.fd >= 0
    with pytest.raises(errors.RepositoryError, match="closed"):
        repo.fd  # noqa: B018
    result = Repository.init(tmp_path / "r", insecure=True)
    with contextlib.closing(result.repository):
        assert result.created is False
        again, created = result  # still a pair
        assert again is result.repository and created is False
