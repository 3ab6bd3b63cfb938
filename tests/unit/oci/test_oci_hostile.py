"""Hostile ``oci:`` layouts and stored documents (issue 10): FIFOs and devices, oversized and
deeply nested JSON, fields of the wrong type, huge indexes, control characters, names that
would leave the layout. Every case is one ``Error:`` chain from the CLI (never a traceback,
never a hang) and one of our exceptions from the API."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from composefs import oci
from composefs.errors import ComposefsError
from composefs.oci import documents, platform
from composefs.oci.documents import SIZE_LIMITS, DocumentError, quote
from composefs.oci.layout import LayoutError, LayoutSource
from composefs.oci.media_types import CONFIG_MEDIA_TYPE, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE
from composefs.oci.platform import Platform, format_platforms, host_platform
from composefs.oci.reference import ImageReferenceError, parse_layout_name
from composefs.oci.source import Descriptor
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture
DEEP = b"[" * 100_000 + b"]" * 100_000
#: a subprocess that takes this long has hung (every case here fails in well under a second)
TIMEOUT = 60


def cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        capture_output=True,
        check=False,
        timeout=TIMEOUT,
    )


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest[len("sha256:") :]


def _layout(path: Path) -> dict[str, Any]:
    """A one-layer image for this host tagged ``t``; returns the paths and descriptors."""
    w = LayoutWriter(path)
    layer = w.layer(TarBuilder().dir("usr").file("usr/f", b"f" * 100).build(), "none")
    manifest = w.image([layer], architecture=HOST)
    w.write_index([w.tagged(manifest, "t")])
    doc = json.loads(_blob_path(path, manifest["digest"]).read_bytes())
    return {"writer": w, "manifest": manifest, "config": doc["config"], "layer": layer.descriptor}


def _pull_fails(tmp_path: Path, layout: Path, *expected: str, tag: str = "t") -> str:
    """``composefs oci pull`` of ``layout`` fails with one error chain containing
    ``expected``; the API raises a :class:`ComposefsError` too. Returns stderr."""
    repo = tmp_path / "repo"
    if not repo.exists():
        assert cli("--repo", repo, "init", "--insecure").returncode == 0
    # -q: no progress lines, stderr is the error alone
    proc = cli("--repo", repo, "-q", "oci", "pull", f"oci:{layout}:{tag}", "x")
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    assert err.startswith(f"Error: Importing OCI layout from {layout}\n\nCaused by:\n"), err
    for text in expected:
        assert text in err, err
    with Repository.open(repo) as r, pytest.raises(ComposefsError):
        oci.pull(r, f"oci:{layout}:{tag}")
    with Repository.open(repo) as r:
        assert oci.list_refs(r) == []
    return err


# -- 1. only regular files, every document with a size cap ---------------------------------


@pytest.mark.parametrize("which", ["index.json", "oci-layout", "manifest", "config", "layer"])
def test_fifo_is_refused_not_waited_on(tmp_path: Path, which: str) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    if which in ("index.json", "oci-layout"):
        path = layout / which
    else:
        path = _blob_path(layout, info[which]["digest"])
    path.unlink()
    os.mkfifo(path)
    _pull_fails(tmp_path, layout, "not a regular file")


@pytest.mark.parametrize("which", ["index.json", "oci-layout", "manifest"])
def test_symlink_to_dev_zero_is_refused(tmp_path: Path, which: str) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    path = (
        layout / which
        if "." in which or "-" in which
        else _blob_path(layout, info[which]["digest"])
    )
    path.unlink()
    path.symlink_to("/dev/zero")
    _pull_fails(tmp_path, layout, "not a regular file")


def test_size_limits() -> None:
    assert SIZE_LIMITS == {
        "manifest": 4 << 20,
        "index": 4 << 20,
        "config": 8 << 20,
        "oci-layout": 64 << 10,
    }


@pytest.mark.parametrize(("name", "kind"), [("index.json", "index"), ("oci-layout", "oci-layout")])
def test_oversized_layout_documents(tmp_path: Path, name: str, kind: str) -> None:
    layout = tmp_path / "layout"
    _layout(layout)
    path = layout / name
    doc = path.read_bytes()
    path.write_bytes(doc + b" " * (SIZE_LIMITS[kind] + 1 - len(doc)))
    _pull_fails(tmp_path, layout, f"{name} is too large", str(SIZE_LIMITS[kind]))
    path.write_bytes(doc + b" " * (SIZE_LIMITS[kind] - len(doc)))  # exactly at the limit: fine
    repo = tmp_path / "repo"
    assert cli("--repo", repo, "oci", "pull", f"oci:{layout}:t").returncode == 0


def test_huge_declared_layer_size(tmp_path: Path) -> None:
    """A layer whose descriptor claims 2**62 bytes: refused at the size check, nothing read."""
    layout = tmp_path / "layout"
    info = _layout(layout)
    _edit_manifest(layout, info, lambda m: m["layers"][0].__setitem__("size", 2**62))
    _pull_fails(tmp_path, layout, f"Expected size {2**62} but found")


def test_oversized_blobs(tmp_path: Path) -> None:
    """A manifest over 4 MiB (and a config over 8 MiB) is refused before it is read."""
    layout = tmp_path / "layout"
    info = _layout(layout)
    w: LayoutWriter = info["writer"]
    manifest = json.loads(_blob_path(layout, info["manifest"]["digest"]).read_bytes())
    manifest["annotations"] = {"pad": "x" * SIZE_LIMITS["manifest"]}
    big = w.json_blob(manifest, MANIFEST_MEDIA_TYPE, platform=info["manifest"]["platform"])
    w.write_index([w.tagged(big, "t")])
    _pull_fails(tmp_path, layout, "blob is too large", str(SIZE_LIMITS["manifest"]))
    config = json.loads(_blob_path(layout, info["config"]["digest"]).read_bytes())
    config["pad"] = "x" * SIZE_LIMITS["config"]
    manifest = json.loads(_blob_path(layout, info["manifest"]["digest"]).read_bytes())
    manifest["config"] = w.json_blob(config, CONFIG_MEDIA_TYPE)
    m = w.json_blob(manifest, MANIFEST_MEDIA_TYPE, platform=info["manifest"]["platform"])
    w.write_index([w.tagged(m, "t")])
    _pull_fails(tmp_path, layout, "blob is too large", str(SIZE_LIMITS["config"]))


def test_read_regular_file_checks_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert documents.read_regular_file(path.as_posix(), 10, "f") == b"x" * 10
    with pytest.raises(DocumentError, match=r"f is too large \(10 bytes, the limit is 9\)"):
        documents.read_regular_file(path.as_posix(), 9, "f")
    with pytest.raises(DocumentError, match="is not a regular file"):
        documents.read_regular_file("/dev/zero", 9, "zero")
    with pytest.raises(DocumentError, match="is not a regular file"):
        documents.read_regular_file(tmp_path.as_posix(), 9, "dir")


# -- 2. every field type-checked ------------------------------------------------------------


def _edit_index(layout: Path, info: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> None:
    entry = LayoutWriter.tagged(info["manifest"], "t")
    edit(entry)
    doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]}
    (layout / "index.json").write_text(json.dumps(doc))


def _edit_manifest(
    layout: Path, info: dict[str, Any], edit: Callable[[dict[str, Any]], Any]
) -> None:
    w: LayoutWriter = info["writer"]
    doc = json.loads(_blob_path(layout, info["manifest"]["digest"]).read_bytes())
    edit(doc)
    m = w.json_blob(doc, MANIFEST_MEDIA_TYPE, platform=info["manifest"]["platform"])
    w.write_index([w.tagged(m, "t")])


def _edit_config(layout: Path, info: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> None:
    w: LayoutWriter = info["writer"]
    config = json.loads(_blob_path(layout, info["config"]["digest"]).read_bytes())
    edit(config)
    new = w.json_blob(config, CONFIG_MEDIA_TYPE)
    _edit_manifest(layout, info, lambda m: m.__setitem__("config", new))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.__setitem__(key, value)


def _set_in(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return edit


BAD_FIELDS: dict[str, tuple[Any, Callable[[dict[str, Any]], None], str]] = {
    "index-digest-number": (_edit_index, _set("digest", 12345), "digest: expected a string"),
    "index-annotations-list": (
        _edit_index,
        _set("annotations", ["org.opencontainers.image.ref.name", "t"]),
        "annotations: expected an object of strings, found a list",
    ),
    "index-annotation-value-number": (
        _edit_index,
        _set("annotations", {"org.opencontainers.image.ref.name": 1}),
        "expected a string, found a number",
    ),
    "index-platform-string": (
        _edit_index,
        _set("platform", "linux/amd64"),
        "platform: expected an object, found a string",
    ),
    "index-platform-arch-list": (
        _edit_index,
        _set("platform", {"os": "linux", "architecture": ["amd64"]}),
        "platform.architecture: expected a string, found a list",
    ),
    "index-size-string": (_edit_index, _set("size", "12"), "size: expected an integer"),
    "index-size-bool": (_edit_index, _set("size", True), "size: expected an integer"),
    "index-size-negative": (_edit_index, _set("size", -1), "size: negative"),
    "index-size-float": (_edit_index, _set("size", 1.5), "size: expected an integer"),
    "index-media-type-number": (_edit_index, _set("mediaType", 7), "mediaType: expected a string"),
    "index-digest-path": (
        _edit_index,
        _set("digest", "sha256:../../../../etc/passwd"),
        "invalid sha256 digest",
    ),
    "manifest-layers-object": (
        _edit_manifest,
        _set("layers", {"a": 1}),
        "layers: expected a list, found an object",
    ),
    "manifest-layer-not-object": (
        _edit_manifest,
        _set_in(("layers",), ["sha256:00"]),
        "layers[0]: expected a descriptor object, found a string",
    ),
    "manifest-config-string": (
        _edit_manifest,
        _set("config", "sha256:00"),
        "config: expected a descriptor object, found a string",
    ),
    "manifest-schema-version-string": (
        _edit_manifest,
        _set("schemaVersion", "2"),
        'unsupported schemaVersion "2"',
    ),
    "manifest-layer-size-negative": (
        _edit_manifest,
        lambda m: m["layers"][0].__setitem__("size", -5),
        "layers[0].size: negative",
    ),
    "manifest-annotations-list": (
        _edit_manifest,
        _set("annotations", [1, 2]),
        "annotations: expected an object of strings, found a list",
    ),
    "config-diff-ids-numbers": (
        _edit_config,
        _set_in(("rootfs", "diff_ids"), [1]),
        "rootfs.diff_ids[0]: expected a string, found a number",
    ),
    "config-diff-ids-string": (
        _edit_config,
        _set_in(("rootfs", "diff_ids"), "x"),
        "rootfs.diff_ids",
    ),
    "config-rootfs-list": (_edit_config, _set("rootfs", []), "no rootfs.diff_ids"),
    "config-diff-id-bad-digest": (
        _edit_config,
        _set_in(("rootfs", "diff_ids"), ["md5:abc"]),
        "Expected digest algorithm sha256 but found 'md5:abc'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_fields_of_the_wrong_type(tmp_path: Path, case: str) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    where, edit, expected = BAD_FIELDS[case]
    where(layout, info, edit)
    _pull_fails(tmp_path, layout, expected)


def test_index_entries_must_be_objects(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    _layout(layout)
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": ["sha256:00", 1]}')
    _pull_fails(tmp_path, layout, "index.json.manifests[0]: expected a descriptor object")
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": {"a": 1}}')
    _pull_fails(tmp_path, layout, "index.json.manifests: expected a list, found an object")


def test_nested_index_fields_are_checked(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    w: LayoutWriter = info["writer"]
    bad = w.json_blob(
        {"schemaVersion": 2, "manifests": [{**info["manifest"], "platform": "linux"}]},
        INDEX_MEDIA_TYPE,
    )
    w.write_index([w.tagged(bad, "t")])
    _pull_fails(tmp_path, layout, f"index {bad['digest']}.manifests[0].platform: expected")


# -- 3. JSON nested 100,000 deep -------------------------------------------------------------


def test_deep_json_in_every_document(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    w: LayoutWriter = info["writer"]
    (layout / "index.json").write_bytes(DEEP)
    _pull_fails(tmp_path, layout, "index.json is not valid JSON: nested too deeply")
    (layout / "oci-layout").write_bytes(b"[" * 30_000 + b"]" * 30_000)  # under 64 KiB
    _pull_fails(tmp_path, layout, "oci-layout is not valid JSON: nested too deeply")
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    deep = w.blob(DEEP, MANIFEST_MEDIA_TYPE, platform=info["manifest"]["platform"])
    w.write_index([w.tagged(deep, "t")])
    _pull_fails(tmp_path, layout, "nested too deeply")
    w.write_index([w.tagged(w.blob(DEEP, INDEX_MEDIA_TYPE), "t")])
    _pull_fails(tmp_path, layout, "nested too deeply")
    config = w.blob(DEEP, CONFIG_MEDIA_TYPE)
    _edit_manifest(layout, info, lambda m: m.__setitem__("config", config))
    _pull_fails(tmp_path, layout, "nested too deeply")


def test_json_edge_cases() -> None:
    """Huge integers, UTF-16, NaN sizes: errors, never a ValueError traceback."""
    with pytest.raises(DocumentError, match="not valid JSON: Exceeds the limit"):
        documents.parse_json(b'{"size": 1' + b"0" * 5000 + b"}", "x")
    with pytest.raises(DocumentError, match="not UTF-8"):
        documents.parse_json('{"a": 1}'.encode("utf-16"), "x")
    desc = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha256:" + "0" * 64}
    for size in (float("nan"), 1e400, 2.0):
        with pytest.raises(DocumentError, match="size: expected an integer"):
            documents.parse_descriptor({**desc, "size": size}, "d")
    assert documents.parse_descriptor({**desc, "size": 2**62}, "d").size == 2**62


def test_deep_json_in_stored_documents(tmp_path: Path) -> None:
    from composefs.oci.names import ImageError
    from composefs.oci.streams import parse_object

    with pytest.raises(ImageError, match="parsing manifest JSON") as e:
        parse_object(DEEP, "manifest")
    assert "nested too deeply" in str(e.value.__cause__)
    with pytest.raises(DocumentError, match="nested too deeply"):
        documents.parse_json(DEEP, "x")


def test_deep_json_in_a_proxy_reply() -> None:
    from composefs.oci.proxy import ProxyError, _parse_reply

    with pytest.raises(ProxyError, match="nested too deeply"):
        _parse_reply("GetManifest", DEEP)


# -- 4. a huge index is linear ---------------------------------------------------------------


def _wide_layout(path: Path, entries: int, *, per_index: int = 20_000, last: bool = False) -> None:
    """``entries`` non-matching platforms over indexes of ``per_index`` entries (an index over
    4 MiB is refused), all tagged ``t``; ``last``: one more index whose manifest matches."""
    w = LayoutWriter(path)
    m = w.image([w.layer(TarBuilder().dir("usr").build(), "none")], architecture="riscv64")
    tagged = []
    for start in range(0, entries, per_index):
        manifests = [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": m["digest"],
                "size": m["size"],
                "platform": {"os": "linux", "architecture": f"a{i}"},
            }
            for i in range(start, min(entries, start + per_index))
        ]
        tagged.append(w.tagged(w.index(manifests), "t"))
    if last:
        tagged.append(w.tagged(w.index([m]), "t"))
    w.write_index(tagged)


def test_wide_index_pull_is_linear(tmp_path: Path) -> None:
    """100k non-matching platforms: the pull fails quickly; the work grows linearly (the
    10x bigger layout may take at most 20x longer; no absolute times asserted)."""
    timings = {}
    for n in (10_000, 100_000):
        _wide_layout(tmp_path / f"l{n}", n)
        with LayoutSource(parse_layout_name(f"{tmp_path / f'l{n}'}:t")) as src:
            start = time.perf_counter()
            with pytest.raises(oci.NoMatchingPlatform) as e:
                src.resolve("linux/amd64")
            timings[n] = time.perf_counter() - start
        assert str(e.value.__cause__).endswith("linux/a8, linux/a9, ...")
    assert timings[100_000] < 20 * max(timings[10_000], 0.01), timings
    _wide_layout(tmp_path / "last", 100_000, last=True)
    with LayoutSource(parse_layout_name(f"{tmp_path / 'last'}:t")) as src:
        assert src.resolve("linux/riscv64").digest


def test_index_fan_out_walks_each_index_once(tmp_path: Path, monkeypatch: Any) -> None:
    """An index naming the same 1,000-entry index 1,000 times ranks 1,000 manifests, not a
    million (structural: the number of platform matches is counted)."""
    w = LayoutWriter(tmp_path)
    m = w.image([w.layer(TarBuilder().dir("usr").build(), "none")], architecture="riscv64")
    inner = w.index(
        [{**m, "platform": {"os": "linux", "architecture": f"a{i}"}} for i in range(1000)]
    )
    w.write_index([w.tagged(w.index([inner] * 1000), "t")])
    calls = 0
    from composefs.oci import resolve  # the walk shared by the layout and registry sources

    real = resolve.match_rank

    def counting(candidate: Platform, wanted: Platform) -> int | None:
        nonlocal calls
        calls += 1
        return real(candidate, wanted)

    monkeypatch.setattr(resolve, "match_rank", counting)
    src = LayoutSource(parse_layout_name(f"{tmp_path}:t"))
    with src, pytest.raises(oci.NoMatchingPlatform):
        src.resolve("linux/amd64")
    assert calls == 1000


def test_format_platforms_stops_after_the_limit() -> None:
    """The list of available platforms in the error is built in one pass that stops once it
    has ``limit + 1`` distinct platforms (it was quadratic in the distinct platforms)."""
    consumed = 0

    def platforms() -> Any:
        nonlocal consumed
        for i in range(100_000):
            consumed += 1
            yield Platform("linux", f"a{i}")

    assert format_platforms(platforms(), limit=3) == "linux/a0, linux/a1, linux/a2, ..."
    assert consumed == 4
    same = [Platform("linux", "amd64")] * 100_000 + [None]
    assert format_platforms(same) == "linux/amd64"


def test_entries_without_platform_read_each_config_once(tmp_path: Path, monkeypatch: Any) -> None:
    w = LayoutWriter(tmp_path)
    m = w.image(
        [w.layer(TarBuilder().dir("usr").build(), "none")],
        architecture="riscv64",
        platform_in_descriptor=False,
    )
    w.write_index([w.tagged(m, "t")] * 2000)
    reads = 0
    real = LayoutSource.read_blob

    def counting(self: LayoutSource, desc: Descriptor, limit: int | None = None) -> bytes:
        nonlocal reads
        reads += 1
        return real(self, desc, limit)

    monkeypatch.setattr(LayoutSource, "read_blob", counting)
    src = LayoutSource(parse_layout_name(f"{tmp_path}:t"))
    with src, pytest.raises(oci.NoMatchingPlatform):
        src.resolve("linux/amd64")
    assert reads == 2  # the manifest and its config, once


# -- 6. untrusted strings are escaped in errors ---------------------------------------------


def test_quote() -> None:
    assert quote("linux/amd64") == "linux/amd64"
    assert quote("a\nb\x1b[31m\x00") == "a\\nb\\x1b[31m\\x00"
    assert quote("x\u202ey") == "x\\u202ey"
    assert quote("ünïcode") == "ünïcode"


def test_control_characters_in_errors(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    _edit_index(layout, info, _set("mediaType", "application/x\x1b[2J\n\x00"))
    err = _pull_fails(tmp_path, layout, "Unexpected media type application/x\\x1b[2J\\n\\x00")
    assert "\x1b" not in err and "\x00" not in err
    evil = {"os": "linux\x07", "architecture": "evil\x1b]0;t\x07"}
    # a platform selects among the entries of an index: the platforms it lists are escaped
    w: LayoutWriter = info["writer"]
    w.write_index([w.tagged(w.index([{**info["manifest"], "platform": evil}]), "t")])
    err = _pull_fails(tmp_path, layout, "available: linux\\x07/evil\\x1b]0;t\\x07")
    assert "\x1b" not in err and "\x07" not in err
    # a tag naming the manifest itself names the image: pulled, the warning escaped
    _edit_index(layout, info, _set("platform", evil))
    proc = cli("--repo", tmp_path / "repo", "oci", "pull", f"oci:{layout}:t", "x")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "is an image for linux\\x07/evil\\x1b]0;t\\x07, not " in err
    assert "\x1b" not in err and "\x07" not in err


def test_layer_media_type_escaped(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    info = _layout(layout)
    _edit_manifest(layout, info, lambda m: m["layers"][0].__setitem__("mediaType", "x\x1b[31mred"))
    err = _pull_fails(tmp_path, layout, "unsupported layer media type 'x\\x1b[31mred'")
    assert "\x1b" not in err


# -- names never leave the layout ------------------------------------------------------------


def test_only_layout_names_are_opened(tmp_path: Path, monkeypatch: Any) -> None:
    """Everything a pull opens relative to the layout is ``oci-layout``, ``index.json``,
    ``blobs/sha256`` or a 64-hex blob name (taken from a validated digest)."""
    layout = tmp_path / "layout"
    _layout(layout)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": MANIFEST_MEDIA_TYPE,
                        "digest": "sha256:../../../../../../etc/passwd",
                        "size": 1,
                        "annotations": {"org.opencontainers.image.ref.name": "t"},
                    }
                ],
            }
        )
    )
    names: list[str] = []
    real_open = os.open

    def recording(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if kw.get("dir_fd") is not None:
            names.append(os.fsdecode(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", recording)
    with pytest.raises(LayoutError) as e, LayoutSource(parse_layout_name(f"{layout}:t")) as src:
        src.resolve(None)
    assert "invalid sha256 digest" in str(e.value.__cause__)
    assert names == ["oci-layout", "blobs/sha256", "index.json"]
    # a descriptor made by hand is checked before any open too
    names.clear()
    with LayoutSource(parse_layout_name(f"{layout}:t")) as src:
        for digest in ("sha256:../oci-layout", "sha256:/etc/passwd", "sha256:" + "A" * 64):
            with pytest.raises(LayoutError, match="Opening blob"):
                src.read_blob(Descriptor(MANIFEST_MEDIA_TYPE, digest, 1))
    assert names == ["oci-layout", "blobs/sha256"]


def test_digest_references_are_validated(tmp_path: Path) -> None:
    for bad in ("@sha256:" + "0" * 63, "@sha256:" + "A" * 64, "@sha512:" + "0" * 128):
        with pytest.raises(ImageReferenceError):
            parse_layout_name(f"{tmp_path}{bad}")
    # not a digest at all: the whole text is the layout path (no blob is named by it)
    for odd in ("@sha256:../../x", "@sha256:" + "0" * 64 + "/.."):
        ref = parse_layout_name(f"{tmp_path}{odd}")
        assert ref.digest is None and ref.tag is None and ref.path == f"{tmp_path}{odd}"
    layout = tmp_path / "layout"
    _layout(layout)
    repo = tmp_path / "repo"
    assert cli("--repo", repo, "init", "--insecure").returncode == 0
    proc = cli("--repo", repo, "oci", "pull", f"oci:{layout}@sha256:../../../etc/passwd")
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr


def test_tags_are_never_paths(tmp_path: Path) -> None:
    """A tag is only compared with the ``ref.name`` annotations; ``../..`` finds nothing."""
    layout = tmp_path / "layout"
    _layout(layout)
    for tag in ("..", "../index.json/.."):
        ref = parse_layout_name(f"{layout}:{tag}")
        assert ref.tag is None or ref.tag == ".."
    _pull_fails(tmp_path, layout, "Tag '..' not found", tag="..")
    err = _pull_fails(tmp_path, layout, "Tag 'a\\nb\\x1b[0m' not found", tag="a\nb\x1b[0m")
    assert "\x1b" not in err


# -- stored documents read back --------------------------------------------------------------


def test_stored_index_with_bad_entries(tmp_path: Path) -> None:
    """A tampered stored index: a clear error from ``resolve_index``, not an AttributeError."""
    from composefs.oci.index import resolve_index, write_index
    from composefs.oci.names import ImageError

    layout = tmp_path / "layout"
    info = _layout(layout)
    repo_path = tmp_path / "repo"
    with Repository.init(repo_path, "sha256", insecure=True)[0] as repo:
        result = oci.pull(repo, f"oci:{layout}:t")
        raw = json.dumps({"manifests": [{"digest": 5, "mediaType": MANIFEST_MEDIA_TYPE}]}).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        write_index(repo, [(digest, raw)], info["manifest"]["digest"], result.manifest_verity)
        with pytest.raises(ImageError, match="Reading stored index") as e:
            resolve_index(repo, digest, platform.parse_platform(f"linux/{HOST}"))
        assert "digest: expected a string, found a number" in str(e.value.__cause__)


def test_stored_index_fan_out_is_walked_once(tmp_path: Path, monkeypatch: Any) -> None:
    """``resolve_index`` over a stored index naming one 1,000-entry index 1,000 times ranks
    1,000 entries (structural: platform matches counted), and the error lists 10."""
    from composefs.oci import index as index_module
    from composefs.oci.names import ImageError

    layout = tmp_path / "layout"
    info = _layout(layout)
    with Repository.init(tmp_path / "repo", "sha256", insecure=True)[0] as repo:
        result = oci.pull(repo, f"oci:{layout}:t")
        m = info["manifest"]
        entries = [{**m, "platform": {"os": "linux", "architecture": f"a{i}"}} for i in range(999)]
        inner_raw = json.dumps({"schemaVersion": 2, "manifests": [*entries, m]}).encode()
        inner = {
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": "sha256:" + hashlib.sha256(inner_raw).hexdigest(),
            "size": len(inner_raw),
        }
        outer_raw = json.dumps({"schemaVersion": 2, "manifests": [inner] * 1000}).encode()
        outer = "sha256:" + hashlib.sha256(outer_raw).hexdigest()
        chain = [(outer, outer_raw), (inner["digest"], inner_raw)]
        write_index = index_module.write_index
        write_index(repo, chain, m["digest"], result.stored_manifest_verity or b"")
        calls = 0
        real = index_module.match_rank

        def counting(candidate: Platform, wanted: Platform) -> int | None:
            nonlocal calls
            calls += 1
            return real(candidate, wanted)

        monkeypatch.setattr(index_module, "match_rank", counting)
        with pytest.raises(ImageError, match=r"available: linux/a0, .*linux/a9, \.\.\.$"):
            index_module.resolve_index(repo, outer, platform.parse_platform("linux/riscv64"))
        assert calls == 1000
