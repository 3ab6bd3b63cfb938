"""The pure-Python layer merge (``composefs._pure.merge``): composefs-rs ``create_filesystem``
rules (``process_entry`` + ``transform_for_oci``) with our deliberate differences (whiteouts
apply to lower layers only, PAX global headers skipped, ``..`` resolved lexically).

Layers are real tars imported into a temporary repository with ``composefs.oci.layer``; the
merge reads the layer splitstream files. The interop suite compares with ``cfsctl oci dump``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from composefs import _backend
from composefs._pure import dumpfile, merge, tree
from composefs.oci.layer import import_layer
from composefs.repository import Repository
from support.tars import MTIME, Tar


def usr(**kw: Any) -> Tar:
    """A tar that starts with ``usr/`` (``kw`` for that entry)."""
    return Tar().dir("usr", **kw)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    with _backend.use("python"):
        r, _ = Repository.init(tmp_path / "repo", "sha256", insecure=True)
        with r:
            yield r


def streams(repo: Repository, *tars: Tar) -> list[bytes]:
    out = []
    for t in tars:
        data = t.build()
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        result = import_layer(repo, io.BytesIO(data), diff_id)
        out.append(repo.read_object(result.verity))
    return out


def dump(repo: Repository, *tars: Tar, **kw: Any) -> list[str]:
    return merge.merge_layers(streams(repo, *tars), **kw).decode().splitlines()


def paths(lines: list[str]) -> list[str]:
    return [line.split(" ", 1)[0] for line in lines]


def line(lines: list[str], path: str) -> str:
    (found,) = [x for x in lines if x.split(" ", 1)[0] == path]
    return found


def merge_error(repo: Repository, *tars: Tar) -> str:
    layer_streams = streams(repo, *tars)
    with pytest.raises(ValueError) as info:
        merge.merge_layers(layer_streams)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# layer order and plain entries


def test_layers_apply_bottom_first(repo: Repository) -> None:
    lower = usr().file("usr/a", b"lower").file("usr/b", b"b")
    upper = Tar(mtime=MTIME + 5).file("usr/a", b"upper", mode=0o600, uid=7, gid=8)
    lines = dump(repo, lower, upper)
    assert lines == [
        f"/ 0 40755 3 0 0 0 {MTIME}.0 - - -",
        f"/usr 0 40755 2 0 0 0 {MTIME}.0 - - -",
        f"/usr/a 5 100600 1 7 8 0 {MTIME + 5}.0 - upper -",
        f"/usr/b 1 100644 1 0 0 0 {MTIME}.0 - b -",
    ]


def test_external_files_symlinks_devices_fifos(repo: Repository) -> None:
    big = bytes(range(256)) * 2
    t = usr()
    t.file("usr/big", big)
    t.file("usr/sixty-four", b"x" * 64)
    t.file("usr/empty")
    t.symlink("usr/link", "../some where")
    t.add("usr/chr", tarfile.CHRTYPE, major=1, minor=3, mode=0o666)
    t.add("usr/blk", tarfile.BLKTYPE, major=259, minor=70000, mode=0o660)
    t.add("usr/fifo", tarfile.FIFOTYPE)
    lines = dump(repo, t)
    digest = repo.algorithm  # the object id is the fs-verity digest of the content
    from composefs import fsverity

    object_id = fsverity.digest(big, digest.hash_name).hex()
    assert line(lines, "/usr/big") == (
        f"/usr/big 512 100644 1 0 0 0 {MTIME}.0 {object_id[:2]}/{object_id[2:]} - {object_id}"
    )
    assert (
        line(lines, "/usr/sixty-four")
        == f"/usr/sixty-four 64 100644 1 0 0 0 {MTIME}.0 - {'x' * 64} -"
    )
    assert line(lines, "/usr/empty") == f"/usr/empty 0 100644 1 0 0 0 {MTIME}.0 - - -"
    assert line(lines, "/usr/link") == (
        f"/usr/link 13 120777 1 0 0 0 {MTIME}.0 ../some\\x20where - -"
    )
    assert line(lines, "/usr/chr") == f"/usr/chr 0 20666 1 0 0 259 {MTIME}.0 - - -"
    rdev = (70000 & 0xFF) | ((259 & 0xFFF) << 8) | ((70000 & ~0xFF) << 12)
    assert line(lines, "/usr/blk") == f"/usr/blk 0 60660 1 0 0 {rdev} {MTIME}.0 - - -"
    assert line(lines, "/usr/fifo") == f"/usr/fifo 0 10644 1 0 0 0 {MTIME}.0 - - -"


def test_raw_modes_keep_stray_type_bits(repo: Repository) -> None:
    # a tar mode carrying file-type bits (some tools write 0o100644): kept raw in the tree
    t = usr().file("usr/f", b"x").dir("usr/d").file("usr/odd", b"y")
    t.raw_mode("usr/f", 0o100644).raw_mode("usr/d/", 0o40755)
    t.raw_mode("usr/odd", 0o20644)  # char-device bits on a regular file
    layer_streams = streams(repo, t)
    raw = merge.merge_layers(layer_streams).decode().splitlines()
    clean = merge.merge_layers(layer_streams, raw_modes=False).decode().splitlines()
    assert line(raw, "/usr/f").split()[2] == "100644"
    assert line(raw, "/usr/odd").split()[2] == "120644"  # 0o20644 | S_IFREG
    assert line(clean, "/usr/odd").split()[2] == "100644"
    assert line(raw, "/usr/d").split()[2] == "40755"
    assert line(clean, "/usr/d").split()[2] == "40755"


def test_mtime_nanoseconds_and_negative_mtimes(repo: Repository) -> None:
    t = usr(pax={"mtime": "1700000000.5"})
    t.file("usr/a", b"a", pax={"mtime": "12.000000042"})
    t.file("usr/old", b"o").raw_mtime("usr/old", -5)
    lines = dump(repo, t)
    assert lines[0] == "/ 0 40755 3 0 0 0 1700000000.500000000 - - -"
    assert line(lines, "/usr").split()[7] == "1700000000.500000000"
    assert line(lines, "/usr/a").split()[7] == "12.42"
    assert line(lines, "/usr/old").split()[7] == "-5.0"


def test_root_entry(repo: Repository) -> None:
    # a root entry sets the root stat, which /usr's then replaces
    t = Tar().dir("./", mode=0o700, uid=5).dir("usr", mode=0o751, uid=3, gid=4)
    assert dump(repo, t)[0] == f"/ 0 40751 3 3 4 0 {MTIME}.0 - - -"
    bad = Tar().file("./", b"")
    assert "must be a directory" in merge_error(repo, usr(), bad)


def test_pax_global_header_is_skipped(repo: Repository) -> None:
    t = Tar(global_pax={"comment": "hello", "mtime": "1"}).dir("usr").file("usr/a", b"a")
    assert paths(dump(repo, t)) == ["/", "/usr", "/usr/a"]


# --------------------------------------------------------------------------------------------
# parents, replacement, directories


def test_missing_parent_is_an_error(repo: Repository) -> None:
    message = merge_error(repo, usr().file("usr/nodir/a", b"a"))
    assert message == (
        'Processing tar entry: Error unpacking container layer file "/usr/nodir/a": '
        'Directory entry "nodir" does not exist'
    )
    message = merge_error(repo, usr().file("usr/f", b"").file("usr/f/a", b"a"))
    assert 'Directory entry "f" is not a subdirectory' in message


def test_directory_over_directory_replaces_only_the_stat(repo: Repository) -> None:
    lower = usr().dir("usr/d", xattrs={"user.old": "1"}).file("usr/d/keep", b"k")
    upper = Tar(mtime=MTIME + 1).dir("usr/d", mode=0o700, uid=9, xattrs={"user.new": "2"})
    lines = dump(repo, lower, upper, xattrs="keep-user-xattrs")
    assert line(lines, "/usr/d") == f"/usr/d 0 40700 2 9 0 0 {MTIME + 1}.0 - - - user.new=2"
    assert "/usr/d/keep" in paths(lines)


def test_file_replaces_directory_and_directory_replaces_file(repo: Repository) -> None:
    lower = usr().dir("usr/d").dir("usr/d/sub").file("usr/d/sub/x", b"x").file("usr/f", b"f")
    upper = Tar().file("usr/d", b"now a file").dir("usr/f")
    lines = dump(repo, lower, upper)
    assert paths(lines) == ["/", "/usr", "/usr/d", "/usr/f"]
    assert line(lines, "/usr/d").split()[2] == "100644"
    assert line(lines, "/usr/f").split()[2] == "40755"
    assert lines[1].split()[3] == "3"  # /usr nlink: 2 + one subdirectory


def test_dot_dot_is_resolved_lexically(repo: Repository) -> None:
    t = usr().dir("usr/a").file("usr/a/../b", b"b").file("./usr/./a//c", b"c")
    t.link("usr/a/h", "usr/x/../b")
    lines = dump(repo, t)
    assert paths(lines) == ["/", "/usr", "/usr/a", "/usr/a/c", "/usr/a/h", "/usr/b"]
    assert line(lines, "/usr/a/h").split()[3] == "2"
    message = merge_error(repo, usr().file("usr/../../etc", b"x"))
    assert message == "path escapes the image root: /usr/../../etc"
    message = merge_error(repo, usr().file("usr/a", b"").link("usr/h", "../usr/a"))
    assert message == "path escapes the image root: /../usr/a"


def test_dot_dot_to_root_is_a_root_entry(repo: Repository) -> None:
    t = usr().dir("usr/..", mode=0o700)
    assert paths(dump(repo, t)) == ["/", "/usr"]
    assert "must be a directory" in merge_error(repo, usr().file("usr/..", b""))


# --------------------------------------------------------------------------------------------
# whiteouts


def test_whiteout_removes_lower_entries(repo: Repository) -> None:
    lower = usr().file("usr/a", b"a").dir("usr/d").file("usr/d/x", b"x").file("usr/keep", b"")
    upper = Tar().file("usr/.wh.a").file("usr/.wh.d").file("usr/.wh.missing")
    assert paths(dump(repo, lower, upper)) == ["/", "/usr", "/usr/keep"]


def test_opaque_directory_hides_lower_children_only(repo: Repository) -> None:
    lower = usr().dir("usr/d", mode=0o700).file("usr/d/old", b"o").dir("usr/d/sub")
    upper = Tar().dir("usr/d").file("usr/d/.wh..wh..opq").file("usr/d/new", b"n")
    lines = dump(repo, lower, upper)
    assert paths(lines) == ["/", "/usr", "/usr/d", "/usr/d/new"]
    assert line(lines, "/usr/d").split()[2:4] == ["40755", "2"]


def test_opaque_marker_after_own_entries_keeps_them(repo: Repository) -> None:
    # composefs-rs would clear usr/d/new too (marker after it); the OCI spec says a layer's
    # whiteouts only hide lower layers
    lower = usr().dir("usr/d").file("usr/d/old", b"o")
    upper = Tar().dir("usr/d").file("usr/d/new", b"n").file("usr/d/.wh..wh..opq")
    assert paths(dump(repo, lower, upper)) == ["/", "/usr", "/usr/d", "/usr/d/new"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_whiteout_never_removes_own_layer_entries(repo: Repository, marker_first: bool) -> None:
    lower = usr().file("usr/a", b"lower")
    upper = Tar(mtime=MTIME + 1)
    if marker_first:
        upper.file("usr/.wh.a").file("usr/a", b"upper")
    else:
        upper.file("usr/a", b"upper").file("usr/.wh.a")
    lines = dump(repo, lower, upper)
    assert line(lines, "/usr/a") == f"/usr/a 5 100644 1 0 0 0 {MTIME + 1}.0 - upper -"
    # with no lower entry, the layer's own file stays too
    only = Tar().dir("usr").file("usr/b", b"b").file("usr/.wh.b")
    assert "/usr/b" in paths(dump(repo, only))


def test_whiteout_with_missing_or_file_parent_is_a_noop(repo: Repository) -> None:
    lower = usr().file("usr/f", b"f")
    upper = Tar().file("usr/nodir/.wh.x").file("usr/f/.wh.y").file("usr/f/.wh..wh..opq")
    assert paths(dump(repo, lower, upper)) == ["/", "/usr", "/usr/f"]


def test_whiteout_of_a_directory_then_recreated(repo: Repository) -> None:
    lower = usr().dir("usr/d").file("usr/d/old", b"o")
    upper = Tar(mtime=MTIME + 2).file("usr/.wh.d").dir("usr/d", mode=0o711).file("usr/d/n", b"")
    lines = dump(repo, lower, upper)
    assert paths(lines) == ["/", "/usr", "/usr/d", "/usr/d/n"]
    assert line(lines, "/usr/d") == f"/usr/d 0 40711 2 0 0 0 {MTIME + 2}.0 - - -"


def test_whiteout_entries_never_reach_the_tree(repo: Repository) -> None:
    t = usr().file("usr/.wh.").dir("usr/.wh.dir").file("usr/.wh..wh..opq")
    assert paths(dump(repo, t)) == ["/", "/usr"]


def test_whiteout_entries_are_skipped_whatever_their_type(repo: Repository) -> None:
    # pass 2 skips whiteout entries entirely: a whiteout hard link to nothing is not an error
    assert paths(dump(repo, usr().link("usr/.wh.x", "usr/nothing"))) == ["/", "/usr"]


def test_whiteouts_apply_in_later_layers_across_three(repo: Repository) -> None:
    l1 = usr().dir("usr/d").file("usr/d/a", b"1")
    l2 = Tar().file("usr/d/b", b"2")
    l3 = Tar().file("usr/d/.wh..wh..opq").file("usr/d/c", b"3")
    assert paths(dump(repo, l1, l2, l3)) == ["/", "/usr", "/usr/d", "/usr/d/c"]


# --------------------------------------------------------------------------------------------
# hard links


def test_hardlink_within_layer_shares_the_target(repo: Repository) -> None:
    t = usr().file("usr/a", b"content", mode=0o640, uid=4)
    t.link("usr/b", "usr/a", mode=0o777, uid=99, xattrs={"security.capability": "x"})
    t.link("usr/c", "/usr/b")
    lines = dump(repo, t)
    assert lines[2:] == [
        f"/usr/a 7 100640 3 4 0 0 {MTIME}.0 - content -",
        "/usr/b 0 @120000 - - - - 0.0 /usr/a - -",
        "/usr/c 0 @120000 - - - - 0.0 /usr/a - -",
    ]


def test_hardlink_across_layers_and_replaced_target(repo: Repository) -> None:
    lower = usr().file("usr/a", b"old")
    middle = Tar().link("usr/h", "usr/a")
    upper = Tar(mtime=MTIME + 1).file("usr/a", b"new")
    lines = dump(repo, lower, middle, upper)
    # replacing one name gives it a new leaf; the other name keeps the old one
    assert line(lines, "/usr/a") == f"/usr/a 3 100644 1 0 0 0 {MTIME + 1}.0 - new -"
    assert line(lines, "/usr/h") == f"/usr/h 3 100644 1 0 0 0 {MTIME}.0 - old -"


def test_hardlink_to_a_name_replaced_in_the_same_layer(repo: Repository) -> None:
    lower = usr().file("usr/a", b"old")
    upper = Tar().file("usr/a", b"new").link("usr/h", "usr/a")
    lines = dump(repo, lower, upper)
    assert line(lines, "/usr/a").split()[3] == "2"
    assert line(lines, "/usr/h") == "/usr/h 0 @120000 - - - - 0.0 /usr/a - -"


def test_hardlink_to_a_whited_out_name(repo: Repository) -> None:
    # the whiteout pass runs before the layer's other entries
    lower = usr().file("usr/a", b"old")
    upper = Tar().file("usr/.wh.a").link("usr/h", "usr/a")
    assert merge_error(repo, lower, upper) == (
        'Processing tar entry: Directory entry "a" does not exist'
    )


def test_hardlink_errors(repo: Repository) -> None:
    def error(link: str) -> str:
        message = merge_error(repo, usr().file("usr/f").link("usr/h", link))
        assert message.startswith("Processing tar entry: ")
        return message.removeprefix("Processing tar entry: ")

    assert error("usr/none") == 'Directory entry "none" does not exist'
    assert error("usr") == 'Directory entry "usr" is a directory'
    # a missing parent is named by its whole path, a non-directory by its name
    assert error("nodir/deeper/x") == 'Directory entry "/nodir/deeper" does not exist'
    assert error("usr/f/x") == 'Directory entry "f" is not a subdirectory'
    assert error("/") == 'Invalid filename ""'


def test_hardlink_set_partly_removed(repo: Repository) -> None:
    lower = usr().file("usr/a", b"x").link("usr/b", "usr/a").link("usr/c", "usr/a")
    upper = Tar().file("usr/.wh.a")
    lines = dump(repo, lower, upper)
    assert lines[2:] == [
        f"/usr/b 1 100644 2 0 0 0 {MTIME}.0 - x -",
        "/usr/c 0 @120000 - - - - 0.0 /usr/b - -",
    ]


# --------------------------------------------------------------------------------------------
# transform_for_oci


def test_root_metadata_comes_from_usr(repo: Repository) -> None:
    t = Tar().dir(".", mode=0o700, uid=1)
    t.dir(
        "usr",
        mode=0o555,
        uid=10,
        gid=20,
        pax={"mtime": "123.456"},
        xattrs={
            "security.capability": "cap",
            "user.u": "v",
            "security.selinux": "label",
        },
    )
    lines = dump(repo, t)
    assert lines[0] == "/ 0 40555 3 10 20 0 123.456000000 - - - security.capability=cap"
    assert lines[1] == "/usr 0 40555 2 10 20 0 123.456000000 - - - security.capability=cap"
    user = dump(repo, t, xattrs="keep-user-xattrs")
    assert user[0].endswith(" security.capability=cap user.u=v")


def test_missing_usr_is_an_error(repo: Repository) -> None:
    assert merge_error(repo, Tar().dir("etc")) == 'Directory entry "usr" does not exist'
    assert merge_error(repo, Tar().file("usr", b"")) == (
        'Directory entry "usr" is not a subdirectory'
    )
    with pytest.raises(ValueError, match="usr"):
        merge.merge_layers([])


def test_run_is_emptied(repo: Repository) -> None:
    t = usr(pax={"mtime": "77.5"}).dir("run", mode=0o710, uid=3, xattrs={"user.r": "1"})
    t.dir("run/lock").file("run/lock/x", b"x").file("run/pid", b"1")
    t.file("usr/h", b"1").link("run/h", "usr/h")
    lines = dump(repo, t, xattrs="keep-user-xattrs")
    assert paths(lines) == ["/", "/run", "/usr", "/usr/h"]
    assert line(lines, "/run") == "/run 0 40710 2 3 0 0 77.500000000 - - - user.r=1"
    assert line(lines, "/usr/h").split()[3] == "1"  # the hard link under /run is gone
    assert merge_error(repo, usr().file("run", b"")) == (
        'Directory entry "run" is not a subdirectory'
    )


@pytest.mark.parametrize("mode", ["allowlist-only", "keep-user-xattrs"])
def test_xattr_filtering(repo: Repository, mode: str) -> None:
    xattrs = {
        "security.capability": "c",
        "security.selinux": "s",
        "user.a": "u",
        "trusted.t": "t",
        "userx": "no",
        "user.eq": "a=b c",
    }
    t = usr().file("usr/f", b"f", xattrs=xattrs).dir("usr/d", xattrs=xattrs)
    t.link("usr/h", "usr/f")
    lines = dump(repo, t, xattrs=mode)
    want = " security.capability=c"
    if mode == "keep-user-xattrs":
        want += " user.a=u user.eq=a\\x3db\\x20c"
    assert line(lines, "/usr/f").endswith(" - f -" + want)
    assert line(lines, "/usr/d").endswith(" - - -" + want)


def test_invalid_xattr_mode(repo: Repository) -> None:
    with pytest.raises(ValueError) as info:
        merge.merge_layers([], xattrs="all")
    assert str(info.value) == (
        'invalid xattr filtering mode "all" (expected "allowlist-only" or "keep-user-xattrs")'
    )


def test_merge_returns_the_tree(repo: Repository) -> None:
    t = usr().file("usr/a", b"a").link("usr/b", "usr/a")
    fs = merge.merge(streams(repo, t))
    a = fs.root.entries[b"usr"]
    assert isinstance(a, tree.Directory)
    assert a.entries[b"a"] is a.entries[b"b"]
    assert tree.equal(fs, dumpfile.parse(dumpfile.write(fs)))
