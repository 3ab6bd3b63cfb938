"""``oci pull`` against cfsctl: generated layouts pulled by both tools into separate repositories.

Checked for every image: cfsctl's five-line summary equals ours; the layer streams and every
object they reference are identical; the manifest and config streams written before the EROFS
step (cfsctl prints that manifest stream's id as ``verity``) and the final config stream with
its ``composefs.image.v1`` ref are byte for byte cfsctl's; the EROFS image ids agree; and each
tool lists, inspects, dumps, computes ids for and fscks the other's repository. Bad inputs
fail with a one-line error and a cause chain and leave the repository clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from composefs import splitstream
from composefs.testing import LayoutWriter, TarBuilder
from support import need, run, tool
from support.oci import HOST_ARCH, OTHER_ARCH, build_layout
from support.tars import seeded_bytes

pytestmark = pytest.mark.interop


def ours(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "composefs.cli", *args, check=check)


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "img"
    build_layout(path)
    return path


def _tree(root: Path, sub: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = root / sub
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _stream(repo: Path, object_hex: str) -> splitstream.SplitStream:
    return splitstream.parse((repo / "objects" / object_hex[:2] / object_hex[2:]).read_bytes())


def _stream_object(repo: Path, identifier: str) -> str:
    target = os.readlink(repo / "streams" / identifier)
    return target.split("/")[-2] + target.split("/")[-1]


def _reachable_objects(repo: Path, stream_hex: str) -> set[str]:
    s = _stream(repo, stream_hex)
    return {r.hex() for r in s.object_refs}


@pytest.mark.parametrize("tag", ["multi", "index", "noplatform", "nested"])
@pytest.mark.parametrize("algorithm", ["fsverity-sha512-12", "fsverity-sha256-12"])
def test_pull_matches_cfsctl(
    cfsctl: str, layout: Path, tmp_path: Path, tag: str, algorithm: str
) -> None:
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    run(cfsctl, "--repo", a, "init", "--insecure", "--algorithm", algorithm, a)
    ours("--repo", b, "init", "--insecure", "--algorithm", algorithm, b)
    ref = f"oci:{layout}:{tag}"
    theirs_out = run(cfsctl, "--repo", a, "oci", "pull", ref).stdout
    ours_out = ours("--repo", b, "oci", "pull", ref).stdout
    assert ours_out == theirs_out
    lines = dict(line.split(None, 1) for line in ours_out.decode().splitlines())
    manifest_digest, config_digest, verity = lines["manifest"], lines["config"], lines["verity"]

    # layer streams and their objects: identical
    layer_links = {k: v for k, v in _tree(a, "streams").items() if "/oci-layer-" in k}
    assert layer_links
    assert {k: v for k, v in _tree(b, "streams").items() if "/oci-layer-" in k} == layer_links
    for name in layer_links:
        obj = _stream_object(a, name.split("/", 1)[1])
        assert (a / "objects" / obj[:2] / obj[2:]).read_bytes() == (
            b / "objects" / obj[:2] / obj[2:]
        ).read_bytes()
        for o in _reachable_objects(a, obj):
            assert (b / "objects" / o[:2] / o[2:]).read_bytes() == (
                a / "objects" / o[:2] / o[2:]
            ).read_bytes()

    # both tools print the manifest stream written before the EROFS step; ours is the same bytes
    pre = (a / "objects" / verity[:2] / verity[2:]).read_bytes()
    assert (b / "objects" / verity[:2] / verity[2:]).read_bytes() == pre
    # ... and so is the config stream it references
    config_ref = splitstream.parse(pre).named_ref(f"config:{config_digest}").hex()
    assert (b / "objects" / config_ref[:2] / config_ref[2:]).read_bytes() == (
        a / "objects" / config_ref[:2] / config_ref[2:]
    ).read_bytes()
    # after the EROFS step: the config streams (layer refs in diff_id order, then
    # composefs.image.v1) are byte-identical, so the EROFS image ids are the same
    final_config = _stream_object(a, f"oci-config-{config_digest}")
    assert _stream_object(b, f"oci-config-{config_digest}") == final_config
    final = _stream(a, final_config).named_ref_ids()
    assert set(final) - set(_stream(a, config_ref).named_ref_ids()) == {"composefs.image.v1"}
    image_id = final["composefs.image.v1"].hex()
    assert (a / "images" / image_id).exists() and (b / "images" / image_id).exists()
    # the rewritten manifests name the same streams (cfsctl's layer ref order is a hash map's)
    manifest_a = _stream(a, _stream_object(a, f"oci-manifest-{manifest_digest}"))
    manifest_b = _stream(b, _stream_object(b, f"oci-manifest-{manifest_digest}"))
    assert manifest_b.named_ref_ids() == manifest_a.named_ref_ids()
    names_b = list(manifest_b.named_ref_ids())
    assert names_b == [names_b[0], *sorted(names_b[1:])]  # ours: config, then layers by name

    # the tag: same name, same manifest digest
    assert _tree(b, "streams/refs/oci") == _tree(a, "streams/refs/oci")

    # stored index streams (ours only) for pulls that went through an index
    index_streams = [k for k in _tree(b, "streams") if "/oci-index-" in k]
    assert bool(index_streams) == (tag != "multi")

    # each tool lists, inspects and checks the other's repository
    for repo in (a, b):
        for args in (
            ["oci", "images", "--json"],
            ["oci", "images"],
            ["oci", "inspect", ref],
            ["oci", "inspect", ref, "--manifest"],
            ["oci", "inspect", ref, "--config"],
            ["oci", "inspect", f"@{manifest_digest}", "--manifest"],
            ["oci", "fsck", "--json"],
        ):
            mine = ours("--repo", repo, *args).stdout
            theirs = run(cfsctl, "--repo", repo, *args).stdout
            assert mine == theirs, (repo.name, args)
    inspect_b = json.loads(run(cfsctl, "--repo", b, "oci", "inspect", ref).stdout)
    assert inspect_b["composefs_erofs"] == image_id
    inspect_a = json.loads(ours("--repo", a, "oci", "inspect", ref).stdout)
    assert inspect_a["composefs_erofs"] == image_id
    for repo in (a, b):
        assert run(cfsctl, "--repo", repo, "oci", "compute-id", ref).stdout.decode() == (
            image_id + "\n"
        )
        assert ours("--repo", repo, "oci", "compute-id", ref).stdout.decode() == image_id + "\n"
        assert (
            ours("--repo", repo, "oci", "dump", ref).stdout
            == run(cfsctl, "--repo", repo, "oci", "dump", ref).stdout
        )
    assert run(cfsctl, "--repo", b, "fsck").stdout.endswith(b"status: ok\n")
    assert ours("--repo", a, "fsck").stdout.endswith(b"status: ok\n")


def test_summary_with_shared_objects(cfsctl: str, tmp_path: Path) -> None:
    """Objects already in the repository do not count as stored bytes (cfsctl's summary)."""
    layout = tmp_path / "img"
    w = LayoutWriter(layout)
    big = seeded_bytes("big", 300_000)
    one = w.layer(TarBuilder().dir("usr").file("usr/a", big).file("usr/b", b"x" * 100).build())
    two = w.layer(
        TarBuilder(mtime=5).dir("usr").file("usr/c", big).file("usr/d", b"y" * 90).build()
    )
    w.write_index([w.tagged(w.image([one, two], architecture=HOST_ARCH), "t")])
    a, b = tmp_path / "a", tmp_path / "b"
    run(cfsctl, "--repo", a, "init", "--insecure", a)
    ours("--repo", b, "init", "--insecure", b)
    ref = f"oci:{layout}:t"
    assert (
        ours("--repo", b, "oci", "pull", ref).stdout
        == run(cfsctl, "--repo", a, "oci", "pull", ref).stdout
    )


def test_repull_and_cross_pull(cfsctl: str, layout: Path, tmp_path: Path) -> None:
    """Pulling into a repository the other tool filled reuses everything it stored."""
    a = tmp_path / "r"
    run(cfsctl, "--repo", a, "init", "--insecure", a)
    run(cfsctl, "--repo", a, "oci", "pull", f"oci:{layout}:multi")
    out = ours("--repo", a, "oci", "pull", f"oci:{layout}:multi", "again").stdout.decode()
    assert (
        out.splitlines()[-1]
        == "objects  0 new + 0 already present objects; 0 B stored, 0 B inlined"
    )
    # a layer shared with the multi image is skipped; the others are new
    out = ours("--repo", a, "oci", "pull", f"oci:{layout}:index", "idx").stdout.decode()
    assert " new + " in out
    names = {
        i["name"]
        for i in json.loads(run(cfsctl, "--repo", a, "oci", "images", "--json").stdout)["images"]
    }
    assert names == {f"oci:{layout}:multi", "again", "idx"}
    assert run(cfsctl, "--repo", a, "oci", "fsck").returncode == 0
    # and cfsctl pulls into ours
    b = tmp_path / "o"
    ours("--repo", b, "init", "--insecure", b)
    ours("--repo", b, "oci", "pull", f"oci:{layout}:index")
    run(cfsctl, "--repo", b, "oci", "pull", f"oci:{layout}:index")
    assert run(cfsctl, "--repo", b, "oci", "fsck").returncode == 0
    assert ours("--repo", b, "oci", "fsck").returncode == 0


# -- bad input ---------------------------------------------------------------------------------


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _index_entry(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for e in index["manifests"]:
        if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(e)
    raise KeyError(tag)


def _manifest(layout: Path, tag: str) -> dict[str, Any]:
    return dict(json.loads(_blob(layout, _index_entry(layout, tag)["digest"]).read_bytes()))


def _corrupt_missing_blob(layout: Path) -> str:
    _blob(layout, _manifest(layout, "multi")["layers"][1]["digest"]).unlink()
    return "multi"


def _corrupt_digest(layout: Path) -> str:
    p = _blob(layout, _manifest(layout, "multi")["layers"][2]["digest"])  # uncompressed
    data = bytearray(p.read_bytes())
    at = data.index(b"uncompressed layer")  # inside a file body: the tar stays valid
    data[at] ^= 0x20
    p.write_bytes(bytes(data))
    return "multi"


def _corrupt_config_digest(layout: Path) -> str:
    p = _blob(layout, _manifest(layout, "multi")["config"]["digest"])
    p.write_bytes(p.read_bytes().replace(b'"os":"linux"', b'"os":"LINUX"'))
    return "multi"


def _invalid_index_json(layout: Path) -> str:
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": [')
    return "multi"


def _invalid_manifest_json(layout: Path) -> str:
    w = LayoutWriter(layout)
    desc = w.blob(
        b"{not json",
        "application/vnd.oci.image.manifest.v1+json",
        platform={"os": "linux", "architecture": HOST_ARCH},
    )
    w.write_index([w.tagged(desc, "broken")])
    return "broken"


def _unknown_media_type(layout: Path) -> str:
    entry = _index_entry(layout, "multi")
    entry["mediaType"] = "application/vnd.example.unknown+json"
    LayoutWriter(layout).write_index([entry])
    return "multi"


def _unknown_layer_media_type(layout: Path) -> str:
    w = LayoutWriter(layout)
    layer = w.layer(TarBuilder().dir("usr").build(), "none")
    layer.descriptor["mediaType"] = "application/vnd.example.layer"
    w.write_index([w.tagged(w.image([layer], architecture=HOST_ARCH), "odd")])
    return "odd"


def _wrong_version(layout: Path) -> str:
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    return "multi"


def _no_platform(layout: Path) -> str:
    w = LayoutWriter(layout)
    layer = w.layer(TarBuilder().dir("usr").build(), "gzip")
    index = w.index(
        [w.image([layer], architecture=OTHER_ARCH), w.image([layer], architecture="riscv64")]
    )
    w.write_index([w.tagged(index, "foreign")])
    return "foreign"


BAD = {
    "missing-blob": (_corrupt_missing_blob, "Opening blob sha256:"),
    "layer-digest-mismatch": (_corrupt_digest, "layer blob digest mismatch"),
    "config-digest-mismatch": (_corrupt_config_digest, "Expected digest sha256:"),
    "invalid-index-json": (_invalid_index_json, "index.json is not valid JSON"),
    "invalid-manifest-json": (_invalid_manifest_json, "is not valid JSON"),
    "unknown-media-type": (_unknown_media_type, "Unexpected media type"),
    "unknown-layer-media-type": (_unknown_layer_media_type, "unsupported layer media type"),
    "unknown-tag": (lambda layout: "no-such-tag", "Tag 'no-such-tag' not found in image index"),
    "wrong-layout-version": (_wrong_version, "unsupported OCI layout version '2.0.0'"),
    "no-matching-platform": (_no_platform, "No manifest found for platform linux/"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input(case: str, tmp_path: Path, cfsctl: str) -> None:
    layout = tmp_path / "img"
    build_layout(layout)
    corrupt, expected = BAD[case]
    tag = corrupt(layout)
    repo = tmp_path / "repo"
    ours("--repo", repo, "init", "--insecure")
    # -q: no progress lines before the error
    proc = ours("--repo", repo, "-q", "oci", "pull", f"oci:{layout}:{tag}", "t", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert proc.stdout == b""
    first = err.splitlines()[0]
    assert first == f"Error: Importing OCI layout from {layout}", err
    assert "\n\nCaused by:\n" in err
    assert expected in err, err
    assert "Traceback" not in err
    if case == "no-matching-platform":
        assert f"available: linux/{OTHER_ARCH}, linux/riscv64" in err
    # nothing tagged, the repository is consistent
    assert not (repo / "streams" / "refs" / "oci" / "t").exists()
    assert ours("--repo", repo, "oci", "fsck").returncode == 0
    assert run(cfsctl, "--repo", repo, "oci", "fsck").returncode == 0
    assert b"No images found" in ours("--repo", repo, "oci", "images").stdout


def test_read_only_repository_checked_first(tmp_path: Path) -> None:
    """The writability check comes before the reference is even parsed."""
    repo = tmp_path / "repo"
    ours("--repo", repo, "init", "--insecure")
    cmd = [sys.executable, "-m", "composefs.cli", "--repo", str(repo), "oci", "pull", "bogus"]
    if os.geteuid() == 0:
        unshare = shutil.which("unshare")
        need(unshare is not None, "unshare (util-linux) is needed to remount read-only")
        assert unshare is not None
        script = f'mount --bind {repo} {repo} && mount -o remount,ro,bind {repo} && exec "$@"'
        proc = run(
            unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh", *cmd, check=False
        )
        expected = "Error: Repository is not writable: read-only file system"
    else:
        os.chmod(repo, 0o555)
        try:
            proc = run(*cmd, check=False)
        finally:
            os.chmod(repo, 0o755)
        expected = "Error: Repository is not writable"
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(expected), proc.stderr
