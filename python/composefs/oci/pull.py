"""``pull``: import an OCI image into a repository, leaving it as ``cfsctl oci pull`` would.

The pipeline (see ``docs/oci.md``)::

    writability check -> reference -> source (oci: layout, oci-archive:/docker-archive: read
      natively, or skopeo's image proxy)
      -> manifest for the platform (indexes resolved) -> config (verified)
      -> layers in parallel, largest first (digest and diff_id verified, present ones skipped)
      -> oci-config-<digest> (refs in diff_id order) -> oci-manifest-<digest>
      -> EROFS image(s) of the merged layers, one per format of meta.json (container images
         only), config and manifest streams rewritten with the image refs
         (:func:`composefs.oci.filesystem.commit_images`)
      -> oci-index-<digest> for every index walked (our extension) -> tag -> index tag

The repository ends up byte for byte as ``cfsctl oci pull`` leaves it (streams, images, refs).
Sources are opened through :data:`SOURCES`, one entry per transport.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from composefs import _faults, _log, splitstream
from composefs._record import asdict as record_asdict
from composefs._text import human_bytes
from composefs.errors import ComposefsError, DigestMismatchError, wrap
from composefs.oci import layer as _layer
from composefs.oci.auth import Credentials
from composefs.oci.documents import (
    DocumentError,
    config_diff_ids,
    parse_json_object,
    parse_manifest,
    quote,
)
from composefs.oci.filesystem import CommitResult, commit_images
from composefs.oci.image import OciImage
from composefs.oci.index import write_index
from composefs.oci.layout import LayoutSource
from composefs.oci.media_types import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPES,
)
from composefs.oci.names import (
    INDEX_REF_PREFIX,
    add_referrer,
    config_identifier,
    index_identifier,
    manifest_identifier,
    ref_path,
    tag_image,
)
from composefs.oci.platform import Platform, parse_platform
from composefs.oci.reference import (
    ImageReference,
    ImageReferenceError,
    parse_layout_name,
    parse_reference,
)
from composefs.oci.source import Descriptor, ImageSource, ResolvedManifest, served_media_type
from composefs.oci.streams import read_external_stream, write_config, write_manifest
from composefs.repository import Repository

__all__ = [
    "SOURCES",
    "BlobDigestMismatch",
    "ImportStats",
    "PullCancelled",
    "PullError",
    "PullEvent",
    "PullResult",
    "SourceOptions",
    "human_bytes",
    "open_source",
    "pull",
]


class PullError(ComposefsError):
    """A pull failed; the cause chain says where and why."""


class PullCancelled(PullError):
    """The pull's ``cancel`` event was set: every phase stopped at its next check."""


class BlobDigestMismatch(PullError, DigestMismatchError):
    """An artifact blob does not match its descriptor's digest."""


log = _log.logger(__name__)


class _Stop:
    """A pull's stop flag: set by the pull itself (a failed layer stops the others, Ctrl-C
    stops everything) or by the caller's ``cancel`` event, which the pull never sets."""

    __slots__ = ("_external", "_own")

    def __init__(self, external: threading.Event | None) -> None:
        self._own = threading.Event()
        self._external = external

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or self.requested()

    def requested(self) -> bool:
        """The caller's ``cancel`` event is set (not merely a stop after a failure)."""
        return self._external is not None and self._external.is_set()


def _check_cancel(cancel: _Stop) -> None:
    if cancel.is_set():
        raise PullCancelled("cancelled")


