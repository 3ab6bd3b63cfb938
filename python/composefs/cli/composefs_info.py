"""``composefs-info``: query composefs images, as ``cfsctl composefs-info`` 0.9.4 does
(composefs-rs's reimplementation of C composefs-info 1.0): ``ls``, ``dump``, ``objects``,
``missing-objects``, ``measure-file``.

Reached as the ``composefs-info`` console script (``composefs.cli.main``, which looks at its
argv0, so a ``composefs`` linked or copied as ``composefs-info`` works too, like cfsctl) and as
``composefs composefs-info ...``. Images are read with SHA-256 object ids,
as both C and composefs-rs do. Where C composefs-info 1.0.8 prints something else (see
docs/differences.md) this follows cfsctl, the reference the tests run against.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["build_parser", "configure", "run"]


def build_parser(prog: str = "composefs-info") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Query information from composefs images"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("ls", help="simple listing of files and directories in the image")
    p.add_argument("--filter", action="append", default=[], help="only these root entries")
    p.add_argument("images", nargs="*", metavar="IMAGES")
    p = sub.add_parser("dump", help="full dump in composefs-dump(5) format")
    p.add_argument("--filter", action="append", default=[], help="(accepted, not applied)")
    p.add_argument("images", nargs="*", metavar="IMAGES")
    p = sub.add_parser("objects", help="list all backing file object paths")
    p.add_argument("images", nargs="*", metavar="IMAGES")
    p = sub.add_parser("missing-objects", help="list backing files not present in basedir")
    p.add_argument("--basedir", required=True, help="base directory for object lookups")
    p.add_argument("images", nargs="+", metavar="IMAGES")
    p = sub.add_parser("measure-file", help="print the fs-verity digest of files")
    p.add_argument("files", nargs="*", metavar="FILES")
    return parser


def run(args: argparse.Namespace) -> int:
    handler = {
        "ls": _ls,
        "dump": _dump,
        "objects": _objects,
        "missing-objects": _missing_objects,
        "measure-file": _measure_file,
    }[args.command]
    return handler(args)


def configure(name: str, p: argparse.ArgumentParser) -> None:
    """``composefs composefs-info ARGS...``: everything after it is this tool's command line
    (the parser is made without ``--help`` and with no option prefix by
    :mod:`composefs.cli._main`, see ``RAW_COMMANDS``)."""
    assert name == "composefs-info", name
    p.set_defaults(func=_nested)
    p.add_argument("info_args", nargs=argparse.REMAINDER, metavar="ARGS")


def _nested(args: argparse.Namespace) -> int:
    parsed = build_parser().parse_args(args.info_args)
    return run(parsed)


# -- the commands ----------------------------------------------------------------------------


def _read(path: str) -> Any:
    from composefs.erofs_read import read_filesystem, read_image_file
    from composefs.errors import ComposefsError
    from composefs.fsverity import Algorithm

    shown = _debug(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ComposefsError(f"Failed to open image: {shown}") from e
    try:
        data = read_image_file(fd)
    except (ComposefsError, OSError) as e:
        raise ComposefsError(f"Failed to read image: {shown}") from e
    finally:
        os.close(fd)
    try:
        return read_filesystem(data, Algorithm.SHA256)
    except ComposefsError as e:
        raise ComposefsError(f"Failed to parse image: {shown}") from e


def _debug(path: str) -> str:
    from composefs._pure.dumpfile import debug_bytes

    return debug_bytes(os.fsencode(path))


def _escaped(data: bytes) -> bytes:
    """C composefs-info's escaping of ``ls`` output: ``\\\\ \\n \\r \\t``, ``\\xNN`` for
    anything but printable ASCII and the space."""
    out = bytearray()
    for c in data:
        if c == 0x5C:
            out += b"\\\\"
        elif c == 0x0A:
            out += b"\\n"
        elif c == 0x0D:
            out += b"\\r"
        elif c == 0x09:
            out += b"\\t"
        elif 0x20 <= c <= 0x7E:
            out.append(c)
        else:
            out += b"\\x%02x" % c
    return bytes(out)


def _ls(args: argparse.Namespace) -> int:
    from composefs._pure.tree import FILE, SYMLINK, Directory
    from composefs.object_ids import object_pathname

    out = sys.stdout.buffer
    filters = {os.fsencode(f) for f in args.filter}
    for image in args.images:
        fs = _read(image)
        seen: set[int] = set()
        lines: list[bytes] = []
        # depth first, names in byte order, a directory before its entries (no recursion)
        stack: list[tuple[bytes, Directory, list[bytes]]] = [
            (b"", fs.root, sorted(fs.root.entries, reverse=True))
        ]
        while stack:
            path, directory, pending = stack[-1]
            if not pending:
                stack.pop()
                continue
            name = pending.pop()
            if path == b"" and filters and name not in filters:
                continue
            child_path = path + b"/" + name
            child = directory.entries[name]
            if isinstance(child, Directory):
                lines.append(_escaped(child_path) + b"/\t\n")
                stack.append((child_path, child, sorted(child.entries, reverse=True)))
                continue
            line = _escaped(child_path)
            if child.kind == FILE:
                first = id(child) not in seen
                seen.add(id(child))
                if first and child.digest is not None and child.verity:
                    line += b"\t@ " + _escaped(object_pathname(child.digest).encode())
            elif child.kind == SYMLINK:
                line += b"\t-> " + _escaped(child.target)
            lines.append(line + b"\n")
        out.write(b"".join(lines))
    return 0


def _dump(args: argparse.Namespace) -> int:
    from composefs._pure import dumpfile

    for image in args.images:
        fs = _read(image)
        sys.stdout.buffer.write(dumpfile.write(fs))
    return 0


def _external(fs: Any) -> set[bytes]:
    from composefs._pure.tree import FILE, Directory

    found: set[bytes] = set()
    stack: list[Directory] = [fs.root]
    while stack:
        directory = stack.pop()
        for inode in directory.entries.values():
            if isinstance(inode, Directory):
                stack.append(inode)
            elif inode.kind == FILE and inode.digest is not None and inode.verity:
                found.add(inode.digest)
    return found


def _objects(args: argparse.Namespace) -> int:
    from composefs.object_ids import object_pathname

    for image in args.images:
        for digest in sorted(_external(_read(image))):
            print(object_pathname(digest))
    return 0


def _missing_objects(args: argparse.Namespace) -> int:
    from composefs.object_ids import object_pathname

    wanted: set[bytes] = set()
    for image in args.images:
        wanted |= _external(_read(image))
    for digest in sorted(wanted):
        pathname = object_pathname(digest)
        if not os.path.exists(os.path.join(args.basedir, pathname)):
            print(pathname)
    return 0


def _measure_file(args: argparse.Namespace) -> int:
    from composefs import fsverity
    from composefs.errors import ComposefsError, FsVerityError

    for path in args.files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ComposefsError(f"Failed to open file: {_debug(path)}") from e
        try:
            try:
                digest = fsverity.measure_verity_opt(fd, "sha256")
                if digest is None:
                    digest = fsverity.digest_fd(fd, "sha256")
            except (FsVerityError, OSError) as e:
                raise ComposefsError(f"Failed to measure verity for {_debug(path)}") from e
        finally:
            os.close(fd)
        print(digest.hex())
    return 0
