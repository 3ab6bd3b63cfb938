"""cfsctl 0.9.4's inspection commands: ``dump-files``, ``compute-karg`` and
``oci linked-erofs-images`` (names, arguments and output as cfsctl's)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from composefs.cli._common import add_command, json_text, open_repo
from composefs.errors import ComposefsError


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "dump-files",
        "print files of a composefs image of the repository as dumpfile lines (a directory: "
        "everything below it)",
        cmd_dump_files,
    )
    p.add_argument("image_name", metavar="IMAGE_NAME", help="an image id (hex) or refs/<name>")
    p.add_argument("files", nargs="*", type=_path, metavar="FILES", help="paths in the image")
    p.add_argument(
        "--backing-path-only",
        action="store_true",
        help="print `PATH inline` or `PATH xx/<rest>` (the object backing the file) instead",
    )

    p = add_command(
        sub,
        "import-image",
        "store a composefs image read on stdin as images/<id> and images/refs/REFERENCE",
        cmd_import_image,
    )
    p.add_argument("reference", metavar="REFERENCE", help="the ref name (images/refs/<name>)")

    p = add_command(
        sub,
        "compute-karg",
        "compute the composefs kernel argument of a root filesystem (boot transformation "
        "applied; nothing is stored)",
        cmd_compute_karg,
    )
    p.add_argument("path", type=_path, metavar="PATH", help="the root filesystem")
    p.add_argument(
        "--no-propagate-usr-to-root",
        action="store_true",
        help="keep the root directory's own metadata",
    )


def _path(value: str) -> str:
    """A path argument: like cfsctl (clap's PathBuf), an empty one is a usage error."""
    if not value:
        raise argparse.ArgumentTypeError("a value is required but none was supplied")
    return value


def register_oci(inner: Any) -> None:
    p = add_command(
        inner,
        "copy",
        "copy an OCI image (and its layers) from another composefs repository into this one",
        cmd_copy,
    )
    p.add_argument("image", metavar="IMAGE", help="the image to copy (a tag or @<digest>)")
    p.add_argument(
        "--from", dest="source", required=True, metavar="FROM", help="the source repository"
    )
    p.add_argument("--name", help="the tag to give the image in this repository")
    p.add_argument(
        "--zerocopy",
        action="store_true",
        help="reflink (else hard-link) objects instead of copying their data (same hash "
        "algorithm; same filesystem to have an effect)",
    )

    p = add_command(
        inner,
        "linked-erofs-images",
        "list every EROFS image linked to the OCI image that one EROFS image belongs to",
        cmd_linked_erofs_images,
    )
    p.add_argument("verity", metavar="VERITY", help="hex fs-verity digest of an EROFS image")


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


# -- compute-karg --------------------------------------------------------------------------


def cmd_compute_karg(args: argparse.Namespace) -> int:
    from composefs import _backend, erofs
    from composefs._pure import dumpfile as pure_dumpfile
    from composefs.boot import transform_for_boot_from_dir
    from composefs.cli.image_cmd import _scan_errors
    from composefs.constants import ALLOWLIST_ONLY
    from composefs.fsverity import Algorithm

    algorithm = _karg_algorithm(args)
    version = args.erofs_version if args.erofs_version is not None else 1
    path = os.fsdecode(args.path)
    with _scan_errors(path):
        dump = _backend.backend().fs.scan_directory(
            path,
            algorithm=algorithm,
            transform=not args.no_propagate_usr_to_root,
            xattrs=ALLOWLIST_ONLY,
        )
    fs = pure_dumpfile.parse(dump)
    transform_for_boot_from_dir(fs, path)
    image = erofs.mkfs(pure_dumpfile.write(fs), version)
    digest = erofs.image_id(image, algorithm).hex()
    mark = "?" if args.insecure_global else ""
    if version == 2:
        print(f"composefs={mark}{digest}")
    else:
        alg = Algorithm(algorithm)
        print(f"composefs.digest={mark}v1-{alg.hash_name}-12:{digest}")
    return 0


def _karg_algorithm(args: argparse.Namespace) -> str:
    """cfsctl: the repository's hash if one opens (and ``--no-repo`` is not given), else
    ``--hash`` (default sha512); the EROFS format is only ever the global option's."""
    if not args.no_repo:
        try:
            with open_repo(args) as repo:
                return repo.algorithm.hash_name
        except (ComposefsError, OSError):
            pass
    return str(args.hash or "sha512")


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
