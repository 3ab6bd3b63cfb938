"""Archives and Docker-typed images against cfsctl 0.9.4.

cfsctl reads an uncompressed ``oci-archive:`` directly (ocidir's ``OciArchive``): both tools
give the same summary, layer streams, config stream and composefs image for every image of the
interop layout. A Docker schema 2 image stored by us (from a ``docker-archive:`` or a v2s2
layout) is read by cfsctl as an artifact (it knows only the OCI config type), yet its
``compute-id``, ``dump`` and ``inspect`` agree with ours: that difference is documented in
``docs/differences.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composefs.testing import DockerImage, TarBuilder, docker_archive, oci_archive
from support import run, tool
from support.oci import build_layout

pytestmark = pytest.mark.interop


def ours(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "composefs.cli", *args, check=check)


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("archive")
    build_layout(base / "layout")
    oci_archive(base / "layout", base / "image.tar")
    return base / "image.tar"


def _links(repo: Path, sub: str) -> dict[str, str]:
    return {p.name: os.readlink(p) for p in (repo / sub).iterdir() if p.is_symlink()}


@pytest.mark.parametrize("tag", ["multi", "index", "noplatform", "nested"])
def test_oci_archive_matches_cfsctl(cfsctl: str, archive: Path, tmp_path: Path, tag: str) -> None:
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    run(cfsctl, "--repo", a, "init", "--insecure", a)
    ours("--repo", b, "init", "--insecure")
    ref = f"oci-archive:{archive}:{tag}"
    theirs_out = run(cfsctl, "--repo", a, "oci", "pull", ref).stdout
    assert ours("--repo", b, "oci", "pull", ref).stdout == theirs_out
    lines = dict(line.split(None, 1) for line in theirs_out.decode().splitlines())
    layer_streams = {k: v for k, v in _links(a, "streams").items() if k.startswith("oci-layer-")}
    assert layer_streams
    assert layer_streams == {
        k: v for k, v in _links(b, "streams").items() if k.startswith("oci-layer-")
    }
    config = f"oci-config-{lines['config']}"
    assert _links(a, "streams")[config] == _links(b, "streams")[config]
    assert _links(a, "images") == _links(b, "images")
    assert _links(a, "streams/refs/oci") == _links(b, "streams/refs/oci")
    for repo in (a, b):
        assert run(cfsctl, "--repo", repo, "oci", "fsck").returncode == 0
        assert ours("--repo", repo, "oci", "fsck").returncode == 0


def test_docker_typed_images_in_cfsctl(cfsctl: str, tmp_path: Path) -> None:
    """What cfsctl makes of a stored Docker schema 2 image: an artifact to ``oci images``, the
    same composefs image to ``compute-id`` and ``dump``, the same documents to ``inspect``."""
    t = TarBuilder().dir("usr").dir("usr/bin")
    t.file("usr/bin/tool", b"#!/bin/sh\n" * 200, mode=0o755)
    archive = tmp_path / "docker.tar"
    docker_archive(archive, [DockerImage([t.build()], repo_tags=["example.com/tool:1"])])
    repo = tmp_path / "repo"
    ours("--repo", repo, "init", "--insecure")
    ours("--repo", repo, "oci", "pull", f"docker-archive:{archive}", "tool")
    image_id = ours("--repo", repo, "oci", "compute-id", "tool").stdout
    assert run(cfsctl, "--repo", repo, "oci", "compute-id", "tool").stdout == image_id
    assert (
        run(cfsctl, "--repo", repo, "oci", "dump", "tool").stdout
        == ours("--repo", repo, "oci", "dump", "tool").stdout
    )
    theirs = json.loads(run(cfsctl, "--repo", repo, "oci", "inspect", "tool").stdout)
    mine = json.loads(ours("--repo", repo, "oci", "inspect", "tool").stdout)
    assert theirs["manifest"] == mine["manifest"] and theirs["config"] == mine["config"]
    assert mine["composefs_erofs"] == image_id.decode().strip()
    listed = json.loads(run(cfsctl, "--repo", repo, "oci", "images", "--json").stdout)
    assert [(i["name"], i["is_container"]) for i in listed["images"]] == [("tool", False)]
    listed = json.loads(ours("--repo", repo, "oci", "images", "--json").stdout)
    assert [(i["name"], i["is_container"]) for i in listed["images"]] == [("tool", True)]
    # layers named by their diff_ids (a docker-archive's): cfsctl's artifact check passes too
    assert run(cfsctl, "--repo", repo, "oci", "fsck").returncode == 0
