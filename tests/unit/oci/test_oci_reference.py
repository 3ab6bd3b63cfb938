"""Image references: transports, ``oci:PATH[:TAG]`` / ``@digest`` splitting, repository refs."""

from __future__ import annotations

import pytest

from composefs.oci.reference import (
    ImageReferenceError,
    LayoutReference,
    RepoReference,
    parse_digest,
    parse_layout_name,
    parse_reference,
    parse_repo_reference,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "transport", "name", "skopeo"),
    [
        ("oci:/x:latest", "oci", "/x:latest", "oci:/x:latest"),
        ("docker://quay.io/a/b:1", "docker", "quay.io/a/b:1", "docker://quay.io/a/b:1"),
        ("registry:quay.io/a/b", "docker", "quay.io/a/b", "docker://quay.io/a/b"),
        ("oci-archive:/a.tar:t", "oci-archive", "/a.tar:t", "oci-archive:/a.tar:t"),
        ("docker-archive:/a.tar", "docker-archive", "/a.tar", "docker-archive:/a.tar"),
        ("containers-storage:localhost/x", "containers-storage", "localhost/x", None),
        ("dir:/some/dir", "dir", "/some/dir", "dir:/some/dir"),
        ("docker-daemon:busybox:latest", "docker-daemon", "busybox:latest", None),
    ],
)
def test_transports(text: str, transport: str, name: str, skopeo: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.name, str(ref)) == (transport, name, text)
    assert ref.uses_proxy == (transport not in ("oci", "oci-archive", "docker-archive"))
    assert ref.for_skopeo() == (skopeo or text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("busybox", "Missing ':' in busybox"),
        ("ftp:/x", "Invalid transport: ftp"),
        ("docker:quay.io/x", "Missing // in docker:// in docker:quay.io/x"),
        ("oci:", "Invalid empty name in oci:"),
        ("docker://", "Invalid empty name in docker://"),
    ],
)
def test_bad_references(text: str, message: str) -> None:
    with pytest.raises(ImageReferenceError, match=f"^{message}"):
        parse_reference(text)


# composefs-rs 0.9.4's own table for parse_oci_layout_ref, plus our @digest extension
@pytest.mark.parametrize(
    ("name", "path", "tag"),
    [
        ("/path/to/oci", "/path/to/oci", None),
        ("./local/oci", "./local/oci", None),
        ("ocidir", "ocidir", None),
        ("/path/to/oci:latest", "/path/to/oci", "latest"),
        ("/path/to/oci:v1.0.0", "/path/to/oci", "v1.0.0"),
        ("ocidir:latest", "ocidir", "latest"),
        ("C:/path/to/oci", "C:/path/to/oci", None),
        ("C:/path/to/oci:latest", "C:/path/to/oci", "latest"),
        ("/path/to/oci:tag:with:colons", "/path/to/oci:tag:with", "colons"),
        ("/path/to/oci:", "/path/to/oci", ""),
        ("ocidir:", "ocidir", ""),
        ("/path:middle/to/oci", "/path:middle/to/oci", None),
        ("/path:middle/to/oci:tag", "/path:middle/to/oci", "tag"),
    ],
)
def test_layout_names(name: str, path: str, tag: str | None) -> None:
    assert parse_layout_name(name) == LayoutReference(path, tag=tag)


def test_layout_digest_extension() -> None:
    assert parse_layout_name(f"/d@{D}") == LayoutReference("/d", digest=D)
    assert parse_layout_name(f"/a:b/d@{D}") == LayoutReference("/a:b/d", digest=D)
    with pytest.raises(ImageReferenceError, match="Expected digest algorithm sha256"):
        parse_layout_name("/d@sha512:" + "a" * 128)
    with pytest.raises(ImageReferenceError, match="invalid sha256 digest"):
        parse_layout_name("/d@sha256:ABC")
    # a tag after a path with '@' in it is still a tag
    assert parse_layout_name("/x@y:latest") == LayoutReference("/x@y", tag="latest")


def test_digests() -> None:
    assert parse_digest(D) == D
    for bad in ("sha256", "sha256:", ":abc", "md5:00", "sha256:" + "a" * 63):
        with pytest.raises(ImageReferenceError):
            parse_digest(bad)


def test_repo_references() -> None:
    assert parse_repo_reference("myimage:latest") == RepoReference(name="myimage:latest")
    assert parse_repo_reference(f"@{D}") == RepoReference(digest=D)
    assert str(parse_repo_reference(f"@{D}")) == f"@{D}"
    with pytest.raises(ImageReferenceError, match="Invalid OCI digest after '@'"):
        parse_repo_reference("@nonsense")
