"""XXH32, the hash of the EROFS xattr name filter, pure Python (shared by the composefs-rs
writer :mod:`composefs._pure.erofs` and the C mkcomposefs writer
:mod:`composefs._pure.mkcomposefs`)."""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["xxh32"]

_M32: Final = 0xFFFFFFFF

_P1: Final = 2654435761
_P2: Final = 2246822519
_P3: Final = 3266489917
_P4: Final = 668265263
_P5: Final = 374761393


def xxh32(data: bytes, seed: int) -> int:
    """XXH32 of ``data`` (the name filter's hash; inputs are xattr names, so a plain loop)."""
    n = len(data)
    i = 0
    if n >= 16:
        v1 = (seed + _P1 + _P2) & _M32
        v2 = (seed + _P2) & _M32
        v3 = seed & _M32
        v4 = (seed - _P1) & _M32
        while i + 16 <= n:
            a, b, c, d = struct.unpack_from("<IIII", data, i)
            v1 = (v1 + a * _P2) & _M32
            v1 = (((v1 << 13) | (v1 >> 19)) & _M32) * _P1 & _M32
            v2 = (v2 + b * _P2) & _M32
            v2 = (((v2 << 13) | (v2 >> 19)) & _M32) * _P1 & _M32
            v3 = (v3 + c * _P2) & _M32
            v3 = (((v3 << 13) | (v3 >> 19)) & _M32) * _P1 & _M32
            v4 = (v4 + d * _P2) & _M32
            v4 = (((v4 << 13) | (v4 >> 19)) & _M32) * _P1 & _M32
            i += 16
        h = (
            ((v1 << 1) | (v1 >> 31))
            + ((v2 << 7) | (v2 >> 25))
            + ((v3 << 12) | (v3 >> 20))
            + ((v4 << 18) | (v4 >> 14))
        ) & _M32
    else:
        h = (seed + _P5) & _M32
    h = (h + n) & _M32
    while i + 4 <= n:
        (w,) = struct.unpack_from("<I", data, i)
        h = (h + w * _P3) & _M32
        h = (((h << 17) | (h >> 15)) & _M32) * _P4 & _M32
        i += 4
    while i < n:
        h = (h + data[i] * _P5) & _M32
        h = (((h << 11) | (h >> 21)) & _M32) * _P1 & _M32
        i += 1
    h ^= h >> 15
    h = (h * _P2) & _M32
    h ^= h >> 13
    h = (h * _P3) & _M32
    h ^= h >> 16
    return h
