"""Dumpfiles for ``mkcomposefs --from-file``, each aimed at one rule of C mkcomposefs 1.0
(``tools/mkcomposefs.c``, ``libcomposefs``) where composefs-rs's rules differ or where C has a
quirk. Used by the backend parity tests and, against the C binary, by
``tests/interop/test_mkcomposefs_interop.py`` (same image, or both refuse).

``CASES``: (id, dumpfile, min_version, max_version, strict). The versions are C's options
(None: not given).
"""

from __future__ import annotations

from typing import Any, NamedTuple

ROOT = b"/ 4096 40755 2 0 0 0 100.5 - - -\n"
DIGEST = "a" * 64
DIGEST2 = "0123456789abcdef" * 4


class Case(NamedTuple):
    id: str
    data: bytes
    min_version: int | None = None
    max_version: int | None = None
    strict: bool = False


def _lines(*lines: str) -> bytes:
    return ROOT + "".join(line + "\n" for line in lines).encode()


def _xattrs(n: int, value: str = "v") -> str:
    return " ".join(f"user.x{i:03}={value}" for i in range(n))


CASES: list[Case] = [
    Case("empty", b""),
    Case("root only", ROOT),
    Case("blank line", ROOT + b"\n"),
    Case("no root", b"/a 0 100644 1 0 0 0 0.0 - - -\n"),
    Case("two roots", ROOT + ROOT),
    Case("root not a directory", b"/ 0 100644 1 0 0 0 0.0 - - -\n"),
    Case(
        "relative paths", _lines("a 0 40755 2 0 0 0 0.0 - - -", "a//b 0 100644 1 0 0 0 0.0 - - -")
    ),
    Case("trailing slash", _lines("/a/ 0 40755 2 0 0 0 0.0 - - -")),
    Case(
        "duplicate path", _lines("/a 0 100644 1 0 0 0 0.0 - - -", "/a 0 100644 1 0 0 0 0.0 - - -")
    ),
    Case("missing parent", _lines("/a/b 0 100644 1 0 0 0 0.0 - - -")),
    Case(
        "parent is a file",
        _lines("/a 0 100644 1 0 0 0 0.0 - - -", "/a/b 0 100644 1 0 0 0 0.0 - - -"),
    ),
    Case(
        "dot path component",
        _lines("/d 0 40755 2 0 0 0 0.0 - - -", "/d/./x 0 100644 1 0 0 0 0.0 - - -"),
    ),
    Case("name of 255 bytes", _lines("/" + "n" * 255 + " 0 100644 1 0 0 0 0.0 - - -")),
    Case("name of 256 bytes", _lines("/" + "n" * 256 + " 0 100644 1 0 0 0 0.0 - - -")),
    Case(
        "names sorting before the dot entries",
        _lines(
            "/#hash 0 100644 1 0 0 0 0.0 - - -",
            "/!bang 0 40755 2 0 0 0 0.0 - - -",
            "/- 0 100644 1 0 0 0 0.0 - - -",
            "/.hidden 0 100644 1 0 0 0 0.0 - - -",
            "/! 0 100644 1 0 0 0 0.0 - - -",
        ),
    ),
    Case(
        "nlink as written",
        _lines("/f 3 100644 7 0 0 0 0.0 - abc -", "/g 0 100644 70000 0 0 0 0.0 - - -"),
    ),
    Case(
        "hard link before its target, chain, to a directory",
        _lines(
            "/a 0 @100644 0 0 0 0 0.0 /t - -",
            "/b 0 @100644 0 0 0 0 0.0 /a - -",
            "/d 0 40755 2 0 0 0 0.0 - - -",
            "/dl 0 @120777 0 0 0 0 0.0 /d - -",
            "/t 5 100644 1 0 0 0 0.0 - hello -",
            "/r 0 @100644 0 0 0 0 0.0 // - -",
        ),
    ),
    Case("hard link to nothing", _lines("/a 0 @100644 0 0 0 0 0.0 /nope - -")),
    Case("hard link without target", _lines("/a 0 @100644 0 0 0 0 0.0 - - -")),
    Case(
        "hard link cycle",
        _lines("/a 0 @100644 0 0 0 0 0.0 /b - -", "/b 0 @100644 0 0 0 0 0.0 /a - -"),
    ),
    Case(
        "hard link garbage fields",
        _lines("/t 0 100644 1 0 0 0 0.0 - - -", "/a x @100644 y z w v u /t q r s=t"),
    ),
    Case(
        "payloads of any form",
        _lines(
            "/a 10 100644 1 0 0 0 0.0 weird/path\\x20with\\tstuff - -",
            f"/b 10 100644 1 0 0 0 0.0 /abs/path - {DIGEST}",
            f"/c 0 100644 1 0 0 0 0.0 aa/{'b' * 62} - {DIGEST}",
            f"/d 4096 100644 1 0 0 0 0.0 - - {DIGEST2}",
            "/e 12 100644 1 0 0 0 0.0 - - -",
            f"/f 7 100644 1 0 0 0 0.0 x - {DIGEST}extra",
            "/g 7 100644 1 0 0 0 0.0 \\x00cut - -",
        ),
    ),
    Case("payload and content", _lines(f"/a 3 100644 1 0 0 0 0.0 aa/bb abc {DIGEST}")),
    Case("digest not hex", _lines("/a 3 100644 1 0 0 0 0.0 aa/bb - xyz")),
    Case("digest ignored on inline files", _lines("/a 3 100644 1 0 0 0 0.0 - abc xyz")),
    Case("inline of 5000 bytes", _lines("/a 5000 100644 1 0 0 0 0.0 - " + "x" * 5000 + " -")),
    Case("inline of 2049 bytes", _lines("/a 2049 100644 1 0 0 0 0.0 - " + "y" * 2049 + " -")),
    Case("inline of 5001 bytes", _lines("/a 5001 100644 1 0 0 0 0.0 - " + "x" * 5001 + " -")),
    Case("content size mismatch", _lines("/a 4 100644 1 0 0 0 0.0 - abc -")),
    Case("symlink of 4095 bytes", _lines("/l 4095 120777 1 0 0 0 0.0 " + "s" * 4095 + " - -")),
    Case("symlink of 4096 bytes", _lines("/l 4096 120777 1 0 0 0 0.0 " + "s" * 4096 + " - -")),
    Case(
        "symlinks of every length around a block",
        _lines(*(f"/l{n} {n} 120777 1 0 0 0 0.0 {'t' * n} - -" for n in range(3900, 4096, 7))),
    ),
    Case("symlink size mismatch", _lines("/l 9 120777 1 0 0 0 0.0 abc - -")),
    Case("symlink size mismatch, strict", _lines("/l 9 120777 1 0 0 0 0.0 abc - -"), strict=True),
    Case("symlink content, strict", _lines("/l 3 120777 1 0 0 0 0.0 abc abc -"), strict=True),
    Case(
        "devices and sizes",
        _lines(
            "/c 77 20644 1 0 0 1025 0.0 - - -",
            "/b 5000000000 60644 1 0 0 4294967297 0.0 - - -",
            "/f 12 10644 1 0 0 0 0.0 - - -",
            "/s 0 140644 1 0 0 0 0.0 - - -",
        ),
    ),
    Case("rdev on a file", _lines("/a 0 100644 1 0 0 5 0.0 - - -")),
    Case("rdev on a file, strict", _lines("/a 0 100644 1 0 0 5 0.0 - - -"), strict=True),
    Case(
        "whiteouts in subdirectories",
        _lines(
            "/d 0 40755 2 0 0 0 0.0 - - - user.overlay.whiteouts=old",
            "/d/w 9 20000 3 0 0 0 0.0 - - -",
            "/e 0 40700 2 0 0 0 0.0 - - -",
            "/e/w 0 20644 1 0 0 0 0.0 - - - trusted.overlay.x=1",
            "/00 0 20644 1 0 0 0 100.5 - - -",
        ),
    ),
    Case("whiteout, version 0 only", _lines("/w 0 20644 1 0 0 0 0.0 - - -"), 0, 0),
    Case("whiteout, min version 1 only", _lines("/w 0 20644 1 0 0 0 0.0 - - -"), 1, None),
    Case("no whiteout, max version 0", _lines("/a 0 100644 1 0 0 0 0.0 - - -"), None, 0),
    Case("version 2", ROOT, 2, 2),
    Case(
        "escaped and synthetic xattrs",
        _lines(
            f"/a 10 100644 1 0 0 0 0.0 aa/bb - {DIGEST} trusted.overlay.metacopy=x "
            "trusted.overlay.overlay.y=1 trusted.overlay.redirect=/z user.a=\\x00\\x3d",
            "/b 0 100644 1 0 0 0 0.0 - - - system.posix_acl_access=\\x02 lustre.x=1 odd=1",
        ),
    ),
    Case("xattr repeated", _lines("/a 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=22 user.a=3")),
    Case("xattr name with NUL", _lines("/a 0 100644 1 0 0 0 0.0 - - - user.a\\x00b=1")),
    Case(
        "more than 128 shared xattrs on one inode",
        _lines(*(f"/f{i} 0 100644 1 0 0 0 0.0 - - - {_xattrs(140)}" for i in range(2))),
    ),
    Case(
        "xattr budget exhausted by the metacopy",
        _lines(f"/a 10 100644 1 0 0 0 0.0 aa/bb - {DIGEST} user.big={'v' * 32700}"),
    ),
    Case("xattr budget", _lines(f"/a 0 100644 1 0 0 0 0.0 - - - user.big={'v' * 32740}")),
    Case("xattr without =", _lines("/a 0 100644 1 0 0 0 0.0 - - - user.a")),
    Case("double space before xattrs", _lines("/a 0 100644 1 0 0 0 0.0 - - -  user.a=1")),
    Case("trailing space", _lines("/a 0 100644 1 0 0 0 0.0 - - - ")),
    Case("two trailing spaces", _lines("/a 0 100644 1 0 0 0 0.0 - - -  ")),
    Case("too few fields", _lines("/a 0 100644")),
    Case(
        "numbers the C way",
        _lines(
            "/a +0 100644 +1 \t7 -1 0 -5.4294967297 - - -",
            "/b 0 0100644 99999999999999999999 0 0 0 18446744073709551615.999999999 - - -",
            "/c 0 100644 1 1 notanumber alsonot 0.0 - - -",
        ),
    ),
    Case("gid unparsable with uid 0", _lines("/a 0 100644 1 0 x 0 0.0 - - -")),
    Case("mtime without dot", _lines("/a 0 100644 1 0 0 0 5 - - -")),
    Case(
        "mode with high bits",
        _lines("/a 0 37700644 1 0 0 0 0.0 - - -", "/b 0 20720777 1 0 0 0 0.0 - - -"),
    ),
    Case("mode without type", _lines("/a 0 644 1 0 0 0 0.0 - - -")),
    Case("bad escapes", _lines("/a\\q 0 100644 1 0 0 0 0.0 - - -")),
    Case("short hex escape", _lines("/a\\x4 0 100644 1 0 0 0 0.0 - - -")),
    Case("embedded NUL", ROOT + b"/a\x00 0 100644 1 0 0 0 0.0 - - -\n"),
    Case("carriage returns", ROOT.replace(b"\n", b"\r\n") + b"/a 0 100644 1 0 0 0 0.0 - - -\r\n"),
    Case("no trailing newline", ROOT + b"/a 0 100644 1 0 0 0 0.0 - - -"),
    Case("no trailing newline, strict", ROOT + b"/a 0 100644 1 0 0 0 0.0 - - -", strict=True),
    Case("file too large", _lines("/a 9007199254740993 100644 1 0 0 0 0.0 - - -")),
    Case("largest file", _lines("/a 9007199254740992 100644 1 0 0 0 0.0 - - -")),
    Case(
        "chunk maps around a block",
        _lines(
            *(
                f"/f{n} {n * 4096 * 8 - 5} 100644 1 0 0 0 0.0 - - -"
                for n in (1000, 1016, 1017, 1024)
            )
        ),
    ),
    Case(
        "big directory",
        _lines(
            *(
                f"/entry-with-a-long-name-{i:05} 0 100644 1 0 0 0 {i % 3}.0 - - -"
                for i in range(700)
            )
        ),
    ),
    Case(
        "root metadata in the stubs",
        b"/ 4096 40700 2 5 6 0 3.7 - - - security.selinux=ctx user.r=1\n"
        b"/0a 0 100644 1 0 0 0 0.0 - - -\n",
    ),
]


