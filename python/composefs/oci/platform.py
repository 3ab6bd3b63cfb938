"""Platforms (``os/architecture[/variant]``): normalisation and matching against an index.

composefs-rs 0.9 (ocidir) compares the exact ``os`` and ``architecture`` strings and ignores the
variant. We normalise the usual aliases first (``x86_64`` -> ``amd64``, ``aarch64`` ->
``arm64``, ``armhf``/``armv7l`` -> ``arm/v7``, ``i686`` -> ``386``, ...) and match variants
the way container engines do:

* ``arm64`` defaults to ``v8`` and ``arm`` to ``v7`` when a descriptor has no variant;
* a wanted ``arm`` variant also accepts older ones (a ``v7`` host runs ``v6`` and ``v5``
  images), ranked after the exact variant;
* other architectures compare variants only when one is wanted explicitly; without one, an
  entry without variant is preferred over one with a variant.

Among the entries of an index the best-ranked match wins, the first in file order among equals.
A reference that names one manifest (a tag on a manifest, a digest, a Docker archive) names the
image: no platform is selected then, a platform that differs is only logged
(:func:`warn_other_platform`), as skopeo and containers/image take such a manifest as it is.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from composefs._record import record, replace
from composefs.errors import ComposefsError
from composefs.oci.documents import quote

__all__ = [
    "Platform",
    "PlatformError",
    "format_platforms",
    "host_platform",
    "match_rank",
    "normalize",
    "parse_platform",
    "warn_other_platform",
]


class PlatformError(ComposefsError):
    """A platform string cannot be parsed."""


# architecture aliases -> (architecture, implied variant or None)
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "x64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "386": ("386", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv8l": ("arm64", "v8"),
    "arm64v8": ("arm64", "v8"),
    "aarch64_be": ("arm64be", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "arm": ("arm", None),
    "armv5l": ("arm", "v5"),
    "armv5tel": ("arm", "v5"),
    "armv6l": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6": ("arm", "v6"),
    "ppc64le": ("ppc64le", None),
    "powerpc64le": ("ppc64le", None),
    "ppc64": ("ppc64", None),
    "powerpc64": ("ppc64", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "loongarch64": ("loong64", None),
    "loong64": ("loong64", None),
    "mips64el": ("mips64le", None),
    "mips64le": ("mips64le", None),
}

_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}
_ARM_ORDER = ("v5", "v6", "v7", "v8")


@record
class Platform:
    """A normalised platform. ``variant`` is ``None`` when not specified."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Platform:
        """From a descriptor's ``platform`` or an image config (``os``, ``architecture``, ...)."""
        return normalize(
            _str(doc.get("os")), _str(doc.get("architecture")), _str(doc.get("variant"))
        )

    def effective_variant(self) -> str | None:
        """The variant with the architecture's default filled in."""
        return self.variant or _DEFAULT_VARIANT.get(self.architecture)


def _str(value: Any) -> str:
    """A string field of an untrusted document; anything else counts as absent."""
    return value if isinstance(value, str) else ""


def normalize(os_name: str, architecture: str, variant: str | None = None) -> Platform:
    """Normalises aliases: ``linux/x86_64`` -> ``linux/amd64``, ``aarch64`` -> ``arm64``, ..."""
    os_name = os_name.strip().lower()
    if os_name == "macos":
        os_name = "darwin"
    arch = architecture.strip().lower()
    arch, implied = _ARCH_ALIASES.get(arch, (arch, None))
    var = (variant or "").strip().lower() or implied
    if var is not None:
        if arch == "arm" and var in ("5", "6", "7", "8"):
            var = "v" + var
        if arch == "arm64" and var in ("8", "v8.0"):
            var = "v8"
    return Platform(os_name, arch, var)


def parse_platform(text: str) -> Platform:
    """Parses ``os/arch[/variant]`` (or ``arch`` alone, for linux), normalised."""
    parts = text.split("/")
    if any(not p for p in parts) or not 1 <= len(parts) <= 3:
        raise PlatformError(f"invalid platform {text!r} (expected os/arch[/variant])")
    if len(parts) == 1:
        return normalize("linux", parts[0])
    return normalize(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def host_platform() -> Platform:
    """The running system's platform (``os.uname().machine`` normalised)."""
    machine = os.uname().machine
    p = normalize(sys.platform if sys.platform != "linux2" else "linux", machine)
    if p.architecture == "arm64" and p.variant is None:
        return replace(p, variant="v8")
    return p


def match_rank(candidate: Platform, wanted: Platform) -> int | None:
    """How well ``candidate`` fits ``wanted``: ``0`` is exact, higher is worse, ``None`` no fit."""
    if candidate.os != wanted.os or candidate.architecture != wanted.architecture:
        return None
    arch = wanted.architecture
    if arch in _DEFAULT_VARIANT:
        want = wanted.effective_variant()
        have = candidate.effective_variant()
        if want == have:
            return 0
        if arch == "arm" and want in _ARM_ORDER and have in _ARM_ORDER:
            distance = _ARM_ORDER.index(want) - _ARM_ORDER.index(have)
            return distance if distance > 0 else None
        return None
    if wanted.variant is not None:
        return 0 if candidate.variant == wanted.variant else None
    return 0 if candidate.variant is None else 1


def format_platforms(platforms: Iterable[Platform | None], limit: int = 10) -> str:
    """``linux/amd64, linux/arm64/v8, ...`` (at most ``limit``), or ``(no platform info)``.

    Linear in the number of platforms (it stops at the ``limit + 1``-th distinct one); the
    strings come from untrusted documents, so non-printable characters are escaped.
    """
    seen: dict[str, None] = {}
    for p in platforms:
        if p is None:
            continue
        seen.setdefault(quote(str(p)))
        if len(seen) > limit:
            break
    if not seen:
        return "(no platform info)"
    texts = list(seen)
    if len(texts) > limit:
        return ", ".join(texts[:limit]) + ", ..."
    return ", ".join(texts)


def warn_other_platform(
    image: Platform | None, wanted: Platform, *, explicit: bool, what: str
) -> bool:
    """Logs a warning (logger ``composefs.oci``) when the single image ``what`` is for a
    platform that does not run as ``wanted``; ``True`` if it did. ``explicit``: ``wanted``
    was asked for (``--platform``), not this host's."""
    if image is None or match_rank(image, wanted) is not None:
        return False
    # imported here: listing or inspecting images never logs (tests/unit/cli/test_startup.py)
    from composefs._log import logger

    logger("composefs.oci").warning(
        "%s is an image for %s, not %s (%s): a single manifest is the image, it is pulled as it "
        "is (a platform selects among the manifests of an index)",
        what,
        quote(image),
        quote(wanted),
        "the platform asked for" if explicit else "this host",
    )
    return True
