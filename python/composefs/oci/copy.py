"""Copying an OCI image from one repository into another (``cfsctl oci copy``).

For each layer the destination lacks, every object of the source layer is first stored in the
destination under the digest of its content (computed or measured, never taken from the
source's names) without copying data where the filesystem allows, as composefs-rs 0.9.4 does:
a reflink (``FICLONE``), else a hard link of the source's file (fs-verity is enabled on it in
place where the filesystem has it, as composefs-rs does), else a copy. ``zerocopy`` (same
algorithm only) forbids the copy fallback: cfsctl's help says that without it objects are
always copied, but its code (and so this module) tries reflink and hard link in both cases.
Then the source layer's tar is reassembled and imported into the destination as a pull would
(split by the destination's writer, the diff_id verified; the objects are found present), so
the result is what pulling the image into the destination gives, across hash algorithms too.
An artifact's non-tar layer (an ``oci_blob`` stream) is copied as it is: its object placed the
same way, its sha256 checked against the layer digest. Then the config and manifest streams
are written, the EROFS image(s) of the destination's formats are generated and linked (not for
artifacts), and the manifest is tagged ``name`` (without a name the copy is not tagged, as
with cfsctl).

Unlike composefs-rs, a hard link needs no ``CAP_DAC_READ_SEARCH``: the measured descriptor is
linked through ``/proc/self/fd``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import threading

from composefs import fsverity, splitstream
from composefs._pure.objects import TmpFile
from composefs.errors import ComposefsError, VerityAlreadyEnabled, VerityNotSupported
from composefs.object_ids import object_pathname
from composefs.oci import names
from composefs.oci.filesystem import commit_images
from composefs.oci.image import OciImage
from composefs.oci.layer import import_layer, layer_identifier, layer_tar
from composefs.oci.streams import write_config, write_manifest
from composefs.repository import Repository

__all__ = ["CopyError", "CopyResult", "CopyStats", "copy_image"]

#: ``FICLONE`` (``_IOW(0x94, 9, int)``)
_FICLONE = 0x40049409
_PIPE_CHUNK = 1 << 20


class CopyError(ComposefsError):
    """An image cannot be copied between repositories."""


@dataclasses.dataclass
class CopyStats:
    """How the objects of the copied layers got into the destination."""

    objects_reflinked: int = 0
    objects_hardlinked: int = 0
    objects_copied: int = 0
    #: in the destination already (or its name taken by a file of the same size)
    objects_already_present: int = 0
    layers_copied: int = 0
    layers_already_present: int = 0


@dataclasses.dataclass(frozen=True)
class CopyResult:
    manifest_digest: str
    manifest_verity: bytes
    config_digest: str
    config_verity: bytes
    tag: str | None
    stats: CopyStats


def copy_image(
    dest: Repository,
    src: Repository,
    reference: str,
    *,
    name: str | None = None,
    zerocopy: bool = False,
) -> CopyResult:
    """Copies the image ``reference`` (a tag, or ``@sha256:<manifest digest>``) of ``src``
    into ``dest``; see the module's description."""
    dest.ensure_writable()
    if name is not None and name.startswith("@"):
        raise CopyError(
            f"Invalid ref name \"{name}\": leading '@' is reserved for digest references"
        )
    if zerocopy and src.algorithm is not dest.algorithm:
        raise CopyError(
            "--zerocopy requires matching hash algorithms; source uses "
            f"{src.algorithm.hash_name.capitalize()} but destination uses "
            f"{dest.algorithm.hash_name.capitalize()}"
        )
    image = OciImage.resolve(src, reference)
    stats = CopyStats()
    layer_refs: list[tuple[str, bytes]] = []
    done: dict[str, bytes] = {}
    for diff_id in image.diff_ids:
        if diff_id not in done:
            done[diff_id] = _copy_layer(dest, src, diff_id, zerocopy, stats)
        layer_refs.append((diff_id, done[diff_id]))

    config_id = names.config_identifier(image.config_digest)
    config_verity = dest.has_stream(config_id)
    if config_verity is None:
        config_verity = write_config(dest, image.config_digest, image.config_raw, layer_refs)
    manifest_id = names.manifest_identifier(image.manifest_digest)
    manifest_verity = dest.has_stream(manifest_id)
    if manifest_verity is None:
        manifest_verity = write_manifest(
            dest,
            image.manifest_digest,
            image.manifest_raw,
            image.config_digest,
            config_verity,
            layer_refs,
        )
    copied = OciImage.open(dest, image.manifest_digest, manifest_verity)
    if not copied.is_container_image:
        if name is not None:  # an artifact: no EROFS image, tagged directly
            names.tag_image(dest, image.manifest_digest, name)
    elif copied.erofs_image(dest.erofs_version) is None:
        committed = commit_images(dest, copied, name)
        config_verity, manifest_verity = committed.config_verity, committed.manifest_verity
    elif name is not None:
        names.tag_image(dest, image.manifest_digest, name)
    return CopyResult(
        image.manifest_digest,
        manifest_verity,
        image.config_digest,
        config_verity,
        name,
        stats,
    )


