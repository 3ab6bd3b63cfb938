"""Mounting composefs images from a repository (composefs-rs ``mount.rs``, ``mount_at``).

A composefs mount is two kernel mounts built with the new mount API (``fsopen``, ``fsconfig``,
``fsmount``, ``move_mount``):

1. the EROFS image, read-only, straight from the image file (``source=/proc/self/fd/N``,
   Linux 6.12+ mounts EROFS from a regular file); this mount stays detached;
2. an overlayfs with ``metacopy=on`` and ``redirect_dir=on`` whose only lower layer is that
   EROFS mount and whose data-only lower layer is the repository's ``objects/`` directory: the
   image's ``trusted.overlay.redirect`` xattrs (``/xx/rest``) point into it. The overlay gets
   ``verity=require`` when the image must be verified (a secure repository); its source is
   ``composefs:<name>``. It is read-only unless ``read_write``.

Layers are passed as file descriptors (``lowerdir+``/``datadir+``, Linux 6.15+ accepts a
detached mount there). On older kernels the EROFS mount is first attached to a private temporary
directory and the layers are given as one ``lowerdir=/proc/self/fd/A::/proc/self/fd/B`` string,
as composefs-rs's ``pre-6.15`` build does.

Mounting needs root (``CAP_SYS_ADMIN`` in the initial user namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import platform
import tempfile
from collections.abc import Iterator

from composefs.errors import ComposefsError
from composefs.repository import Repository, check_name

__all__ = ["MountError", "mount_image", "unmount"]


class MountError(ComposefsError):
    """Mounting or unmounting a composefs image failed."""


# The new mount API's system call numbers are the same on every architecture that uses the
# generic table (x86_64 and aarch64 included): they were added after the tables were unified.
_SYSCALLS = {"move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432}
_SUPPORTED_MACHINES = ("x86_64", "amd64", "aarch64", "arm64")

_FSOPEN_CLOEXEC = 0x1
_FSMOUNT_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_SET_FD = 5
_FSCONFIG_CMD_CREATE = 6
_MOUNT_ATTR_RDONLY = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
_MNT_DETACH = 0x2


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(name: str, *args: int | bytes | None) -> int:
    machine = platform.machine().lower()
    if machine not in _SUPPORTED_MACHINES:
        raise MountError(f"mounting is not supported on this architecture ({machine})")
    converted: list[ctypes.c_long | ctypes.c_char_p] = [
        ctypes.c_char_p(a) if a is None or isinstance(a, bytes) else ctypes.c_long(a) for a in args
    ]
    result: int = _libc().syscall(ctypes.c_long(_SYSCALLS[name]), *converted)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _umount2(target: str, flags: int) -> None:
    if _libc().umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


class _Step(MountError):
    """One failed step, with the kernel's own messages; ``__cause__`` is the ``OSError``."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


class _FsContext:
    """An ``fsopen`` filesystem context; failures carry the kernel's log for the context."""

    def __init__(self, fstype: str) -> None:
        self.fstype = fstype
        try:
            self.fd = _syscall("fsopen", fstype.encode(), _FSOPEN_CLOEXEC)
        except OSError as e:
            raise _Step(f"fsopen({fstype}) failed", e.errno or 0) from e

    def _messages(self) -> str:
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 1024)
            except OSError:
                break
            if not data:
                break
            out.append(data.decode(errors="replace").strip())
        return f" (kernel: {'; '.join(out)})" if out else ""

    def _fsconfig(
        self, what: str, cmd: int, key: str | None, value: bytes | None, aux: int
    ) -> None:
        try:
            _syscall("fsconfig", self.fd, cmd, None if key is None else key.encode(), value, aux)
        except OSError as e:
            raise _Step(f"{self.fstype}: {what}{self._messages()}", e.errno or 0) from e

    def set_flag(self, key: str) -> None:
        self._fsconfig(f"setting {key}", _FSCONFIG_SET_FLAG, key, None, 0)

    def set_string(self, key: str, value: str) -> None:
        self._fsconfig(f"setting {key}={value}", _FSCONFIG_SET_STRING, key, value.encode(), 0)

    def set_fd(self, key: str, fd: int) -> None:
        self._fsconfig(f"setting {key} (file descriptor)", _FSCONFIG_SET_FD, key, None, fd)

    def create(self) -> None:
        self._fsconfig("creating the filesystem", _FSCONFIG_CMD_CREATE, None, None, 0)

    def mount(self, attrs: int = 0) -> int:
        try:
            return _syscall("fsmount", self.fd, _FSMOUNT_CLOEXEC, attrs)
        except OSError as e:
            raise _Step(f"{self.fstype}: fsmount{self._messages()}", e.errno or 0) from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> _FsContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _move_mount(mount_fd: int, target: str) -> None:
    try:
        _syscall(
            "move_mount", mount_fd, b"", _AT_FDCWD, os.fsencode(target), _MOVE_MOUNT_F_EMPTY_PATH
        )
    except OSError as e:
        raise _Step(f"attaching the mount at {target}", e.errno or 0) from e


