"""OCI and Docker media types, the annotations we read and the index nesting limit: stated once,
imported everywhere.

(The format constants of the repository itself are in :mod:`composefs.constants`.)
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "CONFIG_MEDIA_TYPES",
    "DOCKER_CONFIG_MEDIA_TYPE",
    "DOCKER_LAYER_MEDIA_TYPE",
    "DOCKER_MANIFEST_LIST_MEDIA_TYPE",
    "DOCKER_MANIFEST_MEDIA_TYPE",
    "EMPTY_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "INDEX_MEDIA_TYPES",
    "LAYER_MEDIA_TYPE",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPES",
    "MAX_INDEX_DEPTH",
    "REF_NAME_ANNOTATION",
]

# -- OCI image spec ---------------------------------------------------------------------------

MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
#: An uncompressed layer; ``+gzip`` and ``+zstd`` name the compressed ones.
LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar"
_NONDISTRIBUTABLE_LAYER: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"

#: The empty descriptor's media type (OCI 1.1: the config of an artifact without one).
EMPTY_MEDIA_TYPE: Final = "application/vnd.oci.empty.v1+json"

#: The ``index.json`` annotation naming a manifest of an OCI layout (the tag).
REF_NAME_ANNOTATION: Final = "org.opencontainers.image.ref.name"

# -- Docker image manifest v2, schema 2 ---------------------------------------------------------

DOCKER_MANIFEST_MEDIA_TYPE: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST_MEDIA_TYPE: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG_MEDIA_TYPE: Final = "application/vnd.docker.container.image.v1+json"
#: An uncompressed Docker layer; ``.gzip`` and ``.zstd`` name the compressed ones.
DOCKER_LAYER_MEDIA_TYPE: Final = "application/vnd.docker.image.rootfs.diff.tar"
_DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar"

# -- the two families, read alike -----------------------------------------------------------
# The image spec lists the Docker schema 2 types as compatible with its own; skopeo writes them
# into OCI layouts (``--format v2s2``), registries serve them, Docker writes them. A pull reads
# either family the same way and stores the documents as they are (their digests unchanged).

#: An image manifest: OCI, or Docker schema 2.
MANIFEST_MEDIA_TYPES: Final = frozenset({MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE})
#: An image index: OCI, or a Docker manifest list.
INDEX_MEDIA_TYPES: Final = frozenset({INDEX_MEDIA_TYPE, DOCKER_MANIFEST_LIST_MEDIA_TYPE})
#: An image configuration (a container image, not an artifact): OCI or Docker.
CONFIG_MEDIA_TYPES: Final = frozenset({CONFIG_MEDIA_TYPE, DOCKER_CONFIG_MEDIA_TYPE})

#: Every layer media type we import -> its compression (``none``, ``gzip`` or ``zstd``).
LAYER_MEDIA_TYPES: Final[dict[str, str]] = {
    LAYER_MEDIA_TYPE: "none",
    LAYER_MEDIA_TYPE + "+gzip": "gzip",
    LAYER_MEDIA_TYPE + "+zstd": "zstd",
    _NONDISTRIBUTABLE_LAYER: "none",
    _NONDISTRIBUTABLE_LAYER + "+gzip": "gzip",
    _NONDISTRIBUTABLE_LAYER + "+zstd": "zstd",
    DOCKER_LAYER_MEDIA_TYPE: "none",
    DOCKER_LAYER_MEDIA_TYPE + ".gzip": "gzip",
    DOCKER_LAYER_MEDIA_TYPE + ".zstd": "zstd",
    _DOCKER_FOREIGN_LAYER: "none",
    _DOCKER_FOREIGN_LAYER + ".gzip": "gzip",
}

#: How many image indexes may nest below ``index.json`` (or below an index named by digest)
#: before a pull, or re-resolving a stored index, calls it a loop.
MAX_INDEX_DEPTH: Final = 16
