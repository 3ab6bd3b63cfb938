"""Builders of deterministic OCI image layouts, archives and layer tars, for tests, benchmarks
and ``tools/make-example-image``: :class:`LayoutWriter` (blobs, ``index.json``, ``oci-layout``),
:class:`TarBuilder` (PAX tars with fixed mtimes and no user/group names), :func:`oci_archive`
(a layout as an ``oci-archive:`` tar) and :func:`docker_archive` (``docker save`` output, in
the legacy form or the one Docker 25+ writes).
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

__all__ = [
    "DockerImage",
    "LayerBlob",
    "LayoutWriter",
    "TarBuilder",
    "compress",
    "docker_archive",
    "oci_archive",
]


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


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed with ``none``, ``gzip``, ``zstd``, ``bzip2`` or ``xz``
    (deterministic: no names or times in the headers)."""
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "bzip2":
        import bz2

        return bz2.compress(data)
    if compression == "xz":
        import lzma

        return lzma.compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def _archive_member(
    tar: tarfile.TarFile, name: str, data: bytes | None = None, *, link: str | None = None
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uname = info.gname = ""
    if link is not None:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
        tar.addfile(info)
    elif data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o444
        tar.addfile(info, io.BytesIO(data))


def oci_archive(
    layout: str | os.PathLike[str],
    archive: str | os.PathLike[str],
    *,
    compression: str = "none",
) -> None:
    """Writes the layout directory ``layout`` as an ``oci-archive:`` tar (directories and
    files in name order, fixed metadata), compressed with :func:`compress`'s ``compression``."""
    root = os.fspath(layout)
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(directory, root)
            if rel != ".":
                _archive_member(tar, rel)
            for name in sorted(files):
                member = name if rel == "." else f"{rel}/{name}"
                with open(os.path.join(directory, name), "rb") as f:
                    _archive_member(tar, member, f.read())
    with open(archive, "wb") as out:
        out.write(compress(buf.getvalue(), compression))


@dataclasses.dataclass(frozen=True)
class DockerImage:
    """An image of a :func:`docker_archive`: uncompressed layer tars and its tags."""

    layers: Sequence[bytes]
    repo_tags: Sequence[str] = ()
    architecture: str = "amd64"
    os_name: str = "linux"
    #: how the layer files are stored in the archive (``docker save`` writes ``none``)
    compression: str = "none"
    config: Mapping[str, Any] | None = None

    def config_bytes(self) -> bytes:
        diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in self.layers]
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/usr/bin/sh"]},
            "created": "2024-01-01T00:00:00Z",
            "history": [{"created": "2024-01-01T00:00:00Z"} for _ in self.layers],
            "os": self.os_name,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cfg.update(self.config or {})
        return json.dumps(cfg, separators=(",", ":")).encode()


def docker_archive(
    archive: str | os.PathLike[str],
    images: Sequence[DockerImage],
    *,
    oci_layout: bool = False,
    layer_links: bool = False,
) -> list[dict[str, Any]]:
    """Writes ``docker save`` output for ``images``; returns its ``manifest.json`` items.

    The legacy form (``oci_layout=False``): ``<config hex>.json``, one ``<id>/`` directory per
    layer with ``VERSION``, ``json`` and ``layer.tar`` (with ``layer_links``: ``<id>/layer.tar``
    is a symbolic link to ``../<diff_id hex>.tar``, as skopeo writes it), ``repositories``.
    The form of Docker 25+ (``oci_layout=True``): an OCI layout (``oci-layout``,
    ``index.json``, every blob in ``blobs/sha256/``) plus the same ``manifest.json`` naming
    ``blobs/sha256/<hex>`` files.
    """
    files: dict[str, bytes | str | None] = {}  # name -> data, a symlink target, or a directory
    items: list[dict[str, Any]] = []
    index_entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    for image in images:
        config = image.config_bytes()
        config_hex = hashlib.sha256(config).hexdigest()
        layer_names = []
        layer_descs = []
        parent = ""
        for layer_tar in image.layers:
            stored = compress(layer_tar, image.compression)
            diff_hex = hashlib.sha256(layer_tar).hexdigest()
            if oci_layout:
                blob_hex = hashlib.sha256(stored).hexdigest()
                files[f"blobs/sha256/{blob_hex}"] = stored
                layer_names.append(f"blobs/sha256/{blob_hex}")
                suffix = "" if image.compression == "none" else f"+{image.compression}"
                layer_descs.append(
                    {
                        "mediaType": LAYER_MEDIA_TYPE + suffix,
                        "digest": f"sha256:{blob_hex}",
                        "size": len(stored),
                    }
                )
                continue
            layer_id = hashlib.sha256(f"{parent} {diff_hex}".encode()).hexdigest()
            files[layer_id] = None
            files[f"{layer_id}/VERSION"] = b"1.0"
            v1 = {"id": layer_id, "created": "2024-01-01T00:00:00Z"}
            if parent:
                v1["parent"] = parent
            files[f"{layer_id}/json"] = json.dumps(v1).encode()
            if layer_links:
                files[f"{diff_hex}.tar"] = stored
                files[f"{layer_id}/layer.tar"] = f"../{diff_hex}.tar"
            else:
                files[f"{layer_id}/layer.tar"] = stored
            layer_names.append(f"{layer_id}/layer.tar")
            parent = layer_id
        if oci_layout:
            files[f"blobs/sha256/{config_hex}"] = config
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "config": {
                        "mediaType": CONFIG_MEDIA_TYPE,
                        "digest": f"sha256:{config_hex}",
                        "size": len(config),
                    },
                    "layers": layer_descs,
                }
            ).encode()
            manifest_hex = hashlib.sha256(manifest).hexdigest()
            files[f"blobs/sha256/{manifest_hex}"] = manifest
            for tag in image.repo_tags or [""]:
                entry: dict[str, Any] = {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": f"sha256:{manifest_hex}",
                    "size": len(manifest),
                }
                if tag:
                    entry["annotations"] = {
                        "io.containerd.image.name": tag,
                        REF_NAME_ANNOTATION: tag.rpartition(":")[2],
                    }
                index_entries.append(entry)
            config_name = f"blobs/sha256/{config_hex}"
        else:
            config_name = f"{config_hex}.json"
            files[config_name] = config
        for tag in image.repo_tags:
            name, _, tag_only = tag.rpartition(":")
            repositories.setdefault(name, {})[tag_only] = parent or config_hex
        items.append(
            {
                "Config": config_name,
                "RepoTags": list(image.repo_tags) or None,
                "Layers": layer_names,
            }
        )
    if oci_layout:
        files["blobs"] = None
        files["blobs/sha256"] = None
        files["oci-layout"] = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
        files["index.json"] = json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": index_entries}
        ).encode()
    files["manifest.json"] = json.dumps(items).encode()
    if repositories:
        files["repositories"] = json.dumps(repositories).encode()
    buf = io.BytesIO()
    with tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files, key=lambda n: (files[n] is not None, n)):
            value = files[name]
            if isinstance(value, str):
                _archive_member(tar, name, link=value)
            else:
                _archive_member(tar, name, value)
    with open(archive, "wb") as out:
        out.write(buf.getvalue())
    return items