def _interruptible(cancel: _Stop, repo: Repository, fn: Callable[[Repository], Any]) -> Any:
    """Runs ``fn`` in a helper thread while this one waits, so that Ctrl-C (delivered to the
    main thread only, between bytecodes) or ``cancel`` is seen at once even while ``fn`` spends
    its time in native code. Then the helper is left to finish on its own: it works on its
    own handle of the repository (:meth:`Repository.duplicate`, closed when it ends), what it
    writes is crash-consistent (atomic objects, renamed symlinks), and as a daemon thread it
    does not delay the exit of the process."""
    done = threading.Event()
    outcome: list[Any] = []

    own = repo.duplicate()

    def run() -> None:
        try:
            outcome.append((True, fn(own)))
        except BaseException as e:  # handed to the waiting thread, never printed here
            outcome.append((False, e))
        finally:
            own.close()
            done.set()

    thread = threading.Thread(target=run, name="composefs-pull-step", daemon=True)
    thread.start()
    try:
        while not done.wait(0.05):
            _check_cancel(cancel)
    except BaseException:
        cancel.set()
        raise
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# -- results and events ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImportStats:
    """What a pull stored (cfsctl's ``ImportStats``)."""

    layers: int = 0
    layers_already_present: int = 0
    objects_copied: int = 0
    objects_reflinked: int = 0
    objects_hardlinked: int = 0
    objects_already_present: int = 0
    bytes_copied: int = 0
    bytes_reflinked: int = 0
    bytes_hardlinked: int = 0
    bytes_inlined: int = 0

    def __add__(self, other: ImportStats) -> ImportStats:
        return ImportStats(
            *(
                getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(ImportStats)
            )
        )

    @classmethod
    def from_layer(cls, result: _layer.LayerImportResult) -> ImportStats:
        if result.skipped:
            return cls(layers=1, layers_already_present=1)
        written_bytes = result.bytes_written
        return cls(
            layers=1,
            objects_copied=result.objects_written,
            objects_already_present=result.objects_present,
            bytes_copied=written_bytes,
            bytes_inlined=result.inline_bytes,
        )

    def __str__(self) -> str:
        if self.objects_reflinked or self.objects_hardlinked:
            parts = []
            if self.objects_reflinked:
                parts.append(f"{self.objects_reflinked} reflinked")
            if self.objects_hardlinked:
                parts.append(f"{self.objects_hardlinked} hardlinked")
            parts += [
                f"{self.objects_copied} copied",
                f"{self.objects_already_present} already present",
            ]
            sizes = []
            if self.objects_reflinked:
                sizes.append(f"{human_bytes(self.bytes_reflinked)} reflinked")
            if self.objects_hardlinked:
                sizes.append(f"{human_bytes(self.bytes_hardlinked)} hardlinked")
            sizes += [
                f"{human_bytes(self.bytes_copied)} copied",
                f"{human_bytes(self.bytes_inlined)} inlined",
            ]
            return f"{' + '.join(parts)} objects; {', '.join(sizes)}"
        return (
            f"{self.objects_copied} new + {self.objects_already_present} already present objects; "
            f"{human_bytes(self.bytes_copied)} stored, {human_bytes(self.bytes_inlined)} inlined"
        )


@dataclasses.dataclass(frozen=True)
class PullEvent:
    """A progress event. Layer events carry the diff_id in ``id``, the blob's digest in
    ``digest`` (when known) and sizes in blob bytes.

    ``kind`` is ``message`` (``message`` set), ``queued`` (a layer to import, ``total`` = blob
    size: sent for every layer before the first starts, so that a display knows the whole
    size), ``started``, ``progress`` (``transferred`` so far), ``done`` or ``skipped`` (layer
    already present). A callback should ignore kinds it does not know.
    """

    kind: Literal["message", "queued", "started", "progress", "done", "skipped"]
    id: str = ""
    total: int | None = None
    transferred: int = 0
    message: str = ""
    digest: str = ""


#: called from worker threads, possibly concurrently: it must be thread-safe
ProgressCallback = Callable[[PullEvent], None]


