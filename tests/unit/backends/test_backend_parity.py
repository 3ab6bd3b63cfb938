"""Differential tests: the pure-Python and the native backend give the same bytes or the same
``ValueError`` text for the same input.

* ``erofs.mkfs`` (dumpfile → EROFS image, versions 0, 1, 2): random trees written with
  ``composefs._pure.dumpfile.write``, then the same dumpfiles mutated line- and byte-wise
  (repeated, dropped, swapped lines, replaced fields, stray bytes), plus hand-written cases
  whose message is also pinned (cfsctl's text where cfsctl has one).
* ``erofs.mkcomposefs`` (C mkcomposefs's rules): the hand-written cases of
  ``support.mkcomposefs_cases``, random dumpfiles in C's grammar, and the mutated dumpfiles
  above with any versions and strictness.
* ``merge.merge_layers`` / ``merge.mkfs_layers``: a few layer splitstream files imported with
  ``composefs.oci.layer.import_layer`` into a temporary repository, merged in random selections
  and orders, plus truncated and corrupted streams.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composefs import _backend
from composefs._pure import dumpfile
from composefs._pure.tree import (
    BLOCK,
    CHAR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Directory,
    FileSystem,
    Leaf,
    Stat,
)
from composefs.oci.layer import import_layer
from composefs.repository import Repository
from composefs.testing import TarBuilder
from support import load_backend, need
from support.mkcomposefs_cases import CASES as MKCOMPOSEFS_CASES
from support.mkcomposefs_cases import Case as McCase
from support.mkcomposefs_cases import c_dumpfiles
from support.tars import Tar

VERSIONS = (0, 1, 2)
XATTR_MODES = ("allowlist-only", "keep-user-xattrs")
ROOT = b"/ 0 40755 2 0 0 0 0.0 - - -\n"

Outcome = tuple[str, Any]


def outcome(fn: Callable[..., Any], *args: Any) -> Outcome:
    """``("ok", result)`` or ``("error", message)`` of a call (other exceptions propagate)."""
    try:
        return ("ok", fn(*args))
    except ValueError as e:
        return ("error", str(e))


def show(result: Outcome) -> str:
    if result[0] == "error":
        return f"error: {result[1]}"
    value = result[1]
    if isinstance(value, bytes):
        return f"ok: {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}"
    return f"ok: {[hashlib.sha256(v).hexdigest()[:16] for v in value]}"


@pytest.fixture(scope="module")
def native() -> ModuleType:
    mod = load_backend("native")
    need(hasattr(mod, "erofs") and hasattr(mod.erofs, "mkfs"), "native erofs.mkfs is missing")
    need(hasattr(mod.merge, "mkfs_layers"), "native mkfs_layers missing")
    return mod


@pytest.fixture(scope="module")
def pure() -> ModuleType:
    return load_backend("python")


def same_mkfs(native: ModuleType, pure: ModuleType, data: bytes, versions: Sequence[int]) -> None:
    for version in versions:
        expected = outcome(native.erofs.mkfs, data, version)
        got = outcome(pure.erofs.mkfs, data, version)
        assert got == expected, (
            f"version {version}, dumpfile {data[:600]!r}\n"
            f"  native: {show(expected)}\n  pure:   {show(got)}"
        )


# --------------------------------------------------------------------------------------------
# hand-written cases: both backends give this exact message (None: both succeed, same bytes)

HEX64 = "5a" * 32
CASES: list[tuple[str, bytes, str | None]] = [
    # 1. DIGEST: odd length first (on the UTF-8 bytes), then the length, then the characters
    (
        "odd digest",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - 5a5\n",
        "Odd number of digits",
    ),
    (
        "odd digest of 65 hex digits",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - " + b"a" * 65 + b"\n",
        "Odd number of digits",
    ),
    (
        "odd digest counted in UTF-8 bytes",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - " + "é".encode() * 31 + b"a\n",
        "Odd number of digits",
    ),
    (
        "non-ASCII digest of 64 bytes",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - " + "é".encode() * 32 + b"\n",
        "Invalid character 'Ã' at position 0",
    ),
    (
        "non-ASCII digest of 128 bytes",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - " + b"a" * 126 + "é".encode() + b"\n",
        "Invalid character 'Ã' at position 126",
    ),
    (
        "digest of a wrong even length",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - 5a5a\n",
        "Invalid string length",
    ),
    (
        "digest with a control character",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - \x01" + b"a" * 63 + b"\n",
        "Invalid character '\\u{1}' at position 0",
    ),
    (
        "digest with a quote",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5a/5a - a'" + b"a" * 62 + b"\n",
        "Invalid character '\\'' at position 1",
    ),
    (
        "object path with a C1 control byte",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 \\x85a/" + b"a" * 62 + b" - -\n",
        "invalid object pathname: Invalid character '\\u{85}' at position 0",
    ),
    (
        "object path without its slash",
        ROOT + b"/a 70 100644 1 0 0 0 0.0 5ax" + b"a" * 62 + b" - -\n",
        "invalid object pathname: Invalid character 'x' at position 2",
    ),
    # 2. a bad hex escape keeps its cause
    (
        "bad hex escape",
        ROOT + b"/a\\xzz 0 100644 1 0 0 0 0.0 - - -\n",
        "Failed to parse dumpfile line: /a\\xzz 0 100644 1 0 0 0 0.0 - - -: "
        "Invalid hex escape zz: invalid digit found in string",
    ),
    (
        "bad hex escape with a sign",
        ROOT + b"/a 0 100644 1 0 0 0 0.0 - - - user.a=\\x-1\n",
        "Failed to parse dumpfile line: /a 0 100644 1 0 0 0 0.0 - - - user.a=\\x-1: "
        "Invalid hex escape -1: invalid digit found in string",
    ),
    (
        "bad hex escape of non-ASCII characters",
        ROOT + "/a\\xéé 0 100644 1 0 0 0 0.0 - - -\n".encode(),
        "Failed to parse dumpfile line: /a\\xéé 0 100644 1 0 0 0 0.0 - - -: "
        "Invalid hex escape éé: invalid digit found in string",
    ),
    # 3. invalid UTF-8
    (
        "invalid UTF-8",
        ROOT + b"/a 0 100644 1 0 0 0 0.0 - \xff -\n",
        "stream did not contain valid UTF-8",
    ),
    (
        "a lone surrogate",
        ROOT + b"/\xed\xa0\x80 0 10644 1 0 0 0 0.0 - - -\n",
        "stream did not contain valid UTF-8",
    ),
    # 4. a repeated non-directory path orphans the first leaf
    (
        "repeated file",
        ROOT + b"/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - x -\n",
        "invalid composefs filesystem: Orphaned leaves at indices [0]",
    ),
    (
        "repeated files, one hard-linked again",
        ROOT
        + b"/a 0 100644 1 0 0 0 0.0 - - -\n/b 0 100644 1 0 0 0 0.0 - - -\n"
        + b"/a 0 100644 1 0 0 0 0.0 - x -\n/b 0 @100644 - - - - 0.0 /a - -\n",
        "invalid composefs filesystem: Orphaned leaves at indices [0, 1]",
    ),
    (
        "hard link kept by its other name",
        ROOT
        + b"/a 0 100644 1 0 0 0 0.0 - - -\n/b 0 @100644 - - - - 0.0 /a - -\n"
        + b"/a 0 10644 1 0 0 0 0.0 - - -\n",
        None,
    ),
    (
        "repeated directory drops its children",
        ROOT
        + b"/d 0 40755 2 0 0 0 0.0 - - -\n/d/x 0 100644 1 0 0 0 0.0 - - -\n"
        + b"/d/y 0 120777 1 0 0 0 0.0 t - -\n/d 0 40700 2 0 0 0 0.0 - - -\n",
        "invalid composefs filesystem: Orphaned leaves at indices [0, 1]",
    ),
    (
        "a file replaced by a directory",
        ROOT + b"/z 0 60000 1 0 0 1 0.0 - - -\n/z 0 40755 2 0 0 0 0.0 - - -\n",
        "invalid composefs filesystem: Orphaned leaves at indices [0]",
    ),
    (
        "orphans before the whiteout check",
        ROOT
        + b"/w 0 20000 1 0 0 0 0.0 - - -\n/w2 0 @20000 - - - - 0.0 /w - -\n"
        + b"/f 0 10644 1 0 0 0 0.0 - - -\n/f 0 10644 1 0 0 0 0.0 - - -\n",
        "invalid composefs filesystem: Orphaned leaves at indices [1]",
    ),
    # 5. the whole tree is validated before a device number is met
    (
        "large rdev then hard-linked whiteout",
        ROOT
        + b"/b 0 60000 1 0 0 4294967296 0.0 - - -\n/w 0 20000 1 0 0 0 0.0 - - -\n"
        + b"/w2 0 @20000 - - - - 0.0 /w - -\n",
        "invalid composefs filesystem: whiteout inode has nlink > 1",
    ),
    (
        "hard-linked whiteout in a subdirectory, large rdev at the root",
        ROOT
        + b"/a 0 20000 1 0 0 4294967296 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n"
        + b"/d/w 0 20000 1 0 0 0 0.0 - - -\n/d/w2 0 @20000 - - - - 0.0 /d/w - -\n",
        "invalid composefs filesystem: whiteout inode has nlink > 1",
    ),
    (
        "large rdev",
        ROOT + b"/b 0 60000 1 0 0 4294967296 0.0 - - -\n",
        "device number exceeds EROFS u32 limit",
    ),
    ("largest rdev", ROOT + b"/b 0 20000 1 0 0 4294967295 0.0 - - -\n", None),
    (
        "whiteout with nlink 2 in the dumpfile",
        ROOT + b"/w 0 20000 2 0 0 0 0.0 - - -\n",
        'invalid dumpfile: whiteout entry "/w" has nlink > 1',
    ),
    # numbers: an overflow is reported where it happens, before a later bad digit
    (
        "overflow before a bad digit",
        ROOT + b"/a 99999999999999999999x 100644 1 0 0 0 0.0 - - -\n",
        "Failed to parse dumpfile line: /a 99999999999999999999x 100644 1 0 0 0 0.0 - - -: "
        "number too large to fit in target type",
    ),
    (
        "negative overflow before a bad digit",
        ROOT + b"/a 0 100644 1 0 0 0 -99999999999999999999x.0 - - -\n",
        "Failed to parse dumpfile line: /a 0 100644 1 0 0 0 -99999999999999999999x.0 - - -: "
        "number too small to fit in target type",
    ),
    (
        "bad digit before the overflow",
        ROOT + b"/a 0 1x0000000000000000000000 1 0 0 0 0.0 - - -\n",
        "Failed to parse dumpfile line: /a 0 1x0000000000000000000000 1 0 0 0 0.0 - - -: "
        "invalid digit found in string",
    ),
    ("smallest mtime", ROOT + b"/a 0 100644 1 0 0 0 -9223372036854775808.0 - - -\n", None),
    ("wrapping mtime", ROOT + b"/a 0 100644 1 0 0 0 18446744073709551615.0 - - -\n", None),
    # paths in messages: Rust's Debug (\u{..} for unprintable and combining characters)
    (
        "path rendering",
        ROOT + "/a 0 @100644 - - - - 0.0 /b'\u0658\u00a0\u200b\U000fa88bz\\xff\\x01 - -\n".encode(),
        'Hardlink target not found: "/b\'\\u{658}\\u{a0}\\u{200b}\\u{fa88b}z\\xFF\\u{1}"',
    ),
    (
        "parent rendering",
        ROOT + "/e\u0301\\x80/x 0 100644 1 0 0 0 0.0 - - -\n".encode(),
        'Parent directory not found: "/e\\u{301}\\x80": Directory entry "e\\u{301}\\x80" '
        "does not exist",
    ),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cases(native: ModuleType, pure: ModuleType, data: bytes, message: str | None) -> None:
    for version in VERSIONS:
        expected = outcome(native.erofs.mkfs, data, version)
        if message is None:
            assert expected[0] == "ok", expected
        else:
            assert expected == ("error", message)
    same_mkfs(native, pure, data, VERSIONS)


def test_version_checked_before_parsing(native: ModuleType, pure: ModuleType) -> None:
    for version in (3, -1, 256):
        same_mkfs(native, pure, b"garbage", [version])
        assert outcome(pure.erofs.mkfs, b"", version) == (
            "error",
            f"unsupported EROFS format version {version} (expected 0, 1 or 2)",
        )


def test_every_character_renders_alike(native: ModuleType, pure: ModuleType) -> None:
    """Every Unicode scalar value in a path of an error message (Rust's escape tables)."""
    code_points = [
        c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF and chr(c) not in "\t\n\r /\\"
    ]
    for start in range(0, len(code_points), 900):
        name = "".join(map(chr, code_points[start : start + 900])).encode()
        same_mkfs(native, pure, ROOT + b"/a 0 @100644 - - - - 0.0 /" + name + b" - -\n", [1])


# --------------------------------------------------------------------------------------------
# random trees, written as dumpfiles, then mutated

NAMES = st.one_of(
    st.sampled_from([b"a", b"b", b"00", b"0a", b"ff", b"7f", b".wh.x", b"\xc3\xa9", b"-", b"x y"]),
    st.binary(min_size=1, max_size=10),
).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
XATTR_NAMES = st.one_of(
    st.sampled_from(
        [
            b"user.a",
            b"user.b",
            b"trusted.overlay.opaque",
            b"trusted.overlay.x",
            b"security.selinux",
            b"security.capability",
            b"system.posix_acl_access",
            b"system.posix_acl_default",
            b"lustre.x",
            b"trusted.x",
            b"other",
        ]
    ),
    st.binary(min_size=1, max_size=12).filter(lambda k: b"\0" not in k),
)
STATS = st.builds(
    Stat,
    st.sampled_from([0o644, 0o755, 0o4755, 0o1777, 0o7777, 0]),
    st.sampled_from([0, 1, 1000, 65535, 65536, 2**32 - 1]),
    st.sampled_from([0, 100, 65536]),
    st.sampled_from([0, 1, 1_700_000_000, -1, 2**63 - 1, -(2**63)]),
    st.sampled_from([0, 1, 999_999_999]),
    st.dictionaries(XATTR_NAMES, st.sampled_from([b"", b"y", b"v" * 40, b"\x00\xff"]), max_size=3),
)
DIGESTS = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=64, max_size=64),
    st.sampled_from([bytes(32), b"\x5a" * 32]),  # shared with other files
)
SIZES = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([1, 4096, 4097, 2**32, 2**40]))
LEAVES = st.one_of(
    st.builds(lambda s, d: Leaf(FILE, s, inline=d, size=len(d)), STATS, st.binary(max_size=512)),
    st.builds(lambda s, d, n: Leaf(FILE, s, digest=d, size=n), STATS, DIGESTS, SIZES),
    st.builds(lambda s, n: Leaf(FILE, s, size=n), STATS, st.integers(1, 2**64 - 1)),
    st.builds(
        lambda s, t: Leaf(SYMLINK, s, target=t),
        STATS,
        st.one_of(
            st.binary(min_size=1, max_size=40), st.sampled_from([b"t" * 1024, b"u" * 1000])
        ).filter(lambda t: b"\0" not in t),
    ),
    st.builds(
        lambda s, r: Leaf(BLOCK, s, rdev=r),
        STATS,
        st.sampled_from([0, 1, 259, 2**32 - 1, 0, 1, 259, 2**32 - 1, 2**32, 2**64 - 1]),
    ),
    st.builds(
        lambda s, r: Leaf(CHAR, s, rdev=r),
        STATS,
        st.sampled_from([0, 0, 0, 1, 259, 2**32 - 1, 0, 0, 1, 259, 2**32]),
    ),
    st.builds(lambda s: Leaf(FIFO, s), STATS),
    st.builds(lambda s: Leaf(SOCKET, s), STATS),
)


