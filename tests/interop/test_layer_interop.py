"""Layer import and the reverse path against cfsctl, through our CLI and API, both backends."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from composefs import _backend
from composefs.oci import layer
from composefs.repository import Repository
from support import need, run, tool

pytestmark = pytest.mark.interop

BACKENDS = ["python", "native"]


def _load(backend: str) -> None:
    try:
        _backend.load(backend)
    except ImportError as e:
        need(False, f"{backend} backend unavailable: {e}")


def cli(
    *args: str | os.PathLike[str], backend: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "COMPOSEFS_BACKEND": backend}
    return run(sys.executable, "-m", "composefs.cli", *args, input=input, env=env, check=check)


def sample_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, **kw: object) -> None:
            info = tarfile.TarInfo(name)
            for k, v in kw.items():
                setattr(info, k, v)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)

        add("usr", type=tarfile.DIRTYPE, mode=0o755, mtime=1_700_000_000)
        add("usr/bin", type=tarfile.DIRTYPE, mode=0o755)
        add("usr/bin/tool", os.urandom(70_000), mode=0o755, uid=1000, gid=100)
        add("usr/small", b"tiny\n", mode=0o644)
        add("usr/sixty-five", b"6" * 65)
        add("usr/sym", type=tarfile.SYMTYPE, linkname="bin/tool")
        add("usr/hard", type=tarfile.LNKTYPE, linkname="usr/small")
        add("usr/fifo", type=tarfile.FIFOTYPE)
        add("dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("dev/loop0", type=tarfile.BLKTYPE, devmajor=7, devminor=0)
        info = tarfile.TarInfo("usr/xattr")
        info.pax_headers = {"SCHILY.xattr.user.comment": "hello=world", "mtime": "1.5"}
        data = b"with xattrs and a fractional mtime" * 3
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        add("usr/" + "n" * 200, b"long name" * 20)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cfsctl() -> str:
    return tool("cfsctl")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ["fsverity-sha256-12", "fsverity-sha512-12"])
def test_import_layer_cli_matches_cfsctl(
    cfsctl: str, tmp_path: Path, backend: str, algorithm: str
) -> None:
    _load(backend)
    tar = sample_tar()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for r in (ours, theirs):
        run(cfsctl, "--repo", r, "init", "--insecure", "--algorithm", algorithm, r)
    mine = cli("--repo", ours, "oci", "import-layer", diff_id, "named", input=tar, backend=backend)
    ref = run(cfsctl, "--repo", theirs, "oci", "import-layer", diff_id, "named", input=tar)
    assert mine.stdout == ref.stdout
    assert _tree(ours) == _tree(theirs)
    # importing again is skipped and prints the same id
    again = cli("--repo", ours, "oci", "import-layer", diff_id, input=b"", backend=backend)
    assert again.stdout == ref.stdout
    # the reverse path: raw tar, dumpfile, json, read back by both tools from both repos
    for repo in (ours, theirs):
        for args in (
            ["oci", "layer", diff_id],
            ["oci", "layer", diff_id, "--dumpfile"],
            ["oci", "layer", diff_id, "--json"],
        ):
            a = cli("--repo", repo, *args, backend=backend).stdout
            b = run(cfsctl, "--repo", repo, *args).stdout
            assert a == b, args
    assert cli("--repo", ours, "oci", "layer", diff_id, backend=backend).stdout == tar
    assert run(cfsctl, "--repo", ours, "fsck").stdout.endswith(b"status: ok\n")


def _tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[rel] = ("dir",)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressed_layers_verified(
    cfsctl: str, tmp_path: Path, backend: str, compression: str
) -> None:
    _load(backend)
    tar = sample_tar()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    half = len(tar) // 2
    if compression == "gzip":  # two members: composefs-rs 0.9 would stop after the first
        blob = gzip.compress(tar[:half]) + gzip.compress(tar[half:])
        media_type = layer.OCI_LAYER + "+gzip"
    elif compression == "zstd":  # two frames, like zstd:chunked
        cctx = zstandard.ZstdCompressor()
        blob = cctx.compress(tar[:half]) + cctx.compress(tar[half:])
        media_type = layer.OCI_LAYER + "+zstd"
    else:
        blob, media_type = tar, layer.OCI_LAYER
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    ref_repo = tmp_path / "theirs"
    run(cfsctl, "--repo", ref_repo, "init", "--insecure", ref_repo)
    run(cfsctl, "--repo", ref_repo, "oci", "import-layer", diff_id, input=tar)
    repo_path = tmp_path / "ours"
    with _backend.use(backend):
        repo, _ = Repository.init(repo_path, insecure=True)
        with repo:
            result = layer.import_layer(
                repo, io.BytesIO(blob), diff_id, media_type=media_type, digest=digest
            )
            assert not result.skipped
            assert result.tar_size == len(tar) and result.blob_size == len(blob)
            assert repo.fsck().ok
    assert _tree(repo_path) == _tree(ref_repo)


@pytest.mark.parametrize("backend", BACKENDS)
def test_digest_mismatches_leave_nothing_referenced(tmp_path: Path, backend: str) -> None:
    _load(backend)
    tar = sample_tar()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    blob = gzip.compress(tar)
    wrong = "sha256:" + "0" * 64
    with _backend.use(backend):
        repo, _ = Repository.init(tmp_path / "r", insecure=True)
        with repo:
            with pytest.raises(
                layer.LayerDigestMismatch,
                match=rf"expected {wrong}, got sha256:{hashlib.sha256(blob).hexdigest()}",
            ):
                layer.import_layer(
                    repo,
                    io.BytesIO(blob),
                    diff_id,
                    media_type=layer.OCI_LAYER + "+gzip",
                    digest=wrong,
                )
            with pytest.raises(
                layer.LayerDigestMismatch,
                match=rf"does not match diff_id: expected {wrong}, got {diff_id}",
            ):
                layer.import_layer(repo, io.BytesIO(tar), wrong)
            assert repo.has_stream(f"oci-layer-{diff_id}") is None
            assert repo.has_stream(f"oci-layer-{wrong}") is None
            assert repo.fsck().ok
            assert repo.gc().objects_removed > 0  # the orphaned bodies
            assert repo.fsck().ok


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_blobs_fail_cleanly(tmp_path: Path, backend: str, compression: str) -> None:
    _load(backend)
    tar = sample_tar()
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    blob = gzip.compress(tar) if compression == "gzip" else zstandard.ZstdCompressor().compress(tar)
    with _backend.use(backend):
        repo, _ = Repository.init(tmp_path / "r", insecure=True)
        with repo:
            with pytest.raises(layer.LayerError, match=f"decompressing {compression}"):
                layer.import_layer(
                    repo,
                    io.BytesIO(blob[: len(blob) // 2]),
                    diff_id,
                    media_type=f"{layer.OCI_LAYER}+{compression}",
                )
            assert repo.has_stream(f"oci-layer-{diff_id}") is None
            assert repo.fsck().ok


def test_cli_errors_are_chained(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    run(sys.executable, "-m", "composefs.cli", "--repo", repo, "init", "--insecure")
    tar = sample_tar()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "composefs.cli",
            "--repo",
            repo,
            "oci",
            "import-layer",
            "sha256:" + "1" * 64,
        ],
        input=tar,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("Error: Importing layer sha256:1111"), err
    assert "Caused by:" in err and "does not match diff_id" in err
    assert "Traceback" not in err
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "composefs.cli",
            "--repo",
            repo,
            "oci",
            "import-layer",
            "sha256:" + "1" * 64,
            "--media-type",
            "application/x-nonsense",
        ],
        input=tar,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "unsupported layer media type 'application/x-nonsense'" in proc.stderr.decode()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "composefs.cli",
            "--repo",
            repo,
            "oci",
            "layer",
            "sha256:" + "2" * 64,
            "--json",
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith(f"Error: Layer sha256:{'2' * 64} not found")


@pytest.mark.parametrize("backend", BACKENDS)
def test_umoci_layer_matches_cfsctl(cfsctl: str, tmp_path: Path, backend: str) -> None:
    """A layer written by umoci (gzip, its own tar writer) imports exactly as cfsctl imports it."""
    import json

    _load(backend)
    umoci = tool("umoci")
    layout = tmp_path / "layout"
    run(umoci, "init", "--layout", layout)
    run(umoci, "new", "--image", f"{layout}:t")
    bundle = tmp_path / "bundle"
    run(umoci, "unpack", "--rootless", "--image", f"{layout}:t", bundle)
    usr = bundle / "rootfs" / "usr"
    (usr / "bin").mkdir(parents=True)
    (usr / "bin" / "tool").write_bytes(os.urandom(50_000))
    (usr / "small").write_bytes(b"tiny\n")
    (usr / "bin" / "link").symlink_to("tool")
    os.link(usr / "bin" / "tool", usr / "hard")
    run(umoci, "repack", "--image", f"{layout}:t", bundle)

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    (desc,) = manifest["layers"]
    (diff_id,) = config["rootfs"]["diff_ids"]
    layer_blob = blob(desc["digest"])
    tar = gzip.decompress(layer_blob)

    theirs = tmp_path / "theirs"
    run(cfsctl, "--repo", theirs, "init", "--insecure", theirs)
    run(cfsctl, "--repo", theirs, "oci", "import-layer", diff_id, input=tar)
    ours = tmp_path / "ours"
    with _backend.use(backend):
        repo, _ = Repository.init(ours, insecure=True)
        with repo:
            layer.import_layer(
                repo,
                io.BytesIO(layer_blob),
                diff_id,
                media_type=desc["mediaType"],
                digest=desc["digest"],
            )
    assert _tree(ours) == _tree(theirs)
