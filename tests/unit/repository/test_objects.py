"""The object writer (``composefs._pure.objects``, the twin of ``rust/objects.rs``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from composefs._pure import fsverity
from composefs._pure.objects import ObjectStore, Stored, object_pathname


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_store_and_dedup(tmp_path: Path, algorithm: str) -> None:
    dfd = _open_dir(tmp_path)
    try:
        store = ObjectStore(dfd, algorithm, secure=False)
        data = bytes(i * 7 % 253 for i in range(100_000))
        object_id, how = store.store(data)
        assert how is Stored.WRITTEN
        assert object_id == fsverity.digest(data, algorithm)
        path = tmp_path / object_pathname(object_id)
        assert path.read_bytes() == data
        assert oct(path.parent.stat().st_mode & 0o777) == oct(0o755 & ~_umask())
        assert store.store(data) == (object_id, Stored.PRESENT)
        # piecewise writing gives the same id
        writer = store.create()
        for i in range(0, len(data), 7777):
            writer.write(data[i : i + 7777])
        assert writer.size == len(data)
        assert writer.finish() == (object_id, Stored.PRESENT)
        assert (store.written, store.present, store.written_bytes) == (1, 2, len(data))
        # the id-first path keeps (and checks) an existing object
        assert store.ensure(object_id, data) is Stored.PRESENT
        other = b"another object"
        other_id = fsverity.digest(other, algorithm)
        assert store.ensure(other_id, other) is Stored.WRITTEN
        assert (tmp_path / object_pathname(other_id)).read_bytes() == other
    finally:
        os.close(dfd)
    # nothing but xx/ directories is left behind
    assert all(p.is_dir() and len(p.name) == 2 for p in tmp_path.iterdir())


def test_named_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    dfd = _open_dir(tmp_path)
    try:
        monkeypatch.setattr(os, "open", no_tmpfile)
        store = ObjectStore(dfd, "sha256", secure=False)
        data = b"hello world, a named temporary file"
        object_id, how = store.store(data)
        assert how is Stored.WRITTEN
        assert store.store(data) == (object_id, Stored.PRESENT)
        store.create().discard()  # its temporary name is removed
    finally:
        monkeypatch.undo()
        os.close(dfd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [object_id.hex()[:2]]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
