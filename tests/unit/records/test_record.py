"""``composefs._record``: the records behave as the frozen dataclasses they replace (same
constructor, equality, hash, repr, immutability, ``replace``/``asdict``)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any, ClassVar

import pytest

from composefs._record import FrozenInstanceError, asdict, field, fields, record, replace
from composefs.oci.documents import Descriptor
from composefs.oci.platform import Platform


@record
class Point:
    x: int
    y: int = 0
    label: str | None = None
    kind: ClassVar[str] = "point"

    def norm(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclasses.dataclass(frozen=True)
class DataPoint:
    x: int
    y: int = 0
    label: str | None = None
    kind: ClassVar[str] = "point"


@record(frozen=False)
class Counter:
    n: int = 0
    seen: list[str] = field(default_factory=list)
    secret: str = field(default="", repr=False)


@record
class Point3(Point):
    z: int = 0


def test_construction_like_a_dataclass() -> None:
    for args, kwargs in [((1,), {}), ((1, 2), {}), ((), {"x": 1, "label": "a"}), ((1, 2, "b"), {})]:
        ours, theirs = Point(*args, **kwargs), DataPoint(*args, **kwargs)
        assert (ours.x, ours.y, ours.label) == (theirs.x, theirs.y, theirs.label)
        assert repr(ours) == repr(theirs).replace("DataPoint", "Point")
    for args, kwargs in [((), {}), ((1, 2, "c", 4), {}), ((1,), {"x": 2}), ((1,), {"z": 2})]:
        with pytest.raises(TypeError):
            DataPoint(*args, **kwargs)
        with pytest.raises(TypeError):
            Point(*args, **kwargs)
    assert Point.kind == "point" and "kind" not in fields(Point)
    assert Point(3, -4).norm() == 7
    assert Point.__match_args__ == ("x", "y", "label")


def test_equality_hash_and_immutability() -> None:
    a, b = Point(1, 2), Point(1, 2)
    assert a == b and hash(a) == hash(b) and a != Point(1, 3)
    assert a != DataPoint(1, 2)  # another class is never equal
    assert len({a, b, Point(2)}) == 2
    with pytest.raises(FrozenInstanceError):
        a.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del a.y
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a


def test_mutable_records_and_factories() -> None:
    c = Counter()
    c.n += 1
    c.seen.append("x")
    assert Counter().seen == [] and c.seen == ["x"]  # a new list each time
    assert repr(Counter(secret="s")) == "Counter(n=0, seen=[])"
    with pytest.raises(TypeError):
        hash(c)


def test_inheritance_replace_and_asdict() -> None:
    p = Point3(1, 2, "l", 3)
    assert fields(p) == ("x", "y", "label", "z")
    assert replace(p, z=9) == Point3(1, 2, "l", 9)
    assert asdict(Counter(1, ["a"])) == {"n": 1, "seen": ["a"], "secret": ""}
    nested: Any = {"points": [Point(1)], "pair": (Point(2), None)}
    assert asdict(nested) == {
        "points": [{"x": 1, "y": 0, "label": None}],
        "pair": ({"x": 2, "y": 0, "label": None}, None),
    }


def test_the_package_records() -> None:
    d = Descriptor("application/x", "sha256:" + "0" * 64, 3)
    assert d == Descriptor(media_type="application/x", digest="sha256:" + "0" * 64, size=3)
    assert replace(d, size=4).size == 4 and d.platform is None
    p = Platform("linux", "arm64", "v8")
    assert str(p) == "linux/arm64/v8" and hash(p) == hash(Platform("linux", "arm64", "v8"))
    assert asdict(p) == {"os": "linux", "architecture": "arm64", "variant": "v8"}