@st.composite
def trees(draw: st.DrawFn) -> FileSystem:
    """Trees of up to 30 entries; sometimes one directory with many entries (directory blocks),
    hard links (whiteouts included: the writer must reject those), root stubs look-alikes."""
    fs = FileSystem(Directory(draw(STATS)))
    dirs = [fs.root]
    leaves: list[Leaf] = []
    for _ in range(draw(st.integers(0, 30))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        choice = draw(st.integers(0, 5))
        inode: Directory | Leaf
        if choice == 0:
            inode = Directory(draw(STATS))
            dirs.append(inode)
        elif choice == 1 and leaves:
            inode = draw(st.sampled_from(leaves))  # a hard link
            if inode.kind == CHAR and inode.rdev == 0 and draw(st.integers(0, 7)):
                continue  # a hard-linked whiteout, rejected: only now and then
        else:
            # choice 2: a whiteout (or a stub look-alike at the root)
            leaf = Leaf(CHAR, Stat(0o644), rdev=0) if choice == 2 else draw(LEAVES)
            leaves.append(leaf)
            inode = leaf
        parent.entries[name] = inode
    if draw(st.integers(0, 9)) == 0:
        bulk = Directory(Stat(0o755))
        count = draw(st.integers(100, 400))
        width = draw(st.integers(1, 60))
        for i in range(count):
            bulk.entries[b"%0*d" % (width, i)] = Leaf(FILE, Stat(0o644), inline=b"", size=0)
        fs.root.entries[b"bulk"] = bulk
    return fs


TOKENS = [
    b"-",
    b"0",
    b"+1",
    b"-1",
    b"1.-0",
    b"18446744073709551616",
    b"99999999999999999999x",
    b"\\xzz",
    b"\\x+f",
    b"\\x4",
    b"\\",
    b"\\q",
    b"@120000",
    b"x@100644",
    b"@40755",
    b"20000",
    b"60000",
    b"100644",
    b"40755",
    b"120777",
    b"10644",
    b"140755",
    b"644",
    b"5a5",
    HEX64.encode(),
    b"5a" * 64,
    "é".encode() * 32,
    "é".encode() * 31 + b"a",
    b"5a/" + b"5a" * 31,
    b"x=y",
    b"user.a=\\x3d",
    b"=",
    b"",
    b"1.1000000000",
    b"-0.0",
    b"/",
    b"/a",
    b"/a/b",
    b"//",
    b"/.",
    b"/..",
    b"4294967296",
    b"4294967295",
    b"\xff",
    b"\r",
    b"\t",
    b"a" * 65,
    b"x" * 513,
]


@st.composite
def mutated(draw: st.DrawFn, text: bytes) -> bytes:
    lines = text.split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 8))
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split(b" ")
        if op == 0:  # repeat a line somewhere (repeated paths: orphans, replaced dirs)
            lines.insert(draw(st.integers(0, len(lines))), lines[i])
        elif op == 1 and len(lines) > 1:  # drop a line (missing parents, hard link targets)
            del lines[i]
        elif op == 2:  # swap two lines
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:  # replace a field
            k = draw(st.integers(0, len(fields) - 1))
            fields[k] = draw(st.sampled_from(TOKENS))
            lines[i] = b" ".join(fields)
        elif op == 4:  # replace a field by a hard link's
            if len(fields) > 3:
                target = draw(st.sampled_from(lines)).split(b" ")[0]
                lines[i] = b" ".join([fields[0], b"0", b"@120000", b"- - - - 0.0", target, b"- -"])
        elif op == 5:  # drop or add a field
            if len(fields) > 1 and draw(st.booleans()):
                del fields[draw(st.integers(0, len(fields) - 1))]
            else:
                fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from(TOKENS)))
            lines[i] = b" ".join(fields)
        else:  # change, insert or delete one byte
            data = bytearray(b"\n".join(lines))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            byte = draw(st.one_of(st.integers(0, 255), st.sampled_from(b" \n\\-.@/=0x")))
            if op == 6 and data:
                data[pos] = byte
            elif op == 7:
                data.insert(pos, byte)
            elif data:
                del data[pos]
            lines = bytes(data).split(b"\n")
    return b"\n".join(lines)


