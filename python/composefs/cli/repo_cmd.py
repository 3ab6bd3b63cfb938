"""Repository commands: ``init``, ``fsck``, ``gc``, ``cat``, ``images``, ``image-objects``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from composefs.cli._common import add_command, open_repo, printable, repo_path
from composefs.constants import EROFS_VERSIONS
from composefs.errors import ComposefsError
from composefs.fsverity import Algorithm
from composefs.repository import Repository, to_id


def register(sub: Any) -> None:
    p = add_command(sub, "init", "initialize a repository", cmd_init)
    p.add_argument("path", nargs="?", metavar="PATH", help="default: the --repo path")
    p.add_argument(
        "--algorithm",
        default="fsverity-sha512-12",
        metavar="ALG",
        help="fsverity-sha256-12 or fsverity-sha512-12 (default)",
    )
    p.add_argument("--insecure", action="store_true", help="do not enable fs-verity on meta.json")
    p.add_argument(
        "--erofs-version",
        dest="init_erofs_version",
        type=int,
        choices=EROFS_VERSIONS,
        default=None,
        help="default EROFS image format (default: the global --erofs-version, else 1)",
    )

    p = add_command(sub, "fsck", "check the repository's integrity", cmd_fsck)
    p.add_argument("--json", action="store_true", help="machine-readable output (always exit 0)")
    p.add_argument("--metadata-only", action="store_true", help="skip checking object digests")

    p = add_command(sub, "gc", "remove unreferenced objects and dangling links", cmd_gc)
    p.add_argument(
        "-r", "--root", action="append", default=[], metavar="NAME", help="an extra GC root"
    )
    p.add_argument("-n", "--dry-run", action="store_true", help="only report")

    p = add_command(sub, "cat", "write a stream's reassembled content to stdout", cmd_cat)
    p.add_argument("name", metavar="NAME", help="a content identifier or refs/<name>")

    p = add_command(sub, "images", "list image refs", cmd_images, aliases=("list-images",))
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-trunc", action="store_true", help="show full digests")

    p = add_command(sub, "image-objects", "list the objects an image references", cmd_image_objects)
    p.add_argument("name", metavar="NAME")


def cmd_init(args: argparse.Namespace) -> int:
    path = args.path if args.path is not None else repo_path(args)
    algorithm = Algorithm.parse(args.algorithm)
    insecure = args.insecure or args.insecure_global
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ComposefsError(f"creating parent directories for {path}") from e
    erofs_version = args.init_erofs_version
    if erofs_version is None:
        erofs_version = args.erofs_version if args.erofs_version is not None else 1
    repo, created = Repository.init(path, algorithm, insecure=insecure, erofs_version=erofs_version)
    repo.close()
    if created:
        print(f"Initialized composefs repository at {printable(path)}")
        print(f"  algorithm: {algorithm}")
        print("  verity:    not required (insecure)" if insecure else "  verity:    required")
    else:
        print(f"Repository already initialized at {printable(path)}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        result = repo.fsck(check_objects=not args.metadata_only)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    sys.stdout.write(str(result))
    if not result.ok:
        raise ComposefsError("repository integrity check failed")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from composefs.oci.image import gc

    with open_repo(args) as repo:
        result = gc(repo, args.root, dry_run=args.dry_run)
    for warning in result.warnings:
        print(f"warning: {printable(warning)}", file=sys.stderr)
    if args.dry_run:
        print("Dry run (no files deleted):")
    print(f"Objects: {result.objects_removed} removed ({result.objects_bytes} bytes)")
    if result.images_pruned or result.streams_pruned:
        print(f"Pruned symlinks: {result.images_pruned} images, {result.streams_pruned} streams")
    if result.referrers_pruned:
        print(f"Pruned referrers of images no longer present: {result.referrers_pruned}")
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        out = sys.stdout.buffer
        repo.cat(args.name, out)
        out.flush()
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        refs = repo.list_image_refs()
    images = [{"name": name, "digest": os.path.basename(target)} for name, target in refs]
    if args.json:
        print(json.dumps({"images": images}, indent=2))
    elif not images:
        print("No images found")
    else:
        rows = [(i["name"], i["digest"] if args.no_trunc else i["digest"][:12]) for i in images]
        print(render_table(["NAME", "DIGEST"], rows))
    return 0


def cmd_image_objects(args: argparse.Namespace) -> int:
    with open_repo(args) as repo:
        for object_id in sorted(repo.image_objects(args.name)):
            print(to_id(object_id))
    return 0


def render_table(header: list[str], rows: Sequence[Sequence[str]]) -> str:
    """A table in comfy-table's UTF8_FULL style, as cfsctl prints them.

    Cells are untrusted (tags from a layout): control characters are escaped, one row stays
    one line."""
    header = [printable(c) for c in header]
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def row(cells: Sequence[str]) -> str:
        return "│" + "┆".join(f" {c:<{w}} " for c, w in zip(cells, widths, strict=True)) + "│"

    out = [line("┌", "─", "┬", "┐"), row(header), line("╞", "═", "╪", "╡")]
    for i, r in enumerate(rows):
        if i:
            out.append(line("├", "╌", "┼", "┤"))
        out.append(row(r))
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out)
