"""The facts the Rust core states (``rust/constants.rs``, ``rust/erofs/format.rs``) equal the
Python ones (:mod:`composefs.constants`, :mod:`composefs.erofs_format`), and the native
backend returns the named results of :mod:`composefs._contract`."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from composefs import _contract, constants
from support import load_backend, need


@pytest.fixture(scope="module")
def native() -> ModuleType:
    mod = load_backend("native")
    need(hasattr(mod, "constants"), "the native backend has no constants module (rebuild it)")
    return mod


def test_constants_agree(native: ModuleType) -> None:
    for name in constants.__all__:
        assert getattr(native.constants, name) == getattr(constants, name), name


def test_erofs_format_agrees(native: ModuleType) -> None:
    try:
        erofs_format = importlib.import_module("composefs.erofs_format")
    except ImportError:
        pytest.skip("composefs.erofs_format is not written yet")
    names = [n for n in dir(native.erofs_format) if n.isupper()]
    assert names
    shared = [n for n in names if hasattr(erofs_format, n)]
    assert shared, "no EROFS format constant in common"
    for name in shared:
        assert getattr(native.erofs_format, name) == getattr(erofs_format, name), name


def test_named_results(native: ModuleType) -> None:
    writer = native.splitstream.Writer("sha256", constants.LAYER_CONTENT_TYPE)
    writer.write_inline(b"x" * 100)
    parsed = native.splitstream.parse(writer.finish())
    assert type(parsed) is _contract.SplitstreamContents
    assert parsed.stream_size == 100
    assert parsed.content_type == constants.LAYER_CONTENT_TYPE
