"""The command line's conventions (issue 12): ``--version``, ``python -m composefs``, ``-v`` /
``-q``, global options after the command, pull progress on a terminal (through a pty) and in a
log, ``oci pull --json``, the hints of common mistakes."""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

import composefs
from composefs.cli._output import PlainProgress, TerminalProgress
from composefs.oci.media_types import LAYER_MEDIA_TYPE
from composefs.oci.platform import host_platform
from composefs.oci.pull import PullEvent
from composefs.testing import LayoutWriter, TarBuilder

HOST = host_platform().architecture
PYTHON_DIR = str(Path(composefs.__file__).resolve().parents[1])


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": PYTHON_DIR + (os.pathsep + path if path else "")}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env.update(extra)
    return env


def cli(
    *args: str | os.PathLike[str], module: str = "composefs.cli", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *map(os.fspath, args)],
        capture_output=True,
        text=True,
        env=_env(**env),
        check=False,
        timeout=120,
    )


def ok(*args: str | os.PathLike[str], **env: str) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, **env)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """Two layers (a gzip one and an uncompressed one) tagged ``t`` and ``u``."""
    w = LayoutWriter(tmp_path / "layout")
    base = w.layer(TarBuilder().dir("usr").file("usr/a", os.urandom(20_000)).build(), "gzip")
    top = w.layer(TarBuilder().dir("usr").file("usr/b", b"b" * 3000).build(), "none")
    image = w.image([base, top], architecture=HOST)
    w.write_index([w.tagged(image, "t"), w.tagged(image, "u")])
    return tmp_path / "layout"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    ok("--repo", tmp_path / "repo", "init", "--insecure")
    return tmp_path / "repo"


# -- --version, python -m composefs ------------------------------------------------------------


@pytest.mark.parametrize("module", ["composefs.cli", "composefs"])
def test_version(module: str) -> None:
    proc = cli("--version", module=module)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"composefs {composefs.__version__} ({composefs.backend} backend)\n"
    python = cli("--version", module=module, COMPOSEFS_BACKEND="python")
    assert python.stdout == f"composefs {composefs.__version__} (python backend)\n"


def test_python_m_composefs_is_the_command(repo: Path) -> None:
    proc = cli("--help", module="composefs")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: composefs ")
    assert cli(module="composefs").returncode == 2  # a command is required: a usage error
    images = cli("--repo", repo, "images", module="composefs")
    assert images.returncode == 0 and images.stdout == "No images found\n"


# -- global options after the command ----------------------------------------------------------


def test_global_options_after_the_command(repo: Path, layout: Path) -> None:
    assert ok("oci", "images", "--repo", repo).stdout == "No images found\n"
    ok("oci", "pull", f"oci:{layout}:t", "img", "--repo", repo, "-q")
    assert "img" in ok("oci", "images", "--repo", repo).stdout
    assert ok("images", "--json", "--repo", repo, "--hash", "sha512").returncode == 0
    wrong = cli("images", "--repo", repo, "--hash", "sha256")
    assert wrong.returncode == 1 and "--hash sha256 was specified" in wrong.stderr
    # before and after: both count
    assert ok("--repo", repo, "fsck", "--metadata-only", "-q").stdout.endswith("status: ok\n")


def test_a_commands_own_option_keeps_its_meaning(tmp_path: Path) -> None:
    """``init --insecure`` and ``init --erofs-version`` are init's options, not the global
    ones of the same names."""
    ok("init", tmp_path / "r", "--insecure", "--erofs-version", "2", "--repo", tmp_path / "x")
    meta = json.loads((tmp_path / "r/meta.json").read_text())
    assert meta["erofs_formats"] == {"default": 2}
    assert not (tmp_path / "x").exists()


def test_conflicting_global_options(repo: Path) -> None:
    proc = cli("--repo", repo, "oci", "images", "--user")
    assert proc.returncode == 2
    assert "argument --user: not allowed with argument --repo" in proc.stderr
    proc = cli("-q", "--repo", repo, "images", "-v")
    assert proc.returncode == 2
    assert "-q/--quiet: not allowed with argument -v/--verbose" in proc.stderr


