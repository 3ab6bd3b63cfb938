"""Composefs images outside OCI: ``create-image``, ``compute-id``, ``create-dumpfile``,
``mount`` (cfsctl's commands of the same names) and ``mkcomposefs`` (C mkcomposefs's
command line, as ``cfsctl mkcomposefs`` offers it)."""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any

from composefs import erofs
from composefs.cli._common import add_mount_options, open_repo
from composefs.constants import ALLOWLIST_ONLY, XATTR_MODES
from composefs.errors import ComposefsError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from composefs.repository import Repository


def configure(name: str, p: argparse.ArgumentParser) -> None:
    """Adds the arguments of the command ``name`` to its parser ``p``."""
    if name == "create-image":
        _add_fs_options(p)
        p.add_argument(
            "image_name", nargs="?", metavar="NAME", help="also name the image images/refs/NAME"
        )
        p.set_defaults(func=cmd_create_image)
    elif name == "compute-id":
        _add_fs_options(p)
        p.set_defaults(func=cmd_compute_id)
    elif name == "create-dumpfile":
        _add_fs_options(p)
        p.set_defaults(func=cmd_create_dumpfile)
    elif name == "mount":
        p.add_argument("name", metavar="NAME", help="an image id (hex) or refs/<name>")
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        add_mount_options(p)
        p.set_defaults(func=cmd_mount)
    elif name == "mkcomposefs":
        _add_mkcomposefs_options(p)
        p.set_defaults(func=cmd_mkcomposefs)
    else:
        raise AssertionError(f"not an image command: {name}")


def _add_mkcomposefs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-file", action="store_true", help="SOURCE is a dumpfile (- = stdin)")
    p.add_argument("--print-digest", action="store_true", help="print the image's fs-verity digest")
    p.add_argument(
        "--print-digest-only", action="store_true", help="print the digest, write no image"
    )
    p.add_argument(
        "--use-epoch", action="store_true", help="set every mtime to 0 (directories only, as C)"
    )
    p.add_argument(
        "--skip-devices", action="store_true", help="leave device nodes out (directories only)"
    )
    p.add_argument(
        "--skip-xattrs", action="store_true", help="leave every xattr out (directories only)"
    )
    p.add_argument(
        "--user-xattrs", action="store_true", help="keep only user.* xattrs (directories only)"
    )
    p.add_argument(
        "--min-version",
        type=int,
        default=None,
        help="the lowest format version (default 0; 0 when only --max-version is given)",
    )
    p.add_argument(
        "--max-version",
        type=int,
        default=None,
        help="the highest format version (default 1; 0 when only --min-version is given): "
        "a dumpfile with a whiteout is written as version 1 if allowed",
    )
    p.add_argument(
        "--hardlinks",
        action="store_true",
        help="share one inode between hard-linked source files (directories only)",
    )
    p.add_argument("source", metavar="SOURCE", help="a directory, or a dumpfile with --from-file")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="the image file to write (- = stdout)")


def _add_fs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the directory to read")
    p.add_argument(
        "--no-propagate-usr-to-root",
        action="store_true",
        help="keep the root directory's own metadata (default: copy /usr's, empty /run, "
        "filter xattrs, as for OCI images)",
    )
    p.add_argument(
        "--xattrs",
        choices=XATTR_MODES,
        default=ALLOWLIST_ONLY,
        help="which extended attributes to keep (default: only security.capability)",
    )


def _scan_errors(path: str) -> contextlib.AbstractContextManager[None]:
    """The backend's errors as :mod:`composefs.fs` raises them: an ``OSError`` chained under
    "Reading filesystem from PATH" and "Scanning directory|leaf ENTRY" (cfsctl's chain),
    anything else (the OCI transform's errors) as a :class:`~composefs.fs.FilesystemError`."""
    from composefs.fs import FilesystemError

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        try:
            yield
        except OSError as e:
            where = os.fsdecode(e.filename) if e.filename is not None else path
            is_dir = where == path
            if not is_dir:
                with contextlib.suppress(OSError):
                    is_dir = stat.S_ISDIR(os.lstat(where).st_mode)
            kind = "directory" if is_dir else "leaf"
            scanning = FilesystemError(f"Scanning {kind} {where}")
            scanning.__cause__ = e
            raise FilesystemError(f"Reading filesystem from {path}") from scanning
        except ValueError as e:
            raise FilesystemError(str(e)) from None

    return scope()


def _scan_args(args: argparse.Namespace, algorithm: str) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "transform": not args.no_propagate_usr_to_root,
        "xattrs": args.xattrs,
    }


def _directory_images(
    args: argparse.Namespace, repo: Repository | None, algorithm: str, versions: list[int]
) -> list[bytes]:
    """The directory's EROFS images in ``versions`` (its files stored into ``repo`` if
    given), scanned and written by the active backend."""
    from composefs import _backend

    path = os.fsdecode(args.path)
    extra: dict[str, Any] = {}
    if repo is not None:
        extra = {"objects_fd": repo.objects_fd(), "secure": repo.secure}
    with _scan_errors(path):
        images = _backend.backend().fs.mkfs_directory(
            path, **_scan_args(args, algorithm), versions=versions, **extra
        )
    return [bytes(i) for i in images]


