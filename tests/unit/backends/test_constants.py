"""The format facts are stated once per language and agree: ``composefs.constants`` with the
native ``composefs._native.constants``, ``composefs.erofs_format`` with the native
``composefs._native.erofs_format`` (``rust/constants.rs``, ``rust/erofs/format.rs``).

A native build without those submodules fails here (it predates them); only a missing native
extension is skipped, by ``support.load_backend``'s rule (a failure in CI).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from composefs import constants, erofs_format
from support import load_backend

#: The EROFS names both sides must have (the Rust side exposes these for this comparison).
EROFS_NAMES = (
    "BLOCK_SIZE",
    "COMPOSEFS_MAGIC",
    "EROFS_MAGIC",
    "EROFS_SUPER_OFFSET",
    "SUPERBLOCK_SIZE",
    "INODE_SLOT_SIZE",
    "COMPACT_INODE_SIZE",
    "EXTENDED_INODE_SIZE",
    "LAYOUT_FLAT_PLAIN",
    "LAYOUT_FLAT_INLINE",
    "LAYOUT_CHUNK_BASED",
    "FT_REG",
    "FT_DIR",
    "FT_CHR",
    "FT_BLK",
    "FT_FIFO",
    "FT_SOCK",
    "FT_LNK",
    "XATTR_PREFIXES",
    "XATTR_FILTER_SEED",
)


def _native_submodule(name: str) -> ModuleType:
    package = load_backend("native").package
    module = getattr(package, name, None)
    assert module is not None, (
        f"composefs._native has no submodule {name!r}: the native build predates it (rebuild)"
    )
    return module  # type: ignore[no-any-return]


def _public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")]
    return sorted(names)


def _normal(value: Any) -> Any:
    """Sequences compared as tuples (a Rust ``Vec`` arrives as a list), items as bytes."""
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", constants.__all__)
def test_constant_equals_native(name: str) -> None:
    native = _native_submodule("constants")
    assert hasattr(native, name), f"composefs._native.constants lacks {name}"
    assert _normal(getattr(native, name)) == _normal(getattr(constants, name))


def test_native_constants_are_all_in_python() -> None:
    native = _native_submodule("constants")
    assert set(_public_names(native)) <= set(constants.__all__)


def test_erofs_format_has_the_shared_names() -> None:
    missing = [n for n in EROFS_NAMES if n not in erofs_format.__all__]
    assert not missing


def test_native_erofs_format_equals_python() -> None:
    native = _native_submodule("erofs_format")
    names = _public_names(native)
    assert set(EROFS_NAMES) <= set(names), "the native erofs_format lacks shared names"
    for name in names:
        assert hasattr(erofs_format, name), f"composefs.erofs_format lacks {name}"
        ours = getattr(erofs_format, name)
        assert _normal(getattr(native, name)) == _normal(ours), name


def test_erofs_format_sizes_match_the_structures() -> None:
    f = erofs_format
    assert f.SUPERBLOCK.size == f.SUPERBLOCK_SIZE
    assert f.COMPACT_INODE.size == f.COMPACT_INODE_SIZE == f.INODE_SLOT_SIZE
    assert f.EXTENDED_INODE.size == f.EXTENDED_INODE_SIZE == 2 * f.INODE_SLOT_SIZE
    assert f.DIRENT.size == f.DIRENT_SIZE
    assert f.XATTR_HEADER.size == f.XATTR_HEADER_SIZE
    assert f.XATTR_ENTRY.size == f.XATTR_ENTRY_SIZE
    assert f.COMPOSEFS_HEADER.size + f.SUPERBLOCK_SIZE <= f.EROFS_SUPER_OFFSET
    assert f.BLOCK_SIZE == 1 << f.BLOCK_BITS
    # the data layouts are the on-disk EROFS_INODE_* numbers, bits 1-3 of the format field
    assert (f.LAYOUT_FLAT_PLAIN, f.LAYOUT_FLAT_INLINE, f.LAYOUT_CHUNK_BASED) == (0, 2, 4)
    assert f.inode_format(f.LAYOUT_FLAT_INLINE, extended=True) == 0b101
    assert f.inode_layout(f.inode_format(f.LAYOUT_CHUNK_BASED, extended=False)) == 4
    assert {f.IFMT_OF_FT[ft] for ft in f.FT_OF_IFMT.values()} == set(f.FT_OF_IFMT)