def test_help_of_a_command_mentions_the_trailing_options() -> None:
    proc = ok("oci", "pull", "--help")
    assert "--json" in proc.stdout and "--platform" in proc.stdout
    assert "Global options (see `composefs --help`) may also follow the command." in proc.stdout
    assert "--repo" not in proc.stdout  # not repeated in every command's help


# -- -v, -q, progress in a log -----------------------------------------------------------------


def test_pull_without_a_terminal_prints_plain_progress_lines(repo: Path, layout: Path) -> None:
    proc = ok("--repo", repo, "oci", "pull", f"oci:{layout}:t", "img")
    lines = proc.stderr.splitlines()
    assert "\x1b" not in proc.stderr
    assert lines[0] == "Importing 2 layers from OCI layout"
    assert re.fullmatch(r"Copying config sha256:[0-9a-f]{64}", lines[1])
    copying = [x for x in lines if x.startswith("Copying blob ")]
    assert len(copying) == 2
    for line in copying:
        assert re.fullmatch(r"Copying blob sha256:[0-9a-f]{12}\.\.\. [0-9.]+ (B|KiB)", line), line
    done = [x for x in lines if x.startswith("Blob ")]
    assert len(done) == 2 and all(re.search(r"\.\.\. done \(.* in [0-9.]+ s\)$", x) for x in done)
    assert lines[-2:] == ["Storing manifest", "Creating composefs image"]
    assert proc.stdout.splitlines()[3] == "tagged   img"
    # again: every layer is present
    again = ok("--repo", repo, "oci", "pull", f"oci:{layout}:u", "img2")
    assert sum("already present" in x for x in again.stderr.splitlines()) == 2


def test_quiet_pull_prints_nothing_on_stderr(repo: Path, layout: Path) -> None:
    proc = ok("--repo", repo, "-q", "oci", "pull", f"oci:{layout}:t", "img")
    assert proc.stderr == ""
    assert proc.stdout.startswith("manifest sha256:")
    # errors are still printed
    proc = cli("--repo", repo, "-q", "oci", "pull", f"oci:{layout}:nope")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ")


def test_verbose_pull_logs_each_step(repo: Path, layout: Path) -> None:
    proc = ok("--repo", repo, "oci", "pull", f"oci:{layout}:t", "img", "-v")
    logs = [x for x in proc.stderr.splitlines() if x.startswith("[")]
    pattern = re.compile(r"\[ *[0-9]+\.[0-9]{3}s (INFO|DEBUG) +composefs\.[a-z._]+\] .+")
    assert logs and all(pattern.fullmatch(x) for x in logs), logs
    text = "\n".join(logs)
    for step in (
        f"Pulling oci:{layout}:t into {repo}",
        "Resolved manifest sha256:",
        "Read config sha256:",
        "Importing layer sha256:",
        "Imported layer sha256:",
        "Storing manifest sha256:",
        "Created composefs image ",
        "Tagged sha256:",
    ):
        assert step in text, step
    assert "DEBUG" not in text
    assert sum("Importing layer" in x for x in logs) == 2
    # -vv: debug details too; -v before and after the command add up
    proc = ok("-v", "--repo", repo, "oci", "pull", f"oci:{layout}:t", "img2", "-v")
    assert " DEBUG " in proc.stderr and "already stored: its layers are too" in proc.stderr
    # default: no log lines
    proc = ok("--repo", repo, "oci", "pull", f"oci:{layout}:t", "img3")
    assert not any(x.startswith("[") for x in proc.stderr.splitlines())