def _erofs_mount(image_fd: int) -> int:
    """A detached read-only EROFS mount of the image file."""
    with _FsContext("erofs") as ctx:
        ctx.set_flag("ro")
        ctx.set_string("source", f"/proc/self/fd/{image_fd}")
        try:
            ctx.create()
        except _Step as e:
            if e.errno == errno.ENOTBLK:
                raise _Step(
                    "erofs: the kernel cannot mount an image file directly (Linux 6.12 or "
                    "later is needed; older kernels need a loop device)",
                    e.errno,
                ) from e
            raise
        return ctx.mount()


@contextlib.contextmanager
def _attached(mount_fd: int) -> Iterator[int]:
    """Pre-6.15 kernels: attaches a detached mount to a private temporary directory and yields
    an ``O_PATH`` descriptor of it; the temporary mount is detached again afterwards."""
    tmp = tempfile.mkdtemp(prefix="composefs-erofs-")
    try:
        _move_mount(mount_fd, tmp)
        try:
            fd = os.open(tmp, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
        finally:
            _umount2(tmp, _MNT_DETACH)
    finally:
        os.rmdir(tmp)


def _overlay_context(
    name: str, verity: bool, upperdir: str | None, workdir: str | None
) -> _FsContext:
    ctx = _FsContext("overlay")
    try:
        ctx.set_string("source", f"composefs:{name}")
        ctx.set_string("metacopy", "on")
        ctx.set_string("redirect_dir", "on")
        if verity:
            try:
                ctx.set_string("verity", "require")
            except _Step as e:
                if e.errno == errno.EINVAL:
                    raise _Step(
                        f"{e} (overlayfs verity=require needs Linux 6.6 or later)", e.errno
                    ) from e
                raise
        if upperdir is not None and workdir is not None:
            ctx.set_string("upperdir", upperdir)
            ctx.set_string("workdir", workdir)
    except BaseException:
        ctx.close()
        raise
    return ctx


def _composefs_mount(
    image_fd: int,
    name: str,
    objects_fd: int,
    *,
    verity: bool,
    upperdir: str | None,
    workdir: str | None,
    read_write: bool,
    fd_layers: bool = True,
) -> int:
    """Builds the overlay and returns the detached mount's descriptor.

    ``fd_layers`` False forces the pre-6.15 path (layers as a ``lowerdir`` string).
    """
    attrs = 0 if read_write else _MOUNT_ATTR_RDONLY
    erofs_fd = _erofs_mount(image_fd)
    try:
        if fd_layers:
            with _overlay_context(name, verity, upperdir, workdir) as ctx:
                try:
                    ctx.set_fd("lowerdir+", erofs_fd)
                    ctx.set_fd("datadir+", objects_fd)
                except _Step as e:
                    # before 6.13 no fd-valued layers, before 6.15 no detached mounts as layers
                    if e.errno not in (errno.EINVAL, errno.EBADF):
                        raise
                else:
                    ctx.create()
                    return ctx.mount(attrs)
        with (
            _attached(erofs_fd) as lower_fd,
            _overlay_context(name, verity, upperdir, workdir) as ctx,
        ):
            ctx.set_string("lowerdir", f"/proc/self/fd/{lower_fd}::/proc/self/fd/{objects_fd}")
            ctx.create()
            return ctx.mount(attrs)
    finally:
        os.close(erofs_fd)


def _hint(step: _Step) -> str | None:
    if step.errno == errno.EPERM:
        return "mounting composefs images needs root (CAP_SYS_ADMIN in the initial user namespace)"
    if step.errno == errno.ENOSYS:
        return "the kernel lacks the new mount API (fsopen/fsmount, Linux 5.2 or later)"
    if step.errno == errno.ENODEV and str(step).startswith("fsopen("):
        fstype = str(step)[len("fsopen(") :].split(")", 1)[0]
        return f"the kernel has no {fstype} filesystem (is the {fstype} module available?)"
    return None


def _mountpoint(path: str | os.PathLike[str]) -> str:
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise MountError(f"mountpoint {os.fspath(path)} does not exist") from FileNotFoundError(
            errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path)
        )
    if not os.path.isdir(real):
        raise MountError(
            f"mountpoint {os.fspath(path)} is not a directory"
        ) from NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path))
    return real


