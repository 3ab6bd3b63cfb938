"""The EROFS reader (``composefs.erofs``: ``read_image_info``, ``collect_objects``, image ids)
and the dumpfile parser + EROFS writer (``erofs.mkfs``, both backends): mutated images end in a
result or ``ErofsError``, in bounded time; mutated dumpfiles give the same image or the same
``ValueError`` text in both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from composefs import erofs
from composefs.erofs import ErofsError
from composefs.fsverity import Algorithm
from fuzz.conftest import FUZZ, bounded
from support import load_backend
from support.mutations import seeded

DIGEST = "ab" * 32
DUMP = (
    b"/ 4096 40755 3 0 0 0 1700000000.0 - - - user.a=b\n"
    b"/usr 4096 40755 2 0 0 0 1700000000.0 - - -\n"
    b"/usr/bin 4096 40755 2 0 0 0 1700000000.0 - - -\n"
    b"/usr/bin/tool 5000 100755 2 0 0 0 1700000000.0 ab/"
    + b"ab" * 31
    + b" - "
    + DIGEST.encode()
    + b" security.capability=\\x01\\x02\n"
    b"/usr/bin/hard 0 @120777 - - - - 0.0 /usr/bin/tool - -\n"
    b"/usr/bin/small 5 100644 1 0 0 0 1700000000.0 - hello -\n"
    b"/usr/lib 3 120777 1 0 0 0 1700000000.0 bin - -\n"
    b"/dev 4096 40755 2 0 0 0 1700000000.0 - - -\n"
    b"/dev/null 0 20666 1 0 0 259 1700000000.0 - - -\n"
    b"/fifo 0 10644 1 0 0 0 1700000000.0 - - - trusted.overlay.redirect=/x\n"
)
SPECIAL = (Path(__file__).parents[1] / "data" / "special_v1.dump").read_bytes()
DUMPS = [DUMP, SPECIAL]
IMAGES = [load_backend("python").erofs.mkfs(d, v) for d in DUMPS for v in (0, 1, 2)]
SHA256 = Algorithm.from_hash_name("sha256")


@FUZZ
@given(image=seeded(IMAGES, max_ops=6))
def test_reader_raises_only_erofs_error(image: bytes) -> None:
    with bounded():
        try:
            erofs.read_image_info(image)
            erofs.collect_objects(image, SHA256)
            erofs.collect_objects(image, SHA256, strict=True)
        except ErofsError:
            pass


def _mkfs(name: str, data: bytes, version: int) -> tuple[str, Any]:
    try:
        return ("ok", load_backend(name).erofs.mkfs(data, version))
    except ValueError as e:
        return ("error", str(e))


@FUZZ
@given(data=seeded(DUMPS, max_ops=6), version=st.sampled_from((0, 1, 2)))
def test_mkfs_backends_agree(data: bytes, version: int) -> None:
    with bounded():
        assert _mkfs("python", data, version) == _mkfs("native", data, version)


@pytest.mark.parametrize("image", IMAGES, ids=[f"seed{i}" for i in range(len(IMAGES))])
def test_seeds_are_valid(image: bytes) -> None:
    assert erofs.collect_objects(image, SHA256) is not None
