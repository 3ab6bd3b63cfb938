"""The code examples of docs/api.md run as written (the asyncio helper: pulls, concurrent
pulls, a pull cancelled with its task)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from composefs import _backend, oci
from composefs.errors import DigestMismatchError, TagNotFoundError
from composefs.oci.media_types import LAYER_MEDIA_TYPE
from composefs.oci.platform import host_platform
from composefs.oci.pull import PullCancelled, PullEvent
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"
HOST = host_platform().architecture


def _blocks(section: str) -> list[str]:
    """The ``python`` code blocks of a ``## section`` of docs/api.md."""
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)


class _Blob:
    def __init__(self, descriptor: dict[str, Any], diff_id: str) -> None:
        self.descriptor = descriptor
        self.diff_id = diff_id


def _layout(path: Path) -> None:
    """``one`` and ``two`` (small, sharing a layer) and ``big`` (two 12 MiB gzip layers)."""
    w = LayoutWriter(path)
    base = w.layer(TarBuilder().dir("usr").file("usr/base", os.urandom(20_000)).build(), "gzip")
    one = w.layer(TarBuilder().dir("usr").file("usr/one", b"1" * 3000).build(), "none")
    two = w.layer(TarBuilder().dir("usr").file("usr/two", b"2" * 3000).build(), "none")
    big = []
    for i in range(2):
        tar = TarBuilder().dir("usr").dir(f"usr/b{i}")
        for j in range(3):
            tar.file(f"usr/b{i}/f{j}", os.urandom(4 << 20))
        data = tar.build()
        blob = w.blob(gzip.compress(data, compresslevel=1, mtime=0), LAYER_MEDIA_TYPE + "+gzip")
        big.append(_Blob(blob, "sha256:" + hashlib.sha256(data).hexdigest()))
    w.write_index(
        [
            w.tagged(w.image([base, one], architecture=HOST), "one"),
            w.tagged(w.image([base, two], architecture=HOST), "two"),
            w.tagged(w.image(big, architecture=HOST), "big"),  # type: ignore[list-item]
        ]
    )


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("examples") / "layout"
    _layout(path)
    return path


def _namespace() -> dict[str, Any]:
    helper, _usage = _blocks("Threads and asyncio")
    namespace: dict[str, Any] = {}
    exec(compile(helper, str(DOC), "exec"), namespace)
    return namespace


def test_the_asyncio_example_runs(tmp_path: Path, layout: Path) -> None:
    namespace = _namespace()
    exec(compile(_blocks("Threads and asyncio")[1], str(DOC), "exec"), namespace)
    with Repository.init(tmp_path / "repo", insecure=True) as repo:
        single, both = asyncio.run(namespace["main"](repo, layout))
        assert single.tag == "one" and [r.tag for r in both] == ["one-again", "two"]
        tags = sorted(t for t, _ in oci.list_refs(repo))
        assert tags == ["big", "one", "one-again", "two"]
        assert repo.fsck().ok


def test_cancelling_the_task_stops_the_pull(
    tmp_path: Path, layout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = _namespace()
    finished = threading.Event()
    real_pull = oci.pull

    def pull(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_pull(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(namespace["oci"], "pull", pull)
    importing = threading.Event()

    def progress(event: PullEvent) -> None:
        if event.kind == "progress":
            importing.set()

    async def scenario(repo: Repository) -> None:
        task = asyncio.create_task(
            namespace["pull_async"](repo, f"oci:{layout}:big", "big", progress=progress)
        )
        while not importing.is_set():
            await asyncio.sleep(0.005)
            assert not task.done(), "the pull ended before it could be cancelled"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the helper returned only once the worker thread had stopped
        assert finished.is_set()

    with _backend.use("python"), Repository.init(tmp_path / "repo", insecure=True) as repo:
        asyncio.run(scenario(repo))
        assert oci.list_refs(repo) == []
        assert repo.fsck().ok


def test_the_error_example_catches_what_it_says(tmp_path: Path, layout: Path) -> None:
    block = _blocks("Errors to catch")[0]
    with Repository.init(tmp_path / "repo", insecure=True) as repo:
        for tag in ("one", "typo"):
            namespace: dict[str, Any] = {"repo": repo, "layout": layout, "tag": tag}
            exec(compile(block, str(DOC), "exec"), namespace)
        assert [t for t, _ in oci.list_refs(repo)] == ["one"]
    # the names it imports are the ones raised
    assert issubclass(TagNotFoundError, Exception) and issubclass(DigestMismatchError, Exception)
    assert issubclass(PullCancelled, oci.PullError)