def _copy_layer(
    dest: Repository, src: Repository, diff_id: str, zerocopy: bool, stats: CopyStats
) -> bytes:
    existing = dest.has_stream(layer_identifier(diff_id))
    if existing is not None:
        stats.layers_already_present += 1
        return existing
    source_verity = src.has_stream(layer_identifier(diff_id))
    if source_verity is None:
        raise CopyError(f"Layer {diff_id} not found in the source repository")
    source_stream = splitstream.parse(src.read_object(source_verity), src.algorithm)
    if source_stream.content_type == splitstream.BLOB_CONTENT_TYPE:
        return _copy_blob(dest, src, diff_id, source_stream, zerocopy, stats)
    _place_objects(dest, src, diff_id, zerocopy, stats)
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=_PIPE_CHUNK) as out:
                layer_tar(src, diff_id, out)
        except BrokenPipeError:
            pass  # the import stopped reading; its error is the one reported
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=produce, name=f"copy {diff_id}", daemon=True)
    worker.start()
    try:
        try:
            result = import_layer(dest, read_fd, diff_id)
        finally:
            os.close(read_fd)  # a producer still writing gets EPIPE and ends
            worker.join()
    except ComposefsError as e:
        if failure:
            raise CopyError(f"reading layer {diff_id} from the source") from failure[0]
        raise CopyError(f"importing layer {diff_id}") from e
    if failure:
        raise CopyError(f"reading layer {diff_id} from the source") from failure[0]
    stats.layers_copied += 1
    return result.verity


def _copy_blob(
    dest: Repository,
    src: Repository,
    digest: str,
    stream: splitstream.SplitStream,
    zerocopy: bool,
    stats: CopyStats,
) -> bytes:
    """A non-tar artifact layer (an ``oci_blob`` stream of one object): the object placed
    like a layer's, its sha256 checked against the layer digest, the stream written."""
    import hashlib

    if len(stream.object_refs) != 1 or len(stream.chunks) != 1:
        raise CopyError(f"blob stream of {digest} does not hold exactly one object")
    fd = src.open_object(stream.object_refs[0])
    try:
        hasher = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, _PIPE_CHUNK, offset):
            hasher.update(chunk)
            offset += len(chunk)
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise CopyError(
                f"blob digest mismatch: expected {digest}, got sha256:{hasher.hexdigest()}"
            )
        how, object_id = _place(dest, fd, zerocopy, _PlaceState())
    finally:
        os.close(fd)
    setattr(stats, f"objects_{how}", getattr(stats, f"objects_{how}") + 1)
    writer = splitstream.Writer(dest.algorithm, splitstream.BLOB_CONTENT_TYPE)
    writer.write_external(object_id, offset)
    stats.layers_copied += 1
    return dest.write_stream(writer, layer_identifier(digest))


