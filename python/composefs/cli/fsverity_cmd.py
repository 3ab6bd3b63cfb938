"""``composefs fsverity digest``: like fsverity-utils' ``fsverity digest``."""

from __future__ import annotations

import argparse

from composefs.cli._common import add_command


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    """The ``fsverity`` command's subcommands and their arguments."""
    assert name == "fsverity", name
    parser.set_defaults(func=_usage)
    inner = parser.add_subparsers(dest="fsverity_command", metavar="COMMAND", required=True)
    digest = add_command(inner, "digest", "print the fs-verity digest of files", cmd_digest)
    digest.add_argument("files", nargs="+", metavar="FILE")
    digest.add_argument(
        "--hash-alg", choices=["sha256", "sha512"], default="sha256", help="default: sha256"
    )
    digest.add_argument(
        "--block-size", type=int, default=4096, help="only 4096 (what composefs uses)"
    )
    digest.add_argument("--compact", action="store_true", help="print only the hex digest")
    digest.add_argument(
        "--threads", type=int, default=0, help="hashing threads (default: one per core)"
    )


def _usage(args: argparse.Namespace) -> int:
    raise AssertionError("unreachable: a subcommand is required")


def cmd_digest(args: argparse.Namespace) -> int:
    if args.block_size != 4096:
        raise ValueError(f"unsupported block size {args.block_size} (only 4096 is supported)")
    from composefs import fsverity

    for name in args.files:
        value = fsverity.digest_file(name, args.hash_alg, threads=args.threads).hex()
        print(value if args.compact else f"{args.hash_alg}:{value} {name}")
    return 0