@st.composite
def dumpfiles(draw: st.DrawFn) -> bytes:
    text = dumpfile.write(draw(trees()), raw_modes=draw(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        return text
    return draw(mutated(text))


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@settings(FUZZ, max_examples=300)
@given(data=dumpfiles(), version=st.sampled_from(VERSIONS))
def test_mkfs_fuzz(native: ModuleType, pure: ModuleType, data: bytes, version: int) -> None:
    same_mkfs(native, pure, data, [version])


@FUZZ
@given(fs=trees())
def test_mkfs_random_trees_all_versions(
    native: ModuleType, pure: ModuleType, fs: FileSystem
) -> None:
    same_mkfs(native, pure, dumpfile.write(fs), VERSIONS)


# --------------------------------------------------------------------------------------------
# erofs.mkcomposefs (C mkcomposefs's reader and writer)


def same_mkcomposefs(
    native: ModuleType, pure: ModuleType, data: bytes, low: int, high: int, strict: bool
) -> None:
    expected = outcome(native.erofs.mkcomposefs, data, low, high, strict)
    got = outcome(pure.erofs.mkcomposefs, data, low, high, strict)
    assert got == expected, (
        f"versions {low}..{high}, strict {strict}, dumpfile {data[:600]!r}\n"
        f"  native: {show(expected)}\n  pure:   {show(got)}"
    )


def _c_versions(low: int | None, high: int | None) -> tuple[int, int]:
    if low is None and high is None:
        return 0, 1
    return low or 0, high or 0


@pytest.mark.parametrize("case", MKCOMPOSEFS_CASES, ids=[c.id for c in MKCOMPOSEFS_CASES])
def test_mkcomposefs_cases(native: ModuleType, pure: ModuleType, case: McCase) -> None:
    low, high = _c_versions(case.min_version, case.max_version)
    same_mkcomposefs(native, pure, case.data, low, high, case.strict)


@FUZZ
@given(example=c_dumpfiles())
def test_mkcomposefs_fuzz(
    native: ModuleType, pure: ModuleType, example: tuple[bytes, int | None, int | None, bool]
) -> None:
    data, low, high, strict = example
    same_mkcomposefs(native, pure, data, *_c_versions(low, high), strict)


@FUZZ
@given(
    data=dumpfiles(),
    low=st.integers(-1, 2),
    high=st.integers(-1, 2),
    strict=st.booleans(),
)
def test_mkcomposefs_fuzz_mutated(
    native: ModuleType, pure: ModuleType, data: bytes, low: int, high: int, strict: bool
) -> None:
    same_mkcomposefs(native, pure, data, low, high, strict)


# --------------------------------------------------------------------------------------------
# layers: merge_layers and mkfs_layers


def _layers() -> list[bytes]:
    big = bytes(range(256)) * 300
    return [
        # 0: a base
        Tar()
        .dir("usr", mode=0o750, uid=12, xattrs={"user.u": "1", "security.selinux": "x"})
        .dir("usr/bin")
        .dir("etc")
        .dir("run")
        .dir("var")
        .file("usr/bin/tool", big, mode=0o755, xattrs={"security.capability": "\x01"})
        .file("usr/bin/small", b"tiny\n", uid=70000)
        .file("etc/passwd", b"root\n" * 200)
        .add("usr/bin/hard", tarfile.LNKTYPE, link="usr/bin/tool")
        .add("usr/bin/link", tarfile.SYMTYPE, mode=0o777, link="tool")
        .add("var/fifo", tarfile.FIFOTYPE)
        .add("var/null", tarfile.CHRTYPE, major=1, minor=3)
        .add("var/wh", tarfile.CHRTYPE)
        .file("run/stale", b"pid")
        .file("00", b"stub look-alike")
        .build(),
        # 1: whiteouts and an opaque directory
        Tar()
        .dir("usr")
        .file("usr/bin/.wh.small")
        .file("var/.wh..wh..opq")
        .file("var/new", b"new", mtime=5)
        .file(".wh.etc")
        .file("nodir/.wh.x")
        .build(),
        # 2: replacements, hard links across layers, dir over file, file over dir
        Tar()
        .add("usr/bin/hard2", tarfile.LNKTYPE, link="usr/bin/hard")
        .file("usr/bin/tool", b"replaced", xattrs={"user.comment": "a=b", "trusted.x": "t"})
        .dir("usr/bin/link")
        .file("var", b"a file now")
        .add("usr/dev", tarfile.BLKTYPE, major=8, minor=1)
        .build(),
        # 3: a device number EROFS cannot hold, xattrs of every class
        Tar()
        .dir("usr", mtime=1)
        .add("usr/huge", tarfile.CHRTYPE, major=0x1FFFFF, minor=0x1FFFFF)
        .file("usr/x", b"x", xattrs={"user.a": "", "lustre.l": "l", "security.ima": "i"})
        .build(),
        # 4: errors: a missing parent, then a hard link to nothing
        Tar().file("missing/parent", b"").build(),
        Tar().add("usr/h", tarfile.LNKTYPE, link="nothing").build(),
        # 6: no /usr at all
        Tar().dir("etc").file("etc/x", b"x").build(),
    ]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repository]:
    path: Path = tmp_path_factory.mktemp("parity") / "repo"
    with _backend.use("python"):
        r, _ = Repository.init(path, "sha256", insecure=True)
        with r:
            yield r


def import_tars(repo: Repository, tars: Sequence[bytes]) -> list[bytes]:
    """The layer splitstream files of ``tars``."""
    out = []
    with _backend.use("python"):
        for tar in tars:
            diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
            result = import_layer(repo, io.BytesIO(tar), diff_id)
            out.append(repo.read_object(result.verity))
    return out


@pytest.fixture(scope="module")
def streams(repo: Repository) -> list[bytes]:
    return import_tars(repo, _layers())


def same_layers(
    native: ModuleType,
    pure: ModuleType,
    layers: Sequence[bytes],
    xattrs: str,
    versions: Sequence[int],
) -> None:
    for raw_modes in (True, False):
        expected = outcome(native.merge.merge_layers, layers, xattrs, raw_modes)
        got = outcome(pure.merge.merge_layers, layers, xattrs, raw_modes)
        assert got == expected, f"merge_layers(raw_modes={raw_modes})"
    expected = outcome(native.merge.mkfs_layers, layers, xattrs, versions)
    got = outcome(pure.merge.mkfs_layers, layers, xattrs, versions)
    assert got == expected, (
        f"mkfs_layers {versions}\n  native: {show(expected)}\n  pure: {show(got)}"
    )


@pytest.mark.parametrize(
    "selection",
    [[0], [0, 1], [0, 1, 2], [0, 2], [0, 2, 1], [0, 3], [0, 4], [0, 5], [6], [0, 6], [], [3]],
)
@pytest.mark.parametrize("xattrs", XATTR_MODES)
def test_layer_cases(
    native: ModuleType,
    pure: ModuleType,
    streams: list[bytes],
    selection: list[int],
    xattrs: str,
) -> None:
    same_layers(native, pure, [streams[i] for i in selection], xattrs, VERSIONS)


@settings(FUZZ, max_examples=60)
@given(
    selection=st.lists(st.integers(0, 6), max_size=4),
    xattrs=st.sampled_from(XATTR_MODES),
    versions=st.lists(st.sampled_from(VERSIONS), min_size=1, max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 2**16)),
)
def test_layers_fuzz(
    native: ModuleType,
    pure: ModuleType,
    streams: list[bytes],
    selection: list[int],
    xattrs: str,
    versions: list[int],
    cut: int | None,
) -> None:
    """Random selections and orders of the layers; sometimes the top one truncated."""
    layers = [streams[i] for i in selection]
    if cut is not None and layers:
        layers[-1] = layers[-1][: cut % len(layers[-1])]
    same_layers(native, pure, layers, xattrs, versions)


