"""Referrers (OCI 1.1 artifacts naming a subject manifest): stored as composefs-rs links them,
listed by ``oci referrers`` and ``oci inspect``, collected with their subject by ``gc``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from composefs import oci
from composefs.oci import names
from composefs.oci.platform import host_platform
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import tool

HOST = host_platform().architecture
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _layout(path: Path) -> dict[str, Any]:
    w = LayoutWriter(path)
    t = TarBuilder()
    t.dir("usr")
    t.file("usr/big", b"x" * 9000)
    image = w.image([w.layer(t.build(), "gzip")], architecture=HOST)
    artifacts = []
    for kind in ("signature", "sbom"):
        config = w.blob(b"{}", "application/vnd.oci.empty.v1+json")
        payload = w.blob(f"{kind} payload".encode() * 50, f"application/vnd.example.{kind}")
        artifacts.append(
            w.json_blob(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "artifactType": f"application/vnd.example.{kind}",
                    "config": config,
                    "layers": [payload],
                    "subject": dict(image),
                    "annotations": {"org.example.kind": kind},
                },
                MANIFEST,
            )
        )
    w.write_index([w.tagged(image, "img")] + [w.tagged(a, a["digest"][7:19]) for a in artifacts])
    return {"path": path, "image": image, "artifacts": artifacts}


@pytest.fixture
def repo(tmp_path: Path) -> Any:
    r, _ = Repository.init(tmp_path / "repo", "sha256", insecure=True)
    with r:
        yield r


@pytest.fixture
def pulled(repo: Repository, tmp_path: Path) -> dict[str, Any]:
    layout = _layout(tmp_path / "layout")
    oci.pull(repo, f"oci:{layout['path']}:img", "img")
    subject = layout["image"]["digest"]
    for artifact in layout["artifacts"]:
        oci.pull(repo, f"oci:{layout['path']}@{artifact['digest']}", None)
        names.add_referrer(repo, subject, artifact["digest"])
    return layout


def _cli(repo: Repository, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", "--repo", repo.path, *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_referrers_are_listed(repo: Repository, pulled: dict[str, Any]) -> None:
    subject = pulled["image"]["digest"]
    wanted = sorted(a["digest"] for a in pulled["artifacts"])
    assert [d for d, _ in names.list_referrers(repo, subject)] == wanted
    assert oci.inspect_reply(repo, oci.OciImage.open_ref(repo, "img"))["referrers"] == wanted
    assert oci.list_images(repo)[0].referrer_count == 2
    # both artifacts share the empty config `{}`: each has its own payload
    for artifact in pulled["artifacts"]:
        img = oci.OciImage.open(repo, artifact["digest"])
        assert list(img.layer_refs) == [d["digest"] for d in img.layer_descriptors]
    assert oci.oci_fsck(repo).ok

    proc = _cli(repo, "oci", "referrers", "img", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["subject"] == subject
    assert [r["digest"] for r in doc["referrers"]] == wanted
    kinds = {r["artifact_type"] for r in doc["referrers"]}
    assert kinds == {"application/vnd.example.signature", "application/vnd.example.sbom"}
    assert all(r["media_type"] == MANIFEST and r["size"] > 0 for r in doc["referrers"])

    proc = _cli(repo, "oci", "referrers", f"@{subject}")
    assert proc.returncode == 0, proc.stderr
    assert "ARTIFACT TYPE" in proc.stdout and "application/vnd.example.sbom" in proc.stdout


def test_no_referrers(repo: Repository, tmp_path: Path) -> None:
    layout = _layout(tmp_path / "layout")
    oci.pull(repo, f"oci:{layout['path']}:img", "img")
    proc = _cli(repo, "oci", "referrers", "img")
    assert proc.returncode == 0
    assert proc.stdout == f"No referrers of {layout['image']['digest']}\n"
    proc = _cli(repo, "oci", "referrers", "nope")
    assert proc.returncode == 1 and proc.stderr == "Error: OCI reference not found: nope\n"


def test_gc_collects_referrers_with_their_subject(repo: Repository, pulled: dict[str, Any]) -> None:
    subject = pulled["image"]["digest"]
    # tagged: everything stays
    result = oci.gc(repo)
    assert result.referrers_pruned == 0
    assert len(names.list_referrers(repo, subject)) == 2
    oci.untag_image(repo, "img")
    result = oci.gc(repo)  # one call: the subject, then its referrers
    assert result.referrers_pruned == 2
    assert names.referrer_subjects(repo) == []
    for artifact in pulled["artifacts"]:
        assert repo.has_stream(names.manifest_identifier(artifact["digest"])) is None
    assert repo.has_stream(names.manifest_identifier(subject)) is None
    assert repo.fsck().ok


def test_remove_referrers(repo: Repository, pulled: dict[str, Any]) -> None:
    subject = pulled["image"]["digest"]
    first, second = (a["digest"] for a in pulled["artifacts"])
    names.remove_referrer(repo, subject, first)
    names.remove_referrer(repo, subject, first)  # idempotent
    assert [d for d, _ in names.list_referrers(repo, subject)] == [second]
    assert names.remove_referrers_for_subject(repo, subject) == 1
    assert names.referrer_subjects(repo) == []


@pytest.mark.parametrize("backend", ["native", "python"])
def test_pull_with_referrers_from_a_layout(repo: Repository, tmp_path: Path, backend: str) -> None:
    from composefs import _backend

    layout = _layout(tmp_path / "layout")
    subject = layout["image"]["digest"]
    wanted = sorted(a["digest"] for a in layout["artifacts"])
    with _backend.use(backend):
        result = oci.pull(repo, f"oci:{layout['path']}:img", "img", referrers=True)
    assert sorted(result.referrers) == wanted
    assert [d for d, _ in names.list_referrers(repo, subject)] == wanted
    assert oci.oci_fsck(repo).ok
    # the CLI: a second pull finds everything present
    proc = _cli(repo, "oci", "pull", "--referrers", f"oci:{layout['path']}:img", "img")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "referrers 2"


def test_referrers_that_fail_leave_nothing_tagged(repo: Repository, tmp_path: Path) -> None:
    layout = _layout(tmp_path / "layout")
    payload = layout["artifacts"][0]
    blob = tmp_path / "layout" / "blobs" / "sha256" / payload["digest"][7:]
    doc = json.loads(blob.read_bytes())
    data_blob = tmp_path / "layout" / "blobs" / "sha256" / doc["layers"][0]["digest"][7:]
    data_blob.write_bytes(b"X" * doc["layers"][0]["size"])  # tampered
    with pytest.raises(oci.PullError) as e:
        oci.pull(repo, f"oci:{layout['path']}:img", "img", referrers=True)
    assert f"Importing referrer {payload['digest']}" in str(e.value.__cause__)
    assert oci.list_refs(repo) == []
    assert repo.fsck().ok


@pytest.mark.interop
def test_cfsctl_reads_our_referrers(repo: Repository, pulled: dict[str, Any]) -> None:
    cfsctl = tool("cfsctl")
    proc = subprocess.run(
        [cfsctl, "--repo", repo.path, "oci", "inspect", "img"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(json.loads(proc.stdout)["referrers"]) == sorted(
        a["digest"] for a in pulled["artifacts"]
    )
    proc = subprocess.run(
        [cfsctl, "--repo", repo.path, "oci", "images", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {i["name"]: i for i in json.loads(proc.stdout)["images"]}
    assert rows["img"]["referrer_count"] == 2