@dataclasses.dataclass(frozen=True)
class PullResult:
    """What :func:`pull` imported.

    ``manifest_verity`` is what ``cfsctl oci pull`` prints as ``verity``. ``index_digest`` is
    the outermost image index the manifest was resolved through (``None`` when the reference
    named a manifest); its stream is ``oci-index-<index_digest>`` (see ``docs/oci.md``).
    """

    manifest_digest: str
    manifest_verity: bytes
    config_digest: str
    config_verity: bytes
    stats: ImportStats
    #: the tag written (``streams/refs/oci/<encoded>``), if any
    tag: str | None = None
    index_digest: str | None = None
    index_verity: bytes | None = None
    #: the image's platform from its config (``None`` for artifacts)
    platform: Platform | None = None
    #: ``(diff_id, layer stream verity)`` in config order
    layers: tuple[tuple[str, bytes], ...] = ()
    #: the manifest stream the tag points at: for container images the one rewritten after
    #: the EROFS image was linked (``manifest_verity`` is the one first written, which is what
    #: cfsctl prints)
    stored_manifest_verity: bytes | None = None
    #: likewise, the config stream the stored manifest names (with the EROFS image refs)
    stored_config_verity: bytes | None = None
    #: the composefs image id in the repository's default EROFS format (``None`` for
    #: artifacts)
    image_id: bytes | None = None
    #: every EROFS format written -> image id
    images: dict[int, bytes] = dataclasses.field(default_factory=dict)
    #: the referrers fetched with ``referrers=True`` (artifact manifest digests)
    referrers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``composefs oci pull --json`` prints): the
        fields above, digests as strings, verities and image ids as hex, ``platform`` as
        ``{"os", "architecture", "variant"}``, ``images`` keyed by the EROFS format as a
        string, ``layers`` as ``[{"diff_id", "verity"}]``, ``stats`` as an object, ``referrers``
        as a list of manifest digests."""

        def hex_or_none(value: bytes | None) -> str | None:
            return None if value is None else value.hex()

        return {
            "manifest_digest": self.manifest_digest,
            "manifest_verity": self.manifest_verity.hex(),
            "config_digest": self.config_digest,
            "config_verity": self.config_verity.hex(),
            "stored_manifest_verity": hex_or_none(self.stored_manifest_verity),
            "stored_config_verity": hex_or_none(self.stored_config_verity),
            "tag": self.tag,
            "index_digest": self.index_digest,
            "index_verity": hex_or_none(self.index_verity),
            "platform": None if self.platform is None else record_asdict(self.platform),
            "image_id": hex_or_none(self.image_id),
            "images": {str(v): image_id.hex() for v, image_id in sorted(self.images.items())},
            "layers": [{"diff_id": d, "verity": v.hex()} for d, v in self.layers],
            "stats": dataclasses.asdict(self.stats),
            "referrers": list(self.referrers),
        }


# -- sources ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """What a source factory gets besides the reference (the ``pull`` keywords)."""

    #: ``os/arch[/variant]`` asked for (``None``: the host's)
    platform: str | None = None
    #: registry credentials (``None``: looked up in the auth files)
    credentials: Credentials | None = None
    #: an auth file searched first (``--authfile``)
    authfile: str | None = None
    #: ``False``: no TLS verification, plain HTTP allowed (``--tls-verify=false``)
    tls_verify: bool | None = None
    #: read ``docker://`` through skopeo instead of natively
    via_skopeo: bool = False
    #: polled by network waits and transfers: the pull's stop flag
    cancel: Callable[[], bool] | None = None


#: Opens an image source for a parsed reference with the pull's options.
SourceFactory = Callable[[ImageReference, SourceOptions], ImageSource]


def _open_layout(ref: ImageReference, options: SourceOptions) -> ImageSource:
    """``oci:``: the layout directory, read directly."""
    return LayoutSource(parse_layout_name(ref.name))


def _open_oci_archive(ref: ImageReference, options: SourceOptions) -> ImageSource:
    """``oci-archive:``: the layout inside the tar, read natively (no unpacking)."""
    from composefs.oci import archive

    return archive.open_oci_archive(ref)


def _open_docker_archive(ref: ImageReference, options: SourceOptions) -> ImageSource:
    """``docker-archive:``: ``docker save`` output, read natively (no unpacking)."""
    from composefs.oci import archive

    return archive.open_docker_archive(ref)


def _open_registry(ref: ImageReference, options: SourceOptions) -> ImageSource:
    """``docker://``: the registry, over HTTP (skopeo with ``via_skopeo``)."""
    if options.via_skopeo:
        return _open_proxy(ref, options)
    from composefs.oci.registry import RegistryImageSource

    return RegistryImageSource(
        ref.name,
        credentials=options.credentials,
        authfile=options.authfile,
        tls_verify=options.tls_verify,
        cancel=options.cancel,
    )


def _open_proxy(ref: ImageReference, options: SourceOptions) -> ImageSource:
    """Every transport skopeo knows, through its image proxy."""
    try:
        from composefs.oci import proxy
    except ImportError as e:
        raise PullError(
            f"the {ref.transport}: transport needs the skopeo image proxy client"
        ) from e
    extra: list[str] = []
    with contextlib.ExitStack() as stack:
        if ref.transport == "docker":
            if options.tls_verify is not None:
                extra.append(f"--tls-verify={'true' if options.tls_verify else 'false'}")
            if options.credentials is not None:
                # an auth file of our own (mode 0600, removed once skopeo has read it at
                # OpenImage) rather than --creds, which other users could read in ps
                path = stack.enter_context(_auth_file(ref, options.credentials))
                extra.append(f"--authfile={path}")
            elif options.authfile is not None:
                extra.append(f"--authfile={options.authfile}")
        if extra:
            return proxy.ProxyImageSource(
                ref.for_skopeo(), platform=options.platform, extra_args=extra
            )
        return proxy.ProxyImageSource(ref.for_skopeo(), platform=options.platform)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _auth_file(ref: ImageReference, credentials: Credentials) -> Iterator[str]:
    """A temporary containers-auth.json with ``credentials`` for ``ref``'s registry."""
    import base64
    import tempfile

    from composefs.oci.docker_reference import parse_docker_reference

    registry = parse_docker_reference(ref.name).registry
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    with tempfile.NamedTemporaryFile("w", prefix="composefs-auth-", suffix=".json") as f:
        json.dump({"auths": {registry: {"auth": token}}}, f)
        f.flush()
        yield f.name


