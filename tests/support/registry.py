"""For the integration tests: OCI image layouts written by hand (independent of composefs's
own writer) and the record of a running local registry (started by the ``registry`` fixture in
``tests/integration/conftest.py``)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from support import run

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclasses.dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str
    size: int

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclasses.dataclass(frozen=True)
class OciImage:
    """One image (a manifest) written into an OCI layout."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]

    def blob_path(self, digest: str) -> Path:
        return self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LayoutWriter:
    """Writes an OCI image layout by hand: ``oci-layout``, ``blobs/sha256/``, ``index.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.index: list[dict[str, Any]] = []

    def blob(self, data: bytes, media_type: str) -> Blob:
        digest = _sha256(data)
        (self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        return Blob(media_type, digest, len(data))

    def image(
        self,
        files: list[dict[str, bytes]],
        *,
        architecture: str = "amd64",
        seed: str = "",
    ) -> tuple[Blob, Blob, tuple[Blob, ...], tuple[str, ...]]:
        """Writes one gzip layer per entry of ``files``, a config and a manifest."""
        layers: list[Blob] = []
        diff_ids: list[str] = []
        for number, content in enumerate(files):
            tar = _tar(content)
            diff_ids.append(_sha256(tar))
            layers.append(self.blob(_gzip(tar, number), OCI_LAYER_GZIP))
        config = {
            "architecture": architecture,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin"], "Labels": {"seed": seed}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(files))],
        }
        config_blob = self.blob(json.dumps(config, indent=2).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [layer.descriptor() for layer in layers],
        }
        manifest_blob = self.blob(json.dumps(manifest, indent=3).encode(), OCI_MANIFEST)
        return manifest_blob, config_blob, tuple(layers), tuple(diff_ids)

    def tag(self, blob: Blob, tag: str, **extra: Any) -> None:
        entry = blob.descriptor()
        entry.update(extra)
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.index.append(entry)

    def finish(self) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index}
        (self.path / "index.json").write_text(json.dumps(doc))


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({str(p) for name in files for p in Path(name).parents} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = 1_700_000_000
            tf.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _gzip(data: bytes, number: int) -> bytes:
    return gzip.compress(data, compresslevel=1 + number % 9, mtime=0)


def _payload(name: str, size: int) -> bytes:
    """Deterministic, poorly compressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def image_files(seed: str) -> list[dict[str, bytes]]:
    """Three layers: a big one (several MiB, so pipes fill), a medium one and a tiny one."""
    return [
        {
            "usr/bin/big": _payload(seed + "big", 3 << 20),
            "usr/lib/os-release": f"ID=test\nSEED={seed}\n".encode(),
        },
        {"usr/share/medium": _payload(seed + "medium", 300_000), "etc/hostname": b"test\n"},
        {"etc/motd": b"hello from " + seed.encode() + b"\n"},
    ]


@dataclasses.dataclass(frozen=True)
class MultiArchImage:
    layout: Path
    tag: str
    index: Blob
    manifests: dict[str, Blob]  # architecture -> manifest


@dataclasses.dataclass
class Registry:
    """A running local registry; ``push`` copies an image into it with skopeo."""

    host: str
    storage: Path
    skopeo: str
    #: a registries.conf marking this registry insecure (plain HTTP), for
    #: ``CONTAINERS_REGISTRIES_CONF`` when the caller cannot pass ``--tls-verify=false``
    registries_conf: Path

    def ref(self, name: str) -> str:
        return f"docker://{self.host}/{name}"

    def push(self, source: str, name: str, *args: str) -> str:
        run(
            self.skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *args,
            source,
            self.ref(name),
        )
        return self.ref(name)

    def blob_data(self, digest: str) -> Path:
        """The file holding a blob in the registry's filesystem storage."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@dataclasses.dataclass
class TlsRegistry(Registry):
    """A registry over HTTPS; ``ca`` is the CA certificate that signed its certificate."""

    ca: Path = Path()

    def certs_root(self, base: Path) -> Path:
        """A ``certs.d`` root under ``base`` with ``HOST:PORT/ca.crt`` for this registry."""
        directory = base / "certs.d" / self.host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca.read_bytes())
        return base / "certs.d"