def _place_objects(
    dest: Repository, src: Repository, diff_id: str, zerocopy: bool, stats: CopyStats
) -> None:
    """Puts every object of the source layer into ``dest`` under the digest of its content
    in ``dest``'s algorithm: a reflink, else a hard link, else (unless ``zerocopy``) a
    copy, as composefs-rs's ``ensure_object_from_file`` does."""
    verity = src.has_stream(layer_identifier(diff_id))
    if verity is None:
        raise CopyError(f"Layer {diff_id} not found in the source repository")
    stream = splitstream.parse(
        src.read_object(verity), src.algorithm, splitstream.LAYER_CONTENT_TYPE
    )
    state = _PlaceState()
    for object_id in dict.fromkeys(stream.object_refs):
        if src.algorithm is dest.algorithm and dest.has_object(object_id):
            stats.objects_already_present += 1
            continue
        fd = src.open_object(object_id)
        try:
            how, _ = _place(dest, fd, zerocopy, state)
        except ComposefsError as e:
            raise CopyError(f"storing object {object_pathname(object_id)} of the source") from e
        finally:
            os.close(fd)
        setattr(stats, f"objects_{how}", getattr(stats, f"objects_{how}") + 1)


class _PlaceState:
    __slots__ = ("reflink",)

    def __init__(self) -> None:
        self.reflink = True


def _place(dest: Repository, src_fd: int, zerocopy: bool, state: _PlaceState) -> tuple[str, bytes]:
    """Stores the file open at ``src_fd`` in ``dest``; returns how (``reflinked``,
    ``hardlinked``, ``copied``, ``already_present``) and its object id."""
    size = os.fstat(src_fd).st_size
    if state.reflink:
        placed = _reflink(dest, src_fd, size)
        if placed is not None:
            return placed
        state.reflink = False  # this filesystem pair does not reflink: not tried again
    try:
        return _hardlink(dest, src_fd, size)
    except (ComposefsError, OSError) as e:
        if zerocopy:
            raise CopyError(
                "reflink and hardlink both failed; copy fallback is disabled (zerocopy mode)"
            ) from e
    with os.fdopen(os.dup(src_fd), "rb") as f:
        f.seek(0)
        return "copied", dest.ensure_object_from_stream(f)


def _object_dir(dest: Repository, object_id: bytes) -> tuple[int, str]:
    sub, rest = object_pathname(object_id).split("/")
    objects = dest.objects_fd()
    with contextlib.suppress(FileExistsError):
        os.mkdir(sub, 0o777, dir_fd=objects)
    return os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=objects), rest


def _reflink(dest: Repository, src_fd: int, size: int) -> tuple[str, bytes] | None:
    tmp = TmpFile(dest.objects_fd(), 0o644)
    try:
        try:
            fcntl.ioctl(tmp.fd, _FICLONE, src_fd)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
                return None
            raise
        if os.fstat(tmp.fd).st_size != size:
            raise CopyError(f"Reflink size mismatch: expected {size}")
        ro = tmp.reopen_readonly()
        object_id = _identify(dest, ro)
        sub_fd, rest = _object_dir(dest, object_id)
        try:
            tmp.link_new(rest, sub_fd)
        except FileExistsError:
            return "already_present", object_id
        finally:
            os.close(sub_fd)
        return "reflinked", object_id
    finally:
        tmp.discard()


def _hardlink(dest: Repository, src_fd: int, size: int) -> tuple[str, bytes]:
    object_id = _identify(dest, src_fd)
    sub_fd, rest = _object_dir(dest, object_id)
    try:
        try:
            if os.stat(rest, dir_fd=sub_fd).st_size == size:
                return "already_present", object_id
        except FileNotFoundError:
            pass
        try:
            # the descriptor that was measured, never a name that could have been replaced
            os.link(f"/proc/self/fd/{src_fd}", rest, dst_dir_fd=sub_fd, follow_symlinks=True)
        except FileExistsError:
            return "already_present", object_id
        return "hardlinked", object_id
    finally:
        os.close(sub_fd)


def _identify(dest: Repository, fd: int) -> bytes:
    """The file's object id in ``dest``: fs-verity is enabled on it (where the filesystem
    has it; a secure ``dest`` requires it) and measured, else the digest is computed."""
    try:
        fsverity.enable_verity(fd, dest.algorithm)
    except VerityAlreadyEnabled:
        pass
    except VerityNotSupported:
        if dest.secure:
            raise
        return fsverity.digest_fd(fd, dest.algorithm)
    return fsverity.measure_verity(fd, dest.algorithm)
