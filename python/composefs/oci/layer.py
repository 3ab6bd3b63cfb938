"""OCI layers: import a (compressed) tar blob as a splitstream, and read it back.

:func:`import_layer` is the hot path of every pull. One call into the backend decompresses the
blob (every gzip member / zstd frame), hashes the compressed and uncompressed bytes, splits the
tar exactly as composefs-rs 0.9 does (headers and small files inline, bodies > 64 bytes as
objects) and writes the objects in parallel; then the blob digest and the diff_id are checked,
and only if both match is the stream stored and ``streams/oci-layer-<diff_id>`` linked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

from composefs import _backend, _faults, dumpfile, splitstream
from composefs._contract import TarEntry
from composefs.errors import ComposefsError, DigestMismatchError, wrap
from composefs.oci.media_types import LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPES
from composefs.repository import Repository

__all__ = [
    "LAYER_MEDIA_TYPES",
    "LayerDigestMismatch",
    "LayerError",
    "LayerImportResult",
    "TarEntry",
    "compression_for",
    "dumpfile_line",
    "import_layer",
    "layer_entries",
    "layer_identifier",
    "layer_info",
    "layer_tar",
]

#: The default layer media type (an uncompressed OCI layer).
OCI_LAYER = LAYER_MEDIA_TYPE

ProgressCallback = Callable[[int], None]


class LayerError(ComposefsError):
    """A layer could not be imported or read."""


class LayerDigestMismatch(LayerError, DigestMismatchError):
    """The blob or its uncompressed content does not match the expected digest."""


def compression_for(media_type: str) -> str:
    """``none``, ``gzip`` or ``zstd`` for a layer media type (OCI and Docker ones)."""
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise LayerError(f"unsupported layer media type {media_type!r}") from None


def layer_identifier(diff_id: str) -> str:
    """The stream name of a layer: ``oci-layer-<diff_id>``."""
    return f"oci-layer-{diff_id}"


def _sha256_hex(digest: str, what: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256":
        raise LayerError(f"unsupported {what} algorithm {algorithm!r} (only sha256 is supported)")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise LayerError(f"invalid {what} {digest!r}")
    return value


@dataclasses.dataclass(frozen=True)
class LayerImportResult:
    """What importing one layer did."""

    diff_id: str
    #: object id of the layer's splitstream
    verity: bytes
    #: ``True`` when the layer was already in the repository and nothing was read
    skipped: bool
    blob_size: int = 0
    tar_size: int = 0
    objects_written: int = 0
    objects_present: int = 0
    external_bytes: int = 0
    inline_bytes: int = 0
    #: total size of the objects newly written (the rest were already present)
    bytes_written: int = 0


def import_layer(
    repo: Repository,
    source: int | str | os.PathLike[str] | IO[bytes],
    diff_id: str,
    *,
    media_type: str = OCI_LAYER,
    digest: str | None = None,
    name: str | None = None,
    threads: int = 0,
    progress: ProgressCallback | None = None,
) -> LayerImportResult:
    """Imports a layer blob unless ``streams/oci-layer-<diff_id>`` exists already.

    ``source`` is a file descriptor, a path, or a binary file object; it is read to its end.
    ``digest`` (the descriptor digest of the blob as stored) and ``diff_id`` (the sha256 of the
    uncompressed tar) are both verified; on a mismatch nothing is linked or tagged (objects
    already written are left for gc). ``name`` adds the ref ``streams/refs/<name>``.
    """
    identifier = layer_identifier(diff_id)
    repo.ensure_writable()
    existing = repo.has_stream(identifier)
    if existing is not None:
        if name is not None:
            repo.name_stream(identifier, name)
        return LayerImportResult(diff_id, existing, skipped=True)
    diff_hex = _sha256_hex(diff_id, "diff_id")
    digest_hex = _sha256_hex(digest, "digest") if digest is not None else None
    compression = compression_for(media_type)

    with _source_fd(source) as fd:
        try:
            split = _backend.backend().tar_split.split_layer(
                fd,
                compression,
                repo.objects_fd(),
                repo.algorithm.hash_name,
                splitstream.LAYER_CONTENT_TYPE,
                repo.secure,
                threads,
                progress,
            )
        except ValueError as e:
            raise LayerError(str(e)) from None
    blob_hex = split.blob_sha256.hex()
    if digest_hex is not None and blob_hex != digest_hex:
        raise LayerDigestMismatch(
            f"layer blob digest mismatch: expected {digest}, got sha256:{blob_hex}"
        )
    tar_hex = split.tar_sha256.hex()
    if tar_hex != diff_hex:
        raise LayerDigestMismatch(
            f"layer content does not match diff_id: expected {diff_id}, got sha256:{tar_hex}"
        )
    verity = repo.ensure_object(split.stream_file)
    _faults.point("layer-objects-written")
    repo.register_stream(verity, identifier, name)
    return LayerImportResult(
        diff_id,
        verity,
        skipped=False,
        blob_size=split.blob_size,
        tar_size=split.tar_size,
        objects_written=split.objects_written,
        objects_present=split.objects_present,
        external_bytes=split.external_bytes,
        inline_bytes=split.inline_bytes,
        bytes_written=split.written_bytes,
    )


class _source_fd:
    """A readable fd for any source; a Python file object without one is fed through a pipe."""

    def __init__(self, source: int | str | os.PathLike[str] | IO[bytes]) -> None:
        self._source = source
        self._close: int | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> int:
        src = self._source
        if isinstance(src, int):
            return src
        if isinstance(src, (str, os.PathLike)):
            self._close = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            return self._close
        try:
            return src.fileno()
        except (AttributeError, OSError, ValueError):
            pass
        read_fd, write_fd = os.pipe()
        self._close = read_fd
        reader = src

        def feed() -> None:
            try:
                with open(write_fd, "wb", closefd=True) as w:
                    while block := reader.read(1 << 20):
                        w.write(block)
            except BrokenPipeError:
                pass
            except BaseException as e:
                self._error = e

        self._thread = threading.Thread(target=feed, name="composefs-layer-feed", daemon=True)
        self._thread.start()
        return read_fd

    def __exit__(self, *exc: object) -> None:
        if self._close is not None:
            os.close(self._close)
        if self._thread is not None:
            self._thread.join()
            if self._error is not None and exc[0] is None:
                raise wrap(LayerError, "reading the layer source", self._error) from self._error


# -- the reverse path ------------------------------------------------------------------------

_KIND_MODE = {
    "dir": dumpfile.S_IFDIR,
    "file": dumpfile.S_IFREG,
    "symlink": dumpfile.S_IFLNK,
    "char": dumpfile.S_IFCHR,
    "block": dumpfile.S_IFBLK,
    "fifo": dumpfile.S_IFIFO,
}


def dumpfile_line(entry: TarEntry) -> str:
    """The entry as composefs-rs prints it in ``cfsctl oci layer --dumpfile``."""
    if entry.kind == "hardlink":
        return dumpfile.hardlink_line(entry.path, entry.link_target or b"")
    mode = entry.mode | _KIND_MODE[entry.kind]
    common: dict[str, Any] = {
        "mode": mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime": entry.mtime,
        "mtime_nsec": entry.mtime_nsec,
        "xattrs": entry.xattrs,
    }
    if entry.kind == "file":
        if entry.object_id is not None:
            h = entry.object_id.hex()
            return dumpfile.entry_line(
                entry.path,
                size=entry.size,
                payload=f"{h[:2]}/{h[2:]}".encode(),
                digest=h,
                **common,
            )
        data = entry.inline or b""
        return dumpfile.entry_line(entry.path, size=len(data), content=data, **common)
    if entry.kind == "symlink":
        target = entry.link_target or b""
        return dumpfile.entry_line(entry.path, size=len(target), payload=target, **common)
    if entry.kind in ("char", "block"):
        return dumpfile.entry_line(entry.path, rdev=entry.rdev, **common)
    return dumpfile.entry_line(entry.path, **common)


def _open_layer(repo: Repository, diff_id: str) -> tuple[bytes, splitstream.SplitStream, bytes]:
    identifier = layer_identifier(diff_id)
    verity = repo.has_stream(identifier)
    if verity is None:
        raise LayerError(f"Layer {diff_id} not found")
    data = repo.read_object(verity)
    stream = splitstream.parse(data, repo.algorithm, splitstream.LAYER_CONTENT_TYPE)
    return verity, stream, data


def layer_tar(repo: Repository, diff_id: str, out: BinaryIO) -> int:
    """Writes the layer's original tar, bit for bit; returns its size."""
    _, stream, _ = _open_layer(repo, diff_id)
    return repo.write_stream_content(stream, out)


