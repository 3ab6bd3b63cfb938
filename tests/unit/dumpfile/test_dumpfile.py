"""The pure-Python dumpfile writer and parser (``composefs._pure.dumpfile``): composefs-rs
``write_dumpfile`` output, ``dumpfile_to_filesystem`` parsing rules and error texts, our
negative-mtime leniency, and the round trip ``parse(write(fs)) == fs``. Parser acceptance is
checked against ``cfsctl mkcomposefs --from-file`` (the same composefs-rs parser)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    equal,
)
from support import tool

SIMPLE = (
    "/ 0 40755 2 0 0 0 0.0 - - -\n"
    "/blkdev 0 60000 1 0 0 123 0.0 - - -\n"
    "/chrdev 0 20000 1 0 0 123 0.0 - - -\n"
    "/fifo 0 10000 1 0 0 0 0.0 - - -\n"
    f"/regular-external 1234 100000 1 0 0 0 0.0 5a/{'5a' * 31} - {'5a' * 32}\n"
    "/regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n"
    "/socket 0 140000 1 0 0 0 0.0 - - -\n"
    "/symlink 7 120000 1 0 0 0 0.0 /target - -\n"
).encode()


def simple_tree() -> FileSystem:
    """composefs-rs tests/mkfs.rs ``simple``."""
    fs = FileSystem(Directory(Stat(0o755)))
    e = fs.root.entries
    e[b"fifo"] = Leaf(FIFO, Stat())
    e[b"regular-inline"] = Leaf(FILE, Stat(), inline=b"hihi", size=4)
    e[b"regular-external"] = Leaf(FILE, Stat(), digest=b"\x5a" * 32, size=1234)
    e[b"chrdev"] = Leaf(CHAR, Stat(), rdev=123)
    e[b"blkdev"] = Leaf(BLOCK, Stat(), rdev=123)
    e[b"socket"] = Leaf(SOCKET, Stat())
    e[b"symlink"] = Leaf(SYMLINK, Stat(), target=b"/target")
    return fs


def test_simple_vector() -> None:
    assert dumpfile.write(simple_tree()) == SIMPLE
    assert equal(dumpfile.parse(SIMPLE), simple_tree())


def test_escaping() -> None:
    fs = FileSystem(Directory(Stat(0o755, xattrs={b"user.k=\\": b"v=a b\n", b"user.e": b""})))
    e = fs.root.entries
    e[b"sp ace"] = Leaf(FILE, Stat(0o644), inline=b"a\tb\r\n\\=-", size=8)
    e[b"-"] = Leaf(SYMLINK, Stat(0o777), target=b"-")
    e[b"\xff\x01~!"] = Leaf(FILE, Stat(0o644), inline=b"-", size=1)
    e[b"dash"] = Leaf(FILE, Stat(0o644, xattrs={b"user.d": b"-"}), inline=b"", size=0)
    out = dumpfile.write(fs).decode().splitlines()
    assert out == [
        "/ 0 40755 2 0 0 0 0.0 - - - user.e= user.k\\x3d\\\\=v\\x3da\\x20b\\n",
        "/- 1 120777 1 0 0 0 0.0 \\x2d - -",
        "/dash 0 100644 1 0 0 0 0.0 - - - user.d=-",
        "/sp\\x20ace 8 100644 1 0 0 0 0.0 - a\\tb\\r\\n\\\\=- -",
        "/\\xff\\x01~! 1 100644 1 0 0 0 0.0 - \\x2d -",
    ]
    assert equal(dumpfile.parse(dumpfile.write(fs)), fs)


def test_hardlinks_order_and_nlink() -> None:
    fs = FileSystem(Directory(Stat(0o755)))
    shared = Leaf(FILE, Stat(0o600, 5, 6, 7, 8, {b"user.x": b"1"}), inline=b"data", size=4)
    sub = Directory(Stat(0o700))
    fs.root.entries[b"z"] = shared
    fs.root.entries[b"a"] = sub
    sub.entries[b"b"] = shared
    sub.entries[b"c"] = Directory(Stat(0o755))
    fs.root.entries[b"y"] = shared
    assert dumpfile.write(fs).decode().splitlines() == [
        "/ 0 40755 3 0 0 0 0.0 - - -",
        "/a 0 40700 3 0 0 0 0.0 - - -",
        "/a/b 4 100600 3 5 6 0 7.8 - data - user.x=1",
        "/a/c 0 40755 2 0 0 0 0.0 - - -",
        "/y 0 @120000 - - - - 0.0 /a/b - -",
        "/z 0 @120000 - - - - 0.0 /a/b - -",
    ]
    back = dumpfile.parse(dumpfile.write(fs))
    assert equal(back, fs)
    a = back.root.entries[b"a"]
    assert isinstance(a, Directory)
    assert back.root.entries[b"y"] is a.entries[b"b"] is back.root.entries[b"z"]


def test_raw_modes() -> None:
    fs = FileSystem(Directory(Stat(0o40755)))
    fs.root.entries[b"f"] = Leaf(FILE, Stat(0o20644), inline=b"", size=0)
    assert dumpfile.write(fs).decode().splitlines() == [
        "/ 0 40755 2 0 0 0 0.0 - - -",
        "/f 0 120644 1 0 0 0 0.0 - - -",
    ]
    assert dumpfile.write(fs, raw_modes=False).decode().splitlines() == [
        "/ 0 40755 2 0 0 0 0.0 - - -",
        "/f 0 100644 1 0 0 0 0.0 - - -",
    ]


def test_sparse_external_noverity_and_sha512() -> None:
    fs = FileSystem(Directory(Stat(0o755)))
    fs.root.entries[b"sparse"] = Leaf(FILE, Stat(), size=1 << 40)
    fs.root.entries[b"nv"] = Leaf(FILE, Stat(), digest=bytes(range(32)), verity=False, size=99)
    fs.root.entries[b"big"] = Leaf(FILE, Stat(), digest=bytes(range(64)), size=7)
    out = dumpfile.write(fs).decode().splitlines()
    assert out[3] == "/sparse 1099511627776 100000 1 0 0 0 0.0 - - -"
    h = bytes(range(64)).hex()
    assert out[1] == f"/big 7 100000 1 0 0 0 0.0 {h[:2]}/{h[2:]} - {h}"
    # without DIGEST the object path gives the id (ExternalNoVerity)
    text = dumpfile.write(fs).replace(b" " + bytes(range(32)).hex().encode() + b"\n", b" -\n")
    assert equal(dumpfile.parse(text), fs)
    line = f"/x 5 100644 1 0 0 0 0.0 objects/{h[:2]}/{h[2:]} - -\n"
    sha512_path = dumpfile.parse((ROOT + line).encode())
    leaf = sha512_path.root.entries[b"x"]
    assert isinstance(leaf, Leaf) and leaf.digest == bytes(range(64)) and not leaf.verity


def test_parser_rules() -> None:
    text = (
        b"\n  \n"
        b"/ 4096 40700 9 1 2 0 -3.5 - - - user.b=2 user.a=1 user.a=0\r\n"
        b"/d 0 40755 2 0 0 0 1.0 - - -\n"
        b"/d/f 3 100644 1 0 0 0 1.0 - abc -\n"
        b"/d 0 40711 2 0 0 0 2.0 - - -\n"  # a repeated directory replaces the old one
        b"/s 5 100644 1 0 0 0 0.0 - - -\n"  # empty content with a size: sparse
        b"/i 99 100644 1 0 0 0 0.0 - xy -\n"  # SIZE not checked against the content
        b"/h 0 @100644 - - - - - /s - - ignored\n"
        b"/h2 0 x@0 - - - - - /h\n"  # a hard link to a hard link line's path
        b"/ 0 40750 2 0 0 0 18446744073709551615.+1 - - -\n"  # a later root line: the stat
        b"/l 3 120777 1 0 0 0 0.0 a//b - -"
    )
    fs = dumpfile.parse(text)
    assert fs.root.stat == Stat(0o750, 0, 0, -1, 1, {})
    d = fs.root.entries[b"d"]
    assert isinstance(d, Directory) and not d.entries and d.stat.mode == 0o711
    s = fs.root.entries[b"s"]
    assert isinstance(s, Leaf) and s.inline is None and s.size == 5
    i = fs.root.entries[b"i"]
    assert isinstance(i, Leaf) and i.inline == b"xy" and i.size == 2
    assert fs.root.entries[b"h"] is s is fs.root.entries[b"h2"]
    link = fs.root.entries[b"l"]
    assert isinstance(link, Leaf) and link.target == b"a//b"
    first = dumpfile.parse(b"/ 0 40700 9 1 2 0 -3.5 - - - user.b=2 user.a=1 user.a=0\n")
    assert first.root.stat == Stat(0o700, 1, 2, -3, 5, {b"user.a": b"1", b"user.b": b"2"})


ROOT = "/ 0 40755 2 0 0 0 0.0 - - -\n"
ERRORS = [
    ("", "Dumpfile is empty, expected root directory entry"),
    ("\n \t\n", "Dumpfile is empty, expected root directory entry"),
    (
        "/a 0 40755 2 0 0 0 0.0 - - -\n",
        'Dumpfile must start with root directory entry, found: "/a"',
    ),
    (
        "/ 0 40755 2 0 0 0 0.1000000000 - - -\n",
        "Invalid mtime nanoseconds: 1000000000 (must be < 1_000_000_000)",
    ),
    (
        ROOT + "/a/b 0 100644 1 0 0 0 0.0 - - -\n",
        'Parent directory not found: "/a": Directory entry "a" does not exist',
    ),
    (ROOT + "/h 0 @100644 - - - - - /x - -\n", 'Hardlink target not found: "/x"'),
    (
        ROOT + "/w 0 20000 2 0 0 0 0.0 - - -\n",
        'invalid dumpfile: whiteout entry "/w" has nlink > 1',
    ),
    (ROOT + "/f 5 100644 1 0 0 0 0.0 xx - -\n", "invalid object pathname: Invalid string length"),
    # DIGEST (hex crate rules on the UTF-8 bytes): odd length, then length, then characters
    (ROOT + "/f 5 100644 1 0 0 0 0.0 xx - abc\n", "Odd number of digits"),
    (ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'a' * 65}\n", "Odd number of digits"),
    (ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'é' * 31}a\n", "Odd number of digits"),
    (ROOT + "/f 5 100644 1 0 0 0 0.0 xx - abcd\n", "Invalid string length"),
    (ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'é' * 32}\n", "Invalid character 'Ã' at position 0"),
    (
        ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'a' * 63}\x01\n",
        "Invalid character '\\u{1}' at position 63",
    ),
    (
        ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'a' * 127}'\n",
        "Invalid character '\\'' at position 127",
    ),
    (
        ROOT + f"/f 5 100644 1 0 0 0 0.0 \\xad/{'a' * 63} - -\n",
        "invalid object pathname: Invalid character '\\u{ad}' at position 0",
    ),
    (
        ROOT + f"/f 5 100644 1 0 0 0 0.0 aa/{'a' * 10}\\xff{'a' * 51} - -\n",
        "invalid object pathname: Invalid character 'ÿ' at position 10",
    ),
    (
        ROOT + f"/f 5 100644 1 0 0 0 0.0 aa-{'a' * 62} - -\n",
        "invalid object pathname: Invalid character '-' at position 2",
    ),
    # paths as Rust's Debug prints them
    (
        ROOT + "/h 0 @100644 - - - - - /a'\"\\\\\\x01\\xff\u0301\u00a0\U000e0001 - -\n",
        'Hardlink target not found: "/a\'\\"\\\\\\u{1}\\xFF\\u{301}\\u{a0}\\u{e0001}"',
    ),
    (ROOT + f"/f 5 100644 1 0 0 0 0.0 xx - {'g' * 64}\n", "Invalid character 'g' at position 0"),
]
LINE_ERRORS = [
    ("/ 0 40755 2 0 0 0 0.0 - -", "Missing digest"),
    ("/ 0 40755", "Missing nlink"),
    ("/ 0 40755 2 0 0 0 0 - - -", "Missing . in mtime"),
    ("/ 0 40755 2 0 0 0 -.0 - - -", "invalid digit found in string"),
    ("/ 0 40755 2 0 0 0 1.-1 - - -", "invalid digit found in string"),
    ("/ 0 40755 2 0 0 0 0.0 - - - x", "Missing = in xattrs"),
    ("/ 0 40755 2 0 0 0 0.0 - - - ", "Missing = in xattrs"),
    ("/ 0 40755 2 0 0 0 0.0 - - - a\\x00=b", "Invalid embedded NUL"),
    (f"/ 0 40755 2 0 0 0 0.0 - - - {'k' * 256}=", "xattr name too long; max=255 found=256"),
    ("/ 0 40755 2 0 0 0 0.0 - - - a=\\q", "Invalid escape q"),
    ("/ 0 40755 2 0 0 0 0.0 - - - a=\\x4", "Unterminated hex escape"),
    (
        "/ 0 40755 2 0 0 0 0.0 - - - a=\\xzz",
        "Invalid hex escape zz: invalid digit found in string",
    ),
    ("/\\x-1 0 40755 2 0 0 0 0.0 - - -", "Invalid hex escape -1: invalid digit found in string"),
    ("/ 0 40755 2 0 0 0 0.0 - - - a=\\", "Unterminated escape"),
    ("/ 0 40755 4294967296 0 0 0 0.0 - - -", "number too large to fit in target type"),
    # digits are read in order: an overflow before a bad digit is an overflow
    ("/ 99999999999999999999x 40755 2 0 0 0 0.0 - - -", "number too large to fit in target type"),
    ("/ 9x999999999999999999999 40755 2 0 0 0 0.0 - - -", "invalid digit found in string"),
    ("/ 0 40755 2 0 0 0 -99999999999999999999x.0 - - -", "number too small to fit in target type"),
    ("/ 0 40755 2 0 0 0 -9223372036854775809.0 - - -", "number too small to fit in target type"),
    ("/ 0 80755 2 0 0 0 0.0 - - -", "invalid digit found in string"),
    ("/ - 40755 2 0 0 0 0.0 - - -", "invalid digit found in string"),
    ("/ 0 0755 2 0 0 0 0.0 - - -", "Unhandled file type from raw mode: 493"),
    ("/ 0 @40755 - - - - - /", "Invalid hardlinked directory"),
    ("/ 0 @100644 - - - - - -", "Missing payload"),
    ("/ 0 40755 2 0 0 0 0.0 - x -", "entry cannot have content"),
    ("/ 0 40755 2 0 0 0 0.0 - - ab", "entry cannot have fsverity digest"),
    ("/ 0 40755 2 0 0 1 0.0 - - -", "entry cannot have device (rdev) 1"),
    ("/ 0 100644 1 0 0 0 0.0 - - ab", "Inline file cannot have fsverity digest"),
    (f"/ 0 100644 1 0 0 0 0.0 - {'c' * 513} -", "Input 513 exceeded maximum length 512"),
    ("/ 0 100644 1 0 0 0 0.0 - " + "\\x41" * 513 + " -", "Input exceeded maximum length 512"),
    ("/ 0 120777 1 0 0 0 0.0 - - -", "Missing payload"),
    (f"/ 0 120777 1 0 0 0 0.0 {'t' * 1025} - -", "Symlink target length 1025 exceeds limit 1024"),
    ("/ 0 120777 1 0 0 0 0.0 a\\x00 - -", "Invalid embedded NUL"),
    ("a 0 40755 2 0 0 0 0.0 - - -", "Invalid non-absolute path"),
    ("// 0 40755 2 0 0 0 0.0 - - -", "Empty path component (// or trailing /)"),
    ("/. 0 40755 2 0 0 0 0.0 - - -", "Invalid path component '.'"),
    ("/.. 0 40755 2 0 0 0 0.0 - - -", "Invalid path component '..'"),
    ("- 0 40755 2 0 0 0 0.0 - - -", "Invalid non-absolute path"),
    (f"/{'p' * 4096} 0 40755 2 0 0 0 0.0 - - -", "Path is too long: 4097 bytes"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        dumpfile.parse(text.encode())
    assert str(info.value) == message


@pytest.mark.parametrize(("text", "message"), LINE_ERRORS)
def test_parse_line_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        dumpfile.parse(text.encode())
    assert str(info.value) == f"Failed to parse dumpfile line: {text}: {message}"


def test_not_utf8() -> None:
    for data in (b"/ 0 40755 2 0 0 0 0.0 - \xff -\n", ROOT.encode() + b"/\xed\xa0\x80"):
        with pytest.raises(ValueError) as info:
            dumpfile.parse(data)
        assert str(info.value) == "stream did not contain valid UTF-8"  # cfsctl's text


def test_leaves_table_and_orphans() -> None:
    """``parse_with_leaves`` lists the leaves in creation order, as composefs-rs's leaves
    table; one a later line of the same path replaced is an orphan."""
    text = (
        ROOT
        + "/a 0 100644 1 0 0 0 0.0 - - -\n"  # 0: replaced, but kept by /b
        + "/b 0 @100644 - - - - 0.0 /a - -\n"
        + "/a 0 100644 1 0 0 0 0.0 - x -\n"  # 1
        + "/d 0 40755 2 0 0 0 0.0 - - -\n"
        + "/d/x 0 10644 1 0 0 0 0.0 - - -\n"  # 2: orphaned with its directory
        + "/d 0 40755 2 0 0 0 0.0 - - -\n"
        + "/c 0 20000 1 0 0 7 0.0 - - -\n"  # 3: replaced
        + "/c 0 20000 1 0 0 8 0.0 - - -\n"  # 4
    )
    fs, leaves = dumpfile.parse_with_leaves(text.encode())
    assert len(leaves) == 5
    assert fs.root.entries[b"b"] is leaves[0] and fs.root.entries[b"a"] is leaves[1]
    assert dumpfile.orphans(fs, leaves) == [2, 3]
    assert dumpfile.orphans(*dumpfile.parse_with_leaves(SIMPLE)) == []


def test_debug_bytes() -> None:
    debug = dumpfile.debug_bytes
    assert debug(b"a'b\"c\\") == '"a\'b\\"c\\\\"'
    assert debug(b"\0\t\n\r\x01\x7f") == '"\\0\\t\\n\\r\\u{1}\\u{7f}"'
    # invalid UTF-8 bytewise; unprintable and combining characters escaped, others kept
    assert debug(b"\xff\xc3(\xe2\x82") == '"\\xFF\\xC3(\\xE2\\x82"'
    assert debug("é\u0301\u00ad\u200b\u2028\ue000\U000e0100 ☃".encode()) == (
        '"é\\u{301}\\u{ad}\\u{200b}\\u{2028}\\u{e000}\\u{e0100}\\u{20}☃"'.replace("\\u{20}", " ")
    )


# --------------------------------------------------------------------------------------------
# hypothesis: any tree survives write -> parse -> write

NAMES = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
STATS = st.builds(
    Stat,
    st.integers(0, 0o7777),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 999_999_999),
    st.dictionaries(
        st.binary(min_size=1, max_size=20).filter(lambda k: b"\0" not in k),
        st.binary(max_size=30),
        max_size=3,
    ),
)
DIGESTS = st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
LEAVES = st.one_of(
    st.builds(lambda s, d: Leaf(FILE, s, inline=d, size=len(d)), STATS, st.binary(max_size=512)),
    # (ExternalNoVerity is written like External, so it reads back as External)
    st.builds(
        lambda s, d, n: Leaf(FILE, s, digest=d, size=n), STATS, DIGESTS, st.integers(0, 2**64 - 1)
    ),
    st.builds(lambda s, n: Leaf(FILE, s, size=n), STATS, st.integers(1, 2**64 - 1)),
    st.builds(
        lambda s, t: Leaf(SYMLINK, s, target=t),
        STATS,
        st.binary(min_size=1, max_size=1024).filter(lambda t: b"\0" not in t),
    ),
    st.builds(lambda s, r: Leaf(BLOCK, s, rdev=r), STATS, st.integers(0, 2**64 - 1)),
    st.builds(lambda s, r: Leaf(CHAR, s, rdev=r), STATS, st.integers(1, 2**64 - 1)),
    st.builds(lambda s: Leaf(FIFO, s), STATS),
    st.builds(lambda s: Leaf(SOCKET, s), STATS),
)


@st.composite
def trees(draw: st.DrawFn) -> FileSystem:
    fs = FileSystem(Directory(draw(STATS)))
    dirs = [fs.root]
    leaves: list[Leaf] = []
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        name = draw(NAMES)
        choice = draw(st.integers(0, 4))
        inode: Directory | Leaf
        if choice == 0:
            inode = Directory(draw(STATS))
            dirs.append(inode)
        elif choice == 1 and leaves:
            inode = draw(st.sampled_from(leaves))  # a hard link
            if inode.kind == CHAR and inode.rdev == 0:
                continue
        else:
            inode = draw(LEAVES)
            leaves.append(inode)
        parent.entries[name] = inode
    return fs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_round_trip(fs: FileSystem) -> None:
    text = dumpfile.write(fs)
    back = dumpfile.parse(text)
    assert equal(back, fs)
    assert dumpfile.write(back) == text


# --------------------------------------------------------------------------------------------
# the parser accepts and rejects what composefs-rs's parser does (cfsctl mkcomposefs)


def cfsctl_accepts(cfsctl: str, tmp_path: Path, text: bytes) -> bool:
    source = tmp_path / "dump"
    source.write_bytes(text)
    proc = subprocess.run(
        [cfsctl, "mkcomposefs", "--from-file", str(source), "--print-digest-only"],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def test_acceptance_matches_cfsctl(tmp_path: Path) -> None:
    cfsctl = tool("cfsctl")
    cases = [(text, False) for text, _ in ERRORS] + [(t, False) for t, _ in LINE_ERRORS]
    cases.append((SIMPLE.decode(), True))
    cases.append((ROOT + "/h 0 @100644 - - - - - /s - -\n", False))
    cases.append((ROOT + "/s 5 100644 1 0 0 0 0.0 - - -\n/h 0 x@0 - - - - - /s\n", True))
    cases.append((ROOT + "/d 0 40755 2 0 0 0 +1.+2 - - - a=\\x+f\n", True))
    for text, ok in cases:
        if "Invalid string length" in text or "object pathname" in text:
            continue
        assert cfsctl_accepts(cfsctl, tmp_path, text.encode()) == ok, text
        if ok:
            dumpfile.parse(text.encode())
    # our one leniency: negative seconds (cfsctl rejects them)
    negative = (ROOT.replace(" 0.0 ", " -1.0 ")).encode()
    assert not cfsctl_accepts(cfsctl, tmp_path, negative)
    assert dumpfile.parse(negative).root.stat.mtime == -1
