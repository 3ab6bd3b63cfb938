"""Comparing repositories made by two tools (``oci copy``: tests/interop and tests/integration)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from composefs import splitstream
from composefs.fsverity import Algorithm
from composefs.object_ids import object_pathname


def repository_files(repo: Path, source: Path | None = None) -> dict[str, tuple[str, bool]]:
    """Every file and symlink of a repository but its manifest streams: content (a file's
    sha256, a symlink's target) and whether the file is the same inode as a file of
    ``source`` (a hard link). The manifest streams are compared by :func:`manifest_streams`
    (cfsctl writes their refs in a hash map's order)."""
    inodes = set()
    if source is not None:
        inodes = {(p.stat().st_dev, p.stat().st_ino) for p in source.rglob("*") if p.is_file()}
    out: dict[str, tuple[str, bool]] = {}
    manifests = set()
    for link in (repo / "streams").glob("oci-manifest-*"):
        manifests.add(os.path.normpath(repo / "streams" / os.readlink(link)))
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_symlink():
            if not rel.startswith("streams/oci-manifest-"):
                out[rel] = ("-> " + os.readlink(path), False)
        elif path.is_file() and os.path.normpath(path) not in manifests:
            st = path.stat()
            linked = (st.st_dev, st.st_ino) in inodes
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), linked)
    return out


def manifest_streams(repo: Path, algorithm: Algorithm) -> dict[str, tuple[bytes, dict[str, bytes]]]:
    """Each manifest stream's payload and named refs."""
    out = {}
    for link in sorted((repo / "streams").glob("oci-manifest-*")):
        stream = splitstream.parse(link.resolve().read_bytes(), algorithm)
        payload = b"".join(
            (link.parents[1] / "objects" / object_pathname(c[0])).read_bytes()
            if isinstance(c, tuple)
            else c
            for c in stream.iter_chunks()
        )
        out[link.name] = (payload, stream.named_ref_ids())
    return out


def same_repositories(a: Path, b: Path, algorithm: Algorithm, source: Path | None = None) -> None:
    assert repository_files(a, source) == repository_files(b, source)
    assert manifest_streams(a, algorithm) == manifest_streams(b, algorithm)