def cmd_create_image(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        repo.ensure_writable()
        default, extra = repo.metadata.format_config
        versions = [default, *sorted(v for v in extra if v != default)]
        images = _directory_images(args, repo, repo.algorithm.hash_name, versions)
        image_id = b""
        for version, data in zip(versions, images, strict=True):
            written = repo.write_image(args.image_name if version == default else None, data)
            if version == default:
                image_id = written
        hash_name = repo.algorithm.hash_name
    print(f"{hash_name}:{image_id.hex()}")
    return 0


def _algorithm_and_version(args: argparse.Namespace) -> tuple[str, int]:
    """cfsctl: the repository's hash and format if one can be opened, else --hash (sha512)."""
    if not getattr(args, "no_repo", False):
        try:
            with open_repo(args) as repo:
                return repo.algorithm.hash_name, repo.erofs_version
        except (ComposefsError, OSError):
            if args.repo:
                raise
    version = args.erofs_version if args.erofs_version is not None else erofs.DEFAULT_FORMAT_VERSION
    return args.hash or "sha512", version


def cmd_compute_id(args: argparse.Namespace) -> int:
    algorithm, version = _algorithm_and_version(args)
    (image,) = _directory_images(args, None, algorithm, [version])
    print(erofs.image_id(image, algorithm).hex())
    return 0


def cmd_create_dumpfile(args: argparse.Namespace) -> int:
    from composefs import _backend

    algorithm, _ = _algorithm_and_version(args)
    path = os.fsdecode(args.path)
    with _scan_errors(path):
        dump = _backend.backend().fs.scan_directory(path, **_scan_args(args, algorithm))
    out = sys.stdout.buffer
    out.write(dump)
    out.flush()
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from composefs import mount

    with open_repo(args) as repo:
        mount.mount_image(
            repo,
            args.name,
            args.mountpoint,
            upperdir=args.upperdir,
            workdir=args.workdir,
            read_write=args.read_write,
        )
    return 0


def _mkcomposefs_versions(args: argparse.Namespace) -> tuple[int, int]:
    """C mkcomposefs's version options: without either, 0 and 1; a missing one is 0; a
    maximum below the minimum is raised to it. Only 0 and 1 exist."""
    if args.min_version is None and args.max_version is None:
        return 0, 1
    low = args.min_version or 0
    high = max(args.max_version or 0, low)
    for name, value in (("--min-version", args.min_version), ("--max-version", args.max_version)):
        if value is not None and not 0 <= value <= 1:
            raise ComposefsError(f"Invalid {name} {value}: the C-compatible versions are 0 and 1")
    return low, high


def _read_source(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as e:
        raise ComposefsError(f"open `{source}`") from e


def cmd_mkcomposefs(args: argparse.Namespace) -> int:
    from composefs import fs
    from composefs._pure import dumpfile

    if args.print_digest_only and args.image is not None:
        raise ComposefsError("IMAGE must be omitted when using --print-digest-only")
    if not args.print_digest_only and args.image is None:
        raise ComposefsError("IMAGE is required (or use --print-digest-only)")
    if args.image == "-" and not args.print_digest_only and sys.stdout.isatty():
        raise ComposefsError("stdout is a tty. Refusing to use it")
    low, high = _mkcomposefs_versions(args)
    if args.from_file:
        # C mkcomposefs: its dumpfile rules (strict when CFS_PARSE_STRICT is set, as C's
        # hidden switch) and its writer; the directory options do not apply, as in C
        strict = os.environ.get("CFS_PARSE_STRICT") is not None
        text = _read_source(args.source)
        try:
            image = erofs.mkcomposefs(text, min_version=low, max_version=high, strict=strict)
        except erofs.ErofsError as e:
            # one line, as C prints it, with the file and line named
            name = "<stdin>" if args.source == "-" else args.source
            raise ComposefsError(f"dumpfile {name}: {e}") from None
    else:
        # the directory is scanned by the active backend (native: digests in parallel)
        from composefs import _backend

        source = os.fsdecode(args.source)
        with _scan_errors(source):
            scanned = _backend.backend().fs.scan_directory(source, "sha256", transform=False)
        tree = dumpfile.parse(scanned)
        if not args.hardlinks:
            fs.break_hardlinks(tree)
        fs.mkcomposefs_transform(
            tree,
            skip_xattrs=args.skip_xattrs,
            user_xattrs=args.user_xattrs,
            use_epoch=args.use_epoch,
            skip_devices=args.skip_devices,
        )
        version = 1 if low >= 1 or (high >= 1 and _has_whiteout(tree)) else 0
        image = erofs.mkfs(dumpfile.write(tree, raw_modes=False), version)
    if not args.print_digest_only:
        if args.image == "-":
            sys.stdout.buffer.write(image)
            sys.stdout.buffer.flush()
        else:
            tmp = f"{args.image}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(image)
            os.replace(tmp, args.image)
    if args.print_digest or args.print_digest_only:
        print(erofs.image_id(image, "sha256").hex())
    return 0


def _has_whiteout(tree: Any) -> bool:
    """Whether a scanned tree holds a character device 0/0 (C raises the version to 1)."""
    from composefs._pure.tree import Directory

    stack = [tree.root]
    while stack:
        for inode in stack.pop().entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            elif inode.kind == "char" and inode.rdev == 0:
                return True
    return False
