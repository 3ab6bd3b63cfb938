"""``composefs oci ...``: OCI layers and images (cfsctl's ``oci`` subcommands)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from composefs.cli._common import add_command, add_mount_options, json_text, open_repo, printable
from composefs.constants import ALLOWLIST_ONLY, XATTR_MODES
from composefs.errors import ComposefsError


def configure(name: str, oci: argparse.ArgumentParser) -> None:
    """The ``oci`` command's subcommands and their arguments."""
    assert name == "oci", name
    oci.set_defaults(func=_usage)
    inner = oci.add_subparsers(dest="oci_command", metavar="COMMAND", required=True)

    p = add_command(
        inner, "import-layer", "import a tar layer (on stdin) as a splitstream", cmd_import_layer
    )
    p.add_argument("digest", metavar="DIGEST", help="the layer's diff_id, e.g. sha256:a1b2c3...")
    p.add_argument("name", nargs="?", metavar="NAME", help="an optional ref name for the layer")
    p.add_argument(
        "--media-type",
        help="the blob's media type (default: uncompressed tar, "
        "application/vnd.oci.image.layer.v1.tar); gzip and zstd are decompressed",
    )
    p.add_argument(
        "--blob-digest", metavar="DIGEST", help="also verify the (compressed) blob's digest"
    )

    p = add_command(inner, "layer", "inspect a stored layer (raw tar by default)", cmd_layer)
    p.add_argument("layer", metavar="LAYER", help="the layer's diff_id, e.g. sha256:a1b2c3...")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--dumpfile", action="store_true", help="composefs dumpfile lines")
    fmt.add_argument("--json", action="store_true", help="layer metadata as JSON")

    p = add_command(inner, "pull", "pull an image into the repository", cmd_pull)
    p.add_argument(
        "image",
        metavar="IMAGE",
        help=(
            "oci:PATH[:TAG], oci:PATH@sha256:..., oci-archive:PATH[:TAG], "
            "docker-archive:PATH[:NAME:TAG], docker://..., ..."
        ),
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the tag to give it (default: IMAGE)")
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="pick this platform from an image index"
    )
    p.add_argument(
        "--creds",
        metavar="USER[:PASSWORD]",
        help="registry credentials (default: the auth files, as containers-auth.json(5) says)",
    )
    p.add_argument("--authfile", metavar="PATH", help="an auth file (auth.json) to search first")
    p.add_argument(
        "--tls-verify",
        metavar="BOOL",
        type=_bool_arg,
        nargs="?",
        const=True,
        default=None,
        help="verify the registry's certificate (default: true); false also allows plain HTTP",
    )
    p.add_argument(
        "--via-skopeo",
        action="store_true",
        help="read docker:// through skopeo's image proxy instead of natively",
    )
    p.add_argument(
        "--referrers",
        action="store_true",
        help="also fetch the artifacts referring to the image (signatures, SBOMs)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout (progress stays on stderr)",
    )

    p = add_command(inner, "images", "list the tagged images", cmd_images)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--erofs",
        action="store_true",
        help="also show each image's composefs EROFS image id (not in cfsctl's output)",
    )

    p = add_command(
        inner, "dump", "print an image's merged root filesystem as a composefs dumpfile", cmd_dump
    )
    _add_config_options(p)

    p = add_command(
        inner, "compute-id", "compute the composefs image id of a stored image", cmd_compute_id
    )
    _add_config_options(p)

    p = add_command(
        inner, "mount", "mount an image's composefs EROFS image at MOUNTPOINT", cmd_mount
    )
    p.add_argument("image", metavar="IMAGE", help="a tag or a manifest digest (sha256:...)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_mount_options(p)

    p = add_command(inner, "inspect", "show an image's manifest and config", cmd_inspect)
    p.add_argument("image", metavar="IMAGE", help="a tag, or @sha256:... (a manifest or index)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--manifest", action="store_true", help="the raw manifest JSON")
    what.add_argument("--config", action="store_true", help="the raw config JSON")
    what.add_argument(
        "--index", action="store_true", help="the raw image index the image was pulled through"
    )
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="re-resolve the image's stored index for this platform",
    )

    p = add_command(
        inner,
        "referrers",
        "list the artifacts (signatures, SBOMs) referring to an image",
        cmd_referrers,
    )
    p.add_argument("image", metavar="IMAGE", help="a tag, or @sha256:... (a manifest digest)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add_command(inner, "tag", "tag a manifest (or stored index) by digest", cmd_tag)
    p.add_argument("digest", metavar="DIGEST", type=_digest_arg, help="sha256:...")
    p.add_argument("name", metavar="NAME")

    p = add_command(inner, "untag", "remove a tag", cmd_untag)
    p.add_argument("name", metavar="NAME")

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

    p = add_command(inner, "fsck", "check the repository and its OCI images", cmd_fsck)
    p.add_argument("image", nargs="?", metavar="IMAGE", help="check only this tag")
    p.add_argument("--json", action="store_true", help="machine-readable output (exit 0)")


def _usage(args: argparse.Namespace) -> int:
    raise AssertionError("unreachable: a subcommand is required")


def cmd_import_layer(args: argparse.Namespace) -> int:
    from composefs.oci import layer  # not at start-up: the OCI package is large

    with open_repo(args) as repo:
        try:
            result = layer.import_layer(
                repo,
                sys.stdin.buffer,
                args.digest,
                media_type=args.media_type or layer.OCI_LAYER,
                digest=args.blob_digest,
                name=args.name,
            )
        except ComposefsError as e:
            raise ComposefsError(f"Importing layer {args.digest}") from e
        print(f"{repo.algorithm.hash_name}:{result.verity.hex()}")
    return 0


def cmd_layer(args: argparse.Namespace) -> int:
    from composefs.oci import layer  # not at start-up: the OCI package is large

    with open_repo(args) as repo:
        if args.json:
            print(layer.layer_info_json(repo, args.layer))
        elif args.dumpfile:
            out = sys.stdout
            for entry in layer.layer_entries(repo, args.layer):
                out.write(layer.dumpfile_line(entry) + "\n")
        else:
            if sys.stdout.isatty():
                raise ComposefsError(
                    "Refusing to write tar data to terminal. Redirect to a file, pipe to tar, "
                    "or use --json for metadata."
                )
            out_b = sys.stdout.buffer
            layer.layer_tar(repo, args.layer, out_b)
            out_b.flush()
    return 0


# -- images ----------------------------------------------------------------------------------


def _digest_arg(text: str) -> str:
    from composefs.oci.reference import ImageReferenceError, parse_digest

    try:
        return parse_digest(text)
    except ImageReferenceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _bool_arg(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def cmd_pull(args: argparse.Namespace) -> int:
    from composefs import oci
    from composefs.cli._output import pull_progress

    credentials = None
    if args.creds is not None:
        from composefs.oci.auth import parse_creds

        credentials = parse_creds(args.creds)
    name = args.name if args.name is not None else args.image
    with open_repo(args) as repo, pull_progress(sys.stderr, quiet=args.quiet) as progress:
        result = oci.pull(
            repo,
            args.image,
            name,
            platform=args.platform,
            progress=progress,
            auth=credentials,
            authfile=args.authfile,
            tls_verify=args.tls_verify,
            via_skopeo=args.via_skopeo,
            referrers=args.referrers,
        )
    if args.json:
        print(json_text(result.to_dict(), indent=2))
        return 0
    print(f"manifest {result.manifest_digest}")
    print(f"config   {result.config_digest}")
    print(f"verity   {result.manifest_verity.hex()}")
    print(f"tagged   {printable(name)}")
    print(f"objects  {result.stats}")
    if args.referrers:
        print(f"referrers {len(result.referrers)}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    from composefs.cli.repo_cmd import render_table
    from composefs.oci import image

    def warn(message: str) -> None:
        print(f"warning: {printable(message)}", file=sys.stderr)

    with open_repo(args) as repo:
        images = image.list_images(repo, warn=warn)
        erofs_ids: list[str | None] = []
        if args.erofs:
            for i in images:
                try:
                    found = image.OciImage.open(repo, i.manifest_digest).erofs_image(
                        repo.erofs_version
                    )
                except (ComposefsError, OSError):
                    found = None
                erofs_ids.append(None if found is None else found.hex())
    if args.json:
        docs = [i.to_dict() for i in images]
        for doc, erofs_id in zip(docs, erofs_ids, strict=False):
            doc["composefs_erofs"] = erofs_id
        print(json_text({"images": docs}, indent=2))
    elif not images:
        print("No images found")
    else:
        header = ["NAME", "DIGEST", "ARCH", "LAYERS", "REFS"]
        rows = [
            [
                i.name,
                i.manifest_digest.removeprefix("sha256:")[:12],
                i.architecture or "artifact",
                str(i.layer_count),
                str(i.referrer_count),
            ]
            for i in images
        ]
        if args.erofs:
            header.append("EROFS")
            for row, erofs_id in zip(rows, erofs_ids, strict=True):
                row.append(erofs_id[:12] if erofs_id else "-")
        print(render_table(header, rows))
    return 0


def cmd_referrers(args: argparse.Namespace) -> int:
    from composefs.cli.repo_cmd import render_table
    from composefs.oci import image
    from composefs.oci.reference import parse_repo_reference

    ref = parse_repo_reference(args.image)
    with open_repo(args) as repo:
        subject = image.OciImage.resolve(repo, ref)
        found = []
        for digest, verity in image.list_referrers(repo, subject.manifest_digest):
            artifact = image.OciImage.open(repo, digest, verity)
            found.append(artifact.referrer_info())
    if args.json:
        print(json_text({"subject": subject.manifest_digest, "referrers": found}, indent=2))
    elif not found:
        print(f"No referrers of {subject.manifest_digest}")
    else:
        rows = [[r["digest"], r["artifact_type"] or "-", str(r["size"])] for r in found]
        print(render_table(["DIGEST", "ARTIFACT TYPE", "SIZE"], rows))
    return 0


# -- composefs images of OCI images ----------------------------------------------------------


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "image",
        metavar="IMAGE",
        help="a tag, or @sha256:... (a config digest, as in cfsctl; a manifest digest works too)",
    )
    p.add_argument(
        "--xattrs",
        choices=XATTR_MODES,
        default=ALLOWLIST_ONLY,
        help="which extended attributes to keep (default: only security.capability)",
    )


def cmd_dump(args: argparse.Namespace) -> int:
    from composefs.oci import filesystem

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation: both)
        fd = None
    with open_repo(args) as repo:
        if fd is None:  # a stdout without a descriptor (a caller's stream object)
            dump = filesystem.create_dumpfile(repo, args.image, xattrs=args.xattrs)
            sys.stdout.buffer.write(dump)
            sys.stdout.flush()
            return 0
        # streamed to stdout's descriptor (the text is never held whole): what Python has
        # buffered goes out first
        sys.stdout.flush()
        filesystem.write_dumpfile(repo, args.image, fd, xattrs=args.xattrs)
    return 0


def cmd_compute_id(args: argparse.Namespace) -> int:
    from composefs.oci import filesystem

    with open_repo(args) as repo:
        image_id = filesystem.compute_id(repo, args.image, xattrs=args.xattrs)
    print(image_id.hex())
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from composefs import mount
    from composefs.oci import image

    with open_repo(args) as repo:
        if args.image.startswith("sha256:"):
            img = image.OciImage.open(repo, args.image)
        else:
            img = image.OciImage.open_ref(repo, args.image)
        erofs_id = img.erofs_image(repo.erofs_version)
        if erofs_id is None:
            raise ComposefsError("No composefs EROFS image linked — try re-pulling the image")
        mount.mount_image(
            repo,
            erofs_id.hex(),
            args.mountpoint,
            upperdir=args.upperdir,
            workdir=args.workdir,
            read_write=args.read_write,
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from composefs.oci import image
    from composefs.oci.platform import parse_platform
    from composefs.oci.reference import parse_repo_reference

    ref = parse_repo_reference(args.image)
    platform = parse_platform(args.platform) if args.platform else None
    with open_repo(args) as repo:
        index: tuple[str, bytes] | None = None
        if ref.digest is not None:
            if image.find_stream_digest(repo, ref.digest) == "index":
                index = (ref.digest, image.open_index(repo, ref.digest).verity)
        else:
            assert ref.name is not None
            index = image.resolve_index_ref(repo, ref.name)
        if args.index:
            if index is None:
                raise ComposefsError(f"{ref} was not pulled through an image index")
            _write_raw(image.open_index(repo, index[0], index[1]).raw)
            return 0
        if index is not None and (ref.digest is not None or platform is not None):
            digest, verity = image.resolve_index(repo, index[0], platform)
            img = image.OciImage.open(repo, digest, verity)
        else:
            img = image.OciImage.resolve(repo, ref)
            if platform is not None and not _platform_matches(img, platform):
                raise ComposefsError(f"{ref} is {img.os}/{img.architecture}, not {platform}")
        if args.manifest:
            _write_raw(img.manifest_raw)
        elif args.config:
            _write_raw(img.config_raw)
        else:
            reply = image.inspect_reply(repo, img)
            print(json_text(reply, indent=2))
    return 0


def _platform_matches(img: Any, platform: Any) -> bool:
    from composefs.oci.platform import Platform, match_rank

    if img.config is None:
        return False
    return match_rank(Platform.from_json(img.config), platform) is not None


def _write_raw(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.write(b"\n")
    out.flush()


def cmd_tag(args: argparse.Namespace) -> int:
    from composefs.oci import image

    with open_repo(args) as repo:
        image.tag_image(repo, args.digest, args.name)
    print(f"Tagged {args.digest} as {printable(args.name)}")
    return 0


def cmd_untag(args: argparse.Namespace) -> int:
    from composefs.oci import image

    with open_repo(args) as repo:
        image.untag_image(repo, args.name)
    print(f"Removed tag {printable(args.name)}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from composefs.oci import image

    with open_repo(args) as repo:
        result = image.oci_fsck(repo, args.image)
    if args.json:
        print(json_text(result.to_dict(), indent=2))
        return 0
    sys.stdout.write(str(result))
    if not result.ok:
        raise ComposefsError("OCI integrity check failed")
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    from composefs.cli.surface_cmd import cmd_copy as copy

    return copy(args)


def cmd_linked_erofs_images(args: argparse.Namespace) -> int:
    from composefs.cli.surface_cmd import cmd_linked_erofs_images as linked

    return linked(args)