#: canonical transport name (:data:`composefs.oci.reference.TRANSPORTS`) -> how to open it; a
#: new transport is a module with a factory plus one line here
SOURCES: dict[str, SourceFactory] = {
    "oci": _open_layout,
    "docker": _open_registry,
    "oci-archive": _open_oci_archive,
    "docker-archive": _open_docker_archive,
    "containers-storage": _open_proxy,
    "dir": _open_proxy,
    "docker-daemon": _open_proxy,
}


def open_source(
    ref: ImageReference, platform: str | None = None, options: SourceOptions | None = None
) -> ImageSource:
    """The :class:`~composefs.oci.source.ImageSource` for ``ref``'s transport (:data:`SOURCES`):
    a :class:`LayoutSource` for ``oci:`` and ``oci-archive:``, a
    :class:`~composefs.oci.archive.DockerArchiveSource` for ``docker-archive:``, a
    :class:`~composefs.oci.registry.RegistryImageSource` for ``docker://``, skopeo's image
    proxy for the rest. ``platform`` overrides ``options.platform``."""
    factory = SOURCES.get(ref.transport)
    if factory is None:
        raise PullError(f"no image source for the {ref.transport}: transport")
    options = options or SourceOptions()
    if platform is not None:
        options = dataclasses.replace(options, platform=platform)
    return factory(ref, options)


def _source_context(ref: ImageReference) -> str:
    if ref.transport == "oci":
        return f"Importing OCI layout from {parse_layout_name(ref.name).path}"
    if ref.transport == "oci-archive":  # cfsctl's context for its direct oci-archive: path
        return f"Importing OCI layout from {ref.name.partition(':')[0]}"
    if ref.transport == "docker-archive":
        return f"Importing Docker archive {ref.name.partition(':')[0]}"
    return f"Unable to pull container image {ref.text}"


# -- pull ------------------------------------------------------------------------------------


def pull(
    repo: Repository,
    ref: str,
    name: str | None = None,
    platform: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    threads: int = 0,
    cancel: threading.Event | None = None,
    auth: Credentials | None = None,
    authfile: str | None = None,
    tls_verify: bool | None = None,
    via_skopeo: bool = False,
    referrers: bool = False,
) -> PullResult:
    """Pulls ``ref`` (``oci:PATH[:TAG]``, ``oci:PATH@sha256:...``, ``docker://...``, ...).

    ``name`` tags the manifest as ``streams/refs/oci/<encoded name>`` (no tag when ``None``;
    the CLI defaults it to ``ref``). ``platform`` is ``os/arch[/variant]`` (default: this
    host). ``progress`` receives :class:`PullEvent`\\ s from worker threads. ``threads`` bounds
    the parallel layer imports (``0``: one per core). Safe to call from several threads.

    Setting ``cancel`` (from any thread) stops the pull at its next check, raising
    :class:`PullCancelled`: the layer imports see it every few MiB (their progress callback),
    the EROFS step and blob copies too. A :class:`KeyboardInterrupt` in the calling thread
    sets it for the workers and propagates at once. Nothing is tagged then; what was stored
    is consistent (objects and links are written atomically) and left for ``gc``.

    Registries (``docker://``): ``auth`` are the credentials (default: looked up in the auth
    files as containers-auth.json(5) says, ``authfile`` first); ``tls_verify=False`` skips
    certificate checks and allows plain HTTP for this pull; ``via_skopeo`` reads the image
    through skopeo's image proxy instead of natively (as the other transports are).

    ``referrers=True`` also fetches the artifacts that refer to the manifest (OCI 1.1
    referrers: signatures, SBOMs, attestations) and links them as composefs-rs does
    (``streams/refs/oci-referrers/<subject>/<artifact>``), before the tag is written.
    """
    stop = _Stop(cancel)
    options = SourceOptions(
        platform=platform,
        credentials=auth,
        authfile=authfile,
        tls_verify=tls_verify,
        via_skopeo=via_skopeo,
        cancel=stop.is_set,
    )
    try:
        return _pull(repo, ref, name, options, progress, threads, stop, referrers)
    except BaseException:
        stop.set()  # stop every worker still running, whatever the error
        raise


