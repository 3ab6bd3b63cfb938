"""Untrusted text made safe for a terminal: :func:`printable`.

Tags, ref names, paths and error messages can come from a hostile layout, registry or
repository. Before any of them reaches a human-readable output they go through
:func:`printable`, which escapes everything a terminal would interpret or a reader could not
see: C0 and C1 control characters and DEL (newline, escape sequences, NUL, ...), lone
surrogates (undecodable bytes of a file name, read with ``surrogateescape``), the Unicode line
and paragraph separators and the bidirectional overrides. JSON output is not escaped this way:
``json.dumps`` already writes exact, valid JSON.
"""

from __future__ import annotations

import re

__all__ = ["human_bytes", "printable"]

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` (``str()`` of it) with control and invisible characters escaped:
    ``"a\\nb"`` -> ``a\\\\nb``, ``"\\x1b[2J"`` -> ``\\\\x1b[2J``; printable text is unchanged."""
    s = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escape, s)


def human_bytes(n: float) -> str:
    """indicatif's ``HumanBytes``: binary prefixes, two decimals (``1.46 KiB``, ``15 B``)."""
    value = float(n)
    prefixes = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi")
    index = 0
    while value >= 1024.0 and index < len(prefixes):
        value /= 1024.0
        index += 1
    if index == 0:
        return f"{value:.0f} B"
    return f"{value:.2f} {prefixes[index - 1]}B"
