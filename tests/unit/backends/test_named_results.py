"""Both backends return the named results of :mod:`composefs._contract` (the classes
themselves, not look-alike tuples)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile

from composefs import _contract, constants
from composefs._backend import Backend


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("small", b"x" * 10), ("large", b"y" * 1000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_splitstream_parse(backend_module: Backend) -> None:
    writer = backend_module.splitstream.Writer("sha256", constants.LAYER_CONTENT_TYPE)
    writer.write_inline(b"x" * 100)
    parsed = backend_module.splitstream.parse(writer.finish())
    assert type(parsed) is _contract.SplitstreamContents
    assert parsed.stream_size == 100
    assert parsed.content_type == constants.LAYER_CONTENT_TYPE


def test_split_layer_and_read_entries(backend_module: Backend) -> None:
    data = _tar()
    with tempfile.TemporaryDirectory() as objects, tempfile.TemporaryFile() as blob:
        blob.write(data)
        blob.seek(0)
        objects_fd = os.open(objects, os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = backend_module.tar_split.split_layer(
                blob.fileno(), "none", objects_fd, "sha256", constants.LAYER_CONTENT_TYPE, False
            )
        finally:
            os.close(objects_fd)
    assert type(result) is _contract.LayerSplit
    assert result.tar_size == len(data)
    assert result.objects_written == 1
    entries = backend_module.tar_split.read_entries(result.stream_file)
    assert [type(e) for e in entries] == [_contract.TarEntry] * 2
    assert [(e.path, e.inline, e.object_id is not None) for e in entries] == [
        (b"/small", b"x" * 10, False),
        (b"/large", None, True),
    ]