def _open_image(repo: Repository, image: str) -> tuple[int, bool]:
    try:
        return repo.open_image(image)
    except FileNotFoundError:  # ``refs/<name>`` that does not exist
        raise MountError(f"image not found: {image}") from None
    except ComposefsError as e:
        if str(e) == f"image not found: {image}":
            raise MountError(str(e)) from None
        raise MountError(f"Opening image '{image}'") from e


def mount_image(
    repo: Repository | str | os.PathLike[str],
    image: str,
    mountpoint: str | os.PathLike[str],
    *,
    upperdir: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    read_write: bool = False,
    _fd_layers: bool = True,
) -> None:
    """Mounts the image ``image`` of ``repo`` at ``mountpoint``.

    ``image`` is the hex image id (``images/<hex>``; its fs-verity digest is checked against
    the name when the file has one), ``refs/<name>`` or a bare ref name. In a secure repository
    the overlay requires fs-verity on every file (``verity=require``); in an insecure one it
    does not. With ``upperdir`` and ``workdir`` (both or neither) the overlay gets a writable
    upper layer; the mount is read-only unless ``read_write``.

    Raises :class:`MountError` (with the cause chained) on every failure.
    """
    if (upperdir is None) != (workdir is None):
        raise MountError("upperdir and workdir must be given together")
    check_name(image, "image name")  # before anything is opened
    if isinstance(repo, Repository):
        _mount(repo, image, mountpoint, upperdir, workdir, read_write, _fd_layers)
        return
    try:
        opened = Repository.open(repo)
    except ComposefsError as e:
        raise MountError(f"Opening repository {os.fspath(repo)}") from e
    with opened:
        _mount(opened, image, mountpoint, upperdir, workdir, read_write, _fd_layers)


def _mount(
    repo: Repository,
    image: str,
    mountpoint: str | os.PathLike[str],
    upperdir: str | os.PathLike[str] | None,
    workdir: str | os.PathLike[str] | None,
    read_write: bool,
    fd_layers: bool,
) -> None:
    context = f"Mounting image '{image}' at {os.fspath(mountpoint)}"
    try:
        target = _mountpoint(mountpoint)
        upper = None if upperdir is None else _mountpoint(upperdir)
        work = None if workdir is None else _mountpoint(workdir)
        image_fd, verity = _open_image(repo, image)
        try:
            mount_fd = _composefs_mount(
                image_fd,
                image,
                repo.objects_fd(),
                verity=verity,
                upperdir=upper,
                workdir=work,
                read_write=read_write,
                fd_layers=fd_layers,
            )
        finally:
            os.close(image_fd)
        try:
            _move_mount(mount_fd, target)
        finally:
            os.close(mount_fd)
    except _Step as e:
        hint = _hint(e)
        if hint is not None:
            raise MountError(context) from _chain(MountError(hint), e)
        raise MountError(context) from e
    except MountError as e:
        raise MountError(context) from e
    except OSError as e:
        raise MountError(context) from e


def _chain(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def unmount(mountpoint: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmounts a composefs mount (the detached EROFS mount under it goes with it).

    ``lazy`` detaches it even while busy (``MNT_DETACH``).
    """
    path = os.fspath(mountpoint)
    try:
        _umount2(path, _MNT_DETACH if lazy else 0)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise MountError(f"Unmounting {path}: not a mount point") from e
        if e.errno == errno.EPERM:
            raise MountError(f"Unmounting {path}: unmounting needs root (CAP_SYS_ADMIN)") from e
        raise MountError(f"Unmounting {path}") from e
