"""The boot transformation of a root filesystem tree (composefs-boot 0.9's
``transform_for_boot_from_dir``), as ``compute-karg`` applies it before computing the image id:
``/boot`` and ``/sysroot`` emptied and given ``/usr``'s mtime, then SELinux labels.

SELinux relabeling from a policy (``/etc/selinux/config`` naming a ``SELINUXTYPE`` and its
``file_contexts``) is not implemented: such a tree is refused with a clear error instead of
giving an id cfsctl would not give. A tree without a policy has its ``security.selinux``
labels removed, as composefs-boot does.
"""

from __future__ import annotations

import errno
import os
import stat

from composefs._pure.dumpfile import debug_bytes
from composefs._pure.tree import Directory, FileSystem, Leaf
from composefs.errors import ComposefsError

__all__ = ["BootTransformError", "transform_for_boot_from_dir"]

_EMPTIED = (b"boot", b"sysroot")
_SELINUX = b"security.selinux"
#: /etc/selinux/config is a small text file; more is not a configuration
_CONFIG_LIMIT = 1 << 20


class BootTransformError(ComposefsError):
    """A root filesystem cannot be transformed for boot."""


def transform_for_boot_from_dir(fs: FileSystem, rootfs: str) -> None:
    """Transforms ``fs`` (read from the directory ``rootfs``) for boot, in place."""
    usr = _subdir(fs.root, b"usr")
    for name in _EMPTIED:
        directory = _subdir(fs.root, name)
        directory.stat.mtime = usr.stat.mtime
        directory.stat.mtime_nsec = usr.stat.mtime_nsec
        directory.entries.clear()
    policy = _selinux_policy(rootfs)
    if policy is not None:
        raise BootTransformError(
            f"Applying SELinux labels to filesystem from directory: the tree has an SELinux "
            f"policy (SELINUXTYPE={policy} in /etc/selinux/config); relabeling from a policy "
            "is not implemented here (use cfsctl compute-karg)"
        )
    _strip_labels(fs)


def _subdir(root: Directory, name: bytes) -> Directory:
    found = root.entries.get(name)
    if found is None:
        raise BootTransformError(f"Directory entry {debug_bytes(name)} does not exist")
    if not isinstance(found, Directory):
        raise BootTransformError(f"Directory entry {debug_bytes(name)} is not a subdirectory")
    return found


def _selinux_policy(rootfs: str) -> str | None:
    """``SELINUXTYPE`` of ``rootfs/etc/selinux/config``, if the file names one."""
    try:
        dfd = os.open(
            os.path.join(rootfs, "etc/selinux"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return None
    try:
        try:
            fd = os.open("config", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise BootTransformError("/etc/selinux/config is not a regular file")
            text = f.read(_CONFIG_LIMIT)
    finally:
        os.close(dfd)
    for line in text.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "selinuxtype":
            return value.strip()
    return None


def _strip_labels(fs: FileSystem) -> None:
    stack: list[Directory] = [fs.root]
    seen: set[int] = set()
    while stack:
        directory = stack.pop()
        directory.stat.xattrs.pop(_SELINUX, None)
        for inode in directory.entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            elif isinstance(inode, Leaf) and id(inode) not in seen:
                seen.add(id(inode))
                inode.stat.xattrs.pop(_SELINUX, None)
