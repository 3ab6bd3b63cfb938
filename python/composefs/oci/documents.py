"""OCI JSON documents: read with a size cap, parsed and type-checked in one place.

Every manifest, index, image configuration and layout file that a pull reads comes from an
untrusted place (a layout directory, an archive, a registry). This module is the one layer that
turns their bytes into typed values:

* reads are bounded (:data:`SIZE_LIMITS`, the same caps as containers/image for manifests) and
  only regular files are read (a FIFO or a device named ``index.json`` is refused, never
  waited on);
* JSON that is not UTF-8, not valid, or nested deeper than Python's recursion allows is a
  :class:`DocumentError`, never a traceback;
* every field that the code uses is checked for its type (a ``digest`` that is a number, an
  ``annotations`` that is a list, a ``platform`` that is a string are errors with the field's
  path), and unknown fields are ignored, as the image spec requires.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any, Final

from composefs._record import record
from composefs._text import printable
from composefs.errors import ComposefsError
from composefs.oci.reference import ImageReferenceError, parse_digest

__all__ = [
    "SIZE_LIMITS",
    "Descriptor",
    "DocumentError",
    "ImageIndex",
    "ImageManifest",
    "config_diff_ids",
    "open_file",
    "parse_descriptor",
    "parse_index",
    "parse_json",
    "parse_json_object",
    "parse_manifest",
    "quote",
    "read_regular_file",
]

MiB: Final = 1 << 20

#: Largest accepted size of each kind of document, in bytes. Manifests and indexes: 4 MiB, as
#: containers/image (``manifest.MaxManifestSize``); configs: 8 MiB; ``oci-layout``: 64 KiB.
SIZE_LIMITS: Final[Mapping[str, int]] = {
    "manifest": 4 * MiB,
    "index": 4 * MiB,
    "config": 8 * MiB,
    "oci-layout": 64 << 10,
}


class DocumentError(ComposefsError):
    """An OCI document is unreadable, too large, not JSON, or has a field of the wrong type."""


def quote(text: object) -> str:
    """``text`` safe to show on a terminal (:func:`composefs._text.printable`, the one escaping
    rule of the package): use it wherever a string from an untrusted document (a tag, a media
    type, an annotation, a platform) is put into an error message."""
    return printable(text)


def open_file(path: str | bytes, *, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """``path`` opened read-only and non-blocking (a FIFO is not waited on), with its
    ``fstat``; the caller checks the type. ``O_NONBLOCK`` has no effect on a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(
    path: str | bytes, limit: int, what: str, *, dir_fd: int | None = None
) -> bytes:
    """The content of the regular file ``path`` (relative to ``dir_fd`` when given), at most
    ``limit`` bytes.

    The file is opened non-blocking, so a FIFO is refused instead of waited on; anything but a
    regular file (FIFO, device, socket, directory) is a :class:`DocumentError`, and so is a
    file larger than ``limit`` (checked against ``st_size`` and again while reading, since the
    file may grow).
    """
    try:
        fd, st = open_file(path, dir_fd=dir_fd)
    except OSError as e:
        raise DocumentError(f"cannot open {what}") from e
    try:
        if not stat.S_ISREG(st.st_mode):
            raise DocumentError(f"{what} is not a regular file")
        if st.st_size > limit:
            raise DocumentError(f"{what} is too large ({st.st_size} bytes, the limit is {limit})")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 20) or 1)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise DocumentError(f"{what} is too large (more than {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise DocumentError(f"reading {what}") from e
    finally:
        os.close(fd)


def parse_json(raw: bytes, what: str) -> Any:
    """``raw`` decoded as UTF-8 JSON; any failure is a :class:`DocumentError`."""
    try:
        # decoded here: json.loads(bytes) would also accept UTF-16 and UTF-32
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw)
    except RecursionError:
        raise DocumentError(f"{what} is not valid JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise DocumentError(f"{what} is not valid JSON: not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DocumentError(f"{what} is not valid JSON: {e}") from None
    except ValueError as e:  # an integer of more than 4300 digits (sys.int_info)
        raise DocumentError(f"{what} is not valid JSON: {e}") from None


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` as a JSON object."""
    doc = parse_json(raw, what)
    if not isinstance(doc, dict):
        raise DocumentError(f"{what} is not a JSON object")
    return doc


# --- field checks -------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any, limit: int = 80) -> str:
    """A JSON value for an error message: escaped (ASCII) and at most ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = _type_name(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wrong(where: str, expected: str, value: Any) -> DocumentError:
    return DocumentError(f"{where}: expected {expected}, found {_type_name(value)}")


def _str(doc: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise DocumentError(f"{where}: missing '{key}'")
        return None
    if not isinstance(value, str):
        raise _wrong(f"{where}.{key}", "a string", value)
    return value


def _str_list(doc: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _wrong(f"{where}.{key}", "a list of strings", value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _wrong(f"{where}.{key}[{i}]", "a string", item)
    return value


def _str_map(doc: Mapping[str, Any], key: str, where: str) -> dict[str, str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(f"{where}.{key}", "an object of strings", value)
    for k, v in value.items():
        if not isinstance(v, str):
            raise _wrong(f"{where}.{key}[{_show(k)}]", "a string", v)
    return value


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong(f"{where}.{key}", "a list", value)
    return value


_PLATFORM_STRINGS: Final = ("architecture", "os", "variant", "os.version")


def _platform(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _wrong(f"{where}.platform", "an object", value)
    for key in _PLATFORM_STRINGS:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise _wrong(f"{where}.platform.{key}", "a string", item)
    if "os.features" in value or "features" in value:
        _str_list(value, "os.features", f"{where}.platform")
        _str_list(value, "features", f"{where}.platform")
    return value


@record
class Descriptor:
    """An OCI content descriptor (the fields pull uses)."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None

    @classmethod
    def from_json(cls, doc: Any, where: str = "descriptor") -> Descriptor:
        """A descriptor from its JSON, every field checked (:func:`parse_descriptor`; a bad one
        is a :class:`DocumentError`)."""
        return parse_descriptor(doc, where)


def parse_descriptor(doc: Any, where: str) -> Descriptor:
    """An OCI content descriptor, every field the code reads type-checked.

    ``digest`` must be ``sha256:<64 hex>`` (the only algorithm composefs-rs supports), ``size``
    a non-negative integer; ``mediaType`` may be absent (composefs-rs tolerates that).
    (Called once per entry of every index: kept lean, messages are built only on errors.)
    """
    if not isinstance(doc, dict):
        raise _wrong(where, "a descriptor object", doc)
    media_type = doc.get("mediaType")
    if media_type is None:
        media_type = ""
    elif not isinstance(media_type, str):
        raise _wrong(f"{where}.mediaType", "a string", media_type)
    digest = doc.get("digest")
    if not isinstance(digest, str):
        if digest is None:
            raise DocumentError(f"{where}: missing 'digest'")
        raise _wrong(f"{where}.digest", "a string", digest)
    try:
        parse_digest(digest)
    except ImageReferenceError as e:
        raise DocumentError(f"{where}.digest: {e}") from None
    size = doc.get("size")
    if type(size) is not int:  # not bool, not float
        if size is None:
            raise DocumentError(f"{where}: missing 'size'")
        raise _wrong(f"{where}.size", "an integer", size)
    if size < 0:
        raise DocumentError(f"{where}.size: negative ({size})")
    if "urls" in doc:
        _str_list(doc, "urls", where)
    annotations = doc.get("annotations")
    if annotations is not None:
        _str_map(doc, "annotations", where)
    return Descriptor(media_type, digest, size, _platform(doc.get("platform"), where), annotations)


@record
class ImageManifest:
    """An image manifest (OCI or Docker schema 2): what a pull uses of it."""

    media_type: str | None
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None
    annotations: dict[str, str] | None


@record
class ImageIndex:
    """An image index (or Docker manifest list): its entries, checked."""

    media_type: str | None
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] | None


def _schema_version(doc: Mapping[str, Any], what: str) -> None:
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        raise DocumentError(f"{what}: unsupported schemaVersion {_show(version)}")


def parse_manifest(doc: Mapping[str, Any], what: str) -> ImageManifest:
    """The fields of an image manifest document (already parsed as a JSON object)."""
    _schema_version(doc, what)
    layers = _list(doc, "layers", what)
    subject = doc.get("subject")
    return ImageManifest(
        media_type=_str(doc, "mediaType", what),
        config=parse_descriptor(doc.get("config"), f"{what}.config"),
        layers=tuple(parse_descriptor(d, f"{what}.layers[{i}]") for i, d in enumerate(layers)),
        subject=None if subject is None else parse_descriptor(subject, f"{what}.subject"),
        annotations=_str_map(doc, "annotations", what),
    )


def parse_index(doc: Mapping[str, Any], what: str, *, check_version: bool = True) -> ImageIndex:
    """The fields of an image index document (already parsed as a JSON object).

    ``check_version=False`` for a layout's ``index.json``, whose ``schemaVersion`` composefs-rs
    does not check.
    """
    if check_version:
        _schema_version(doc, what)
    entries = _list(doc, "manifests", what)
    return ImageIndex(
        media_type=_str(doc, "mediaType", what),
        manifests=tuple(
            parse_descriptor(d, f"{what}.manifests[{i}]") for i, d in enumerate(entries)
        ),
        annotations=_str_map(doc, "annotations", what),
    )


def config_diff_ids(doc: Mapping[str, Any], what: str) -> list[str]:
    """``rootfs.diff_ids`` of an image configuration, each a checked ``sha256:`` digest."""
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict):
        raise DocumentError(f"{what}: no rootfs.diff_ids")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise DocumentError(f"{what}: no rootfs.diff_ids")
    out = []
    for i, d in enumerate(diff_ids):
        if not isinstance(d, str):
            raise _wrong(f"{what}.rootfs.diff_ids[{i}]", "a string", d)
        try:
            out.append(parse_digest(d))
        except ImageReferenceError as e:
            raise DocumentError(f"{what}.rootfs.diff_ids[{i}]: {e}") from None
    return out
