"""The repository: layout, metadata, objects, streams, refs, locking, writability, gc, fsck."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from composefs import fsverity, splitstream
from composefs.errors import (
    OldFormatRepository,
    RepositoryError,
    RepositoryMetadataInvalid,
    RepositoryMetadataMissing,
    RepositoryNotWritable,
)
from composefs.fsverity import Algorithm
from composefs.repository import RepoMetadata, Repository, object_pathname, to_id
from support import need_root, run


@pytest.fixture(params=[Algorithm.SHA256, Algorithm.SHA512], ids=["sha256", "sha512"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    r, created = Repository.init(tmp_path / "repo", request.param, insecure=True)
    assert created
    request.addfinalizer(r.close)
    return r


def test_init_writes_cfsctl_metadata(tmp_path: Path) -> None:
    repo, created = Repository.init(tmp_path / "r", insecure=True)
    repo.close()
    assert created
    assert (tmp_path / "r/meta.json").read_text() == (
        '{\n  "version": 1,\n  "algorithm": "fsverity-sha512-12",\n  "features": {\n'
        '    "compatible": [],\n    "read-only-compatible": [\n      "v1_erofs"\n    ],\n'
        '    "incompatible": []\n  },\n  "erofs_formats": {\n    "default": 1\n  }\n}\n'
    )
    assert os.listdir(tmp_path / "r") == ["meta.json"]
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o700 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_init_is_idempotent_and_refuses_other_config(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", Algorithm.SHA256, insecure=True)[0].close()
    repo, created = Repository.init(tmp_path / "r", Algorithm.SHA256, insecure=True)
    repo.close()
    assert not created
    with pytest.raises(
        RepositoryError, match=r"different configuration.*algorithm: fsverity-sha256"
    ):
        Repository.init(tmp_path / "r", Algorithm.SHA512, insecure=True)
    with pytest.raises(RepositoryError, match=r"erofs_version: V1.*erofs_version: V2"):
        Repository.init(tmp_path / "r", Algorithm.SHA256, insecure=True, erofs_version=2)


def test_erofs_v2_metadata(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", insecure=True, erofs_version=2)[0].close()
    meta = json.loads((tmp_path / "r/meta.json").read_text())
    assert meta["features"]["read-only-compatible"] == []
    assert meta["erofs_formats"] == {"default": 2}


def test_secure_init_fails_without_fsverity(tmp_path: Path) -> None:
    # this machine's filesystems have no fs-verity; where they do, init succeeds securely
    try:
        repo, _ = Repository.init(tmp_path / "r", insecure=False)
    except RepositoryError as e:
        assert "Filesystem does not support fs-verity" in str(e.__cause__)
        assert not (tmp_path / "r/meta.json").exists()
    else:
        assert repo.secure
        repo.close()


def test_open_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryMetadataMissing, match=r"meta.json not found"):
        Repository.open(tmp_path / "empty")
    (tmp_path / "old/objects").mkdir(parents=True)
    with pytest.raises(OldFormatRepository, match=r"old-format"):
        Repository.open(tmp_path / "old")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/meta.json").write_text("{")
    with pytest.raises(RepositoryMetadataInvalid, match=r"failed to parse meta.json"):
        Repository.open(tmp_path / "bad")
    meta = RepoMetadata.new(Algorithm.SHA256)
    (tmp_path / "future").mkdir()
    doc = json.loads(meta.to_json())
    doc["version"] = 2
    (tmp_path / "future/meta.json").write_text(json.dumps(doc))
    with pytest.raises(RepositoryMetadataInvalid, match=r"unsupported repository format version 2"):
        Repository.open(tmp_path / "future")
    doc["version"] = 1
    doc["features"]["incompatible"] = ["warp-drive"]
    (tmp_path / "future/meta.json").write_text(json.dumps(doc))
    with pytest.raises(RepositoryMetadataInvalid, match=r"unknown incompatible features"):
        Repository.open(tmp_path / "future")
    Repository.init(tmp_path / "r", Algorithm.SHA256, insecure=True)[0].close()
    with pytest.raises(RepositoryMetadataInvalid, match=r"does not match expected"):
        Repository.open(tmp_path / "r", Algorithm.SHA512)


def test_unknown_ro_compat_feature_makes_repository_read_only(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", insecure=True)[0].close()
    doc = json.loads((tmp_path / "r/meta.json").read_text())
    doc["features"]["read-only-compatible"].append("future-thing")
    (tmp_path / "r/meta.json").write_text(json.dumps(doc))
    with Repository.open(tmp_path / "r") as repo:
        assert repo.fsck().ok
        with pytest.raises(RepositoryNotWritable, match=r"future-thing"):
            repo.ensure_object(b"x")


def test_objects_are_content_addressed_and_deduplicated(repo: Repository) -> None:
    data = b"hello world"
    object_id = repo.ensure_object(data)
    assert object_id == fsverity.digest(data, repo.algorithm)
    path = Path(repo.path, "objects", object_pathname(object_id))
    assert path.read_bytes() == data
    assert repo.ensure_object(data) == object_id
    assert len(os.listdir(path.parent)) == 1
    assert repo.read_object(object_id) == data
    assert repo.has_object(object_id)
    assert to_id(object_id).startswith(repo.algorithm.hash_name + ":")
    # no temporary files are left anywhere
    assert sorted(p.name for p in Path(repo.path).rglob(".*")) == []


def test_streaming_objects(repo: Repository, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    src = tmp_path / "src"
    src.write_bytes(data)
    object_id = repo.ensure_object_from_file(src)
    assert object_id == fsverity.digest(data, repo.algorithm)
    assert repo.read_object(object_id) == data
    assert repo.ensure_object_from_file(src) == object_id
    with open(src, "rb") as f, pytest.raises(RepositoryError, match=r"Expected 5 bytes"):
        repo.ensure_object_from_stream(f, size=5)


def test_named_tempfile_fallback(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real_open = os.open

    def no_tmpfile(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    object_id = repo.ensure_object(b"fallback" * 100)
    import io

    streamed = repo.ensure_object_from_stream(io.BytesIO(b"streamed" * 100))
    monkeypatch.undo()
    assert repo.read_object(object_id) == b"fallback" * 100
    assert repo.read_object(streamed) == b"streamed" * 100
    leftovers = [p for p in Path(repo.path).rglob("*") if p.name.startswith(".tmp-object-")]
    assert leftovers == []


def test_stream_symlinks_and_refs(repo: Repository) -> None:
    writer = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    writer.write_inline(b"abc")
    stream_id = repo.write_stream(writer, "my-stream", ref="x/y")
    root = Path(repo.path)
    assert os.readlink(root / "streams/my-stream") == f"../objects/{object_pathname(stream_id)}"
    assert os.readlink(root / "streams/refs/x/y") == "../../my-stream"
    assert repo.has_stream("my-stream") == stream_id
    assert repo.has_stream("nope") is None
    repo.name_stream("my-stream", "top")
    assert os.readlink(root / "streams/refs/top") == "../my-stream"
    assert repo.list_stream_refs() == [("top", "../my-stream"), ("x/y", "../../my-stream")]
    # re-pointing a ref replaces it atomically
    writer = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    writer.write_inline(b"other")
    repo.write_stream(writer, "other", ref="top")
    assert os.readlink(root / "streams/refs/top") == "../other"
    assert not [p for p in root.iterdir() if p.name.startswith(".symlink-")]
    with pytest.raises(RepositoryError, match=r"invalid ref name"):
        repo.name_stream("my-stream", "../escape")
    stream = repo.open_stream("refs/x/y", splitstream.BLOB_CONTENT_TYPE)
    assert stream.chunks == (b"abc",)


def test_images(repo: Repository) -> None:
    image_id = repo.write_image("some/name", b"not really an erofs image")
    root = Path(repo.path)
    assert os.readlink(root / f"images/{image_id.hex()}") == (
        f"../objects/{object_pathname(image_id)}"
    )
    assert os.readlink(root / "images/refs/some/name") == f"../../{image_id.hex()}"
    fd, verity_required = repo.open_image(image_id.hex())
    os.close(fd)
    assert not verity_required  # insecure repository without fs-verity
    fd, _ = repo.open_image("refs/some/name")
    os.close(fd)
    with pytest.raises(RepositoryError, match=r"image not found: missing"):
        repo.open_image("missing")


def test_gc_removes_unreachable_and_follows_named_refs(repo: Repository) -> None:
    layer_obj = repo.ensure_object(b"L" * 500)
    w = splitstream.Writer(repo.algorithm, splitstream.LAYER_CONTENT_TYPE)
    w.write_external(layer_obj, 500)
    layer = repo.write_stream(w, "layer")
    w = splitstream.Writer(repo.algorithm, splitstream.CONFIG_CONTENT_TYPE)
    w.add_named_ref("sha256:abc", layer)
    config = repo.write_stream(w, "config", ref="tag")
    garbage = repo.ensure_object(b"G" * 300)
    # a stream without a ref is garbage too, and its link gets pruned
    w = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    w.write_inline(b"orphan")
    orphan = repo.write_stream(w, "orphan")

    orphan_size = repo.object_size(orphan)
    dry = repo.gc(dry_run=True)
    assert dry.objects_removed == 2
    assert repo.has_object(garbage)
    result = repo.gc()
    assert (result.objects_removed, result.streams_pruned, result.images_pruned) == (2, 1, 0)
    assert result.objects_bytes == 300 + orphan_size
    for kept in (layer_obj, layer, config):
        assert repo.has_object(kept)
    assert not repo.has_object(garbage) and not repo.has_object(orphan)
    assert repo.has_stream("orphan") is None
    assert repo.fsck().ok
    # roots given by name keep a stream alive
    w = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    w.write_inline(b"rooted")
    rooted = repo.write_stream(w, "rooted")
    assert repo.gc(["rooted"]).objects_removed == 0
    assert repo.has_object(rooted)


def test_gc_reports_dangling_refs_and_stray_files(repo: Repository) -> None:
    root = Path(repo.path)
    (root / "streams/refs").mkdir(parents=True)
    os.symlink("../gone", root / "streams/refs/dangling")
    keep = repo.ensure_object(b"k" * 100)
    (root / "objects" / object_pathname(keep)[:2] / "not-an-object").write_text("?")
    result = repo.gc()
    assert any("dangling ref streams/refs/dangling" in w for w in result.warnings)
    assert any("not-an-object" in w for w in result.warnings)
    assert result.streams_pruned == 1
    assert not (root / "streams/refs/dangling").is_symlink()


def test_fsck_reports_every_kind_of_damage(repo: Repository) -> None:
    root = Path(repo.path)
    good = repo.ensure_object(b"good" * 100)
    w = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    w.write_external(good, 400)
    missing = fsverity.digest(b"never stored", repo.algorithm)
    w.write_external(missing, 12)
    w.add_named_ref("other", missing)
    repo.write_stream(w, "s1", ref="r1")
    corrupt = repo.ensure_object(b"corrupt" * 100)
    path = root / "objects" / object_pathname(corrupt)
    path.chmod(0o644)
    path.write_bytes(b"tampered")
    (root / "objects/00").mkdir(exist_ok=True)
    (root / "objects/00/zz").write_text("")
    os.symlink("../objects/aa/bb", root / "streams/broken")
    (root / "streams/plainfile").write_text("")
    (root / "streams/refs/dir").mkdir(parents=True)
    (root / "streams/refs/dir/file").write_text("")
    (root / "streams/bad").symlink_to(f"../objects/{object_pathname(good)}")

    result = repo.fsck()
    text = "\n".join(result.errors)
    assert f"fsck: object-digest-mismatch: objects/{object_pathname(corrupt)}: measured" in text
    assert "fsck: object-invalid-name: objects/00/zz: Invalid string length" in text
    assert "fsck: broken-symlink: streams/broken" in text
    assert "fsck: entry-not-symlink: streams/plainfile" in text
    assert "fsck: unexpected-file-type: streams/refs/dir/file: RegularFile" in text
    assert f"fsck: missing-object-ref: streams/s1: {missing.hex()}" in text
    assert f"fsck: missing-named-ref: streams/s1: ref other: {missing.hex()}" in text
    assert "fsck: stream-read-failed: streams/bad: Invalid splitstream header magic value" in text
    assert not result.ok
    assert result.broken_links == 1 and result.missing_objects == 2
    assert str(result).splitlines()[0] == "meta.json: ok"
    assert f"status: {len(result.errors)} error(s)" in str(result)
    assert list(result.to_dict()) == [
        "ok",
        "has_metadata",
        "objects_checked",
        "objects_corrupted",
        "streams_checked",
        "streams_corrupted",
        "images_checked",
        "images_corrupted",
        "broken_links",
        "missing_objects",
        "errors",
    ]


def test_gc_waits_for_other_users_of_the_repository(repo: Repository) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({repo.path!r}, os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_SH)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"locked\n"
    done = threading.Event()

    def collect() -> None:
        repo.gc()
        done.set()

    worker = threading.Thread(target=collect)
    worker.start()
    time.sleep(0.3)
    assert not done.is_set(), "gc must wait for the shared lock holder"
    holder.stdin.close()
    holder.wait()
    holder.stdout.close()
    worker.join(10)
    assert done.is_set()
    # afterwards we hold a shared lock again: another shared lock is fine, exclusive is not
    fd = os.open(repo.path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_read_only_filesystem(tmp_path: Path) -> None:
    need_root()
    Repository.init(tmp_path / "r", insecure=True)[0].close()
    mnt = tmp_path / "ro"
    mnt.mkdir()
    run("mount", "--bind", tmp_path / "r", mnt)
    try:
        run("mount", "-o", "remount,bind,ro", mnt)
        with Repository.open(mnt) as repo:
            with pytest.raises(RepositoryNotWritable, match=r"read-only file system"):
                repo.ensure_object(b"x")
            with pytest.raises(RepositoryNotWritable):
                repo.gc()
            assert repo.fsck().ok
    finally:
        run("umount", mnt)


def test_no_write_permission() -> None:
    need_root()  # to run the check as another user
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="composefs-perm-"))  # pytest's tmp is root-only
    try:
        _check_no_write_permission(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _check_no_write_permission(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", insecure=True)[0].close()
    os.chmod(tmp_path / "r", 0o755)
    os.chmod(tmp_path, 0o755)
    code = (
        "import os, sys\n"
        "from composefs.repository import Repository\n"
        "from composefs.errors import RepositoryNotWritable\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: /root is not readable\n"
        f"repo = Repository.open({str(tmp_path / 'r')!r})\n"
        "try:\n"
        "    repo.ensure_object(b'x')\n"
        "except RepositoryNotWritable as e:\n"
        "    print(e, '|', e.__cause__)\n"
    )
    out = run(sys.executable, "-c", code).stdout.decode()
    assert out.startswith("Repository is not writable | [Errno 13]"), out
