"""Crash consistency: a pull killed with SIGKILL at each ``composefs._faults`` point leaves a
repository that fsck (ours and cfsctl's) calls clean, with nothing tagged before the tag is
written; ``gc`` collects the leftovers and a second pull gives the image a pull into a fresh
repository gives (issue 10)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from composefs import _faults
from support import pulls

#: the refs each pull writes: the manifest tag (and for ``one``, pulled through an image index,
#: the index tag)
ONE_REFS = ["oci-index/one", "oci/one"]
TWO_REFS = ["oci/two"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> pulls.SharedLayout:
    return pulls.shared_layout(tmp_path_factory.mktemp("crash") / "layout")


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
    pulls.check_repository(repo)
    pulls.cli(repo, "gc")
    ids["objects"] = " ".join(pulls.objects(repo))
    return ids


def test_fault_unset_is_inert() -> None:
    _faults.point("no-such-point")  # returns: the process is still here
    for name in _faults.POINTS:
        assert name != _faults._ARMED


@pytest.mark.parametrize("point", _faults.POINTS)
def test_kill_at(
    point: str, layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path
) -> None:
    repo = pulls.init(tmp_path / "repo")
    # the second image first: its layers are shared with the one whose pull is killed
    code, out = pulls.finish(pulls.pull(repo, layout.ref("two"), "two"))
    assert code == 0, out

    code, out = pulls.finish(pulls.pull(repo, layout.ref("one"), "one", fault=point))
    assert code == -signal.SIGKILL, f"not killed at {point} (exit {code}): {out}"

    # whatever the point: consistent, and the other image is untouched
    pulls.check_repository(repo)
    tagged_after_kill = pulls.tags(repo)
    if point == "tagged":
        assert tagged_after_kill == ["one", "two"]
        assert pulls.image_id(repo, "one") == reference["one"]
        assert pulls.stream_refs(repo) == [*ONE_REFS, *TWO_REFS]
    else:
        assert tagged_after_kill == ["two"], f"tagged before the tag was written ({point})"
        assert pulls.stream_refs(repo) == TWO_REFS, f"a ref written before the tag ({point})"
    assert pulls.image_id(repo, "two") == reference["two"]

    # gc collects what the killed pull left (objects, untagged streams and images)
    pulls.cli(repo, "gc")
    pulls.check_repository(repo)
    assert pulls.image_id(repo, "two") == reference["two"]

    # a second pull completes the image, as a pull into a fresh repository would
    code, out = pulls.finish(pulls.pull(repo, layout.ref("one"), "one"))
    assert code == 0, out
    assert pulls.tags(repo) == ["one", "two"]
    assert pulls.image_id(repo, "one") == reference["one"]
    pulls.check_repository(repo)
    # and once collected, the repository holds exactly what a fresh one does
    pulls.cli(repo, "gc")
    assert " ".join(pulls.objects(repo)) == reference["objects"]


@pytest.mark.parametrize("point", ["layer-objects-written", "image-linked", "before-tag"])
def test_kill_then_pull_without_gc(
    point: str, layout: pulls.SharedLayout, reference: dict[str, str], tmp_path: Path
) -> None:
    """A pull after a crash, without gc in between, reuses what the killed one stored."""
    repo = pulls.init(tmp_path / "repo")
    code, out = pulls.finish(pulls.pull(repo, layout.ref("one"), "one", fault=point))
    assert code == -signal.SIGKILL, out
    assert pulls.tags(repo) == []
    assert pulls.stream_refs(repo) == []
    code, out = pulls.finish(pulls.pull(repo, layout.ref("one"), "one"))
    assert code == 0, out
    assert pulls.image_id(repo, "one") == reference["one"]
    pulls.check_repository(repo)
