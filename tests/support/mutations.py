"""Byte-level mutations of valid seeds (for the fuzzers): flips, interesting values, truncation,
insertion, deletion and duplication of slices."""

from __future__ import annotations

from hypothesis import strategies as st

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x20, 0x2F, 0x30)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 4) -> bytes:
    """``seed`` with one to ``max_ops`` random edits."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "set", "truncate", "insert", "delete", "duplicate")))
        n = len(data)
        if op == "truncate":
            del data[draw(st.integers(0, n)) :]
            continue
        if op == "insert" or n == 0:
            at = draw(st.integers(0, n))
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
            continue
        at = draw(st.integers(0, n - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from(_INTERESTING))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            end = min(n, at + draw(st.integers(1, 64)))
            data[at:at] = data[at:end]
    return bytes(data)


def seeded(seeds: list[bytes], max_ops: int = 4) -> st.SearchStrategy[bytes]:
    """A mutation of one of ``seeds`` (or a seed itself, rarely)."""
    return st.one_of(
        st.sampled_from(seeds),
        st.sampled_from(seeds).flatmap(lambda s: mutated(s, max_ops)),
    )
