"""Composefs images against cfsctl: pulls (V1 and V2 repositories, SHA-256 and SHA-512, both
backends), directories (``create-image``, ``compute-id``, ``create-dumpfile``) and dumpfiles
(``mkcomposefs``). Every image we store passes ``fsck.erofs``."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from composefs import erofs, splitstream
from support import run, tool
from support.oci import HOST_ARCH, build_layout

pytestmark = pytest.mark.interop

ALGORITHMS = ["fsverity-sha256-12", "fsverity-sha512-12"]


def ours(*args: str | os.PathLike[str], backend: str = "native", check: bool = True) -> bytes:
    env = dict(os.environ, COMPOSEFS_BACKEND=backend)
    return run(sys.executable, "-m", "composefs.cli", *args, env=env, check=check).stdout


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("layout") / "img"
    build_layout(path)
    return path


def _fsck_erofs(repo: Path) -> int:
    fsck = tool("fsck.erofs")
    n = 0
    for entry in (repo / "images").iterdir():
        if entry.is_symlink():
            run(fsck, entry.resolve())
            n += 1
    return n


@pytest.mark.parametrize("backend", ["native", "python"])
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_pulled_image_ids_match_cfsctl(
    cfsctl: str, layout: Path, tmp_path: Path, algorithm: str, version: int, backend: str
) -> None:
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    init = ["--insecure", "--algorithm", algorithm, "--erofs-version", str(version)]
    run(cfsctl, "--repo", a, "init", *init, a)
    ours("--repo", b, "init", *init, b, backend=backend)
    for tag in ("multi", "index", "nested"):
        ref = f"oci:{layout}:{tag}"
        run(cfsctl, "--repo", a, "oci", "pull", ref)
        ours("--repo", b, "oci", "pull", ref, backend=backend)
        expected = json.loads(run(cfsctl, "--repo", a, "oci", "inspect", ref).stdout)
        image_id = expected["composefs_erofs"]
        assert image_id
        for repo in (a, b):
            # each tool computes the same id from either repository, equal to the linked one
            assert run(cfsctl, "--repo", repo, "oci", "compute-id", ref).stdout.decode() == (
                image_id + "\n"
            )
            assert ours("--repo", repo, "oci", "compute-id", ref, backend=backend).decode() == (
                image_id + "\n"
            )
            # (`oci images` rows: cfsctl lists in directory order, we sort)
            for args in (["oci", "inspect", ref], ["oci", "dump", ref]):
                assert (
                    ours("--repo", repo, *args, backend=backend)
                    == run(cfsctl, "--repo", repo, *args).stdout
                ), args
        # the stored image is the same file in both repositories
        hex_id = image_id
        assert (a / "images" / hex_id).resolve().read_bytes() == (
            b / "images" / hex_id
        ).resolve().read_bytes()
    # cfsctl reads and checks our repository
    fsck = json.loads(run(cfsctl, "--repo", b, "oci", "fsck", "--json").stdout)
    assert fsck["ok"] is True, fsck
    assert run(cfsctl, "--repo", b, "fsck").stdout.endswith(b"status: ok\n")
    assert _fsck_erofs(b) >= 3


def test_keep_user_xattrs_dump_and_id(cfsctl: str, layout: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    run(cfsctl, "--repo", repo, "init", "--insecure", repo)
    ref = f"oci:{layout}:multi"
    ours("--repo", repo, "oci", "pull", ref)
    for mode in ("allowlist-only", "keep-user-xattrs"):
        for cmd in ("dump", "compute-id"):
            args = ["oci", cmd, ref, "--xattrs", mode]
            assert ours("--repo", repo, *args) == run(cfsctl, "--repo", repo, *args).stdout


def test_config_digest_reference(cfsctl: str, layout: Path, tmp_path: Path) -> None:
    """``@<config digest>`` as cfsctl takes it (layers re-hashed against their diff_ids), and
    ``@<manifest digest>`` (our extension) give the same id."""
    repo = tmp_path / "r"
    ours("--repo", repo, "init", "--insecure", repo)
    ref = f"oci:{layout}:multi"
    summary = ours("--repo", repo, "oci", "pull", ref).decode()
    lines = dict(line.split(None, 1) for line in summary.splitlines())
    expected = run(cfsctl, "--repo", repo, "oci", "compute-id", ref).stdout
    for name in (f"@{lines['config']}", f"@{lines['manifest']}"):
        assert ours("--repo", repo, "oci", "compute-id", name) == expected
    by_config = run(cfsctl, "--repo", repo, "oci", "compute-id", f"@{lines['config']}").stdout
    assert by_config == expected


def _make_tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir()
    (root / "etc").mkdir()
    (root / "run/stuff").mkdir(parents=True)
    (root / "run/stuff/file").write_bytes(b"gone\n")
    (root / "etc/hostname").write_bytes(b"box\n")
    (root / "usr/bin/tool").write_bytes(os.urandom(100_000))
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/lib/exact64").write_bytes(b"x" * 64)
    (root / "usr/lib/exact65").write_bytes(b"y" * 65)
    (root / "usr/lib/empty").write_bytes(b"")
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-link")
    os.symlink("tool", root / "usr/bin/sym")
    os.mkfifo(root / "usr/lib/fifo")
    os.setxattr(root / "usr/lib/exact65", "user.note", b"kept with keep-user-xattrs")
    os.utime(root / "etc/hostname", ns=(0, 1_234_567_890_123_456_789))
    for i in range(300):
        (root / "usr/lib" / f"many-{i:03}").write_bytes(b"%d" % i)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_directory_commands_match_cfsctl(cfsctl: str, tmp_path: Path, algorithm: str) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree)
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    run(cfsctl, "--repo", a, "init", "--insecure", "--algorithm", algorithm, a)
    ours("--repo", b, "init", "--insecure", "--algorithm", algorithm, b)
    for extra in ([], ["--no-propagate-usr-to-root"], ["--xattrs", "keep-user-xattrs"]):
        for cmd in ("create-dumpfile", "compute-id"):
            for repo in (a, b):
                assert (
                    ours("--repo", repo, cmd, tree, *extra)
                    == run(cfsctl, "--repo", repo, cmd, tree, *extra).stdout
                ), (cmd, extra)
    for v in ("1", "2"):
        args = ["--erofs-version", v, "compute-id", tree]
        assert ours("--repo", a, *args) == run(cfsctl, "--repo", a, *args).stdout
    theirs_id = run(cfsctl, "--repo", a, "create-image", tree, "demo").stdout
    ours_id = ours("--repo", b, "create-image", tree, "demo")
    assert ours_id == theirs_id
    hex_id = ours_id.decode().strip().split(":")[1]
    assert os.readlink(b / "images/refs/demo") == os.readlink(a / "images/refs/demo")
    assert sorted(p.name for p in (b / "objects").rglob("*") if p.is_file()) == sorted(
        p.name for p in (a / "objects").rglob("*") if p.is_file()
    )
    assert (b / "images" / hex_id).resolve().read_bytes() == (
        a / "images" / hex_id
    ).resolve().read_bytes()
    # cfsctl checks and lists our objects, image and ref; and its image-objects agree with ours
    assert run(cfsctl, "--repo", b, "fsck").stdout.endswith(b"status: ok\n")
    theirs_objects = run(cfsctl, "--repo", b, "image-objects", "refs/demo").stdout.splitlines()
    mine_objects = ours("--repo", b, "image-objects", "refs/demo").splitlines()
    assert mine_objects == sorted(theirs_objects)  # cfsctl: hash set order; ours: sorted
    assert _fsck_erofs(b) == 1


@pytest.mark.parametrize("backend", ["native", "python"])
def test_mkcomposefs_from_file_matches_cfsctl(cfsctl: str, tmp_path: Path, backend: str) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree)
    dump = tmp_path / "dump"
    dump.write_bytes(run(cfsctl, "--hash", "sha256", "--no-repo", "create-dumpfile", tree).stdout)
    for versions in ([], ["--min-version=1", "--max-version=1"], ["--max-version=0"]):
        theirs, mine = tmp_path / "theirs.img", tmp_path / "mine.img"
        out_t = run(
            cfsctl, "mkcomposefs", "--from-file", "--print-digest", *versions, dump, theirs
        ).stdout
        out_m = ours(
            "mkcomposefs", "--from-file", "--print-digest", *versions, dump, mine, backend=backend
        )
        assert out_m == out_t
        assert mine.read_bytes() == theirs.read_bytes()
        run(tool("fsck.erofs"), mine)
    # a directory source: hard links broken by default, shared with --hardlinks
    for extra in ([], ["--hardlinks"], ["--use-epoch", "--skip-xattrs"]):
        out_t = run(cfsctl, "mkcomposefs", "--print-digest-only", *extra, tree).stdout
        out_m = ours("mkcomposefs", "--print-digest-only", *extra, tree, backend=backend)
        assert out_m == out_t, extra


def test_image_id_is_fsverity_of_bytes(tmp_path: Path) -> None:
    dump = b"/ 0 40755 2 0 0 0 0.0 - - -\n"
    for version in erofs.FORMAT_VERSIONS:
        data = erofs.mkfs(dump, version)
        assert len(data) % 4096 == 0
        path = tmp_path / f"v{version}.img"
        path.write_bytes(data)
        digest = run(tool("fsverity"), "digest", "--compact", path).stdout.decode().strip()
        assert erofs.image_id(data, "sha256").hex() == digest


_EROFS_TYPES = {"file": 1, "char": 3, "block": 4, "fifo": 5, "socket": 6, "symlink": 7}


def _listing(image: Path, path: str) -> dict[str, int]:
    out = run(tool("dump.erofs"), "--ls", f"--path={path}", image).stdout.decode()
    lines = out.split("NID TYPE  FILENAME\n", 1)[1].splitlines()
    names = {}
    for line in lines:
        _nid, kind, name = line.split(None, 2)
        if name not in (".", ".."):
            names[name] = int(kind)
    return names


@pytest.mark.parametrize("version", [0, 1, 2])
def test_dump_erofs_lists_the_tree(cfsctl: str, layout: Path, tmp_path: Path, version: int) -> None:
    """``dump.erofs`` (Debian erofs-utils) lists exactly the merged tree in every directory of
    our images (plus, in V0/V1, the root's 256 overlay whiteout stubs)."""
    from composefs import dumpfile
    from composefs._pure.tree import Directory

    repo = tmp_path / "r"
    ours("--repo", repo, "init", "--insecure", repo)
    ref = f"oci:{layout}:multi"
    ours("--repo", repo, "oci", "pull", ref)
    dump = ours("--repo", repo, "oci", "dump", ref)
    image = tmp_path / "img"
    image.write_bytes(erofs.mkfs(run(cfsctl, "--repo", repo, "oci", "dump", ref).stdout, version))
    run(tool("fsck.erofs"), image)
    tree = dumpfile.parse(dump)

    def walk(d: Directory, path: str) -> int:
        expected = {
            name.decode(errors="surrogateescape"): 2
            if isinstance(inode, Directory)
            else _EROFS_TYPES[inode.kind]
            for name, inode in d.entries.items()
        }
        found = _listing(image, path)
        if path == "/" and version != 2:
            stubs = {f"{i:02x}" for i in range(256)} - set(expected)
            assert all(found.pop(s) == 3 for s in stubs)
        assert found == expected, path
        n = 1
        for name, inode in d.entries.items():
            if isinstance(inode, Directory):
                n += walk(inode, f"{path.rstrip('/')}/{name.decode()}")
        return n

    assert walk(tree.root, "/") > 5


def test_dual_format_repository(cfsctl: str, layout: Path, tmp_path: Path) -> None:
    """``erofs_formats: {"default": 1, "extra": [2]}``: both images are written and linked
    (``composefs.image.v1`` and ``composefs.image``), as cfsctl does for such a repository."""
    a, b = tmp_path / "cfsctl", tmp_path / "ours"
    run(cfsctl, "--repo", a, "init", "--insecure", a)
    ours("--repo", b, "init", "--insecure", b)
    for repo in (a, b):
        meta = json.loads((repo / "meta.json").read_text())
        meta["erofs_formats"]["extra"] = [2]
        (repo / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    ref = f"oci:{layout}:multi"
    run(cfsctl, "--repo", a, "oci", "pull", ref)
    ours("--repo", b, "oci", "pull", ref)
    config = json.loads(ours("--repo", b, "oci", "inspect", ref))["config"]
    digest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    refs, targets = {}, {}
    for repo in (a, b):
        targets[repo] = os.readlink(repo / "streams" / f"oci-config-{digest}")
        stream = splitstream.parse((repo / "streams" / targets[repo]).resolve().read_bytes())
        refs[repo] = stream.named_ref_ids()
    # the config stream is byte-identical: same layer refs, same two image ids, same order
    assert targets[a] == targets[b]
    assert {"composefs.image", "composefs.image.v1"} <= set(refs[b])
    for version, key in ((1, "composefs.image.v1"), (2, "composefs.image")):
        args = ["--erofs-version", str(version), "oci", "compute-id", ref]
        expected = run(cfsctl, "--repo", a, *args).stdout.decode().strip()
        assert refs[b][key].hex() == expected
        assert (b / "images" / expected).exists()


def test_pull_without_usr_fails_like_cfsctl(cfsctl: str, tmp_path: Path) -> None:
    """No ``/usr``: both pulls fail after importing the layers; nothing is tagged, the
    repository checks clean, and the error is one chain without a traceback."""
    from composefs.testing import LayoutWriter, TarBuilder

    w = LayoutWriter(tmp_path / "img")
    blob = w.layer(TarBuilder().dir("etc").file("etc/a", b"a" * 100).build(), "none")
    w.write_index([w.tagged(w.image([blob], architecture=HOST_ARCH), "nousr")])
    ref = f"oci:{tmp_path / 'img'}:nousr"
    # ours with -q: no progress lines, stderr is the error alone
    ours = (sys.executable, "-m", "composefs.cli", "-q")
    for name, cli in (("cfsctl", (cfsctl,)), ("ours", ours)):
        repo = tmp_path / name
        run(*cli, "--repo", repo, "init", "--insecure", repo)
        proc = run(*cli, "--repo", repo, "oci", "pull", ref, check=False)
        assert proc.returncode == 1
        assert b'Directory entry "usr" does not exist' in proc.stderr
        tags = repo / "streams/refs/oci"
        assert not tags.exists() or not any(tags.iterdir())
        assert run(cfsctl, "--repo", repo, "fsck").stdout.endswith(b"status: ok\n")
        if name == "ours":
            assert b"Traceback" not in proc.stderr
            first = proc.stderr.decode().splitlines()[0]
            assert first.startswith("Error: Creating the composefs image of manifest sha256:")
