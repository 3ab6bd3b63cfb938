"""Pre-0.7 repositories (no ``meta.json``): inference, upgrade, ``ensure``, ``reset_metadata``;
the same against cfsctl is in tests/interop/test_cli_surface_interop.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from composefs import fsverity
from composefs.errors import OldFormatRepository, RepositoryError, RepositoryMetadataMissing
from composefs.fsverity import Algorithm
from composefs.object_ids import object_pathname
from composefs.repo_metadata import RepoMetadata, infer_metadata, reset_metadata
from composefs.repository import EnsureStatus, Repository


def put_object(repo: Path, data: bytes, hash_name: str = "sha512") -> bytes:
    object_id = fsverity.digest(data, hash_name)
    path = repo / "objects" / object_pathname(object_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return object_id


@pytest.mark.parametrize("hash_name", ["sha256", "sha512"])
def test_upgrade_infers_algorithm_and_writes_v1_metadata(tmp_path: Path, hash_name: str) -> None:
    put_object(tmp_path, b"x" * 1000, hash_name)
    with pytest.raises(OldFormatRepository):
        Repository.open(tmp_path)
    repo, upgraded = Repository.open_upgrade(tmp_path)
    with repo:
        assert upgraded
        assert repo.algorithm is Algorithm(hash_name)
        assert repo.erofs_version == 1
        assert not repo.secure  # the object has no fs-verity
    meta = (tmp_path / "meta.json").read_bytes()
    assert meta == RepoMetadata.new(Algorithm(hash_name)).to_json()
    repo, upgraded = Repository.open_upgrade(tmp_path)
    repo.close()
    assert not upgraded


def test_inference_never_opens_special_files(tmp_path: Path) -> None:
    """A FIFO, a symlink or a directory with an object's name is skipped (a FIFO would block
    the open forever); a name of the wrong length is ignored."""
    objects = tmp_path / "objects"
    (objects / "aa").mkdir(parents=True)
    os.mkfifo(objects / "aa" / ("1" * 126))
    os.symlink("/dev/zero", objects / "aa" / ("2" * 126))
    (objects / "aa" / ("3" * 62)).mkdir()
    (objects / "aa" / "short").write_bytes(b"")
    os.symlink("/etc", objects / "bb")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result: list[object] = []
        worker = threading.Thread(target=lambda: result.append(_infer(fd)), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "inference blocked on a special file"
        assert isinstance(result[0], RepositoryError)
        assert "no objects found in repository" in str(result[0])
        put_object(tmp_path, b"real", "sha256")
        assert infer_metadata(fd) == (Algorithm.SHA256, False)
    finally:
        os.close(fd)


def _infer(fd: int) -> object:
    try:
        return infer_metadata(fd)
    except RepositoryError as e:
        return e


def test_upgrade_checks_the_expected_algorithm_before_writing(tmp_path: Path) -> None:
    put_object(tmp_path, b"y" * 100, "sha512")
    with pytest.raises(RepositoryError, match="inferred algorithm fsverity-sha512-12 is not"):
        Repository.open_upgrade(tmp_path, "sha256")
    assert not (tmp_path / "meta.json").exists()
    (tmp_path / "objects").rename(tmp_path / "gone")
    with pytest.raises(RepositoryMetadataMissing):
        Repository.open_upgrade(tmp_path)


def test_ensure(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    repo, status = Repository.ensure(path, "sha256", insecure=True, erofs_version=2)
    repo.close()
    assert status is EnsureStatus.CREATED
    repo, status = Repository.ensure(path, "sha256", insecure=False, erofs_version=1)
    with repo:
        assert status is EnsureStatus.OPENED
        assert repo.erofs_version == 2 and not repo.secure
    with pytest.raises(RepositoryError, match="Ensuring repository at"):
        Repository.ensure(path, "sha512", insecure=True)
    legacy = tmp_path / "legacy"
    put_object(legacy, b"z" * 5000)
    repo, status = Repository.ensure(legacy, "sha512")
    repo.close()
    assert status is EnsureStatus.UPGRADED


def test_reset_metadata_keeps_objects_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    repo_path = tmp_path / "repo"
    Repository.init(repo_path, "sha512", insecure=True)[0].close()
    object_id = put_object(repo_path, b"o" * 300)
    (repo_path / "streams" / "refs").mkdir(parents=True)
    os.symlink(outside, repo_path / "images")
    reset_metadata(str(repo_path))
    assert sorted(p.name for p in repo_path.iterdir()) == ["objects"]
    assert (outside / "precious").read_bytes() == b"keep"
    assert (repo_path / "objects" / object_pathname(object_id)).exists()
