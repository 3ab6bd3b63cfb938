"""Builders of deterministic OCI image layouts and layer tars, for tests, benchmarks and
``tools/make-example-image``: :class:`LayoutWriter` (blobs, ``index.json``, ``oci-layout``) and
:class:`TarBuilder` (PAX tars with fixed mtimes and no user/group names).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from typing import Any

from composefs.oci.layout import LAYOUT_VERSION
from composefs.oci.media_types import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
)

__all__ = ["LayerBlob", "LayoutWriter", "TarBuilder"]


@dataclasses.dataclass(frozen=True)
class LayerBlob:
    """A layer written by :meth:`LayoutWriter.layer`."""

    descriptor: dict[str, Any]
    diff_id: str


class LayoutWriter:
    """Writes a deterministic OCI image layout (blobs, ``index.json``, ``oci-layout``)."""

    def __init__(self, path: str | os.PathLike[str], *, version: str = LAYOUT_VERSION) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        self._write("oci-layout", json.dumps({"imageLayoutVersion": version}).encode())

    def _write(self, rel: str, data: bytes) -> None:
        path = os.path.join(self.path, rel)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        """Stores ``data`` and returns its descriptor (``extra`` keys are added to it)."""
        hexdigest = hashlib.sha256(data).hexdigest()
        self._write(f"blobs/sha256/{hexdigest}", data)
        return {
            "mediaType": media_type,
            "digest": f"sha256:{hexdigest}",
            "size": len(data),
            **extra,
        }

    def json_blob(self, doc: Mapping[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.blob(json.dumps(doc, separators=(",", ":")).encode(), media_type, **extra)

    def layer(self, tar: bytes, compression: str = "gzip") -> LayerBlob:
        """Stores a layer compressed with ``gzip``, ``zstd`` or ``none``."""
        diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
        if compression == "gzip":
            data, suffix = gzip.compress(tar, compresslevel=6, mtime=0), "+gzip"
        elif compression == "zstd":
            import zstandard

            data, suffix = zstandard.ZstdCompressor(level=3).compress(tar), "+zstd"
        elif compression == "none":
            data, suffix = tar, ""
        else:
            raise ValueError(f"unknown compression {compression!r}")
        return LayerBlob(self.blob(data, LAYER_MEDIA_TYPE + suffix), diff_id)

    def image(
        self,
        layers: Sequence[LayerBlob],
        *,
        architecture: str = "amd64",
        os_name: str = "linux",
        variant: str | None = None,
        created: str | None = "2024-01-01T00:00:00Z",
        config: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        platform_in_descriptor: bool = True,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Writes a config and a manifest; returns the manifest descriptor.

        The descriptor carries ``platform`` when ``platform_in_descriptor`` (as in an index),
        and the given ``annotations`` (e.g. a ref name for ``index.json``).
        """
        cfg: dict[str, Any] = {}
        if created is not None:
            cfg["created"] = created
        cfg["architecture"] = architecture
        if variant is not None:
            cfg["variant"] = variant
        cfg["os"] = os_name
        inner: dict[str, Any] = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/usr/bin/sh"]}
        if labels:
            inner["Labels"] = dict(labels)
        cfg["config"] = inner
        cfg["rootfs"] = {"type": "layers", "diff_ids": [la.diff_id for la in layers]}
        cfg["history"] = [
            {"created": created or "", "created_by": "composefs test"} for _ in layers
        ]
        if config:
            cfg.update(config)
        config_desc = self.json_blob(cfg, CONFIG_MEDIA_TYPE)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config_desc,
            "layers": [la.descriptor for la in layers],
        }
        extra: dict[str, Any] = {}
        if platform_in_descriptor:
            plat = {"architecture": architecture, "os": os_name}
            if variant is not None:
                plat["variant"] = variant
            extra["platform"] = plat
        if annotations:
            extra["annotations"] = dict(annotations)
        return self.json_blob(manifest, MANIFEST_MEDIA_TYPE, **extra)

    def index(
        self,
        manifests: Sequence[Mapping[str, Any]],
        *,
        annotations: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Writes an image index blob over ``manifests``; returns its descriptor."""
        doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": list(manifests)}
        extra: dict[str, Any] = {"annotations": dict(annotations)} if annotations else {}
        return self.json_blob(doc, INDEX_MEDIA_TYPE, **extra)

    def write_index(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Writes ``index.json`` with ``entries``."""
        doc = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": list(entries)}
        self._write("index.json", json.dumps(doc, indent=2).encode() + b"\n")

    @staticmethod
    def tagged(descriptor: Mapping[str, Any], tag: str) -> dict[str, Any]:
        """``descriptor`` with the ``org.opencontainers.image.ref.name`` annotation."""
        out = dict(descriptor)
        out["annotations"] = {**out.get("annotations", {}), REF_NAME_ANNOTATION: tag}
        return out


class TarBuilder:
    """Builds a deterministic PAX tar (fixed mtime, no user/group names)."""

    def __init__(self, mtime: int = 1_700_000_000) -> None:
        self.mtime = mtime
        self._buf = io.BytesIO()
        self._tar = tarfile.TarFile(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def _add(
        self,
        name: str,
        kind: bytes,
        data: bytes | None = None,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        linkname: str = "",
        xattrs: Mapping[str, str] | None = None,
        devmajor: int = 0,
        devminor: int = 0,
    ) -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        info.linkname = linkname
        info.devmajor, info.devminor = devmajor, devminor
        if xattrs:
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
        if data is not None:
            info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def dir(self, name: str, mode: int = 0o755, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)

    def file(self, name: str, data: bytes, mode: int = 0o644, **kw: Any) -> TarBuilder:
        return self._add(name, tarfile.REGTYPE, data, mode=mode, **kw)

    def symlink(self, name: str, target: str) -> TarBuilder:
        return self._add(name, tarfile.SYMTYPE, mode=0o777, linkname=target)

    def hardlink(self, name: str, target: str) -> TarBuilder:
        return self._add(name, tarfile.LNKTYPE, linkname=target)

    def fifo(self, name: str) -> TarBuilder:
        return self._add(name, tarfile.FIFOTYPE)

    def chardev(self, name: str, major: int, minor: int) -> TarBuilder:
        return self._add(name, tarfile.CHRTYPE, devmajor=major, devminor=minor)

    def whiteout(self, path: str) -> TarBuilder:
        """Deletes ``path`` from lower layers (an empty ``.wh.<name>`` file)."""
        head, _, tail = path.rstrip("/").rpartition("/")
        return self.file(f"{head}/.wh.{tail}" if head else f".wh.{tail}", b"")

    def opaque(self, directory: str) -> TarBuilder:
        """Hides everything lower layers put in ``directory`` (``.wh..wh..opq``)."""
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq", b"")

    def build(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()