def layer_entries(repo: Repository, diff_id: str) -> Iterator[TarEntry]:
    """The entries of a stored layer, in tar order."""
    _, _, data = _open_layer(repo, diff_id)
    return _entries(data, diff_id)


def _entries(stream_file: bytes, diff_id: str) -> Iterator[TarEntry]:
    try:
        raw = _backend.backend().tar_split.read_entries(stream_file)
    except ValueError as e:
        raise LayerError(f"reading layer {diff_id}: {e}") from None
    yield from raw


def layer_info(repo: Repository, diff_id: str) -> dict[str, Any]:
    """cfsctl's ``oci layer --json`` document."""
    verity, stream, data = _open_layer(repo, diff_id)
    count = 0
    external = 0
    for entry in _entries(data, diff_id):
        count += 1
        if entry.kind == "file" and entry.object_id is not None:
            external += entry.size
    return {
        "diffId": diff_id,
        "verity": verity.hex(),
        "size": stream.stream_size,
        "entryCount": count,
        "splitstream": {
            "externalObjects": len(stream.object_refs),
            "externalSize": external,
            "inlineSize": max(stream.stream_size - external, 0),
        },
    }


def layer_info_json(repo: Repository, diff_id: str) -> str:
    return json.dumps(layer_info(repo, diff_id), indent=2)
