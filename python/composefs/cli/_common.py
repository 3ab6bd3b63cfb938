"""Options and helpers shared by the command modules."""

from __future__ import annotations

import argparse
import os
import re

from composefs._text import printable
from composefs.constants import EROFS_VERSIONS
from composefs.errors import ComposefsError, RepositoryError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from composefs.fsverity import Algorithm
    from composefs.repository import Repository

SYSTEM_PATH = "/sysroot/composefs"

__all__ = ["SYSTEM_PATH", "json_text", "open_repo", "printable", "repo_path"]

# what json.dumps(ensure_ascii=False) leaves raw that a terminal could act on: DEL, C1, the
# Unicode line separators, bidi overrides, lone surrogates (C0 controls are escaped already)
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def json_text(doc: Any, **kwargs: Any) -> str:
    """``json.dumps(doc, ensure_ascii=False, **kwargs)`` with the characters a terminal could
    act on written as ``\\uXXXX`` escapes: still exact JSON, the same value."""
    import json

    text = json.dumps(doc, ensure_ascii=False, **kwargs)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def add_global_options(parser: argparse.ArgumentParser, *, trailing: bool = False) -> None:
    """The options every command takes. With ``trailing``, for a command's own parser (the
    options may also follow the command, ``composefs oci pull X --repo R -v``): they are left
    out of its help, set nothing unless given, and any option the command itself defines
    (``init --insecure``, ``init --erofs-version``) keeps its meaning there."""
    extra: dict[str, Any] = {}
    if trailing:
        extra = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}

    def add(*names: str, **kwargs: Any) -> None:
        kwargs.update(extra)
        try:
            parser.add_argument(*names, **kwargs)
        except argparse.ArgumentError:
            if not trailing:
                raise  # the command defines this option itself: its meaning wins there

    if trailing:
        add("--repo", metavar="PATH")
        add("--user", action="store_true")
        add("--system", action="store_true")
    else:
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--repo", metavar="PATH", help="the repository to use")
        where.add_argument("--user", action="store_true", help="use $HOME/.var/lib/composefs")
        where.add_argument("--system", action="store_true", help=f"use {SYSTEM_PATH}")
    add(
        "--hash",
        choices=["sha256", "sha512"],
        help="the repository's hash (an error if meta.json says otherwise)",
    )
    add(
        "--insecure",
        dest="insecure_global",
        action="store_true",
        help="do not require fs-verity, even if the repository does",
    )
    add(
        "--no-repo",
        action="store_true",
        help="do not open a repository (compute-id and create-dumpfile only)",
    )
    add(
        "--erofs-version",
        type=int,
        choices=EROFS_VERSIONS,
        help="the EROFS format of images written or computed (default: the repository's, V1)",
    )
    add(
        "--require-verity",
        action="store_true",
        help="fail if the repository was not initialized with fs-verity",
    )
    # -v given both before and after the command adds up (two counters, summed by the run)
    add(
        "-v",
        "--verbose",
        dest="verbose_after" if trailing else "verbose",
        action="count",
        **({} if trailing else {"default": 0}),
        help="say what is done (each step, layer and HTTP request); -vv: debug details",
    )
    add(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress output (warnings and errors only)",
    )
    add(
        "--no-upgrade",
        action="store_true",
        help="fail on a repository without meta.json instead of upgrading a pre-0.7 one "
        "(inferring its metadata from its objects)",
    )


def global_option_conflicts(args: argparse.Namespace) -> str | None:
    """What is wrong with the global options once both places (before and after the command)
    are merged, as argparse would word it; ``None`` when nothing is."""
    where = [name for name in ("repo", "user", "system") if getattr(args, name, None)]
    if len(where) > 1:
        return f"argument --{where[1]}: not allowed with argument --{where[0]}"
    if args.quiet and args.verbose:
        return "argument -q/--quiet: not allowed with argument -v/--verbose"
    return None


def repo_path(args: argparse.Namespace) -> str:
    """The repository path from the global options, with cfsctl's defaults."""
    if args.repo:
        return str(args.repo)
    if args.system:
        return SYSTEM_PATH
    if args.user or os.getuid() != 0:
        home = os.environ.get("HOME")
        if not home:
            raise ComposefsError("$HOME must be set when in user mode")
        return os.path.join(home, ".var/lib/composefs")
    return SYSTEM_PATH


def open_repo(args: argparse.Namespace, path: str | None = None) -> Repository:
    """Opens the repository named by the global options, or the one at ``path`` with their
    settings (cfsctl's checks and messages, plus the command that creates a missing
    repository)."""
    from composefs.errors import OldFormatRepository, RepositoryMetadataMissing
    from composefs.fsverity import Algorithm
    from composefs.repository import Repository

    if path is None:
        path = repo_path(args)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise RepositoryError(
            f"opening repository {path} (it does not exist; create it with "
            f"`composefs --repo {path} init`)"
        ) from e
    except OSError as e:
        raise RepositoryError(f"opening repository {path}") from e
    try:
        upgrade = not getattr(args, "no_upgrade", False)
        if args.hash is not None and upgrade:
            _check_legacy_hash(fd, path, Algorithm(args.hash))
    finally:
        os.close(fd)
    try:
        if upgrade:
            repo, _ = Repository.open_upgrade(
                path, insecure=args.insecure_global, require_verity=args.require_verity
            )
        else:
            repo = Repository.open(
                path, insecure=args.insecure_global, require_verity=args.require_verity
            )
    except (RepositoryMetadataMissing, OldFormatRepository):
        raise RepositoryError(
            f"meta.json not found in {path}; this repository must be initialized with "
            f"`composefs init` (`composefs --repo {path} init`)"
        ) from None
    if args.hash is not None and Algorithm(args.hash) is not repo.algorithm:
        repo.close()
        raise RepositoryError(
            f"repository is configured for {repo.algorithm} (from meta.json) but "
            f"--hash {args.hash} was specified"
        )
    if getattr(args, "erofs_version", None) is not None:
        repo.override_erofs_version(args.erofs_version)
    return repo


def _check_legacy_hash(fd: int, path: str, wanted: Algorithm) -> None:
    """cfsctl checks ``--hash`` against a pre-0.7 repository's inferred algorithm before
    it writes ``meta.json``."""
    from composefs.repo_metadata import METADATA_FILENAME, infer_metadata

    if os.path.lexists(f"/proc/self/fd/{fd}/{METADATA_FILENAME}"):
        return
    try:
        os.stat("objects", dir_fd=fd)
    except OSError:
        return
    try:
        inferred, _ = infer_metadata(fd)
    except RepositoryError as e:
        raise RepositoryError(
            f"no meta.json in {path}; tried to infer algorithm from objects"
        ) from e
    if inferred is not wanted:
        raise RepositoryError(
            f"repository is configured for {inferred} (from meta.json) but "
            f"--hash {wanted.hash_name} was specified"
        )


def add_command(
    sub: Any, name: str, help: str, func: Any, aliases: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help, aliases=list(aliases)
    )
    parser.set_defaults(func=func)
    return parser


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """cfsctl's mount options: an optional writable upper layer."""
    parser.add_argument("--upperdir", metavar="DIR", help="a writable upper layer for overlayfs")
    parser.add_argument("--workdir", metavar="DIR", help="overlayfs work dir (with --upperdir)")
    parser.add_argument(
        "--read-write", action="store_true", help="mount read-write (needs --upperdir)"
    )