def _pull(
    repo: Repository,
    ref: str,
    name: str | None,
    options: SourceOptions,
    progress: ProgressCallback | None,
    threads: int,
    cancel: _Stop,
    with_referrers: bool = False,
) -> PullResult:
    platform = options.platform
    repo.ensure_writable()
    if name is not None and name.startswith("@"):
        raise PullError(
            f"Invalid ref name {json.dumps(name)}: leading '@' is reserved for digest references"
        )
    try:
        image_ref = parse_reference(ref)
    except ImageReferenceError as e:
        raise wrap(PullError, "Parsing image reference transport", e) from e
    if platform is not None:
        parse_platform(platform)  # fail before touching the source
    log.info("Pulling %s into %s", image_ref.text, repo.path)
    emit = progress or _no_progress
    with contextlib.ExitStack() as stack:
        try:
            source = open_source(image_ref, options=options)
            stack.callback(source.close)
            log.debug("Opened the %s: source (%s)", image_ref.transport, type(source).__name__)
            resolved = source.resolve(platform)
            log.info(
                "Resolved manifest %s%s",
                resolved.digest,
                "".join(f" (through index {d})" for d, _ in resolved.indexes[:1]),
            )
            _check_cancel(cancel)
            result = _import(repo, source, resolved, image_ref, emit, threads, cancel)
            if with_referrers:
                fetched = _import_referrers(
                    repo, source, result.manifest_digest, image_ref, emit, threads, cancel
                )
                result = dataclasses.replace(result, referrers=fetched)
        except PullCancelled:
            raise
        except (ComposefsError, OSError) as e:
            if cancel.requested():  # a transfer stopped by the caller's cancel
                raise PullCancelled("cancelled") from e
            raise wrap(PullError, _source_context(image_ref), e) from e
    _faults.point("manifest-stored")
    stored_verity = result.manifest_verity
    committed: CommitResult | None = None
    try:
        img = OciImage.open(repo, result.manifest_digest, result.manifest_verity)
        if img.is_container_image:
            emit(PullEvent("message", message="Creating composefs image"))
            _check_cancel(cancel)
            started = time.monotonic()
            committed = _interruptible(cancel, repo, lambda own: commit_images(own, img))
            stored_verity = committed.manifest_verity
            log.info(
                "Created composefs image %s in %.2f s%s",
                committed.image_id.hex() if committed.image_id else "-",
                time.monotonic() - started,
                "".join(f"; EROFS V{v}: {i.hex()}" for v, i in sorted(committed.images.items())),
            )
        else:
            log.info("%s is an artifact: no composefs image", result.manifest_digest)
    except PullCancelled:
        raise
    except (ComposefsError, OSError) as e:
        message = f"Creating the composefs image of manifest {result.manifest_digest}"
        raise wrap(PullError, message, e) from e
    _check_cancel(cancel)
    index_verity = write_index(repo, resolved.indexes, result.manifest_digest, stored_verity)
    if resolved.indexes:
        log.info("Stored %d image index(es)", len(resolved.indexes))
    _check_cancel(cancel)
    _faults.point("before-tag")
    if name is not None:
        # the manifest tag first: it is what makes the image visible (``oci images``), so a
        # crash before it leaves no ref at all, and one after it only lacks the index tag
        tag_image(repo, result.manifest_digest, name)
        if resolved.indexes:
            repo.name_stream(
                index_identifier(resolved.indexes[0][0]), ref_path(name, INDEX_REF_PREFIX)
            )
        log.info("Tagged %s as %s", result.manifest_digest, name)
        _faults.point("tagged")
    return dataclasses.replace(
        result,
        tag=name,
        index_digest=resolved.indexes[0][0] if resolved.indexes else None,
        index_verity=index_verity,
        stored_manifest_verity=stored_verity,
        stored_config_verity=result.config_verity if committed is None else committed.config_verity,
        image_id=None if committed is None else committed.image_id,
        images={} if committed is None else dict(committed.images),
    )


def _no_progress(event: PullEvent) -> None:
    pass


