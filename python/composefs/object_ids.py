"""Object ids as a repository names them: ``objects/xx/<rest>`` paths and cfsctl's spellings."""

from __future__ import annotations

import string

from composefs.errors import RepositoryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from composefs.fsverity import Algorithm

__all__ = ["object_pathname", "parse_hex", "parse_hex_id", "parse_object_pathname", "to_id"]


def object_pathname(object_id: bytes) -> str:
    """``xx/<rest>``: the path of an object below ``objects/``."""
    h = object_id.hex()
    return f"{h[:2]}/{h[2:]}"


def to_id(digest: bytes) -> str:
    """``sha256:<hex>`` or ``sha512:<hex>``, as cfsctl prints an object id."""
    return f"{'sha256' if len(digest) == 32 else 'sha512'}:{digest.hex()}"


def parse_object_pathname(target: str, algorithm: Algorithm) -> bytes:
    """The digest at the end of a symlink target like ``../objects/xx/rest``."""
    n = 2 * algorithm.digest_size + 1
    tail = target[-n:]
    if len(tail) != n or tail[2] != "/":
        raise RepositoryError(f"invalid object path {target!r}")
    try:
        return bytes.fromhex(tail[:2] + tail[3:])
    except ValueError as e:
        raise RepositoryError(f"invalid object path {target!r}: {e}") from None


def parse_hex_id(text: str, algorithm: Algorithm) -> bytes:
    """Parses a bare hex digest of the repository's algorithm (cfsctl's messages)."""
    return parse_hex(text, algorithm.digest_size)


def parse_hex(text: str, size: int) -> bytes:
    """``size`` bytes from ``2 * size`` hex digits; :class:`ValueError` with hex's messages."""
    if len(text) % 2:
        raise ValueError("Odd number of digits")
    if len(text) != 2 * size:
        raise ValueError("Invalid string length")
    for i, c in enumerate(text):
        if c not in string.hexdigits:
            raise ValueError(f"Invalid character {c!r} at position {i}")
    return bytes.fromhex(text)
