"""TLS settings of a registry: the system trust store plus ``certs.d``, as containers/image
reads them (``containers-certs.d(5)``).

For a registry ``HOST[:PORT]`` the first of these directories that exists is used (only one):

* ``~/.config/containers/certs.d/HOST[:PORT]/`` (root's too: skopeo 1.9.3 reads it as root),
* ``/etc/containers/certs.d/HOST[:PORT]/``,
* ``/etc/docker/certs.d/HOST[:PORT]/``.

``COMPOSEFS_CERTS_DIRS`` (directories separated by ``:``) replaces that list of roots (tests
use it; skopeo's ``--cert-dir`` names one host directory directly, ``cert_dir`` here). In the
directory, every ``*.crt`` file is a CA certificate (added to the system's), and a ``*.cert``
file with the ``*.key`` of the same stem is a client certificate (the first pair in name order
is presented; a ``.cert`` without its ``.key``, or a ``.key`` without its ``.cert``, is an
error, as in containers/image).

``verify=False`` (``--tls-verify=false``) turns certificate and host name checks off; the
registry client then also accepts plain ``http://`` (tried after ``https://``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from composefs.errors import SourceError

__all__ = ["CERTS_DIRS_ENV", "TlsConfigError", "certs_dir_for", "certs_roots", "ssl_context"]

CERTS_DIRS_ENV: Final = "COMPOSEFS_CERTS_DIRS"
_SYSTEM_ROOTS: Final = ("/etc/containers/certs.d", "/etc/docker/certs.d")


class TlsConfigError(SourceError):
    """A ``certs.d`` directory cannot be used (a client certificate without its key, an
    unreadable or invalid certificate)."""


def certs_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """The ``certs.d`` roots searched, in order."""
    env = os.environ if env is None else env
    override = env.get(CERTS_DIRS_ENV)
    if override is not None:
        return [Path(p) for p in override.split(os.pathsep) if p]
    home = env.get("HOME") or os.path.expanduser("~")
    return [Path(home) / ".config/containers/certs.d", *(Path(p) for p in _SYSTEM_ROOTS)]


def certs_dir_for(host_port: str, roots: Sequence[Path]) -> Path | None:
    """The first ``ROOT/HOST[:PORT]`` directory that exists (unreadable ones are skipped)."""
    if "/" in host_port or host_port in ("", ".", ".."):
        return None
    for root in roots:
        candidate = root / host_port
        try:
            if candidate.is_dir():
                return candidate
        except PermissionError:
            continue
    return None


def ssl_context(
    host_port: str,
    *,
    verify: bool = True,
    roots: Sequence[Path] | None = None,
    cert_dir: Path | None = None,
) -> ssl.SSLContext:
    """The client context for the registry ``host_port``: system CAs, then ``certs.d``
    (``cert_dir`` if given, else the first of ``roots``/:func:`certs_roots` that has the host's
    directory)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    directory = cert_dir
    if directory is None:
        directory = certs_dir_for(host_port, certs_roots() if roots is None else roots)
    if directory is not None:
        _load_directory(context, directory)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_directory(context: ssl.SSLContext, directory: Path) -> None:
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise TlsConfigError(f"reading {directory}") from e
    pairs: list[tuple[Path, Path]] = []
    for name in names:
        file = directory / name
        stem, _, ext = name.rpartition(".")
        if ext == "crt":
            try:
                context.load_verify_locations(cafile=str(file))
            except (OSError, ssl.SSLError) as e:
                raise TlsConfigError(f"loading the CA certificate {file}") from e
        elif ext == "cert":
            key = f"{stem}.key"
            if key not in names:
                raise TlsConfigError(
                    f"missing key {key} for client certificate {file} "
                    "(CA certificates should use the extension .crt)"
                )
            pairs.append((file, directory / key))
        elif ext == "key":
            cert = f"{stem}.cert"
            if cert not in names:
                raise TlsConfigError(f"missing client certificate {cert} for key {file}")
    if pairs:
        cert_file, key_file = pairs[0]
        try:
            context.load_cert_chain(str(cert_file), str(key_file))
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"loading the client certificate {cert_file}") from e