def _import_referrers(
    repo: Repository,
    source: ImageSource,
    subject: str,
    ref: ImageReference,
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> tuple[str, ...]:
    """Imports the artifacts referring to ``subject`` and links them to it."""
    listing = getattr(source, "referrers", None)
    read_manifest = getattr(source, "read_manifest", None)
    if listing is None or read_manifest is None:
        raise PullError(f"the {ref.transport}: transport cannot list referrers")
    try:
        descriptors = listing(subject)
    except (ComposefsError, OSError) as e:
        raise wrap(PullError, f"Listing the referrers of {subject}", e) from e
    fetched = []
    for desc in descriptors:
        _check_cancel(cancel)
        if desc.media_type not in (MANIFEST_MEDIA_TYPE, ""):
            emit(
                PullEvent("message", message=f"Skipping referrer {desc.digest} ({desc.media_type})")
            )
            continue
        emit(PullEvent("message", message=f"Storing referrer {desc.digest}"))
        try:
            raw = read_manifest(desc)
            _import(repo, source, ResolvedManifest(desc.digest, raw), ref, emit, threads, cancel)
        except PullCancelled:
            raise
        except (ComposefsError, OSError) as e:
            raise wrap(PullError, f"Importing referrer {desc.digest} of {subject}", e) from e
        add_referrer(repo, subject, desc.digest)
        fetched.append(desc.digest)
    return tuple(fetched)


def _check_manifest(resolved: ResolvedManifest) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of the manifest, every field checked
    (:func:`composefs.oci.documents.parse_manifest`)."""
    what = f"manifest {resolved.digest}"
    manifest = parse_json_object(resolved.raw, what)
    media_type = manifest.get("mediaType", MANIFEST_MEDIA_TYPE)
    if media_type in INDEX_MEDIA_TYPES or "manifests" in manifest:
        raise PullError(f"{resolved.digest} is an image index, not a manifest")
    if media_type not in MANIFEST_MEDIA_TYPES:
        shown = quote(media_type) if isinstance(media_type, str) else repr(media_type)[:80]
        raise PullError(f"Unexpected media type {shown}")
    parsed = parse_manifest(manifest, what)
    return parsed.config, list(parsed.layers)


def _diff_ids(config: Descriptor, raw: bytes, layers: Sequence[Descriptor]) -> list[str]:
    """``rootfs.diff_ids`` for image configs; the layer digests for anything else."""
    if config.media_type not in CONFIG_MEDIA_TYPES:
        return [d.digest for d in layers]
    what = f"config {config.digest}"
    return config_diff_ids(parse_json_object(raw, what), what)


def _missing(diff_id: str, available: Sequence[str]) -> PullError:
    keys = ", ".join(json.dumps(k) for k in available)
    return PullError(
        f"missing layer verity for diff_id {diff_id}. Available keys in refs: [{keys}]"
    )


def _import(
    repo: Repository,
    source: ImageSource,
    resolved: ResolvedManifest,
    ref: ImageReference,
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> PullResult:
    config_desc, layers = _check_manifest(resolved)
    log.info(
        "Manifest %s: config %s, %d layers, %s",
        resolved.digest,
        config_desc.digest,
        len(layers),
        human_bytes(sum(d.size for d in layers)),
    )
    if ref.transport in ("oci", "oci-archive"):
        emit(PullEvent("message", message=f"Importing {len(layers)} layers from OCI layout"))
    try:
        config_digest, config_verity, config_raw, layer_refs, stats = _import_config_and_layers(
            repo, source, config_desc, layers, emit, threads, cancel
        )
    except PullCancelled:
        raise
    except ComposefsError as e:
        message = f"Failed to import image content for manifest {resolved.digest}"
        raise wrap(PullError, message, e) from e
    _check_cancel(cancel)
    emit(PullEvent("message", message="Storing manifest"))
    log.info("Storing manifest %s", resolved.digest)
    identifier = manifest_identifier(resolved.digest)
    manifest_verity = repo.has_stream(identifier)
    if manifest_verity is None:
        manifest_verity = write_manifest(
            repo, resolved.digest, resolved.raw, config_digest, config_verity, layer_refs
        )
    platform = None
    if config_desc.media_type in CONFIG_MEDIA_TYPES:
        with contextlib.suppress(DocumentError):
            platform = Platform.from_json(parse_json_object(config_raw, "config"))
    return PullResult(
        manifest_digest=resolved.digest,
        manifest_verity=manifest_verity,
        config_digest=config_digest,
        config_verity=config_verity,
        stats=stats,
        platform=platform,
        layers=tuple(layer_refs),
    )


def _import_config_and_layers(
    repo: Repository,
    source: ImageSource,
    config_desc: Descriptor,
    layers: Sequence[Descriptor],
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]], ImportStats]:
    config_digest = config_desc.digest
    identifier = config_identifier(config_digest)
    existing = repo.has_stream(identifier)
    if existing is not None:
        # cfsctl: a config stream already present means its layers are too
        log.info("Config %s already stored: its layers are too", config_digest)
        try:
            raw, refs = read_external_stream(
                repo, identifier, existing, splitstream.CONFIG_CONTENT_TYPE
            )
        except ComposefsError as e:
            raise wrap(PullError, f"Failed to read cached config {config_digest}", e) from e
        try:
            diff_ids = _diff_ids(config_desc, raw, layers)
        except DocumentError as e:
            raise wrap(PullError, f"Failed to parse config {config_digest}", e) from e
        artifact = config_desc.media_type not in CONFIG_MEDIA_TYPES
        if artifact and not all(d in refs for d in diff_ids):
            # An artifact config is shared by unrelated artifacts (OCI 1.1's empty config `{}`
            # above all): its stream holds the refs of the artifact that stored it first. This
            # artifact's blobs are imported and referenced from its own manifest stream.
            results = _import_layers(
                repo, source, list(zip(layers, diff_ids, strict=True)), True, emit, threads, cancel
            )
            _check_cancel(cancel)
            stats = ImportStats()
            for diff_id in dict.fromkeys(diff_ids):
                stats = stats + results[diff_id][1]
            return config_digest, existing, raw, [(d, results[d][0]) for d in diff_ids], stats
        layer_refs = []
        for diff_id in diff_ids:
            if diff_id not in refs:
                raise _missing(diff_id, sorted(refs))
            layer_refs.append((diff_id, refs[diff_id]))
        if len(layer_refs) != len(layers):
            raise PullError(f"expected {len(layers)} layer refs but got {len(layer_refs)}")
        for (diff_id, _), desc in zip(layer_refs, layers, strict=True):
            emit(PullEvent("skipped", id=diff_id, total=desc.size, digest=desc.digest))
        return config_digest, existing, raw, layer_refs, ImportStats()

    emit(PullEvent("message", message=f"Copying config {config_digest}"))
    try:
        raw = source.read_blob(config_desc)
    except ComposefsError as e:
        raise wrap(PullError, f"Failed to read config {config_digest}", e) from e
    log.info("Read config %s (%d bytes)", config_digest, len(raw))
    try:
        diff_ids = _diff_ids(config_desc, raw, layers)
    except PullError as e:
        raise wrap(PullError, f"Failed to parse config {config_digest}", e) from e
    if len(diff_ids) > len(layers):
        raise _missing(diff_ids[len(layers)], diff_ids[: len(layers)])
    if len(diff_ids) < len(layers):
        raise PullError(f"expected {len(layers)} layer refs but got {len(diff_ids)}")
    artifact = config_desc.media_type not in CONFIG_MEDIA_TYPES
    if not artifact:
        for desc in layers:
            if desc.media_type not in LAYER_MEDIA_TYPES:
                raise PullError(f"Failed to import layer {desc.digest}") from PullError(
                    f"unsupported layer media type '{quote(desc.media_type)}'"
                )

    results = _import_layers(
        repo, source, list(zip(layers, diff_ids, strict=True)), artifact, emit, threads, cancel
    )
    _check_cancel(cancel)
    _faults.point("layers-imported")
    layer_refs = [(d, results[d][0]) for d in diff_ids]
    stats = ImportStats()
    for diff_id in dict.fromkeys(diff_ids):
        stats = stats + results[diff_id][1]
    config_verity = write_config(repo, config_digest, raw, layer_refs)
    return config_digest, config_verity, raw, layer_refs, stats


def _import_layers(
    repo: Repository,
    source: ImageSource,
    pairs: list[tuple[Descriptor, str]],
    artifact: bool,
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> dict[str, tuple[bytes, ImportStats]]:
    """Imports every layer (largest first, in parallel); diff_id -> (verity, stats)."""
    unique: dict[str, Descriptor] = {}
    for desc, diff_id in pairs:
        unique.setdefault(diff_id, desc)
    order = sorted(unique.items(), key=lambda kv: -kv[1].size)
    workers = threads if threads > 0 else (os.cpu_count() or 1)
    workers = max(1, min(workers, len(order)))
    results: dict[str, tuple[bytes, ImportStats]] = {}
    if not order:
        return results
    for diff_id, desc in order:
        emit(PullEvent("queued", id=diff_id, total=desc.size, digest=desc.digest))
    log.debug("Importing %d layers with %d workers", len(order), workers)

    def job(diff_id: str, desc: Descriptor) -> tuple[bytes, ImportStats]:
        _check_cancel(cancel)
        try:
            return _import_one(repo, source, desc, diff_id, artifact, emit, threads, cancel)
        except PullCancelled:
            raise
        except (ComposefsError, OSError) as e:
            _check_cancel(cancel)  # a transfer stopped by the cancel flag: PullCancelled
            raise wrap(PullError, f"Failed to import layer {desc.digest}", e) from e

    # not a ``with`` block: on Ctrl-C the main thread must not first wait for every layer
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="composefs-pull"
    )
    futures: dict[concurrent.futures.Future[tuple[bytes, ImportStats]], str] = {}
    error: BaseException | None = None
    try:
        futures = {pool.submit(job, d, desc): d for d, desc in order}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except BaseException as e:
                if error is None or isinstance(error, PullCancelled):
                    error = e
                cancel.set()
                for f in futures:
                    f.cancel()
    except BaseException:
        # KeyboardInterrupt while waiting: the workers see ``cancel`` within a few MiB of
        # input; they are waited for (briefly) so that no thread writes after we return
        cancel.set()
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if error is not None:
        raise error
    return results


def _import_one(
    repo: Repository,
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    artifact: bool,
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> tuple[bytes, ImportStats]:
    identifier = _layer.layer_identifier(diff_id)
    existing = repo.has_stream(identifier)
    if existing is None:
        # another pull of this process importing the same layer is waited for, then its
        # result used: each layer is imported once (across processes, both may import it;
        # the objects and the stream are written atomically, the second write is a no-op)
        with _LAYER_LOCKS.hold(repo, diff_id, cancel):
            existing = repo.has_stream(identifier)
            if existing is None:
                return _import_new(repo, source, desc, diff_id, artifact, emit, threads, cancel)
    log.info("Layer %s already present", diff_id)
    emit(PullEvent("skipped", id=diff_id, total=desc.size, digest=desc.digest))
    return existing, ImportStats(layers=1, layers_already_present=1)


def _import_new(
    repo: Repository,
    source: ImageSource,
    desc: Descriptor,
    diff_id: str,
    artifact: bool,
    emit: ProgressCallback,
    threads: int,
    cancel: _Stop,
) -> tuple[bytes, ImportStats]:
    emit(PullEvent("started", id=diff_id, total=desc.size, digest=desc.digest))
    log.info("Importing layer %s (blob %s, %s)", diff_id, desc.digest, human_bytes(desc.size))
    started = time.monotonic()

    def on_progress(done: int) -> None:
        # called by the backend's split_layer every few MiB, with the GIL: raising here aborts
        # the native import as well as the pure one
        _check_cancel(cancel)
        emit(
            PullEvent("progress", id=diff_id, total=desc.size, transferred=done, digest=desc.digest)
        )

    if artifact and desc.media_type not in LAYER_MEDIA_TYPES:
        with source.open_blob(desc) as fd:
            verity, stats = _store_blob(repo, fd, desc, diff_id, cancel)
    else:
        with source.open_blob(desc) as fd:
            result = _layer.import_layer(
                repo,
                fd,
                diff_id,
                media_type=served_media_type(source, desc),
                digest=desc.digest,
                threads=threads,
                progress=on_progress,
            )
        verity, stats = result.verity, ImportStats.from_layer(result)
    emit(PullEvent("done", id=diff_id, total=desc.size, transferred=desc.size, digest=desc.digest))
    log.info("Imported layer %s in %.2f s: %s", diff_id, time.monotonic() - started, stats)
    return verity, stats


class _LayerLocks:
    """One lock per (repository, diff_id) in this process, alive while someone holds or waits
    for it. The repository is named by its directory's device and inode: two handles on one
    repository share the locks."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        #: key -> [lock, number of holders and waiters]
        self._locks: dict[tuple[int, int, str], list[Any]] = {}

    @contextlib.contextmanager
    def hold(self, repo: Repository, diff_id: str, cancel: _Stop) -> Iterator[None]:
        st = os.fstat(repo.fd)
        key = (st.st_dev, st.st_ino, diff_id)
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        lock: threading.Lock = entry[0]
        try:
            if not lock.acquire(blocking=False):
                log.info("Layer %s is being imported by another pull: waiting", diff_id)
                while not lock.acquire(timeout=0.05):
                    _check_cancel(cancel)
            try:
                yield
            finally:
                lock.release()
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._locks[key]


_LAYER_LOCKS = _LayerLocks()


def _store_blob(
    repo: Repository, fd: int, desc: Descriptor, key: str, cancel: _Stop
) -> tuple[bytes, ImportStats]:
    """A non-tar artifact layer: the raw blob as one object in an ``oci_blob`` stream."""
    raw = _HashingReader(fd, cancel)
    object_id = repo.ensure_object_from_stream(io.BufferedReader(raw, 1 << 20), desc.size)
    found = "sha256:" + raw.hasher.hexdigest()
    if found != desc.digest:
        raise BlobDigestMismatch(f"blob digest mismatch: expected {desc.digest}, got {found}")
    writer = splitstream.Writer(repo.algorithm, splitstream.BLOB_CONTENT_TYPE)
    writer.write_external(object_id, desc.size)
    verity = repo.write_stream(writer, _layer.layer_identifier(key))
    return verity, ImportStats(layers=1, objects_copied=1, bytes_copied=desc.size)


class _HashingReader(io.RawIOBase):
    """Reads a file descriptor (not closing it) and hashes what passes through."""

    def __init__(self, fd: int, cancel: _Stop) -> None:
        self.fd = fd
        self.cancel = cancel
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        _check_cancel(self.cancel)
        view = memoryview(buffer).cast("B")
        n = os.readv(self.fd, [view])
        self.hasher.update(view[:n])
        return n
