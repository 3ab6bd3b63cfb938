"""The native layer merge (``composefs._native.merge.merge_layers``) against cfsctl 0.9.4.

Generated OCI layouts (several layers: whiteouts, opaque directories, hard links across
layers, xattrs of every class, ``/run`` content, devices, names that need escaping, PAX
mtimes with fractions, large uids, tar modes carrying file-type bits) are pulled by cfsctl
into sha256 and sha512 repositories; ``cfsctl oci dump`` (both ``--xattrs`` modes) must equal
our merge of that repository's layer splitstream files byte for byte. Our deliberate
differences (whiteouts hide lower layers only, PAX global headers skipped, ``..`` resolved)
are checked directly, and the native merge is compared with the pure twin
(``composefs._pure.tree.merge_layers``), error messages included.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from composefs.oci.layout import LayoutWriter, TarBuilder
from composefs.oci.platform import host_platform
from support import load_backend, need, run, tool

OCILAYER = int.from_bytes(b"ocilayer", "little")
XATTR_MODES = ("allowlist-only", "keep-user-xattrs")
ALGORITHMS = ("sha256", "sha512")


@pytest.fixture(scope="module")
def native() -> ModuleType:
    mod = load_backend("native")
    need(hasattr(mod, "merge"), "the native backend has no merge module (rebuild it)")
    need(hasattr(mod.merge, "merge_layers"), "the native merge module has no merge_layers")
    return mod.merge  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


# -- layers -----------------------------------------------------------------------------------


def _data(seed: str, size: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}/{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def _patch_mode(tar: bytes, name: str, mode: int) -> bytes:
    """Rewrites the ustar mode field of member ``name`` (any value, e.g. with type bits)."""
    buf = bytearray(tar)
    pos = 0
    while pos + 512 <= len(buf):
        header = buf[pos : pos + 512]
        if header == bytes(512):
            break
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        if header[:100].rstrip(b"\0") == name.encode():
            buf[pos + 100 : pos + 108] = b"%07o\0" % mode
            buf[pos + 148 : pos + 156] = b" " * 8
            buf[pos + 148 : pos + 156] = b"%06o\0 " % sum(buf[pos : pos + 512])
            return bytes(buf)
        pos += 512 + (size + 511) // 512 * 512
    raise AssertionError(f"{name} not found")


def _raw_tar(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = kw.pop("mode", 0o644)
    info.mtime = kw.pop("mtime", 1_700_000_000)
    info.uname = info.gname = ""
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _base() -> bytes:
    t = TarBuilder()
    t.dir("./")  # a root entry: its metadata is replaced by /usr's
    for d in ("etc", "usr", "usr/bin", "usr/lib", "usr/share", "opt", "opt/old", "var", "run"):
        t.dir(d, mode=0o755 if d != "usr" else 0o750, uid=0 if d != "usr" else 12)
    t.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n" * 3)
    t.file("usr/bin/tool", _data("tool", 70_000), mode=0o755, uid=1000, gid=100)
    t.file("usr/bin/small", b"tiny\n")
    t.file("usr/bin/sixty-four", b"6" * 64)
    t.file("usr/bin/sixty-five", b"6" * 65)
    t.file("usr/bin/empty", b"")
    t.file("usr/lib/big", _data("big", 300_000))
    t.symlink("usr/bin/link", "tool")
    t.symlink("usr/bin/dash", "-")
    t.hardlink("usr/bin/hard", "usr/bin/tool")
    t.file("opt/old/a", _data("a", 1000))
    t.file("opt/old/b", b"b" * 10)
    t.file("var/gone", b"will be whited out\n" * 8)
    t.fifo("var/fifo")
    t.chardev("var/null", 1, 3)
    t.chardev("var/whiteout-dev", 0, 0)
    t.file("run/stale.pid", b"123\n")
    t.dir("run/sub")
    t.file("run/sub/f", b"x")
    t.file(
        "usr/share/xattr",
        _data("x", 500),
        xattrs={
            "user.comment": "hello=world",
            "user.empty": "",
            "trusted.k": "v",
            "security.selinux": "system_u:object_r:bin_t:s0",
            "security.capability": "\x01\x00\x00\x02",
        },
    )
    t.dir("usr/share/caps", xattrs={"security.capability": "cap", "user.d": "dir xattr"})
    t.file("usr/share/" + "n" * 150, b"long name" * 20)
    t.file("usr/share/with space", b"s")
    t.file("usr/share/eq=sign\ttab\\back", b"e")
    t.file("usr/share/new\nline", b"n")
    t.file("usr/share/utf-8 \u00e9\u4e2d", b"u")
    t.file("usr/share/-", b"dash")
    return _patch_mode(t.build(), "usr/bin/small", 0o040755)  # a stray S_IFDIR bit


def _whiteouts() -> bytes:
    t = TarBuilder(mtime=1_700_000_100)
    t.dir("var")
    t.whiteout("var/gone")
    t.whiteout("var/never-existed")
    t.dir("opt")
    t.dir("opt/old")
    t.opaque("opt/old")
    t.file("opt/old/c", _data("c", 4000))
    t.dir("usr", mode=0o700)  # dir over dir: only the stat changes
    t.dir("usr/bin")
    t.file("usr/bin/tool", _data("tool2", 80_000), mode=0o755)  # usr/bin/hard keeps the old
    t.hardlink("usr/bin/hard2", "opt/old/c")
    t.hardlink("etc/passwd-link", "etc/passwd")  # target from the lower layer
    t.file("usr/lib", b"a file replaces a directory")
    t.dir("var/fifo")  # a directory replaces a file
    return t.build()


def _plain() -> bytes:
    t = TarBuilder(mtime=1_700_000_200)
    t.dir("usr")
    t.dir("usr/share")
    t.file("usr/share/doc", b"uncompressed layer\n" * 10, xattrs={"user.x": "1"})
    t.file("etc/.wh.passwd", b"")  # whiteout of a hard-linked name: the other name stays
    return t.build()


def _special() -> bytes:
    """PAX records: fractional mtimes, large and truncated ids, a non-UTF-8 name."""
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("usr", tarfile.DIRTYPE, mode=0o755, mtime=1_600_000_000.5), None),
        (_info("usr/frac", size=3, mtime=1_700_000_000.123456789), b"abc"),
        (_info("usr/frac2", size=3, mtime=1_700_000_000.25), b"abc"),
        (_info("usr/bigid", size=1, uid=70_000, gid=2**32 + 5), b"x"),
        (_info("usr/blk", tarfile.BLKTYPE, devmajor=8, devminor=300), None),
        (_info("usr/bin\udcffary", size=1), b"b"),
        (_info("run", tarfile.DIRTYPE, mode=0o1777, mtime=5), None),
    ]
    return _raw_tar(members)


IMAGES: dict[str, list[Callable[[], bytes]]] = {
    "one": [_base],
    "multi": [_base, _whiteouts, _plain],
    "special": [_special],
    "special-over-base": [_base, _special, _whiteouts],
}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """The OCI layout and, per tag, its diff_ids (bottom first)."""
    path = tmp_path_factory.mktemp("layout")
    w = LayoutWriter(path)
    arch = host_platform().architecture
    blobs = {}
    tags = {}
    entries = []
    for tag, builders in IMAGES.items():
        layers = []
        for b in builders:
            if b not in blobs:
                blobs[b] = w.layer(b(), "gzip")
            layers.append(blobs[b])
        entries.append(w.tagged(w.image(layers, architecture=arch), tag))
        tags[tag] = [la.diff_id for la in layers]
    w.write_index(entries)
    return path, tags


@pytest.fixture(scope="module", params=ALGORITHMS)
def repo(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    layout: tuple[Path, dict[str, list[str]]],
    cfsctl: str,
) -> Path:
    """A cfsctl repository (of each hash) with every test image pulled."""
    path, tags = layout
    r = tmp_path_factory.mktemp(f"repo-{request.param}")
    run(cfsctl, "--repo", r, "init", "--insecure", "--algorithm", f"fsverity-{request.param}-12")
    for tag in tags:
        run(cfsctl, "--repo", r, "oci", "pull", f"oci:{path}:{tag}", tag)
    return r


def _streams(repo: Path, diff_ids: list[str]) -> list[bytes]:
    return [(repo / "streams" / f"oci-layer-{d}").read_bytes() for d in diff_ids]


# -- against cfsctl ---------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("tag", list(IMAGES))
@pytest.mark.parametrize("xattrs", XATTR_MODES)
def test_merge_equals_cfsctl_dump(
    native: ModuleType,
    cfsctl: str,
    repo: Path,
    layout: tuple[Path, dict[str, list[str]]],
    tag: str,
    xattrs: str,
) -> None:
    streams = _streams(repo, layout[1][tag])
    expected = run(cfsctl, "--repo", repo, "oci", "dump", "--xattrs", xattrs, tag).stdout
    ours = native.merge_layers(streams, xattrs)
    assert ours == expected
    # any buffer type, default arguments
    if xattrs == "allowlist-only":
        assert native.merge_layers([memoryview(s) for s in streams]) == expected
        assert native.merge_layers(tuple(bytearray(s) for s in streams), raw_modes=True) == expected


@pytest.mark.interop
def test_content_of_the_merge(
    native: ModuleType, repo: Path, layout: tuple[Path, dict[str, list[str]]]
) -> None:
    """Spot checks that the images exercise what they claim (so equality above means much)."""
    out = native.merge_layers(_streams(repo, layout[1]["multi"]), "keep-user-xattrs")
    lines = {line.split(b" ")[0]: line for line in out.splitlines()}
    assert b"/var/gone" not in lines and b"/opt/old/a" not in lines and b"/opt/old/c" in lines
    # the root has /usr's metadata (the top layer's /usr entry), nlink 2 + 5 directories
    root, usr = lines[b"/"].split(b" "), lines[b"/usr"].split(b" ")
    assert root[2] == usr[2] and root[4:] == usr[4:] and root[3] == b"7"
    assert lines[b"/run"].split(b" ")[3] == b"2"  # emptied
    assert b"/run/stale.pid" not in lines
    assert lines[b"/usr/bin/hard"].split(b" ")[3] == b"1"  # the old tool, now alone
    assert b"@120000" in lines[b"/usr/bin/hard2"]
    assert b"@120000" not in lines[b"/etc/passwd-link"]  # its twin was whited out
    assert lines[b"/usr/lib"].split(b" ")[2] == b"100644"
    assert lines[b"/var/fifo"].split(b" ")[2] == b"40755"
    assert lines[b"/usr/bin/small"].split(b" ")[2] == b"140755"  # raw: 0o40755 | S_IFREG
    assert lines[b"/usr/bin/dash"].endswith(b" \\x2d - -")  # a symlink to "-"
    assert lines[b"/usr/share/xattr"].endswith(
        b" security.capability=\\x01\\x00\\x00\\x02 user.comment=hello\\x3dworld user.empty="
    )
    assert b"security.selinux" not in out and b"trusted." not in out


@pytest.mark.interop
def test_raw_modes_false(
    native: ModuleType, repo: Path, layout: tuple[Path, dict[str, list[str]]]
) -> None:
    streams = _streams(repo, layout[1]["one"])
    raw = native.merge_layers(streams)
    clean = native.merge_layers(streams, raw_modes=False)
    # only the member whose tar mode carries a stray type bit differs
    diff = [(a, b) for a, b in zip(raw.splitlines(), clean.splitlines(), strict=True) if a != b]
    line = b"/usr/bin/small 5 %o 1 0 0 0 1700000000.0 - tiny\\n -"
    assert diff == [(line % 0o140755, line % 0o100755)]


# -- our deliberate differences, checked directly ---------------------------------------------


def _stream(tar: bytes) -> bytes:
    """The layer splitstream file of ``tar`` (sha256; objects written to a scratch dir)."""
    split = load_backend("native").tar_split.split_layer
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as src:
        src.write(tar)
        src.seek(0)
        objects = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = split(src.fileno(), "none", objects, "sha256", OCILAYER, False, 1)
        finally:
            os.close(objects)
    return result[0]  # type: ignore[no-any-return]


def _paths(dump: bytes) -> list[bytes]:
    return [line.split(b" ")[0] for line in dump.splitlines()[1:]]


def test_whiteouts_hide_lower_layers_only(native: ModuleType) -> None:
    base = TarBuilder().dir("usr").dir("d").file("d/a", b"a").file("x", b"x").build()
    top = (
        TarBuilder()
        .dir("d")
        .file("d/new", b"n")
        .file("x", b"replaced")
        .opaque("d")
        .whiteout("x")
        .file("gone/.wh.y", b"")
        .build()
    )
    out = native.merge_layers([_stream(base), _stream(top)])
    assert _paths(out) == [b"/d", b"/d/new", b"/usr", b"/x"]
    assert b"/x 8 " in out


def test_global_headers_and_dotdot(native: ModuleType) -> None:
    buf = io.BytesIO()
    with tarfile.TarFile(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "global"}
    ) as tf:
        for info, data in [
            (_info("usr", tarfile.DIRTYPE, mode=0o755), None),
            (_info("usr/a/../b", size=1), b"b"),
            (_info("./usr/./c", size=1), b"c"),
        ]:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    tar = buf.getvalue()
    assert tar[156:157] == b"g"  # a global header first
    out = native.merge_layers([_stream(tar)])
    assert _paths(out) == [b"/usr", b"/usr/b", b"/usr/c"]
    bad = TarBuilder().dir("usr").file("usr/../../x", b"x").build()
    with pytest.raises(ValueError, match=r"^path escapes the image root: /usr/\.\./\.\./x$"):
        native.merge_layers([_stream(bad)])


@pytest.mark.parametrize(
    ("tar", "message"),
    [
        (TarBuilder().dir("etc").build(), 'Directory entry "usr" does not exist'),
        (
            TarBuilder().dir("usr").file("a/b", b"").build(),
            'Processing tar entry: Error unpacking container layer file "/a/b": '
            'Directory entry "a" does not exist',
        ),
        (
            TarBuilder().dir("usr").hardlink("h", "usr").build(),
            'Processing tar entry: Directory entry "usr" is a directory',
        ),
        (
            TarBuilder().dir("usr").file("run", b"").build(),
            'Directory entry "run" is not a subdirectory',
        ),
    ],
)
def test_errors(native: ModuleType, tar: bytes, message: str) -> None:
    with pytest.raises(ValueError) as e:
        native.merge_layers([_stream(tar)])
    assert str(e.value) == message


def test_argument_errors(native: ModuleType) -> None:
    with pytest.raises(ValueError) as e:
        native.merge_layers([], "x")
    assert str(e.value) == (
        'invalid xattr filtering mode "x" (expected "allowlist-only" or "keep-user-xattrs")'
    )
    with pytest.raises(TypeError):
        native.merge_layers(["not bytes"])
    with pytest.raises(ValueError, match="Invalid splitstream header magic value"):
        native.merge_layers([b"\0" * 200])


# -- native == pure ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pure() -> ModuleType:
    mod = load_backend("python")
    need(
        hasattr(mod, "merge") and hasattr(mod.merge, "merge_layers"),
        "composefs._pure.tree.merge_layers is not written yet",
    )
    return mod.merge  # type: ignore[no-any-return]


def _differential_cases() -> list[tuple[str, list[bytes]]]:
    usr = TarBuilder().dir("usr").file("usr/f", b"f").build()
    cases: list[tuple[str, list[bytes]]] = [
        ("base", [_base()]),
        ("multi", [_base(), _whiteouts(), _plain()]),
        ("special", [_base(), _special()]),
        ("no usr", [TarBuilder().dir("etc").build()]),
        ("usr is a file", [TarBuilder().file("usr", b"").build()]),
        ("run is a file", [usr, TarBuilder().file("run", b"").build()]),
        ("missing parent", [usr, TarBuilder().file("a/b", b"").build()]),
        ("parent is a file", [usr, TarBuilder().file("usr/f/x", b"").build()]),
        ("hardlink missing", [usr, TarBuilder().hardlink("h", "nothing").build()]),
        ("hardlink dir", [usr, TarBuilder().hardlink("h", "usr").build()]),
        ("hardlink deep", [usr, TarBuilder().hardlink("h", "a/b/c").build()]),
        ("hardlink root", [usr, TarBuilder().hardlink("h", "/").build()]),
        ("root not dir", [usr, TarBuilder().file("./", b"").build()]),
        ("escape", [usr, TarBuilder().file("a/../../b", b"").build()]),
        ("link escape", [usr, TarBuilder().hardlink("h", "../x").build()]),
        (
            "late markers",
            [
                usr,
                TarBuilder()
                .dir("usr")
                .file("usr/g", b"g")
                .opaque("usr")
                .whiteout("usr/g")
                .whiteout("nodir/x")
                .build(),
            ],
        ),
        ("whiteout hardlink", [usr, TarBuilder().hardlink("usr/.wh.f", "missing").build()]),
        ("dotdot", [usr, TarBuilder().file("usr/x/../y", b"y").dir("./usr/.").build()]),
        ("garbage", [b"not a splitstream"]),
    ]
    return cases


@pytest.mark.parametrize("xattrs", XATTR_MODES)
@pytest.mark.parametrize("raw_modes", [True, False])
def test_native_equals_pure(
    native: ModuleType, pure: ModuleType, xattrs: str, raw_modes: bool
) -> None:
    for name, tars in _differential_cases():
        streams = [_stream(t) if t.endswith(bytes(1024)) else t for t in tars]
        results = []
        for mod in (native, pure):
            try:
                results.append(("ok", mod.merge_layers(streams, xattrs, raw_modes)))
            except ValueError as e:
                results.append(("error", str(e)))
        assert results[0] == results[1], name


def _big_stream(n: int) -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("usr", tarfile.DIRTYPE, mode=0o755), None)
    ]
    for d in range(n // 1000):
        members.append((_info(f"usr/d{d}", tarfile.DIRTYPE, mode=0o755), None))
        for f in range(1000):
            members.append((_info(f"usr/d{d}/file-{f}", size=8), b"%08d" % f))
    return _stream(_raw_tar(members))


def test_large_layer(native: ModuleType) -> None:
    """50,000 files with COMPOSEFS_TIMING=1 (run with -s): merge + dump time is printed, not
    asserted; otherwise a 5,000-file smoke test."""

    if os.environ.get("COMPOSEFS_TIMING") != "1":
        stream = _big_stream(5_000)
        out = native.merge_layers([stream])
        assert out.count(b"\n") == 1 + 1 + 5 + 5_000
        return
    stream = _big_stream(50_000)
    t = time.perf_counter()
    out = native.merge_layers([stream])
    elapsed = time.perf_counter() - t
    print(f"merge_layers of 50,000 files: {elapsed:.3f} s, {len(out)} bytes")
    assert out.count(b"\n") == 1 + 1 + 50 + 50_000
