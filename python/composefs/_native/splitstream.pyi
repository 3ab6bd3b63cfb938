"""The composefs-rs 0.9 splitstream file format (native backend).

Byte arguments accept any contiguous buffer; digests are raw bytes (32 bytes for sha256,
64 for sha512). Malformed input raises :class:`ValueError` with composefs-rs's messages.
"""

from typing import Self, TypeAlias, final

from composefs._contract import SplitstreamContents

_Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["Writer", "parse"]

@final
class Writer:
    """Builds one splitstream file, byte-identical to composefs-rs 0.9's ``SplitStreamWriter``.

    ``content_type`` is the u64 stored at offset 96. After :meth:`finish` every method and
    :attr:`stream_size` raise :class:`ValueError`.
    """

    def __new__(cls, algorithm: str, content_type: int) -> Self: ...
    def write_inline(self, data: _Buffer) -> None:
        """Appends inline bytes (coalesced with adjacent inline data; empty data is ignored)."""

    def write_external(self, object_id: _Buffer, size: int) -> None:
        """Appends a reference to a stored object of ``size`` bytes."""

    def add_named_ref(self, name: str, stream_id: _Buffer) -> None:
        """Adds ``name -> stream_id`` (a repeated name keeps the last value)."""

    @property
    def stream_size(self) -> int:
        """Bytes of the reassembled stream so far."""

    def finish(self) -> bytes:
        """The complete file; the writer cannot be used afterwards."""

def parse(data: _Buffer) -> SplitstreamContents:
    """Parses a whole splitstream file (current or legacy header)."""