# -- random dumpfiles in C's grammar (hypothesis) ----------------------------------------------

NAMES = [
    b"a",
    b"b",
    b"00",
    b"0a",
    b"ff",
    b"#",
    b"!x",
    b"-",
    b".hidden",
    b"z" * 40,
    b"sp ace",
    b"\xff",
]
PAYLOADS = [b"aa/" + b"b" * 62, b"x", b"/abs", b"12/34", b"with space", b"s" * 3000]
DIGESTS = [DIGEST.encode(), DIGEST2.encode(), b"A" * 64, b"0" * 64 + b"ff"]
XATTRS = [
    (b"user.common", b"1"),
    (b"user.common", b"2"),
    (b"security.selinux", b"system_u:object_r:etc_t:s0"),
    (b"trusted.overlay.opaque", b"y"),
    (b"trusted.overlay.overlay.x", b""),
    (b"trusted.overlay.metacopy", b"m"),
    (b"system.posix_acl_access", b"\x02\x00\x00\x00"),
    (b"system.posix_acl_default", b"\x02"),
    (b"lustre.lov", b"v"),
    (b"user.overlay.whiteouts", b"w"),
    (b"other", b"=\x00 \n"),
    (b"user.long", b"L" * 3000),
]
MTIMES = [b"0.0", b"100.5", b"100.5", b"1633950376.0", b"4294967296.999999999", b"-1.0"]


