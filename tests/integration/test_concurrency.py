"""Concurrent pulls into one repository (issue 10): pulls sharing layers, the same image three
times, pull + gc, pull + untag + gc. Processes are started, loaded, then released together
(:func:`support.pulls.release`), a few rounds each. Afterwards both fscks are clean, the image
ids are those of a sequential pull and ``oci images`` lists what was tagged.

``gc`` takes the repository's lock exclusively while every open repository (a pull's too)
holds it shared, so a collection runs before or after a pull, never in the middle of one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import pulls

ROUNDS = 3


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> pulls.SharedLayout:
    return pulls.shared_layout(tmp_path_factory.mktemp("concurrency") / "layout")


@pytest.fixture(scope="module")
def reference(
    layout: pulls.SharedLayout, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Image ids of a sequential pull of both images into a fresh repository."""
    repo = pulls.init(tmp_path_factory.mktemp("reference") / "repo")
    ids = {}
    for name in ("one", "two"):
        code, out = pulls.finish(pulls.pull(repo, layout.ref(name), name))
        assert code == 0, out
        ids[name] = pulls.image_id(repo, name)
    return ids


def _round(tmp_path: Path, i: int) -> tuple[Path, Path]:
    return pulls.init(tmp_path / f"repo{i}"), tmp_path / f"go{i}"


def _all_ok(results: list[tuple[int, str]]) -> None:
    for code, out in results:
        assert code == 0, out


def test_pulls_sharing_layers(
    layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path
) -> None:
    for i in range(ROUNDS):
        repo, go = _round(tmp_path, i)
        procs = [pulls.start(go, repo, "oci", "pull", layout.ref(n), n) for n in ("one", "two")]
        _all_ok(pulls.release(go, procs))
        assert pulls.tags(repo) == ["one", "two"]
        for name in ("one", "two"):
            assert pulls.image_id(repo, name) == reference[name]
        pulls.check_repository(repo)


def test_same_image_three_times(
    layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path
) -> None:
    for i in range(ROUNDS):
        repo, go = _round(tmp_path, i)
        names = ("one", "one", "other")
        procs = [pulls.start(go, repo, "oci", "pull", layout.ref("one"), n) for n in names]
        _all_ok(pulls.release(go, procs))
        assert pulls.tags(repo) == ["one", "other"]
        assert pulls.image_id(repo, "one") == pulls.image_id(repo, "other") == reference["one"]
        pulls.check_repository(repo)


def test_pull_and_gc(layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path) -> None:
    """gc never removes what a running pull stored but has not tagged yet; the layers of an
    untagged image (garbage when gc starts) are re-stored or kept, never left half."""
    for i in range(ROUNDS):
        repo, go = _round(tmp_path, i)
        # garbage sharing layers with the image being pulled: an untagged pull of ``two``
        code, out = pulls.finish(pulls.pull(repo, layout.ref("two"), "two"))
        assert code == 0, out
        pulls.cli(repo, "oci", "untag", "two")
        procs = [
            pulls.start(go, repo, "oci", "pull", layout.ref("one"), "one"),
            pulls.start(go, repo, "gc"),
        ]
        _all_ok(pulls.release(go, procs))
        assert pulls.tags(repo) == ["one"]
        assert pulls.image_id(repo, "one") == reference["one"]
        pulls.check_repository(repo)
        # a second collection keeps the image whole
        pulls.cli(repo, "gc")
        assert pulls.image_id(repo, "one") == reference["one"]
        pulls.check_repository(repo)


def test_pull_untag_and_gc(
    layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path
) -> None:
    for i in range(ROUNDS):
        repo, go = _round(tmp_path, i)
        code, out = pulls.finish(pulls.pull(repo, layout.ref("two"), "two"))
        assert code == 0, out
        procs = [
            pulls.start(go, repo, "oci", "pull", layout.ref("one"), "one"),
            pulls.start(go, repo, "oci", "untag", "two"),
            pulls.start(go, repo, "gc"),
        ]
        _all_ok(pulls.release(go, procs))
        assert pulls.tags(repo) == ["one"]
        assert pulls.stream_refs(repo) == ["oci-index/one", "oci/one"]
        assert pulls.image_id(repo, "one") == reference["one"]
        pulls.check_repository(repo)
        # and ``two`` can be pulled again over whatever the collection left
        code, out = pulls.finish(pulls.pull(repo, layout.ref("two"), "two"))
        assert code == 0, out
        assert pulls.image_id(repo, "two") == reference["two"]
        pulls.check_repository(repo)
