"""Names never lead out of the repository (issue 10): stream, image and ref names that would
(absolute, ``..``, ``.``, empty components, NUL) are refused before anything is opened, and
symlinks inside the repository that point outside are never followed (fsck reports them)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from composefs import oci, splitstream
from composefs.errors import InvalidName, RepositoryEscape
from composefs.oci.names import ref_path
from composefs.repository import Repository, check_name
from composefs.testing import LayoutWriter, TarBuilder

ESCAPING = ["", "/etc/passwd", "../../../../etc/passwd", "a/../../b", "a//b", "a/", ".", "a\0b"]
SECRET = b"outside the repository\n"


@pytest.fixture()
def repo(tmp_path: Path) -> Iterator[Repository]:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    (tmp_path / "deep").mkdir()
    repo, _ = Repository.init(tmp_path / "deep" / "repo", insecure=True)
    with repo:
        yield repo


def _stream(repo: Repository, identifier: str, ref: str | None = None) -> bytes:
    writer = splitstream.Writer(repo.algorithm, splitstream.LAYER_CONTENT_TYPE)
    writer.write_inline(b"inline content")
    return repo.write_stream(writer, identifier, ref)


@pytest.mark.parametrize("name", ESCAPING)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidName) as e:
        check_name(name, "stream name")
    assert "invalid stream name" in str(e.value)
    assert "\0" not in str(e.value)


@pytest.mark.parametrize("name", ["abc", "refs/my/ref", "oci-layer-sha256:00", "refs/oci/a%2Fb"])
def test_check_name_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ESCAPING)
def test_every_api_refuses_before_opening(repo: Repository, name: str) -> None:
    object_id = _stream(repo, "good", "good")
    calls = [
        lambda: repo.open_stream(name),
        lambda: repo.has_stream(name),
        lambda: repo.cat(name, io.BytesIO()),
        lambda: repo.name_stream("good", name),
        lambda: repo.name_stream(name, "other"),
        lambda: repo.register_stream(object_id, name),
        lambda: repo.open_image(name),
        lambda: repo.has_image(name),
        lambda: repo.image_objects(name),
        lambda: repo.gc([name], dry_run=True),
        lambda: repo.read_link(name),
        lambda: repo.symlink(name, "streams/good"),
        lambda: repo.write_image(name, b"x"),
    ]
    for call in calls:
        with pytest.raises(InvalidName):
            call()


def test_the_escape_would_have_reached_the_file(repo: Repository, tmp_path: Path) -> None:
    """The relative path that `cat` is given does lead to the secret from streams/."""
    name = "../../../outside/secret"
    assert (Path(repo.path) / "streams" / name).resolve() == tmp_path / "outside" / "secret"
    with pytest.raises(InvalidName):
        repo.open_stream(name)


def test_valid_names_with_slashes_keep_working(repo: Repository) -> None:
    _stream(repo, "mine", "my/nested/ref")
    assert not repo.open_stream("refs/my/nested/ref").object_refs
    assert ("my/nested/ref", "../../../mine") in repo.list_stream_refs()
    assert ref_path("a/b%c") == "oci/a%2Fb%25c"


@pytest.mark.parametrize("tag", ["", ".", "..", "a\0b"])
def test_tags_that_cannot_be_a_file_name(repo: Repository, tag: str) -> None:
    with pytest.raises(InvalidName):
        oci.tag_image(repo, "sha256:" + "0" * 64, tag)
    with pytest.raises(InvalidName):
        oci.untag_image(repo, tag)
    with pytest.raises(InvalidName):
        oci.resolve_ref(repo, tag)


def _plant(repo: Repository, tmp_path: Path) -> None:
    """Symlinks inside the repository that lead out of it."""
    fd = repo.fd
    os.makedirs(f"{repo.path}/streams/refs", exist_ok=True)
    os.makedirs(f"{repo.path}/images/refs", exist_ok=True)
    os.symlink(str(tmp_path / "outside" / "secret"), "streams/refs/absolute", dir_fd=fd)
    os.symlink("../../../../outside/secret", "streams/refs/dotdot", dir_fd=fd)
    os.symlink("../../../outside/secret", "streams/escaping", dir_fd=fd)
    os.symlink(str(tmp_path / "outside" / "secret"), "images/refs/absolute", dir_fd=fd)
    os.symlink("../../../../outside/secret", "images/refs/dotdot", dir_fd=fd)
    os.symlink(str(tmp_path / "outside"), "streams/refs/dir", dir_fd=fd)


def test_symlinks_out_of_the_repository_are_not_followed(repo: Repository, tmp_path: Path) -> None:
    _plant(repo, tmp_path)
    for name in ["refs/absolute", "refs/dotdot", "escaping", "refs/dir/secret"]:
        with pytest.raises(RepositoryEscape):
            repo.open_stream(name)
    with pytest.raises(RepositoryEscape):
        repo.has_stream("refs/dir/secret")
    for name in ["absolute", "dotdot", "refs/absolute", "refs/dotdot"]:
        with pytest.raises(RepositoryEscape):
            repo.open_image(name)
    # listing does not walk into a directory symlink
    assert all(not name.startswith("dir/") for name, _ in repo.list_stream_refs())


def test_fsck_reports_escaping_symlinks(repo: Repository, tmp_path: Path) -> None:
    _plant(repo, tmp_path)
    result = repo.fsck()
    assert not result.ok
    escapes = [e for e in result.errors if "symlink-escapes-repository" in e]
    assert sorted(escapes) == [
        "fsck: symlink-escapes-repository: images/refs/absolute",
        "fsck: symlink-escapes-repository: images/refs/dotdot",
        "fsck: symlink-escapes-repository: streams/escaping",
        "fsck: symlink-escapes-repository: streams/refs/absolute",
        "fsck: symlink-escapes-repository: streams/refs/dir",
        "fsck: symlink-escapes-repository: streams/refs/dotdot",
    ]


def _cli(repo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", "--repo", repo, *args],
        capture_output=True,
        check=False,
    )


@pytest.fixture()
def pulled(tmp_path: Path) -> Iterator[tuple[Repository, str]]:
    layout = tmp_path / "layout"
    writer = LayoutWriter(layout)
    tar = TarBuilder().dir("usr").file("usr/a", b"a" * 200).build()
    writer.write_index([writer.tagged(writer.image([writer.layer(tar)]), "v1")])
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(SECRET)
    (tmp_path / "deep").mkdir()
    repo, _ = Repository.init(tmp_path / "deep" / "repo", insecure=True)
    with repo:
        result = oci.pull(repo, f"oci:{layout}:v1", "v1")
        yield repo, result.manifest_digest


@pytest.mark.parametrize(
    "args",
    [
        ["cat", "../../../outside/secret"],
        ["cat", "/etc/passwd"],
        ["image-objects", "../../x"],
        ["image-objects", "/etc/passwd"],
        ["mount", "../../../outside/secret", "/nonexistent"],
        ["gc", "-n", "-r", "../x"],
        ["oci", "tag", "{digest}", ".."],
        ["oci", "untag", ".."],
        ["oci", "inspect", ".."],
        ["oci", "mount", "..", "/nonexistent"],
        ["oci", "dump", ".."],
        ["oci", "compute-id", ".."],
    ],
)
def test_cli_refuses_names_that_leave(pulled: tuple[Repository, str], args: list[str]) -> None:
    repo, digest = pulled
    proc = _cli(repo.path, *[a.format(digest=digest) for a in args])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(b"Error: ")
    assert b"invalid" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert SECRET not in proc.stdout


def test_cli_symlink_out_of_the_repository(pulled: tuple[Repository, str], tmp_path: Path) -> None:
    repo, _ = pulled
    os.symlink(str(tmp_path / "outside" / "secret"), "streams/refs/evil", dir_fd=repo.fd)
    proc = _cli(repo.path, "cat", "refs/evil")
    assert proc.returncode == 1
    assert b"points outside the repository" in proc.stderr
    assert SECRET not in proc.stdout
    fsck = _cli(repo.path, "fsck")
    assert fsck.returncode == 1
    assert b"fsck: symlink-escapes-repository: streams/refs/evil" in fsck.stdout