def escape(data: bytes, xattr: bool = False) -> bytes:
    """A field as C's dumpfile writer escapes it (``-`` for empty fixed fields is the
    caller's choice)."""
    out = bytearray()
    for b in data:
        if b == 0x5C:
            out += b"\\\\"
        elif 0x21 <= b <= 0x7E and not (xattr and b == 0x3D):
            out.append(b)
        else:
            out += b"\\x%02x" % b
    return bytes(out)


def c_dumpfiles() -> Any:
    """A strategy: (dumpfile, min_version, max_version, strict), mostly valid dumpfiles that
    use what C's grammar allows and composefs-rs's does not (hard links in any order, NLINK
    and SIZE as written, long inline files and symlinks, any payload), with now and then a
    line C refuses."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> tuple[bytes, int | None, int | None, bool]:
        dirs = [b""]
        paths: list[bytes] = []
        used: set[bytes] = set()
        root_mtime = draw(st.sampled_from(MTIMES))
        lines = [b"/ 4096 40755 2 0 0 0 " + root_mtime + b" - - -" + xattrs(draw)]
        for _ in range(draw(st.integers(0, 25))):
            parent = draw(st.sampled_from(dirs))
            name = draw(st.sampled_from(NAMES))
            path = parent + b"/" + name
            if path in used and draw(st.integers(0, 19)):
                continue  # now and then a repeated path (refused)
            used.add(path)
            kind = draw(st.integers(0, 11))
            mtime = draw(st.sampled_from(MTIMES))
            nlink = draw(st.sampled_from([b"1", b"1", b"2", b"3", b"70000"]))
            owner = draw(st.sampled_from([b"0 0", b"1000 1000", b"70000 5"]))
            head = escape(path)
            if kind == 0:
                lines.append(head + b" 0 40755 2 " + owner + b" 0 " + mtime + b" - - -")
                dirs.append(path)
            elif kind in (1, 2):
                content = draw(st.binary(max_size=draw(st.sampled_from([8, 3000, 5000]))))
                text = escape(content) if content else b"-"
                lines.append(
                    head
                    + b" %d 100644 " % len(content)
                    + nlink
                    + b" "
                    + owner
                    + b" 0 "
                    + mtime
                    + b" - "
                    + text
                    + b" -"
                )
            elif kind in (3, 4):
                size = draw(st.sampled_from([0, 1, 4096, 70000, 1 << 40]))
                payload = draw(st.sampled_from([*PAYLOADS, None]))
                digest = draw(st.sampled_from([*DIGESTS, None]))
                lines.append(
                    head
                    + b" %d 100644 " % size
                    + nlink
                    + b" "
                    + owner
                    + b" 0 "
                    + mtime
                    + b" "
                    + (escape(payload) if payload else b"-")
                    + b" - "
                    + (digest if digest else b"-")
                )
            elif kind == 5:
                target = draw(st.sampled_from([b"t", b"../x", b"l" * 2000, b"m" * 4095]))
                lines.append(
                    head
                    + b" %d 120777 1 " % len(target)
                    + owner
                    + b" 0 "
                    + mtime
                    + b" "
                    + escape(target)
                    + b" - -"
                )
            elif kind in (6, 7):
                rdev = draw(st.sampled_from([0, 0, 259, 1 << 33]))
                size = draw(st.sampled_from([0, 0, 5]))
                ifmt = draw(st.sampled_from([b"20", b"60"]))
                lines.append(
                    head
                    + b" %d " % size
                    + ifmt
                    + b"644 "
                    + nlink
                    + b" "
                    + owner
                    + b" %d " % rdev
                    + mtime
                    + b" - - -"
                )
            elif kind == 8:
                ifmt = draw(st.sampled_from([b"10", b"14"]))
                lines.append(head + b" 0 " + ifmt + b"600 1 0 0 0 " + mtime + b" - - -")
            elif kind in (9, 10) and paths:
                target = draw(st.sampled_from([*paths, b"/"]))
                lines.append(head + b" 0 @100644 0 0 0 0 0.0 " + escape(target) + b" - -")
                paths.append(path)
                continue
            else:
                lines.append(head + b" 0 100600 1 0 0 0 " + mtime + b" - - -")
            lines[-1] += xattrs(draw)
            paths.append(path)
        if draw(st.integers(0, 19)) == 0:
            # swap two lines (a child before its parent, a link before its target)
            i = draw(st.integers(0, len(lines) - 1))
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        data = b"\n".join(lines) + (b"\n" if draw(st.integers(0, 9)) else b"")
        versions = draw(st.sampled_from([(None, None), (0, 0), (1, 1), (None, 0), (1, None)]))
        return data, versions[0], versions[1], draw(st.booleans())

    def xattrs(draw: Any) -> bytes:
        chosen = draw(st.lists(st.sampled_from(XATTRS), max_size=4))
        return b"".join(b" " + escape(k, True) + b"=" + escape(v, True) for k, v in chosen)

    return build()
