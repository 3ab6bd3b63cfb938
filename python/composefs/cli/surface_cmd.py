"""cfsctl 0.9.4's commands ``dump-files``, ``import-image``, ``oci copy`` and
``oci linked-erofs-images`` (names, arguments and output as cfsctl's; the ``oci`` ones'
arguments are defined in :mod:`composefs.cli.oci_cmd`, which calls these handlers lazily)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from composefs.cli._common import json_text, open_repo
from composefs.errors import ComposefsError


def configure(name: str, p: argparse.ArgumentParser) -> None:
    """Adds the arguments of the command ``name`` to its parser ``p``."""
    if name == "dump-files":
        p.add_argument("image_name", metavar="IMAGE_NAME", help="an image id (hex) or refs/<name>")
        p.add_argument("files", nargs="*", type=_path, metavar="FILES", help="paths in the image")
        p.add_argument(
            "--backing-path-only",
            action="store_true",
            help="print `PATH inline` or `PATH xx/<rest>` (the object backing the file) instead",
        )
        p.set_defaults(func=cmd_dump_files)
    elif name == "import-image":
        p.add_argument("reference", metavar="REFERENCE", help="the ref name (images/refs/<name>)")
        p.set_defaults(func=cmd_import_image)
    else:
        raise AssertionError(f"not a command of this module: {name}")


def _path(value: str) -> str:
    """A path argument: like cfsctl (clap's PathBuf), an empty one is a usage error."""
    if not value:
        raise argparse.ArgumentTypeError("a value is required but none was supplied")
    return value


# -- dump-files ----------------------------------------------------------------------------


class _ImagePathError(ComposefsError):
    pass


def _components(path: bytes) -> list[bytes]:
    """``std::path::Path::components`` of a Unix path, as bytes: ``/`` for the root, ``.``
    only as the first component of a relative path, ``..`` and names otherwise."""
    out: list[bytes] = []
    if path.startswith(b"/"):
        out.append(b"/")
    parts = path.split(b"/")
    for i, part in enumerate(parts):
        if not part:
            continue
        if part == b".":
            if i == 0:
                out.append(part)
            continue
        out.append(part)
    return out


def _parent_text(path: bytes) -> bytes:
    """The text ``Path::parent`` keeps of ``path`` (for messages)."""
    rest = path.rstrip(b"/")
    while rest.endswith(b"/.") or rest == b".":
        rest = rest[:-2].rstrip(b"/") if rest != b"." else b""
    cut = rest.rfind(b"/")
    if cut < 0:
        return b""
    head = rest[:cut].rstrip(b"/")
    return head if head else b"/"


def _lookup(fs: Any, path: bytes) -> Any:
    """The inode at ``path`` as composefs-rs's ``Directory::split`` and lookup find it."""
    from composefs._pure.dumpfile import debug_bytes
    from composefs._pure.tree import Directory

    components = _components(path)
    if not components or components[-1] in (b"/", b".", b".."):
        raise _ImagePathError(f"Invalid filename {debug_bytes(path)}")
    directory = fs.root
    parent = _parent_text(path)
    for component in components[:-1]:
        if component == b"/":
            continue
        if component in (b".", b".."):
            raise _ImagePathError(f"Invalid filename {debug_bytes(parent)}")
        found = directory.entries.get(component)
        if found is None:
            raise _ImagePathError(f"Directory entry {debug_bytes(parent)} does not exist")
        if not isinstance(found, Directory):
            raise _ImagePathError(f"Directory entry {debug_bytes(component)} is not a subdirectory")
        directory = found
    found = directory.entries.get(components[-1])
    if found is None:
        raise _ImagePathError(f"{os.fsdecode(path)} not found")
    return found


def dump_files(fs: Any, paths: list[bytes], backing_path_only: bool) -> bytes:
    """``cfsctl dump-files``'s output for ``paths`` of the image tree ``fs``."""
    from composefs._pure import dumpfile as pure_dumpfile
    from composefs._pure.tree import FILE, Directory
    from composefs.object_ids import object_pathname

    counts = pure_dumpfile.link_counts(fs)
    out = bytearray()
    for path in paths:
        node = _lookup(fs, path)
        if backing_path_only:
            if isinstance(node, Directory):
                raise _ImagePathError(f"{os.fsdecode(path)} is a directory")
            if node.kind == FILE and node.digest is not None:
                out += path + b" " + object_pathname(node.digest).encode() + b"\n"
            else:
                out += path + b" inline\n"
            continue
        for line in pure_dumpfile.subtree_lines(fs, node, path, counts):
            out += line.encode("ascii") + b"\n"
    return bytes(out)


def cmd_dump_files(args: argparse.Namespace) -> int:
    from composefs.erofs_read import read_filesystem, read_image_file

    with open_repo(args) as repo:
        fd, _ = repo.open_image(args.image_name)
        try:
            data = read_image_file(fd)
        finally:
            os.close(fd)
        fs = read_filesystem(data, repo.algorithm)
    out = dump_files(fs, [os.fsencode(p) for p in args.files], args.backing_path_only)
    sys.stdout.buffer.write(out)
    return 0


# -- import-image ----------------------------------------------------------------------------


def cmd_import_image(args: argparse.Namespace) -> int:
    """``cfsctl import-image``: the image is checked to be a well-formed composefs image
    first (cfsctl stores any bytes) and read up to the size composefs-rs opens (1 GiB)."""
    from composefs import erofs
    from composefs.errors import RepositoryError
    from composefs.repository import check_name

    check_name(args.reference, "image reference")
    with open_repo(args) as repo:
        repo.ensure_writable()
        data = sys.stdin.buffer.read(erofs.MAX_IMAGE_SIZE + 1)
        try:
            if len(data) > erofs.MAX_IMAGE_SIZE:
                raise erofs.ErofsError(f"the image is larger than {erofs.MAX_IMAGE_SIZE} bytes")
            erofs.collect_objects(data, repo.algorithm)
        except erofs.ErofsError as e:
            raise RepositoryError(f"Importing image '{args.reference}' from reader") from e
        image_id = repo.write_image(args.reference, data)
        print(f"{repo.algorithm.hash_name}:{image_id.hex()}")
    return 0


# -- oci copy ------------------------------------------------------------------------------


def cmd_copy(args: argparse.Namespace) -> int:
    from composefs.errors import RepositoryError
    from composefs.oci.copy import copy_image
    from composefs.oci.reference import parse_repo_reference

    parse_repo_reference(args.image)  # a bad reference is refused before anything is opened
    try:
        src = open_repo(args, args.source)
    except ComposefsError as e:
        raise RepositoryError(f"opening source repository {args.source}") from e
    with src:
        try:
            dest = open_repo(args)
        except ComposefsError as e:
            raise RepositoryError(f"opening destination repository {_dest_path(args)}") from e
        with dest:
            result = copy_image(dest, src, args.image, name=args.name, zerocopy=args.zerocopy)
    tagged = f", tagged as {args.name}" if args.name is not None else ""
    print(f"Copied image {args.image} from {args.source} to destination repo{tagged}")
    print(f"Manifest digest: {result.manifest_digest}")
    print(f"Manifest verity: {result.manifest_verity.hex()}")
    print(f"Config digest:   {result.config_digest}")
    print(f"Config verity:   {result.config_verity.hex()}")
    return 0


def _dest_path(args: argparse.Namespace) -> str:
    from composefs.cli._common import repo_path

    return repo_path(args)


# -- oci linked-erofs-images ---------------------------------------------------------------


def cmd_linked_erofs_images(args: argparse.Namespace) -> int:
    from composefs.oci.image_links import linked_erofs_images

    with open_repo(args) as repo:
        wanted = _parse_hex(args.verity, repo.algorithm.digest_size)
        images = linked_erofs_images(repo, wanted)
    print(json_text(images, indent=2))
    return 0


def _parse_hex(text: str, size: int) -> bytes:
    """A digest in hex, with the hex crate's messages (as cfsctl reports them)."""
    if len(text) != 2 * size:
        raise ComposefsError("Invalid string length")
    for i, c in enumerate(text):
        if c not in "0123456789abcdefABCDEF":
            raise ComposefsError(f"Invalid character {c!r} at position {i}")
    return bytes.fromhex(text)