def test_truncated_streams(native: ModuleType, pure: ModuleType, streams: list[bytes]) -> None:
    for stream in streams[4:]:
        for end in range(len(stream)):
            same_layers(native, pure, [streams[0], stream[:end]], "allowlist-only", [1])


# -- formerly known differences, fixed


def test_mkfs_layers_checks_versions_first(native: ModuleType, pure: ModuleType) -> None:
    same_layers(native, pure, [b"not a splitstream"], "allowlist-only", [3])


def test_merge_error_path_rendering(native: ModuleType, pure: ModuleType, repo: Repository) -> None:
    tars = [Tar().dir("usr").build(), Tar().file("e\u0301\u00a0/x").build()]
    same_layers(native, pure, import_tars(repo, tars), "allowlist-only", [1])


def test_corrupted_streams(native: ModuleType, pure: ModuleType, streams: list[bytes]) -> None:
    """Every single-byte flip of a layer stream: both decode the stream as they read it."""
    stream = min(streams, key=len)
    differ = []
    for pos in range(len(stream)):
        damaged = bytearray(stream)
        damaged[pos] ^= 1
        layers = [bytes(damaged)]
        expected = outcome(native.merge.merge_layers, layers)
        got = outcome(pure.merge.merge_layers, layers)
        if got != expected:
            differ.append(f"byte {pos}: native {show(expected)}, pure {show(got)}")
    assert not differ, "\n".join(differ)


