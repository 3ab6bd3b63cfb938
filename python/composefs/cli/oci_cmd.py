"""``composefs oci ...``: OCI layers and images (cfsctl's ``oci`` subcommands)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from composefs import layer
from composefs.cli._common import add_command, open_repo
from composefs.errors import ComposefsError


def register(sub: Any) -> None:
    oci = add_command(sub, "oci", "commands for OCI images and layers", _usage)
    inner = oci.add_subparsers(dest="oci_command", metavar="COMMAND", required=True)

    p = add_command(
        inner, "import-layer", "import a tar layer (on stdin) as a splitstream", cmd_import_layer
    )
    p.add_argument("digest", metavar="DIGEST", help="the layer's diff_id, e.g. sha256:a1b2c3...")
    p.add_argument("name", nargs="?", metavar="NAME", help="an optional ref name for the layer")
    p.add_argument(
        "--media-type",
        default=layer.OCI_LAYER,
        help="the blob's media type (default: uncompressed tar); gzip and zstd are decompressed",
    )
    p.add_argument(
        "--blob-digest", metavar="DIGEST", help="also verify the (compressed) blob's digest"
    )

    p = add_command(inner, "layer", "inspect a stored layer (raw tar by default)", cmd_layer)
    p.add_argument("layer", metavar="LAYER", help="the layer's diff_id, e.g. sha256:a1b2c3...")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--dumpfile", action="store_true", help="composefs dumpfile lines")
    fmt.add_argument("--json", action="store_true", help="layer metadata as JSON")


def _usage(args: argparse.Namespace) -> int:
    raise AssertionError("unreachable: a subcommand is required")


def cmd_import_layer(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        try:
            result = layer.import_layer(
                repo,
                sys.stdin.buffer,
                args.digest,
                media_type=args.media_type,
                digest=args.blob_digest,
                name=args.name,
            )
        except ComposefsError as e:
            raise ComposefsError(f"Importing layer {args.digest}") from e
        print(f"{repo.algorithm.hash_name}:{result.verity.hex()}")
    return 0


def cmd_layer(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        if args.json:
            print(layer.layer_info_json(repo, args.layer))
        elif args.dumpfile:
            out = sys.stdout
            for entry in layer.layer_entries(repo, args.layer):
                out.write(entry.dumpfile_line() + "\n")
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
