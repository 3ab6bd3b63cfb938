"""Untrusted text (tags, media types, file names) never reaches the terminal raw: control
characters are escaped in every human-readable output, JSON stays exact JSON (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composefs import oci
from composefs._text import printable
from composefs.cli._common import json_text
from composefs.errors import ComposefsError, format_error
from composefs.repository import Repository
from composefs.testing import LayoutWriter, TarBuilder

EVIL = "evil\nline\x1b[2J\x07\x7f\x85\u202eend"
RAW = ("\x1b", "\x07", "\x7f", "\x85", "\u202e", "\x00")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain tag:v1.2 é 日本", "plain tag:v1.2 é 日本"),
        ("a\nb", "a\\nb"),
        ("\r\t", "\\r\\t"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bidi\u202e\u2066 sep\u2028", "bidi\\u202e\\u2066 sep\\u2028"),
        (b"bad\xff".decode("utf-8", "surrogateescape"), "bad\\xff"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_printable(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_json_text_is_exact_json() -> None:
    doc = {"name": EVIL + "\x00" + "\ud800"}
    text = json_text(doc, indent=2)
    assert json.loads(text) == doc
    assert not any(c in text for c in RAW)
    assert "\n" not in json.dumps(doc["name"])


def test_format_error_escapes_messages_but_not_its_own_lines() -> None:
    try:
        try:
            raise ComposefsError("inner\x1b]0;title\x07")
        except ComposefsError as e:
            raise ComposefsError(f"Tag '{EVIL}' not found") from e
    except ComposefsError as e:
        text = format_error(e)
    lines = text.split("\n")
    assert lines[0] == "Error: Tag 'evil\\nline\\x1b[2J\\x07\\x7f\\x85\\u202eend' not found"
    assert lines[1:] == ["", "Caused by:", "    inner\\x1b]0;title\\x07"]


def _cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "composefs.cli", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        errors="surrogateescape",
    )


def _assert_safe(text: str) -> None:
    for c in RAW:
        assert c not in text, (c, text)


@pytest.fixture()
def tagged(tmp_path: Path) -> tuple[Path, Path, str]:
    layout = tmp_path / "layout"
    writer = LayoutWriter(layout)
    tar = TarBuilder().dir("usr").file("usr/a", b"a" * 100).build()
    manifest = writer.image([writer.layer(tar)])
    # a NUL in index.json's tag, and a tag with a newline and escape sequences
    writer.write_index([writer.tagged(manifest, "nul\x00tag"), writer.tagged(manifest, EVIL)])
    repo, _ = Repository.init(tmp_path / "repo", insecure=True)
    with repo:
        oci.pull(repo, f"oci:{layout}:{EVIL}", EVIL)
        repo.write_image(EVIL, b"not an image")
    return tmp_path / "repo", layout, manifest["digest"]


def test_oci_images_table(tagged: tuple[Path, Path, str]) -> None:
    repo, _, _ = tagged
    proc = _cli(repo, "oci", "images")
    assert proc.returncode == 0, proc.stderr
    _assert_safe(proc.stdout)
    rows = [line for line in proc.stdout.splitlines() if "evil" in line]
    assert len(rows) == 1
    assert "evil\\nline\\x1b[2J\\x07\\x7f\\x85\\u202eend" in rows[0]
    # every line of the table has the same width: one row is one line
    assert len({len(line) for line in proc.stdout.splitlines()}) == 1


def test_oci_images_json_is_exact(tagged: tuple[Path, Path, str]) -> None:
    repo, _, _ = tagged
    proc = _cli(repo, "oci", "images", "--json")
    assert proc.returncode == 0, proc.stderr
    _assert_safe(proc.stdout)
    assert [i["name"] for i in json.loads(proc.stdout)["images"]] == [EVIL]


def test_images_table(tagged: tuple[Path, Path, str]) -> None:
    repo, _, _ = tagged
    proc = _cli(repo, "images")
    assert proc.returncode == 0, proc.stderr
    _assert_safe(proc.stdout)
    assert "evil\\nline" in proc.stdout
    assert [i["name"] for i in json.loads(_cli(repo, "images", "--json").stdout)["images"]] == [
        EVIL
    ]


def test_inspect_and_tag_messages(tagged: tuple[Path, Path, str]) -> None:
    repo, _, digest = tagged
    inspect = _cli(repo, "oci", "inspect", EVIL)
    assert inspect.returncode == 0, inspect.stderr
    _assert_safe(inspect.stdout)
    json.loads(inspect.stdout)
    tag = _cli(repo, "oci", "tag", digest, EVIL + "2")
    assert tag.returncode == 0, tag.stderr
    assert tag.stdout.count("\n") == 1
    _assert_safe(tag.stdout)
    untag = _cli(repo, "oci", "untag", EVIL + "2")
    assert untag.stdout.count("\n") == 1
    _assert_safe(untag.stdout)
    missing = _cli(repo, "oci", "inspect", "no\x1b[2Jsuch")
    assert missing.returncode == 1
    assert "no\\x1b[2Jsuch" in missing.stderr
    _assert_safe(missing.stderr)


def test_errors_from_a_hostile_layout(tagged: tuple[Path, Path, str], tmp_path: Path) -> None:
    repo, layout, _ = tagged
    proc = _cli(repo, "oci", "pull", f"oci:{layout}:no\x1b[2Jsuch\ntag", "x")
    assert proc.returncode == 1
    _assert_safe(proc.stderr)
    assert "no\\x1b[2Jsuch\\ntag" in proc.stderr
    # a media type from the layout, in an error message
    hostile = tmp_path / "hostile"
    writer = LayoutWriter(hostile)
    descriptor = writer.blob(b"{}", "application/evil\x1b[2J\nx")
    writer.write_index([writer.tagged(descriptor, "t")])
    proc = _cli(repo, "oci", "pull", f"oci:{hostile}:t", "x")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    _assert_safe(proc.stderr)


def test_fsck_lines(tagged: tuple[Path, Path, str]) -> None:
    repo, _, _ = tagged
    name = "bad\nname\x1b[2J"
    os.symlink("/nonexistent", repo / "streams" / name)
    proc = _cli(repo, "fsck")
    assert proc.returncode == 1
    _assert_safe(proc.stdout)
    assert "streams/bad\\nname\\x1b[2J" in proc.stdout
    assert json.loads(_cli(repo, "fsck", "--json").stdout)["errors"]