def test_a_library_warning_reaches_stderr_without_v() -> None:
    """Without ``-v`` the handler waits until the library first logs (composefs._loghook)."""
    code = (
        "import sys\n"
        "from composefs.cli import _output\n"
        "with _output.logging_to_stderr(0):\n"
        "    assert 'logging' not in sys.modules\n"
        "    from composefs import _log\n"
        "    _log.logger('composefs.x').warning('careful\\x1b[2J')\n"
        "    _log.logger('composefs.x').info('not shown')\n"
        "assert _log.logger('composefs').handlers[-1].__class__.__name__ == 'NullHandler'\n"
        "_log.logger('composefs.x').warning('after the run: not shown')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "warning: careful\\x1b[2J\n"


def test_library_logging_has_a_null_handler_and_logs_the_pull(
    tmp_path: Path, layout: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from composefs import _log, oci
    from composefs.repository import Repository

    handlers = logging.getLogger("composefs").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert _log.logger("composefs.x") is logging.getLogger("composefs.x")
    with Repository.init(tmp_path / "r", insecure=True) as repo, caplog.at_level(logging.INFO):
        oci.pull(repo, f"oci:{layout}:t", "img")
    messages = [r.getMessage() for r in caplog.records if r.name == "composefs.oci.pull"]
    assert any(m.startswith("Importing layer sha256:") for m in messages)
    assert any(m.startswith("Tagged ") for m in messages)


# -- oci pull --json ----------------------------------------------------------------------------


def test_pull_json(repo: Path, layout: Path) -> None:
    proc = ok("--repo", repo, "oci", "pull", f"oci:{layout}:t", "img", "--json")
    doc = json.loads(proc.stdout)
    assert "Storing manifest" in proc.stderr  # progress stays on stderr
    inspect = json.loads(ok("--repo", repo, "oci", "inspect", "img").stdout)
    hex_id = re.compile(r"[0-9a-f]{128}")
    assert set(doc) == {
        "manifest_digest",
        "manifest_verity",
        "config_digest",
        "config_verity",
        "stored_manifest_verity",
        "stored_config_verity",
        "tag",
        "index_digest",
        "index_verity",
        "platform",
        "image_id",
        "images",
        "layers",
        "stats",
        "referrers",
    }
    assert doc["referrers"] == []
    assert doc["tag"] == "img" and doc["index_digest"] is None and doc["index_verity"] is None
    assert doc["manifest_digest"] == inspect["manifest"] or doc["manifest_digest"] in proc.stdout
    for key in ("manifest_verity", "config_verity", "stored_manifest_verity", "image_id"):
        assert hex_id.fullmatch(doc[key]), key
    assert doc["platform"] == {
        "os": "linux",
        "architecture": HOST,
        "variant": doc["platform"]["variant"],
    }
    assert doc["images"] == {"1": doc["image_id"]}
    assert [layer["diff_id"] for layer in doc["layers"]] == [
        d
        for d in json.loads(ok("--repo", repo, "oci", "inspect", "img", "--config").stdout)[
            "rootfs"
        ]["diff_ids"]
    ]
    assert doc["stats"]["layers"] == 2 and doc["stats"]["objects_copied"] >= 1
    compute = ok("--repo", repo, "oci", "compute-id", "img").stdout.strip()
    assert compute == doc["image_id"]
    # -q --json: the document alone
    quiet = ok("--repo", repo, "-q", "oci", "pull", f"oci:{layout}:u", "again", "--json")
    assert quiet.stderr == "" and json.loads(quiet.stdout)["tag"] == "again"


# -- hints -------------------------------------------------------------------------------------


def test_tag_typo_lists_the_tags_present(repo: Path, tmp_path: Path) -> None:
    w = LayoutWriter(tmp_path / "many")
    layer = w.layer(TarBuilder().dir("usr").build(), "none")
    image = w.image([layer], architecture=HOST)
    w.write_index([w.tagged(image, f"v{i}") for i in range(14)])
    proc = cli("--repo", repo, "-q", "oci", "pull", f"oci:{tmp_path / 'many'}:v99")
    assert proc.returncode == 1
    shown = ", ".join(f"v{i}" for i in range(10))
    assert f"Tag 'v99' not found in image index (tags present: {shown}, and 4 more)" in (
        proc.stderr
    )


@pytest.mark.parametrize(
    ("ref", "hint"),
    [
        ("nginx", "name the transport: oci:nginx (an OCI layout directory) or docker://nginx"),
        ("quay.io/fedora/fedora:40", "for a registry image use docker://quay.io/fedora/fedora:40"),
        ("localhost:5000/img", "for a registry image use docker://localhost:5000/img"),
        ("/some/dir", "for an OCI layout directory use oci:/some/dir"),
    ],
)
def test_reference_without_transport(repo: Path, ref: str, hint: str) -> None:
    proc = cli("--repo", repo, "-q", "oci", "pull", ref)
    assert proc.returncode == 1
    assert "Error: Parsing image reference transport" in proc.stderr
    assert hint in proc.stderr


def test_a_layout_directory_without_transport(repo: Path, layout: Path) -> None:
    proc = cli("--repo", repo, "-q", "oci", "pull", layout)
    assert f"Missing ':' in {layout}; for an OCI layout directory use oci:{layout}" in (proc.stderr)


def test_missing_repository_suggests_init(tmp_path: Path) -> None:
    proc = cli("--repo", tmp_path / "nope", "oci", "images")
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        f"Error: opening repository {tmp_path / 'nope'} (it does not exist; create it with "
        f"`composefs --repo {tmp_path / 'nope'} init`)"
    )
    (tmp_path / "empty").mkdir()
    proc = cli("--repo", tmp_path / "empty", "oci", "images")
    assert f"`composefs --repo {tmp_path / 'empty'} init`" in proc.stderr


def test_not_writable_names_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from composefs.errors import RepositoryNotWritable, format_error
    from composefs.repository import Repository

    with Repository.init(tmp_path / "r", insecure=True) as repo:
        monkeypatch.setattr(os, "access", lambda *a, **k: False)
        with pytest.raises(RepositoryNotWritable) as e:
            repo.ensure_writable()
    assert format_error(e.value) == (
        "Error: Repository is not writable\n\nCaused by:\n"
        f"    Permission denied: {tmp_path / 'r'} (os error 13)"
    )


# -- the renderers -----------------------------------------------------------------------------

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
BLOB_A, BLOB_B = "sha256:" + "1" * 64, "sha256:" + "2" * 64


class _Out(io.StringIO):
    def __init__(self, columns: int = 100, lines: int = 30) -> None:
        super().__init__()
        self.size = (columns, lines)

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "30")


def _final(text: str) -> list[str]:
    """What the screen shows at the end: the text after the last clear."""
    return text.rsplit("\x1b[J", 1)[-1].splitlines()


def test_terminal_progress(terminal: None, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    out = _Out()
    r = TerminalProgress(out)
    r.event(PullEvent("message", message="Importing 2 layers from OCI layout"))
    r.event(PullEvent("queued", id=A, total=4 << 20, digest=BLOB_A))
    r.event(PullEvent("queued", id=B, total=1 << 20, digest=BLOB_B))
    r.event(PullEvent("started", id=A, total=4 << 20, digest=BLOB_A))
    clock[0] += 1.0
    r.event(PullEvent("progress", id=A, total=4 << 20, transferred=1 << 20, digest=BLOB_A))
    clock[0] += 0.05  # throttled: not drawn
    r.event(PullEvent("progress", id=A, total=4 << 20, transferred=3 << 19, digest=BLOB_A))
    assert "1.50 MiB / 4.00 MiB" not in out.getvalue()
    clock[0] += 0.95
    r.event(PullEvent("progress", id=A, total=4 << 20, transferred=2 << 20, digest=BLOB_A))
    screen = _final(out.getvalue())
    bar = re.fullmatch(r"sha256:111111111111 \[(#+)(-+)\] +2\.00 MiB / 4\.00 MiB", screen[0])
    assert bar is not None, screen[0]
    assert abs(len(bar.group(1)) - len(bar.group(2))) <= 1  # half way
    assert screen[1] == "sha256:222222222222 waiting"
    # the overall line: bytes of all layers, rate over the window, ETA
    assert screen[2].startswith("Total")
    assert "2.00 MiB / 5.00 MiB" in screen[2]
    assert "1.00 MiB/s" in screen[2] and "ETA 0:03" in screen[2]
    r.event(PullEvent("skipped", id=B, total=1 << 20, digest=BLOB_B))
    r.event(PullEvent("done", id=A, total=4 << 20, transferred=4 << 20, digest=BLOB_A))
    r.event(PullEvent("message", message="Storing manifest"))
    r.close()
    text = out.getvalue()
    assert text.startswith("Importing 2 layers from OCI layout\n")
    screen = _final(text)
    assert screen[0] == "sha256:111111111111 done 4.00 MiB"
    assert screen[1] == "sha256:222222222222 already present"
    # present layers are not counted; the run's time and average rate
    assert screen[2].endswith("4.00 MiB / 4.00 MiB  2.00 MiB/s  in 2.0 s"), screen[2]
    assert "Storing manifest\n" in text
    assert all(len(line) < 100 for line in text.replace("\x1b[J", "\n").splitlines())


def test_terminal_progress_fits_the_screen(monkeypatch: pytest.MonkeyPatch) -> None:
    """More layers than rows: the ones importing, then a summary line; nothing wraps."""
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("LINES", "8")
    out = _Out()
    r = TerminalProgress(out)
    ids = [f"sha256:{i:02x}" + "0" * 62 for i in range(20)]
    for i in ids:
        r.event(PullEvent("queued", id=i, total=1000, digest=i))
    for i in ids[:12]:
        r.event(PullEvent("started", id=i, total=1000, digest=i))
        r.event(PullEvent("done", id=i, total=1000, transferred=1000, digest=i))
    r.event(PullEvent("started", id=ids[15], total=1000, digest=ids[15]))
    r.close()
    screen = _final(out.getvalue())
    assert len(screen) <= 8 - 1
    assert any(line.startswith("sha256:0f0000000000 [") for line in screen), screen
    assert any(line.startswith("... 15 more layers (") for line in screen)
    assert all(len(line) <= 39 for line in screen)


def test_plain_progress() -> None:
    out = io.StringIO()
    r = PlainProgress(out)
    r.event(PullEvent("message", message="Importing 2 layers from OCI layout"))
    r.event(PullEvent("queued", id=A, total=12 << 20, digest=BLOB_A))
    r.event(PullEvent("started", id=A, total=12 << 20, digest=BLOB_A))
    r.event(PullEvent("progress", id=A, total=12 << 20, transferred=1 << 20, digest=BLOB_A))
    r.event(PullEvent("skipped", id=B, total=10, digest=BLOB_B))
    r.event(PullEvent("done", id=A, total=12 << 20, transferred=12 << 20, digest=BLOB_A))
    r.event(PullEvent("message", message="Storing\x1b[2J manifest"))
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "Importing 2 layers from OCI layout",
        "Copying blob sha256:111111111111... 12.00 MiB",
        "Blob sha256:222222222222... already present",
    ]
    assert re.fullmatch(
        r"Blob sha256:111111111111\.\.\. done \(12\.00 MiB in [0-9.]+ s\)", lines[3]
    )
    assert lines[4] == "Storing\\x1b[2J manifest"  # untrusted text escaped
    assert len(lines) == 5


# -- on a terminal (a pty) ---------------------------------------------------------------------


def _spawn_on_pty(
    args: list[str | os.PathLike[str]], columns: int = 100, **env: str
) -> tuple[subprocess.Popen[bytes], int]:
    """The command with stderr on a pty of ``columns`` (stdout a pipe); returns the process
    and the pty's master end."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env.setdefault("TERM", "xterm")  # whatever the environment running the tests says
    proc = subprocess.Popen(
        [sys.executable, "-m", "composefs.cli", *map(os.fspath, args)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=_env(**env),
    )
    os.close(slave)
    return proc, master


def _read_pty(master: int, until: bytes | None = None, timeout: float = 120) -> bytes:
    """What the pty shows, until ``until`` appears or the other end is closed."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError as e:
            if e.errno == errno.EIO:  # every writer is gone
                break
            raise
        if not chunk:
            break
        data += chunk
        if until is not None and until in data:
            break
    return data


def test_pull_on_a_terminal_draws_bars(repo: Path, layout: Path) -> None:
    proc, master = _spawn_on_pty(["--repo", repo, "oci", "pull", f"oci:{layout}:t", "img"])
    try:
        shown = _read_pty(master).decode()
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, shown
    assert b"tagged   img" in out
    screen = _final(shown)
    # one line per layer (its blob digest) and the overall line, as the final state
    layer_lines = [x for x in screen if x.startswith("sha256:")]
    assert len(layer_lines) == 2 and all(" done " in x for x in layer_lines), screen
    assert any(x.startswith("Total") and "[" in x for x in screen), screen
    assert "Importing 2 layers from OCI layout\r\n" in shown
    assert "Creating composefs image\r\n" in shown
    assert "\x1b[?25l" not in shown  # the cursor is never hidden
    assert all(len(x) < 100 for x in shown.replace("\x1b[J", "\n").splitlines())


def test_a_dumb_terminal_gets_plain_lines(repo: Path, layout: Path) -> None:
    proc, master = _spawn_on_pty(
        ["--repo", repo, "oci", "pull", f"oci:{layout}:t", "img"], TERM="dumb"
    )
    try:
        shown = _read_pty(master).decode()
    finally:
        os.close(master)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "\x1b" not in shown and "Copying blob sha256:" in shown


def test_quiet_and_verbose_on_a_terminal(repo: Path, layout: Path) -> None:
    proc, master = _spawn_on_pty(["--repo", repo, "-q", "oci", "pull", f"oci:{layout}:t", "a"])
    try:
        shown = _read_pty(master)
    finally:
        os.close(master)
    proc.communicate(timeout=60)
    assert proc.returncode == 0 and shown == b""
    proc, master = _spawn_on_pty(["--repo", repo, "-v", "oci", "pull", f"oci:{layout}:t", "b"])
    try:
        shown = _read_pty(master)
    finally:
        os.close(master)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    text = shown.decode()
    # log lines are whole lines above the bars (the bars are cleared before each one)
    for line in text.split("\x1b[J"):
        for log in re.findall(r"\[ *[0-9.]+s INFO +composefs\.oci\.pull\][^\r]*\r\n", line):
            assert log.endswith("\r\n")
    assert "Tagged sha256:" in text


def _big_layout(path: Path) -> None:
    """Two gzip layers of 3 x 4 MiB incompressible files: a pull of a few seconds with the
    pure backend."""
    w = LayoutWriter(path)
    layers = []
    for i in range(2):
        tar = TarBuilder().dir("usr").dir(f"usr/l{i}")
        for j in range(3):
            tar.file(f"usr/l{i}/f{j}", os.urandom(4 << 20))
        data = tar.build()
        blob = w.blob(gzip.compress(data, compresslevel=1, mtime=0), LAYER_MEDIA_TYPE + "+gzip")
        layers.append(_Blob(blob, "sha256:" + hashlib.sha256(data).hexdigest()))
    w.write_index([w.tagged(w.image(layers, architecture=HOST), "big")])  # type: ignore[arg-type]


class _Blob:
    def __init__(self, descriptor: dict[str, Any], diff_id: str) -> None:
        self.descriptor = descriptor
        self.diff_id = diff_id


def test_ctrl_c_on_a_terminal_leaves_it_clean(repo: Path, tmp_path: Path) -> None:
    _big_layout(tmp_path / "big")
    proc, master = _spawn_on_pty(
        ["--repo", repo, "oci", "pull", f"oci:{tmp_path / 'big'}:big", "t"],
        COMPOSEFS_BACKEND="python",
    )
    try:
        before = _read_pty(master, until=b"#", timeout=60)  # a bar has started to fill
        assert proc.poll() is None, "the pull ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        after = _read_pty(master)
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=60)
    shown = (before + after).decode()
    assert proc.returncode == 130, shown
    assert "Traceback" not in shown
    assert shown.endswith("Error: interrupted\r\n"), repr(shown[-300:])
    # after the last clear: whole lines only (the final state of the bars, then the error)
    tail = shown.rsplit("\x1b[J", 1)[-1]
    assert tail.endswith("\r\n") and "\x1b" not in tail
    assert "\x1b[?25l" not in shown
    assert b"tagged" not in out
