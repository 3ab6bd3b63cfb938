"""The splitstream reader: mutated splitstream files give the same result or the same
``ValueError`` text in both backends, and the public ``composefs.splitstream.parse`` raises only
``SplitStreamError``."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given

from composefs import _backend, constants, splitstream
from composefs._backend import Backend
from composefs.errors import SplitStreamError
from fuzz.conftest import FUZZ
from support import load_backend
from support.mutations import seeded


def _seeds() -> list[bytes]:
    pure = load_backend("python")
    out = []
    for algorithm, size in (("sha256", 32), ("sha512", 64)):
        w = pure.splitstream.Writer(algorithm, constants.LAYER_CONTENT_TYPE)
        w.write_inline(b"header" * 100)
        w.write_external(hashlib.sha512(b"a").digest()[:size], 4096)
        w.write_inline(b"padding")
        w.write_external(hashlib.sha512(b"b").digest()[:size], 100)
        w.add_named_ref("sha256:" + "ab" * 32, hashlib.sha512(b"c").digest()[:size])
        out.append(w.finish())
        w = pure.splitstream.Writer(algorithm, constants.CONFIG_CONTENT_TYPE)
        w.write_inline(b'{"config": true}')
        out.append(w.finish())
    return out


SEEDS = _seeds()


def _outcome(b: Backend, data: bytes) -> tuple[str, Any]:
    try:
        return ("ok", b.splitstream.parse(data))
    except ValueError as e:
        return ("error", str(e))


@pytest.fixture(scope="module")
def both() -> tuple[Backend, Backend]:
    return load_backend("python"), load_backend("native")


@FUZZ
@given(data=seeded(SEEDS))
def test_backends_agree(both: tuple[Backend, Backend], data: bytes) -> None:
    pure, native = both
    assert _outcome(pure, data) == _outcome(native, data)


@FUZZ
@given(data=seeded(SEEDS))
def test_public_parse_raises_only_our_error(data: bytes) -> None:
    for name in ("python", "native"):
        with _backend.use(name):
            try:
                stream = splitstream.parse(data)
            except SplitStreamError:
                continue
            assert stream.stream_size >= 0
