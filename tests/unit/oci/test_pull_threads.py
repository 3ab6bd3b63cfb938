"""Pulls running in threads of one process: a layer two of them need is imported once, the
other pull waits for it (and can be cancelled while it waits)."""

from __future__ import annotations

import importlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from composefs import oci
from composefs.oci.platform import host_platform
from composefs.oci.pull import PullCancelled, PullResult
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture
pull_module = importlib.import_module("composefs.oci.pull")


def _layout(path: Path) -> dict[str, str]:
    """Two images sharing their (large) base layer, each with a layer of its own."""
    w = LayoutWriter(path)
    base = w.layer(TarBuilder().dir("usr").file("usr/base", b"b" * 300_000).build(), "gzip")
    one = w.layer(TarBuilder().dir("usr").file("usr/one", b"1" * 1000).build(), "none")
    two = w.layer(TarBuilder().dir("usr").file("usr/two", b"2" * 1000).build(), "none")
    w.write_index(
        [
            w.tagged(w.image([base, one], architecture=HOST), "one"),
            w.tagged(w.image([base, two], architecture=HOST), "two"),
        ]
    )
    return {"base": base.diff_id, "one": one.diff_id, "two": two.diff_id}


def _counting_import(
    monkeypatch: pytest.MonkeyPatch, hold: tuple[str, threading.Event] | None = None
) -> Counter[str]:
    """``import_layer`` wrapped: imports counted by diff_id, each made slow enough for the
    other thread to arrive (or, for the layer ``hold`` names, held until its event is set)."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    real = pull_module._layer.import_layer

    def counting(repo: Repository, source: Any, diff_id: str, **kwargs: Any) -> Any:
        with lock:
            counts[diff_id] += 1
        if hold is None:
            time.sleep(0.3)
        elif hold[0] == diff_id:
            assert hold[1].wait(30)
        return real(repo, source, diff_id, **kwargs)

    monkeypatch.setattr(pull_module._layer, "import_layer", counting)
    return counts


@pytest.mark.parametrize("handles", ["shared", "separate"])
def test_a_shared_layer_is_imported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handles: str
) -> None:
    layers = _layout(tmp_path / "l")
    counts = _counting_import(monkeypatch)
    Repository.init(tmp_path / "repo", insecure=True).repository.close()
    repos = [Repository.open(tmp_path / "repo") for _ in range(1 if handles == "shared" else 2)]
    results: dict[str, PullResult] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(tag: str, repo: Repository) -> None:
        try:
            start.wait()
            results[tag] = oci.pull(repo, f"oci:{tmp_path / 'l'}:{tag}", tag)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(tag, repos[i % len(repos)]))
        for i, tag in enumerate(("one", "two"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in repos:
        r.close()
    assert not errors, errors
    assert counts == {layers["base"]: 1, layers["one"]: 1, layers["two"]: 1}
    # one of the two pulls imported the base layer, the other found it present
    present = sorted(r.stats.layers_already_present for r in results.values())
    assert present == [0, 1]
    assert results["one"].layers[0] == results["two"].layers[0]
    with Repository.open(tmp_path / "repo") as repo:
        assert sorted(t for t, _ in oci.list_refs(repo)) == ["one", "two"]
        assert repo.fsck().ok
    assert not pull_module._LAYER_LOCKS._locks  # no lock left behind


def test_a_waiting_pull_can_be_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layers = _layout(tmp_path / "l")
    hold = threading.Event()
    counts = _counting_import(monkeypatch, (layers["base"], hold))
    waiting = threading.Event()
    real_info = pull_module.log.info

    def info(message: str, *args: Any) -> None:
        if "being imported by another pull" in message:
            waiting.set()
        real_info(message, *args)

    monkeypatch.setattr(pull_module.log, "info", info)
    with Repository.init(tmp_path / "repo", insecure=True) as repo:
        first_error: list[BaseException] = []

        def first() -> None:
            try:
                oci.pull(repo, f"oci:{tmp_path / 'l'}:one", "one", threads=1)
            except BaseException as e:
                first_error.append(e)

        holder = threading.Thread(target=first)
        holder.start()
        deadline = time.monotonic() + 30
        while counts[layers["base"]] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        cancel = threading.Event()
        outcome: list[BaseException] = []

        def second() -> None:
            try:
                oci.pull(repo, f"oci:{tmp_path / 'l'}:two", "two", threads=1, cancel=cancel)
            except BaseException as e:
                outcome.append(e)

        waiter = threading.Thread(target=second)
        waiter.start()
        assert waiting.wait(30), "the second pull never waited for the base layer"
        cancel.set()
        waiter.join(5)
        assert not waiter.is_alive(), "a cancelled pull kept waiting for the layer lock"
        assert len(outcome) == 1 and isinstance(outcome[0], PullCancelled)
        hold.set()
        holder.join(60)
        assert not first_error, first_error
        assert [t for t, _ in oci.list_refs(repo)] == ["one"]
        assert counts[layers["base"]] == 1
        assert repo.fsck().ok