# -- merge_layers_to_fd: merge_layers's bytes, streamed to a file descriptor


def to_pipe(backend: ModuleType, layers: Sequence[bytes], *args: Any) -> tuple[int, bytes]:
    """``merge_layers_to_fd`` into a pipe read concurrently (the pipe holds far less than the
    text): its result and what was read."""
    rd, wr = os.pipe()
    chunks: list[bytes] = []

    def reader() -> None:
        with open(rd, "rb", buffering=0) as f:
            while data := f.read(1 << 16):
                chunks.append(data)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        n = backend.merge.merge_layers_to_fd(layers, wr, *args)
    finally:
        os.close(wr)
        thread.join()
    return n, b"".join(chunks)


def to_file(backend: ModuleType, layers: Sequence[bytes], *args: Any) -> tuple[int, bytes]:
    with tempfile.TemporaryFile() as f:
        f.write(b"kept")
        f.flush()
        n = backend.merge.merge_layers_to_fd(layers, f.fileno(), *args)
        f.seek(0)
        data = f.read()
    assert data[:4] == b"kept"  # written at the file position, not over it
    return n, data[4:]


@pytest.fixture(scope="module")
def deep_stream(repo: Repository) -> bytes:
    """A layer whose dumpfile (about 4 MiB: 2,000 nested levels) spans several chunks."""
    t = TarBuilder().dir("usr")
    path = "usr"
    for _ in range(2000):
        path += "/d"
        t.dir(path)
        t.file(path + "/f", b"x")
    (stream,) = import_tars(repo, [t.build()])
    return stream


