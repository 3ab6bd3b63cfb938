"""Platform normalisation, parsing and matching."""

from __future__ import annotations

import os

import pytest

from composefs.oci.platform import (
    Platform,
    PlatformError,
    format_platforms,
    host_platform,
    match_rank,
    normalize,
    parse_platform,
)


@pytest.mark.parametrize(
    ("arch", "variant", "expected"),
    [
        ("x86_64", None, ("amd64", None)),
        ("X86_64", None, ("amd64", None)),
        ("amd64", None, ("amd64", None)),
        ("aarch64", None, ("arm64", None)),
        ("arm64", "v8", ("arm64", "v8")),
        ("armhf", None, ("arm", "v7")),
        ("armv7l", None, ("arm", "v7")),
        ("armel", None, ("arm", "v6")),
        ("armv6l", None, ("arm", "v6")),
        ("arm", "7", ("arm", "v7")),
        ("i686", None, ("386", None)),
        ("ppc64le", None, ("ppc64le", None)),
        ("s390x", None, ("s390x", None)),
        ("riscv64", None, ("riscv64", None)),
    ],
)
def test_normalize(arch: str, variant: str | None, expected: tuple[str, str | None]) -> None:
    p = normalize("Linux", arch, variant)
    assert (p.os, p.architecture, p.variant) == ("linux", *expected)


def test_parse_platform() -> None:
    assert parse_platform("linux/amd64") == Platform("linux", "amd64")
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert parse_platform("linux/x86_64") == Platform("linux", "amd64")
    assert parse_platform("arm64") == Platform("linux", "arm64")
    assert str(parse_platform("linux/armhf")) == "linux/arm/v7"
    for bad in ("", "linux/", "/amd64", "a/b/c/d"):
        with pytest.raises(PlatformError, match="invalid platform"):
            parse_platform(bad)


def test_host_platform() -> None:
    host = host_platform()
    assert host.os == "linux"
    machine = os.uname().machine
    if machine == "x86_64":
        assert host == Platform("linux", "amd64")
    elif machine == "aarch64":
        assert host == Platform("linux", "arm64", "v8")
    assert match_rank(host, host) == 0


def test_match_rank() -> None:
    amd64 = Platform("linux", "amd64")
    assert match_rank(Platform("linux", "amd64"), amd64) == 0
    assert match_rank(Platform("linux", "amd64", "v3"), amd64) == 1  # exact ones win
    assert match_rank(Platform("linux", "amd64", "v3"), Platform("linux", "amd64", "v3")) == 0
    assert match_rank(Platform("linux", "amd64", "v2"), Platform("linux", "amd64", "v3")) is None
    assert match_rank(Platform("linux", "arm64"), amd64) is None
    assert match_rank(Platform("windows", "amd64"), amd64) is None
    # arm64 defaults to v8 on both sides
    arm64 = parse_platform("linux/arm64")
    assert match_rank(Platform("linux", "arm64"), arm64) == 0
    assert match_rank(Platform("linux", "arm64", "v8"), arm64) == 0
    assert match_rank(Platform("linux", "arm64", "v8"), Platform("linux", "arm64", "v8")) == 0
    # arm: v7 by default; older variants fit, ranked after the exact one
    arm7 = parse_platform("linux/arm")
    assert match_rank(Platform("linux", "arm"), arm7) == 0
    assert match_rank(Platform("linux", "arm", "v7"), arm7) == 0
    assert match_rank(Platform("linux", "arm", "v6"), arm7) == 1
    assert match_rank(Platform("linux", "arm", "v5"), arm7) == 2
    assert match_rank(Platform("linux", "arm", "v7"), parse_platform("linux/arm/v6")) is None


def test_format_platforms() -> None:
    assert format_platforms([]) == "(no platform info)"
    assert format_platforms([None]) == "(no platform info)"
    plats = [Platform("linux", f"a{i}") for i in range(12)]
    text = format_platforms([Platform("linux", "amd64"), None, Platform("linux", "amd64"), *plats])
    assert text.startswith("linux/amd64, linux/a0, ")
    assert text.endswith(", ...")
    assert text.count(",") == 10
    assert format_platforms([Platform("linux", "arm", "v7")]) == "linux/arm/v7"
