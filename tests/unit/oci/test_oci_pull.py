"""``composefs.oci.pull`` and the image streams it writes (API level, both backends)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import _backend, oci, splitstream
from composefs.errors import ComposefsError, RepositoryNotWritable
from composefs.oci import image as oci_image
from composefs.oci.auth import Credentials
from composefs.oci.layout import LayoutSource
from composefs.oci.platform import host_platform, parse_platform
from composefs.oci.pull import ImportStats, PullError, PullEvent, human_bytes
from composefs.oci.reference import parse_layout_name
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder
from support import need

HOST = host_platform().architecture
OTHER = "s390x" if HOST != "s390x" else "ppc64le"


def _tar(seed: str, big: int = 5000) -> bytes:
    t = TarBuilder()
    t.dir("usr")
    t.file(f"usr/{seed}-big", (seed.encode() * big)[:big])
    t.file(f"usr/{seed}-small", seed.encode())
    return t.build()


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Any]:
    """Tags: ``plain`` (a manifest), ``multi`` (index: OTHER, host), ``deep`` (nested)."""
    w = LayoutWriter(tmp_path / "layout")
    base = w.layer(_tar("base", 20_000), "gzip")
    mid = w.layer(_tar("mid", 9000), "zstd")
    top = w.layer(_tar("top", 100), "none")
    plain = w.image([base, mid, top], architecture=HOST)
    host = w.image([base, top], architecture=HOST)
    other = w.image([mid], architecture=OTHER)
    multi = w.index([other, host])
    inner = w.index([w.image([mid, top], architecture=OTHER), w.image([top], architecture=HOST)])
    deep = w.index([inner])
    w.write_index([w.tagged(plain, "plain"), w.tagged(multi, "multi"), w.tagged(deep, "deep")])
    return {
        "path": tmp_path / "layout",
        "plain": plain,
        "host": host,
        "other": other,
        "multi": multi,
        "inner": inner,
        "deep": deep,
        "diff_ids": [base.diff_id, mid.diff_id, top.diff_id],
    }


@pytest.fixture(params=["native", "python"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Repository]:
    try:
        ctx = _backend.use(request.param)
        ctx.__enter__()
    except ImportError as e:
        need(False, f"{request.param} backend unavailable: {e}")
        raise
    try:
        r, _ = Repository.init(tmp_path / "repo", "sha256", insecure=True)
        with r:
            yield r
    finally:
        ctx.__exit__(None, None, None)


def _ref(layout: dict[str, Any], spec: str) -> str:
    return f"oci:{layout['path']}{spec}"


def test_pull_writes_cfsctl_streams(repo: Repository, layout: dict[str, Any]) -> None:
    result = oci.pull(repo, _ref(layout, ":plain"), "my/image:1")
    assert result.manifest_digest == layout["plain"]["digest"]
    assert result.tag == "my/image:1"
    assert result.index_digest is None and result.index_verity is None
    assert result.platform == parse_platform(f"linux/{HOST}")
    assert [d for d, _ in result.layers] == layout["diff_ids"]
    assert result.stats.layers == 3 and result.stats.layers_already_present == 0
    assert result.stats.objects_copied == 3  # the three big files; the rest is inline

    # the manifest stream first written (cfsctl prints its verity), still in the repository
    first = splitstream.parse(repo.read_object(result.manifest_verity))
    assert first.stream_refs == (result.config_verity, *(v for _, v in result.layers))
    first_config = splitstream.parse(repo.read_object(result.config_verity))
    assert first_config.stream_refs == tuple(v for _, v in result.layers)

    # after the EROFS step: config refs = layers in diff_id order + composefs.image.v1; the
    # manifest names that config, then the layers by name
    assert result.image_id is not None and result.images == {1: result.image_id}
    manifest = repo.open_stream(f"oci-manifest-{result.manifest_digest}")
    assert manifest.content_type == splitstream.MANIFEST_CONTENT_TYPE
    by_name = sorted(result.layers)
    assert manifest.stream_refs == (result.stored_config_verity, *(v for _, v in by_name))
    assert set(manifest.named_refs) == {f"config:{result.config_digest}", *(d for d, _ in by_name)}
    assert len(manifest.object_refs) == 1 and manifest.chunks == (0,)
    config = repo.open_stream(f"oci-config-{result.config_digest}")
    assert config.content_type == splitstream.CONFIG_CONTENT_TYPE
    assert config.stream_refs == (*(v for _, v in result.layers), result.image_id)
    assert set(config.named_refs) == {*layout["diff_ids"], "composefs.image.v1"}
    assert repo.has_stream(f"oci-manifest-{result.manifest_digest}") == (
        result.stored_manifest_verity
    )
    assert repo.has_stream(f"oci-config-{result.config_digest}") == result.stored_config_verity
    assert repo.has_image(result.image_id.hex()) == result.image_id
    link = os.readlink(Path(repo.path) / "streams/refs/oci/my%2Fimage:1")
    assert link == f"../../oci-manifest-{result.manifest_digest}"

    img = oci.OciImage.open_ref(repo, "my/image:1")
    assert img.diff_ids == layout["diff_ids"]
    assert img.layer_refs == dict(result.layers)
    assert img.is_container_image and img.architecture == HOST and img.os == "linux"
    assert img.erofs_image(1) == result.image_id
    assert (
        oci.OciImage.open(repo, result.manifest_digest).manifest_verity
        == result.stored_manifest_verity
    )
    assert oci.oci_fsck(repo).ok
    assert repo.fsck().ok


def test_repull_skips_everything(repo: Repository, layout: dict[str, Any]) -> None:
    first = oci.pull(repo, _ref(layout, ":plain"))
    events: list[PullEvent] = []
    again = oci.pull(repo, _ref(layout, ":plain"), progress=events.append)
    assert again.stats == ImportStats()
    assert str(again.stats) == "0 new + 0 already present objects; 0 B stored, 0 B inlined"
    # the streams found are the ones the first pull stored; rewriting them gives the same bytes
    assert (again.manifest_verity, again.config_verity) == (
        first.stored_manifest_verity,
        first.stored_config_verity,
    )
    assert (again.stored_manifest_verity, again.stored_config_verity, again.image_id) == (
        first.stored_manifest_verity,
        first.stored_config_verity,
        first.image_id,
    )
    assert {e.id for e in events if e.kind == "skipped"} == set(layout["diff_ids"])
    assert first.tag is None and oci.list_refs(repo) == []
    # an image sharing two layers: only the new one is imported
    shared = oci.pull(repo, _ref(layout, ":multi"), platform=f"linux/{OTHER}")
    assert shared.stats.layers == 1 and shared.stats.layers_already_present == 1


def test_progress_events(repo: Repository, layout: dict[str, Any]) -> None:
    events: list[PullEvent] = []
    lock = threading.Lock()

    def record(event: PullEvent) -> None:
        with lock:
            events.append(event)

    result = oci.pull(repo, _ref(layout, ":plain"), progress=record)
    messages = [e.message for e in events if e.kind == "message"]
    assert messages == [
        "Importing 3 layers from OCI layout",
        f"Copying config {result.config_digest}",
        "Storing manifest",
        "Creating composefs image",
    ]
    # every layer is queued (with its size) before the first one starts
    first_start = next(i for i, e in enumerate(events) if e.kind == "started")
    queued = [e for e in events[:first_start] if e.kind == "queued"]
    assert {e.id for e in queued} == set(layout["diff_ids"])
    for diff_id in layout["diff_ids"]:
        mine = [e for e in events if e.id == diff_id]
        kinds = [e.kind for e in mine]
        assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
        assert set(kinds[2:-1]) <= {"progress"}
        assert mine[-1].transferred == mine[-1].total == mine[0].total
        # the blob's digest travels with every layer event
        assert len({e.digest for e in mine}) == 1 and mine[0].digest.startswith("sha256:")


def test_index_is_stored_and_extended(repo: Repository, layout: dict[str, Any]) -> None:
    multi = layout["multi"]["digest"]
    first = oci.pull(repo, _ref(layout, ":multi"), "multi")
    assert first.manifest_digest == layout["host"]["digest"]
    assert first.index_digest == multi
    stored = oci.open_index(repo, multi)
    assert stored.verity == first.index_verity
    assert stored.raw == (layout["path"] / "blobs/sha256" / multi[7:]).read_bytes()
    assert stored.manifests == {first.manifest_digest: first.stored_manifest_verity}
    stream = repo.open_stream(f"oci-index-{multi}")
    assert stream.content_type == splitstream.INDEX_CONTENT_TYPE
    assert splitstream.content_type_name(stream.content_type) == "ociindx"
    link = os.readlink(Path(repo.path) / "streams/refs/oci-index/multi")
    assert link == f"../../oci-index-{multi}"
    # pulling the other platform adds its manifest; refs follow the index's order
    second = oci.pull(repo, _ref(layout, ":multi"), "multi-other", platform=f"linux/{OTHER}")
    assert second.manifest_digest == layout["other"]["digest"]
    stream = repo.open_stream(f"oci-index-{multi}")
    assert stream.named_ref_ids() == {
        f"manifest:{second.manifest_digest}": second.stored_manifest_verity,
        f"manifest:{first.manifest_digest}": first.stored_manifest_verity,
    }
    assert stream.stream_refs == (second.stored_manifest_verity, first.stored_manifest_verity)
    assert oci.resolve_index(repo, multi) == (first.manifest_digest, first.stored_manifest_verity)
    assert oci.resolve_index(repo, multi, parse_platform(f"linux/{OTHER}")) == (
        second.manifest_digest,
        second.stored_manifest_verity,
    )
    with pytest.raises(oci.ImageError, match="No manifest found for platform linux/riscv64"):
        oci.resolve_index(repo, multi, parse_platform("linux/riscv64"))
    assert oci.oci_fsck(repo).ok
    # gc keeps the index (a tag holds it) and everything it refers to
    repo.gc()
    assert oci.open_index(repo, multi).manifests == stored.manifests | {
        second.manifest_digest: second.stored_manifest_verity
    }
    assert oci.oci_fsck(repo).ok


def test_index_not_pulled_platform(repo: Repository, layout: dict[str, Any]) -> None:
    oci.pull(repo, _ref(layout, ":multi"))
    with pytest.raises(oci.ImageError, match="was not pulled into this repository"):
        oci.resolve_index(repo, layout["multi"]["digest"], parse_platform(f"linux/{OTHER}"))


def test_nested_indexes(repo: Repository, layout: dict[str, Any]) -> None:
    result = oci.pull(repo, _ref(layout, ":deep"), "deep")
    deep, inner = layout["deep"]["digest"], layout["inner"]["digest"]
    assert result.index_digest == deep
    outer = oci.open_index(repo, deep)
    child = oci.open_index(repo, inner)
    assert outer.indexes == {inner: child.verity} and outer.manifests == {}
    assert child.manifests == {result.manifest_digest: result.stored_manifest_verity}
    assert oci.resolve_index(repo, deep)[0] == result.manifest_digest
    # through the @digest extension, pinned to the inner index
    again = oci.pull(repo, _ref(layout, f"@{inner}"))
    assert again.manifest_digest == result.manifest_digest and again.index_digest == inner


def test_pull_from_threads(repo: Repository, layout: dict[str, Any]) -> None:
    jobs = [
        (":plain", None, "a"),
        (":multi", None, "b"),
        (":multi", f"linux/{OTHER}", "c"),
        (":deep", None, "d"),
        (":deep", f"linux/{OTHER}", "e"),
        (":plain", None, "f"),
    ]
    results: dict[str, oci.PullResult] = {}
    errors: list[BaseException] = []

    def run(spec: str, platform: str | None, name: str) -> None:
        try:
            results[name] = oci.pull(repo, _ref(layout, spec), name, platform=platform)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {n for n, _ in oci.list_refs(repo)} == set("abcdef")
    assert results["a"].manifest_verity == results["f"].manifest_verity
    stored = oci.open_index(repo, layout["multi"]["digest"])
    assert set(stored.manifests) == {layout["host"]["digest"], layout["other"]["digest"]}
    assert oci.oci_fsck(repo).ok and repo.fsck().ok


def test_writability_is_checked_first(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise RepositoryNotWritable("Repository is not writable: read-only file system")

    monkeypatch.setattr(repo, "ensure_writable", refuse)
    with pytest.raises(RepositoryNotWritable):
        oci.pull(repo, "not a reference")


def test_bad_references_and_names(repo: Repository, layout: dict[str, Any]) -> None:
    with pytest.raises(PullError, match="Parsing image reference transport") as e:
        oci.pull(repo, "nonsense")
    assert str(e.value.__cause__) == (
        "Missing ':' in nonsense; name the transport: oci:nonsense (an OCI layout directory) "
        "or docker://nonsense"
    )
    with pytest.raises(PullError, match="leading '@' is reserved"):
        oci.pull(repo, _ref(layout, ":plain"), "@bad")
    with pytest.raises(oci.PlatformError):
        oci.pull(repo, _ref(layout, ":plain"), platform="linux/")


def _chain(e: BaseException) -> list[str]:
    out = []
    cur: BaseException | None = e
    while cur is not None:
        out.append(str(cur))
        cur = cur.__cause__
    return out


def test_diff_id_and_layer_count_mismatch(repo: Repository, tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "l")
    one, two = w.layer(_tar("one")), w.layer(_tar("two"))
    extra = w.image(
        [one],
        architecture=HOST,
        config={"rootfs": {"type": "layers", "diff_ids": [one.diff_id, two.diff_id]}},
    )
    fewer = w.image(
        [one, two],
        architecture=HOST,
        config={"rootfs": {"type": "layers", "diff_ids": [one.diff_id]}},
    )
    swapped = w.image(
        [one, two],
        architecture=HOST,
        config={"rootfs": {"type": "layers", "diff_ids": [two.diff_id, one.diff_id]}},
    )
    w.write_index([w.tagged(extra, "extra"), w.tagged(fewer, "fewer"), w.tagged(swapped, "swap")])
    with pytest.raises(PullError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:extra", "x")
    assert _chain(e.value)[-1] == (
        f'missing layer verity for diff_id {two.diff_id}. Available keys in refs: ["{one.diff_id}"]'
    )
    with pytest.raises(PullError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:fewer", "x")
    assert _chain(e.value)[-1] == "expected 2 layer refs but got 1"
    with pytest.raises(PullError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'l'}:swap", "x")
    assert "does not match diff_id" in _chain(e.value)[-1]
    assert oci.list_refs(repo) == []
    assert oci.oci_fsck(repo).ok


def test_cached_config_with_missing_ref(repo: Repository, layout: dict[str, Any]) -> None:
    plain = oci.pull(repo, _ref(layout, ":plain"))
    # a config stream that lacks the last layer's ref (e.g. written by a buggy tool)
    raw = oci_image.read_external_stream(
        repo, f"oci-config-{plain.config_digest}", None, splitstream.CONFIG_CONTENT_TYPE
    )[0]
    oci_image.write_config(repo, plain.config_digest, raw, list(plain.layers[:2]))
    with pytest.raises(PullError) as e:
        oci.pull(repo, _ref(layout, ":plain"))
    keys = ", ".join(f'"{d}"' for d in sorted(layout["diff_ids"][:2]))
    assert _chain(e.value)[-1] == (
        f"missing layer verity for diff_id {layout['diff_ids'][2]}. Available keys in refs: "
        f"[{keys}]"
    )


def test_tags(repo: Repository, layout: dict[str, Any]) -> None:
    result = oci.pull(repo, _ref(layout, ":multi"), "t1")
    oci.tag_image(repo, result.manifest_digest, "t2/with/slashes%")
    assert os.path.islink(Path(repo.path) / "streams/refs/oci/t2%2Fwith%2Fslashes%25")
    assert sorted(n for n, _ in oci.list_refs(repo)) == ["t1", "t2/with/slashes%"]
    with pytest.raises(oci.ImageError, match="leading '@' is reserved"):
        oci.tag_image(repo, result.manifest_digest, "@x")
    # an index digest is tagged as an index (our extension)
    oci.tag_image(repo, layout["multi"]["digest"], "idx")
    assert oci_image.resolve_index_ref(repo, "idx") == (
        layout["multi"]["digest"],
        result.index_verity,
    )
    oci.untag_image(repo, "t1")  # removes the manifest and the index tag
    assert oci_image.resolve_index_ref(repo, "t1") is None
    with pytest.raises(oci.ImageError, match="OCI reference not found: t1"):
        oci.resolve_ref(repo, "t1")
    with pytest.raises(oci.ImageError, match="Failed to remove tag t1") as e:
        oci.untag_image(repo, "t1")
    assert isinstance(e.value.__cause__, FileNotFoundError)
    oci.untag_image(repo, "idx")
    assert oci_image.decode_tag("a%2Fb%252F%zz%2") == "a/b%2F%zz%2"
    assert oci_image.encode_tag("a/b%2F") == "a%2Fb%252F"


def test_fsck_finds_problems(repo: Repository, layout: dict[str, Any]) -> None:
    result = oci.pull(repo, _ref(layout, ":plain"), "good")
    oci.tag_image(repo, "sha256:" + "0" * 64, "dangling")
    report = oci.oci_fsck(repo)
    assert not report.ok and report.images_checked == 2 and report.images_corrupted == 1
    assert report.errors[0].startswith("fsck: manifest-read-failed: dangling: ")
    oci.untag_image(repo, "dangling")
    os.unlink(Path(repo.path) / "streams" / f"oci-layer-{layout['diff_ids'][1]}")
    report = oci.oci_fsck(repo, "good")
    assert report.errors == [f"fsck: layer-stream-missing: good: {layout['diff_ids'][1]}"]
    doc = report.to_dict()
    assert list(doc) == ["ok", "images_checked", "images_corrupted", "errors", "repo"]
    assert doc["repo"]["ok"] is True and doc["ok"] is False
    assert "oci errors: 1\n" in str(report) and "oci images: 0/1 ok\n" in str(report)
    missing = oci.oci_fsck(repo, "nope")
    assert missing.errors == ["fsck: ref-resolve-failed: nope: OCI reference not found: nope"]
    assert result.manifest_digest


def test_artifact_with_blob_layers(repo: Repository, tmp_path: Path) -> None:
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
    result = oci.pull(repo, f"oci:{tmp_path / 'l'}@{manifest['digest']}", "art")
    stream = repo.open_stream(f"oci-layer-{blob['digest']}")
    assert stream.content_type == splitstream.BLOB_CONTENT_TYPE
    assert stream.stream_size == blob["size"]
    img = oci.OciImage.open_ref(repo, "art")
    assert not img.is_container_image and img.architecture == ""
    assert img.layer_refs == {blob["digest"]: result.layers[0][1]}
    assert oci.list_images(repo)[0].is_container is False
    assert oci.oci_fsck(repo).ok


def test_proxy_transports_use_the_proxy_source(
    repo: Repository, layout: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything but ``oci:``, the archives and ``docker://`` goes to
    ``composefs.oci.proxy.ProxyImageSource(ref, platform=)``; ``docker://`` too with
    ``via_skopeo``, with the registry options as skopeo's flags."""
    calls: list[tuple[str, str | None, tuple[str, ...]]] = []
    auth_files: list[str] = []

    class FakeProxySource(LayoutSource):
        def __init__(
            self, ref: str, *, platform: str | None = None, extra_args: tuple[str, ...] = ()
        ) -> None:
            calls.append((ref, platform, tuple(extra_args)))
            for arg in extra_args:  # read while skopeo would (OpenImage, in the constructor)
                if arg.startswith("--authfile=/tmp"):
                    auth_files.append(Path(arg.removeprefix("--authfile=")).read_text())
            super().__init__(parse_layout_name(f"{layout['path']}:multi"))

    fake = type(sys)("composefs.oci.proxy")
    fake.ProxyImageSource = FakeProxySource  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "composefs.oci.proxy", fake)
    monkeypatch.setattr(oci, "proxy", fake, raising=False)
    result = oci.pull(
        repo, "registry:example.com/img:1", platform=f"linux/{OTHER}", via_skopeo=True
    )
    assert calls == [("docker://example.com/img:1", f"linux/{OTHER}", ())]
    assert result.manifest_digest == layout["other"]["digest"]
    calls.clear()
    oci.pull(
        repo,
        "docker://example.com/img:1",
        platform=f"linux/{OTHER}",
        via_skopeo=True,
        tls_verify=False,
        authfile="/a.json",
    )
    assert calls == [
        (
            "docker://example.com/img:1",
            f"linux/{OTHER}",
            ("--tls-verify=false", "--authfile=/a.json"),
        )
    ]
    calls.clear()
    # credentials reach skopeo in an auth file of ours, never on its command line
    oci.pull(
        repo,
        "docker://img:1",
        platform=f"linux/{OTHER}",
        via_skopeo=True,
        auth=Credentials("me", "s3cret"),
    )
    assert "s3cret" not in repr(calls)
    assert json.loads(auth_files[0]) == {
        "auths": {"docker.io": {"auth": base64.b64encode(b"me:s3cret").decode()}}
    }
    assert not Path(calls[0][2][0].removeprefix("--authfile=")).exists()
    calls.clear()
    oci.pull(repo, "dir:/a", platform=f"linux/{OTHER}", tls_verify=False)
    assert calls == [("dir:/a", f"linux/{OTHER}", ())]
    monkeypatch.setitem(sys.modules, "composefs.oci.proxy", None)
    monkeypatch.delattr(oci, "proxy")
    with pytest.raises(PullError) as e:
        oci.pull(repo, "docker://example.com/img:1", via_skopeo=True)
    assert _chain(e.value)[:2] == [
        "Unable to pull container image docker://example.com/img:1",
        "the docker: transport needs the skopeo image proxy client",
    ]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (15, "15 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1_500, "1.46 KiB"),
        (1_500_000, "1.43 MiB"),
        (1_500_000_000, "1.40 GiB"),
        (1_500_000_000_000, "1.36 TiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


def test_stats_text() -> None:
    stats = ImportStats(
        objects_copied=3, objects_already_present=1, bytes_copied=75110, bytes_inlined=17050
    )
    assert str(stats) == "3 new + 1 already present objects; 73.35 KiB stored, 16.65 KiB inlined"
    linked = ImportStats(
        objects_copied=1,
        objects_reflinked=2,
        objects_hardlinked=3,
        bytes_copied=10,
        bytes_reflinked=2048,
        bytes_hardlinked=0,
        bytes_inlined=5,
    )
    assert str(linked) == (
        "2 reflinked + 3 hardlinked + 1 copied + 0 already present objects; "
        "2.00 KiB reflinked, 0 B hardlinked, 10 B copied, 5 B inlined"
    )
    assert (stats + stats).objects_copied == 6


def test_pull_errors_leave_nothing_tagged(repo: Repository, layout: dict[str, Any]) -> None:
    blobs = layout["path"] / "blobs/sha256"
    victim = json.loads((blobs / layout["plain"]["digest"][7:]).read_bytes())["layers"][0]
    (blobs / victim["digest"][7:]).unlink()
    with pytest.raises(PullError) as e:
        oci.pull(repo, _ref(layout, ":plain"), "t")
    chain = _chain(e.value)
    assert chain[0] == f"Importing OCI layout from {layout['path']}"
    assert chain[2] == f"Failed to import layer {victim['digest']}"
    assert oci.list_refs(repo) == []
    assert repo.has_stream(f"oci-manifest-{layout['plain']['digest']}") is None
    assert oci.oci_fsck(repo).ok
    with contextlib.suppress(ComposefsError):
        repo.gc()
    assert repo.fsck().ok


def test_gc_after_pull_keeps_the_image(repo: Repository, layout: dict[str, Any]) -> None:
    """The streams written before the EROFS step are garbage; the image lives through the tag."""
    result = oci.pull(repo, _ref(layout, ":plain"), "img")
    assert result.image_id is not None
    gc = repo.gc()
    assert gc.objects_removed == 2 and not gc.warnings  # the first manifest and config streams
    for gone in (result.manifest_verity, result.config_verity):
        assert not os.path.exists(repo.object_path(gone))
    assert repo.has_image(result.image_id.hex()) == result.image_id
    img = oci.OciImage.open_ref(repo, "img")
    assert img.erofs_image(1) == result.image_id
    assert repo.fsck().ok and oci.oci_fsck(repo).ok
    # untagged, everything goes
    oci.untag_image(repo, "img")
    repo.gc()
    assert repo.has_image(result.image_id.hex()) is None


@pytest.mark.parametrize(
    ("layer", "what"),
    [
        (
            TarBuilder().dir("usr").file(f"usr/{'n' * 300}", b"x"),
            f'"/usr/{"n" * 300}": file name too long (300 bytes; EROFS allows 255)',
        ),
        (
            TarBuilder()
            .dir("usr")
            .file("usr/ping", b"p", xattrs={"security.capability": "\x01" * 65_560}),
            '"/usr/ping": xattr "security.capability" value too large (65560 bytes; '
            "EROFS allows 65535)",
        ),
    ],
)
def test_pull_refuses_what_erofs_cannot_hold(
    repo: Repository, tmp_path: Path, layer: TarBuilder, what: str
) -> None:
    """A name of 300 bytes, an xattr value over 65,535 bytes (cfsctl 0.9.4 writes images the
    kernel misreads): the pull fails naming the layer and the path, nothing is tagged, and
    the repository stays consistent."""
    w = LayoutWriter(tmp_path / "bad")
    base = w.layer(_tar("base"), "gzip")
    bad = w.layer(layer.build(), "none")
    image = w.image([base, bad], architecture=HOST)
    w.write_index([w.tagged(image, "bad")])
    with pytest.raises(PullError) as e:
        oci.pull(repo, f"oci:{tmp_path / 'bad'}:bad", "t")
    assert _chain(e.value) == [
        f"Creating the composefs image of manifest {image['digest']}",
        f"Layer {bad.diff_id}",
        what,
    ]
    assert oci.list_refs(repo) == []
    assert oci.oci_fsck(repo).ok
    assert repo.fsck().ok
    with contextlib.suppress(ComposefsError):
        repo.gc()
    assert repo.fsck().ok


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_closed_by_one_zero_block(repo: Repository, tmp_path: Path, compression: str) -> None:
    """A layer tar ending with one 512-byte zero block instead of two (tarfile, GNU tar and Go
    read it; cfsctl 0.9.4 fails): pulled, its tar kept bit for bit, its entries all there."""
    import io
    import tarfile

    t = TarBuilder()
    t.dir("usr")
    t.file("usr/big", b"b" * 9000)
    t.file("usr/small", b"s")
    full = t.build()
    body = full.rstrip(b"\0")
    body += bytes(-len(body) % 512)  # the last entry's padding
    one_block = body + bytes(512)
    with tarfile.open(fileobj=io.BytesIO(one_block)) as tf:
        assert tf.getnames() == ["usr", "usr/big", "usr/small"]
    w = LayoutWriter(tmp_path / "one")
    layer = w.layer(one_block, compression)
    image = w.image([layer], architecture=HOST)
    w.write_index([w.tagged(image, "one")])
    result = oci.pull(repo, f"oci:{tmp_path / 'one'}:one", "t")
    assert result.layers[0][0] == layer.diff_id
    out = io.BytesIO()
    from composefs.oci import layer as oci_layer

    oci_layer.layer_tar(repo, layer.diff_id, out)
    assert out.getvalue() == one_block
    names = [e.path for e in oci_layer.layer_entries(repo, layer.diff_id)]
    assert names == [b"/usr", b"/usr/big", b"/usr/small"]
    assert oci.oci_fsck(repo).ok
    assert repo.fsck().ok