@pytest.mark.parametrize("backend_name", ["native", "python"])
def test_merge_layers_to_fd_same_bytes(
    backend_name: str,
    native: ModuleType,
    pure: ModuleType,
    streams: list[bytes],
    deep_stream: bytes,
) -> None:
    backend = native if backend_name == "native" else pure
    cases = [[0], [0, 1, 2], [0, 3], [6]]
    for selection in cases:
        layers = [streams[i] for i in selection]
        for xattrs in XATTR_MODES:
            for raw_modes in (True, False):
                expected = outcome(native.merge.merge_layers, layers, xattrs, raw_modes)
                for sink in (to_pipe, to_file):
                    got = outcome(sink, backend, layers, xattrs, raw_modes)
                    if expected[0] == "ok":
                        assert got == ("ok", (len(expected[1]), expected[1])), (selection, sink)
                    else:
                        assert got == expected
    expected_deep = native.merge.merge_layers([deep_stream])
    assert len(expected_deep) > 3 << 20
    assert expected_deep == pure.merge.merge_layers([deep_stream])
    for sink in (to_pipe, to_file):
        assert sink(backend, [deep_stream]) == (len(expected_deep), expected_deep)


@pytest.mark.parametrize("backend_name", ["native", "python"])
def test_merge_layers_to_fd_errors(
    backend_name: str, native: ModuleType, pure: ModuleType, streams: list[bytes]
) -> None:
    backend = native if backend_name == "native" else pure
    with tempfile.TemporaryFile() as f:
        fd = os.open(f"/proc/self/fd/{f.fileno()}", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                backend.merge.merge_layers_to_fd([streams[0]], fd)
            assert info.value.errno == errno.EBADF
        finally:
            os.close(fd)
    rd, wr = os.pipe()
    os.close(rd)
    try:
        with pytest.raises(BrokenPipeError) as pipe_info:
            backend.merge.merge_layers_to_fd([streams[0]], wr)
        assert pipe_info.value.errno == errno.EPIPE
    finally:
        os.close(wr)
    with pytest.raises(ValueError, match="invalid xattr filtering mode"):
        backend.merge.merge_layers_to_fd([streams[0]], 1, "bogus")
