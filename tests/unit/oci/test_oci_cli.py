"""``composefs oci pull|images|inspect|tag|untag|fsck``: outputs, exit codes, error chains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composefs.oci.platform import host_platform
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"


def cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        capture_output=True,
        check=False,
    )


def ok(*args: str | os.PathLike[str]) -> str:
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    w = LayoutWriter(tmp_path / "layout")
    layer = w.layer(TarBuilder().dir("usr").file("usr/f", b"f" * 1000).build(), "gzip")
    host = w.image([layer], architecture=HOST)
    other = w.image([layer], architecture=OTHER)
    index = w.index([other, host])
    w.write_index([w.tagged(index, "latest"), w.tagged(host, "single")])
    repo = tmp_path / "repo"
    ok("--repo", repo, "init", "--insecure")
    return {
        "repo": str(repo),
        "layout": str(tmp_path / "layout"),
        "host": host["digest"],
        "other": other["digest"],
        "index": index["digest"],
    }


def test_pull_output(env: dict[str, str]) -> None:
    ref = f"oci:{env['layout']}:latest"
    out = ok("--repo", env["repo"], "oci", "pull", ref).splitlines()
    assert [line.split()[0] for line in out] == [
        "manifest",
        "config",
        "verity",
        "tagged",
        "objects",
    ]
    assert out[0] == f"manifest {env['host']}"
    assert out[3] == f"tagged   {ref}"  # the name defaults to the reference
    assert out[4] == "objects  1 new + 0 already present objects; 1000 B stored, 9.02 KiB inlined"
    out = ok("--repo", env["repo"], "oci", "pull", ref, "other", "--platform", f"linux/{OTHER}")
    assert out.splitlines()[0] == f"manifest {env['other']}"
    assert out.splitlines()[-1] == (
        "objects  0 new + 0 already present objects; 0 B stored, 0 B inlined"
    )


def test_images(env: dict[str, str]) -> None:
    assert ok("--repo", env["repo"], "oci", "images") == "No images found\n"
    assert json.loads(ok("--repo", env["repo"], "oci", "images", "--json")) == {"images": []}
    ok("--repo", env["repo"], "oci", "pull", f"oci:{env['layout']}:single", "a/b")
    table = ok("--repo", env["repo"], "oci", "images")
    short = env["host"][7:19]
    arch = max(len(HOST), 4)
    assert table == (
        f"┌──────┬──────────────┬{'─' * (arch + 2)}┬────────┬──────┐\n"
        f"│ NAME ┆ DIGEST       ┆ {'ARCH'.ljust(arch)} ┆ LAYERS ┆ REFS │\n"
        f"╞══════╪══════════════╪{'═' * (arch + 2)}╪════════╪══════╡\n"
        f"│ a/b  ┆ {short} ┆ {HOST.ljust(arch)} ┆ 1      ┆ 0    │\n"
        f"└──────┴──────────────┴{'─' * (arch + 2)}┴────────┴──────┘\n"
    )
    doc = json.loads(ok("--repo", env["repo"], "oci", "images", "--json"))
    assert doc == {
        "images": [
            {
                "name": "a/b",
                "manifest_digest": env["host"],
                "is_container": True,
                "architecture": HOST,
                "os": "linux",
                "created": "2024-01-01T00:00:00Z",
                "layer_count": 1,
                "referrer_count": 0,
            }
        ]
    }


def test_inspect(env: dict[str, str]) -> None:
    repo = env["repo"]
    ok("--repo", repo, "oci", "pull", f"oci:{env['layout']}:latest", "img")
    doc = json.loads(ok("--repo", repo, "oci", "inspect", "img"))
    assert list(doc) == [
        "manifest",
        "config",
        "referrers",
        "composefs_erofs",
        "composefs_boot_erofs",
    ]
    manifest = (Path(env["layout"]) / "blobs/sha256" / env["host"][7:]).read_bytes()
    assert doc["manifest"] == manifest.decode()
    assert doc["referrers"] == [] and doc["composefs_erofs"] is not None
    assert ok("--repo", repo, "oci", "compute-id", "img") == doc["composefs_erofs"] + "\n"
    assert cli("--repo", repo, "oci", "inspect", "img", "--manifest").stdout == manifest + b"\n"
    assert json.loads(ok("--repo", repo, "oci", "inspect", "img", "--config"))["os"] == "linux"
    assert ok("--repo", repo, "oci", "inspect", f"@{env['host']}", "--manifest").encode() == (
        manifest + b"\n"
    )
    # the stored index: raw, and re-resolved by digest
    index = (Path(env["layout"]) / "blobs/sha256" / env["index"][7:]).read_bytes()
    assert cli("--repo", repo, "oci", "inspect", "img", "--index").stdout == index + b"\n"
    assert cli("--repo", repo, "oci", "inspect", f"@{env['index']}", "--index").stdout == (
        index + b"\n"
    )
    by_index = cli("--repo", repo, "oci", "inspect", f"@{env['index']}", "--manifest")
    assert by_index.stdout == manifest + b"\n"
    # a platform that was not pulled
    proc = cli("--repo", repo, "oci", "inspect", "img", "--platform", f"linux/{OTHER}")
    assert proc.returncode == 1
    assert b"was not pulled into this repository" in proc.stderr
    ok(
        "--repo",
        repo,
        "oci",
        "pull",
        f"oci:{env['layout']}:latest",
        "x",
        "--platform",
        f"linux/{OTHER}",
    )
    other = ok("--repo", repo, "oci", "inspect", "img", "--platform", f"linux/{OTHER}", "--config")
    assert json.loads(other)["architecture"] == OTHER


def test_inspect_errors(env: dict[str, str]) -> None:
    repo = env["repo"]
    proc = cli("--repo", repo, "oci", "inspect", "nope")
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error: OCI reference not found: nope\n"
    proc = cli("--repo", repo, "oci", "inspect", "@sha256:" + "0" * 64)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(
        f"Error: Opening stream 'oci-manifest-sha256:{'0' * 64}'\n\nCaused by:\n"
    )
    proc = cli("--repo", repo, "oci", "inspect", "@nonsense")
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("Error: Invalid OCI digest after '@'")
    ok("--repo", repo, "oci", "pull", f"oci:{env['layout']}:single", "s")
    proc = cli("--repo", repo, "oci", "inspect", "s", "--index")
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error: s was not pulled through an image index\n"
    assert cli("--repo", repo, "oci", "inspect", "s", "--manifest", "--config").returncode == 2


def test_tag_untag(env: dict[str, str]) -> None:
    repo = env["repo"]
    ok("--repo", repo, "oci", "pull", f"oci:{env['layout']}:single", "one")
    assert ok("--repo", repo, "oci", "tag", env["host"], "two") == (
        f"Tagged {env['host']} as two\n"
    )
    assert ok("--repo", repo, "oci", "untag", "one") == "Removed tag one\n"
    names = [i["name"] for i in json.loads(ok("--repo", repo, "oci", "images", "--json"))["images"]]
    assert names == ["two"]
    proc = cli("--repo", repo, "oci", "untag", "one")
    assert proc.returncode == 1
    assert proc.stderr.decode() == (
        "Error: Failed to remove tag one\n\n"
        "Caused by:\n    No such file or directory (os error 2)\n"
    )
    assert cli("--repo", repo, "oci", "tag", "not-a-digest", "x").returncode == 2
    proc = cli("--repo", repo, "oci", "tag", env["host"], "@x")
    assert proc.returncode == 1 and b"leading '@' is reserved" in proc.stderr


def test_fsck(env: dict[str, str]) -> None:
    repo = env["repo"]
    ok("--repo", repo, "oci", "pull", f"oci:{env['layout']}:latest", "img")
    text = ok("--repo", repo, "oci", "fsck")
    assert text.endswith("status: ok\noci images: 1/1 ok\n")
    doc = json.loads(ok("--repo", repo, "oci", "fsck", "--json"))
    assert doc["ok"] is True and doc["images_checked"] == 1 and doc["repo"]["ok"] is True
    ok("--repo", repo, "oci", "tag", "sha256:" + "1" * 64, "broken")
    proc = cli("--repo", repo, "oci", "fsck")
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error: OCI integrity check failed\n"
    assert "oci images: 1/2 ok\noci errors: 1\n  - fsck: manifest-read-failed: broken: " in (
        proc.stdout.decode()
    )
    proc = cli("--repo", repo, "oci", "fsck", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is False
    proc = cli("--repo", repo, "oci", "fsck")
    # the dangling tag is also a broken symlink for the repository check
    assert "fsck: broken-symlink: streams/refs/oci/broken" in proc.stdout.decode()
    ok("--repo", repo, "oci", "untag", "broken")
    assert ok("--repo", repo, "oci", "fsck", "img").endswith("oci images: 1/1 ok\n")


def test_pull_errors(env: dict[str, str]) -> None:
    proc = cli("--repo", env["repo"], "-q", "oci", "pull", f"oci:{env['layout']}:missing")
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode() == (
        f"Error: Importing OCI layout from {env['layout']}\n\nCaused by:\n"
        "    0: Resolving manifest for platform\n"
        "    1: Tag 'missing' not found in image index (tags present: latest, single)\n"
    )
    proc = cli("--repo", env["repo"], "oci", "pull", "ftp:/x")
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(
        "Error: Parsing image reference transport\n\nCaused by:\n    Invalid transport: ftp"
    )
    proc = cli("--repo", env["repo"], "oci", "pull", f"oci:{env['layout']}", "--platform", "x/")
    assert proc.returncode == 1 and b"invalid platform 'x/'" in proc.stderr


def test_pull_of_a_name_erofs_cannot_hold(tmp_path: Path) -> None:
    """One ``Error:`` and its causes (manifest, layer, path), exit 1, no traceback, no tag."""
    long_name = "n" * 300
    w = LayoutWriter(tmp_path / "layout")
    base = w.layer(TarBuilder().dir("usr").file("usr/f", b"f" * 1000).build(), "gzip")
    bad = w.layer(TarBuilder().dir("usr").file(f"usr/{long_name}", b"x").build(), "none")
    image = w.image([base, bad], architecture=HOST)
    w.write_index([w.tagged(image, "bad")])
    repo = tmp_path / "repo"
    ok("--repo", repo, "init", "--insecure")
    proc = cli("--repo", repo, "-q", "oci", "pull", f"oci:{tmp_path / 'layout'}:bad", "t")
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode() == (
        f"Error: Creating the composefs image of manifest {image['digest']}\n\nCaused by:\n"
        f"    0: Layer {bad.diff_id}\n"
        f'    1: "/usr/{long_name}": file name too long (300 bytes; EROFS allows 255)\n'
    )
    assert json.loads(ok("--repo", repo, "oci", "images", "--json")) == {"images": []}
    ok("--repo", repo, "fsck")


def test_dump_streams_the_merged_dumpfile(env: dict[str, str], tmp_path: Path) -> None:
    """``oci dump`` writes straight to stdout's descriptor: to a pipe, to a file (after what
    the file held: the descriptor's position), the bytes of ``create_dumpfile``."""
    from composefs.oci import filesystem
    from composefs.repository import Repository

    ok("--repo", env["repo"], "oci", "pull", f"oci:{env['layout']}:single", "img")
    with Repository.open(env["repo"]) as repo:
        expected = filesystem.create_dumpfile(repo, "img")
    assert expected.startswith(b"/ 0 40755 ")
    assert cli("--repo", env["repo"], "oci", "dump", "img").stdout == expected
    out = tmp_path / "dump"
    with out.open("wb") as f:
        f.write(b"before\n")
        f.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "composefs.cli", "--repo", env["repo"], "oci", "dump", "img"],
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.read_bytes() == b"before\n" + expected
    proc = cli("--repo", env["repo"], "oci", "dump", "missing")
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.startswith(b"Error: ")
