"""For the registry authentication tests: a test CA and server certificates, an htpasswd file,
a small Bearer token server, and the record of a registry that needs credentials.

The token server follows the distribution "token authentication" spec as Debian's
``docker-registry`` (distribution 2.8) checks it: ``GET /token?service=...&scope=...`` with
optional Basic credentials, ``POST /token`` (OAuth2 ``grant_type=password`` or
``refresh_token``), answering ``{"token", "access_token", "expires_in", "issued_at"}``. Tokens
are JWTs signed with ES256 by a key whose self-signed certificate is the registry's
``rootcertbundle``; the JWT header carries that certificate in ``x5c`` (the registry verifies
the chain against the bundle). Access is granted per user and repository (:attr:`TokenServer.acl`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import fnmatch
import ipaddress
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from composefs.oci.auth import Credentials
from support import run
from support.registry import Registry

# -- certificates ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeyPair:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_path: Path
    key_path: Path

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return KeyPair(key, cert, cert_path, key_path)


def make_ca(directory: Path, common_name: str = "composefs test CA") -> KeyPair:
    """A self-signed CA certificate (``DIR/ca.crt``, ``DIR/ca.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, "ca", key, cert)


def server_cert(
    ca: KeyPair, directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> KeyPair:
    """A TLS server certificate for ``hosts`` signed by ``ca`` (``DIR/server.crt``/``.key``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _write(directory, "server", key, cert)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes (the only kind docker-registry accepts)."""
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for user, password in users.items()
    ]
    path.write_text("".join(lines))
    return path


# -- the token server -----------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclasses.dataclass
class TokenRequest:
    """What the token server saw of one request (the tests assert on these)."""

    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    user: str | None  # from Basic credentials that matched; None: anonymous or wrong
    authorization: bool  # an Authorization header was sent
    status: int


class TokenServer:
    """A distribution token server on 127.0.0.1 (plain HTTP), in a thread.

    ``users``: name -> password. ``acl``: (user or ``None`` for anonymous, repository glob)
    -> the actions granted. ``expires_in``: the lifetime of the tokens it issues (seconds).
    Refresh tokens (identity tokens) are issued by ``POST`` with ``access_type=offline``, or
    made with :meth:`identity_token`.
    """

    def __init__(
        self,
        directory: Path,
        *,
        service: str,
        issuer: str,
        users: dict[str, str],
        acl: dict[tuple[str | None, str], tuple[str, ...]],
    ) -> None:
        self.service = service
        self.issuer = issuer
        self.users = users
        self.acl = acl
        self.expires_in = 300
        self.signer = make_ca(directory / "token-signer", "composefs test token signer")
        self.refresh_tokens: dict[str, str] = {}  # token -> user
        self.requests: list[TokenRequest] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def rootcertbundle(self) -> Path:
        return self.signer.cert_path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def identity_token(self, user: str) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.refresh_tokens[token] = user
        return token

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def seen(self) -> list[TokenRequest]:
        with self.lock:
            return list(self.requests)

    # -- tokens ------------------------------------------------------------------------------

    def granted(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            for item in scope.split(" "):
                kind, _, rest = item.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                allowed: set[str] = set()
                for (who, pattern), grant in self.acl.items():
                    if who in (user, None) and fnmatch.fnmatchcase(name, pattern):
                        allowed.update(grant)
                wanted = [a for a in actions.split(",") if a in allowed]
                if wanted:
                    access.append({"type": "repository", "name": name, "actions": wanted})
        return access

    def make_token(self, user: str | None, scopes: list[str]) -> str:
        now = int(time.time())
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self.signer.cert_der()).decode()],
        }
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": self.granted(user, scopes),
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        der = self.signer.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _b64url(signature)

    # -- HTTP --------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, doc: object) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _basic_user(self) -> tuple[bool, str | None]:
                value = self.headers.get("Authorization")
                if value is None:
                    return False, None
                scheme, _, encoded = value.partition(" ")
                if scheme.lower() != "basic":
                    return True, None
                try:
                    user, _, password = base64.b64decode(encoded).decode().partition(":")
                except ValueError:
                    return True, None
                return True, user if server.users.get(user) == password else None

            def _issue(self, record: TokenRequest, user: str | None, scopes: list[str]) -> None:
                token = server.make_token(user, scopes)
                doc: dict[str, Any] = {
                    "token": token,
                    "access_token": token,
                    "expires_in": server.expires_in,
                    "issued_at": datetime.datetime.now(datetime.UTC).isoformat(),
                }
                if user is not None and record.form.get("access_type") == ["offline"]:
                    doc["refresh_token"] = server.identity_token(user)
                record.status = 200
                self._reply(200, doc)

            def _deny(self, record: TokenRequest, status: int, message: str) -> None:
                record.status = status
                self._reply(status, {"errors": [{"code": "UNAUTHORIZED", "message": message}]})

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                sent, user = self._basic_user()
                record = TokenRequest("GET", url.path, query, {}, user, sent, 0)
                with server.lock:
                    server.requests.append(record)
                if url.path != "/token":
                    return self._deny(record, 404, "not found")
                if query.get("service") != [server.service]:
                    return self._deny(record, 400, "unknown service")
                if sent and user is None:
                    return self._deny(record, 401, "incorrect username or password")
                self._issue(record, user, query.get("scope", []))

            def do_POST(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                sent, _ = self._basic_user()
                record = TokenRequest("POST", url.path, {}, form, None, sent, 0)
                with server.lock:
                    server.requests.append(record)
                if url.path != "/token":
                    return self._deny(record, 404, "not found")
                grant = form.get("grant_type", [""])[0]
                if grant == "password":
                    user = form.get("username", [""])[0]
                    if server.users.get(user) != form.get("password", [None])[0]:
                        return self._deny(record, 401, "incorrect username or password")
                elif grant == "refresh_token":
                    with server.lock:
                        found = server.refresh_tokens.get(form.get("refresh_token", [""])[0])
                    if found is None:
                        return self._deny(record, 401, "invalid refresh token")
                    user = found
                else:
                    return self._deny(record, 400, "unsupported grant type")
                record.user = user
                self._issue(record, user, form.get("scope", [""])[0].split())

        return Handler


# -- a registry that needs credentials ------------------------------------------------------------


@dataclasses.dataclass
class AuthRegistry(Registry):
    """A running local registry that needs credentials (the ``basic_registry`` and
    ``token_registry`` fixtures of ``tests/integration/conftest.py``).

    ``kind`` is ``"basic"`` (htpasswd, served over TLS with a certificate of the test CA) or
    ``"token"`` (Bearer tokens from :attr:`token_server`; plain HTTP). ``username`` and
    ``password`` may push and pull everything; ``ca`` is the CA certificate (PEM) that signed
    the registry's TLS certificate (``None`` for plain HTTP); ``cert_dir`` a directory holding
    it as ``ca.crt`` (skopeo's ``--cert-dir``; :meth:`certs_d` lays it out as
    ``certs.d/HOST:PORT/``). ``url`` is the registry's base URL.
    """

    kind: str = "basic"
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    ca: Path | None = None
    cert_dir: Path | None = None
    token_server: TokenServer | None = None
    #: other users: name -> password (``token`` kind: only ``public/*`` for them)
    others: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def credentials(self) -> Credentials:
        return Credentials(self.username, self.password)

    def push(self, source: str, name: str, *args: str) -> str:
        tls = (f"--dest-cert-dir={self.cert_dir}",) if self.tls else ("--dest-tls-verify=false",)
        run(
            self.skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            *tls,
            f"--dest-creds={self.username}:{self.password}",
            *args,
            source,
            self.ref(name),
        )
        return self.ref(name)

    def certs_d(self, root: Path) -> Path:
        """``root/HOST:PORT/ca.crt`` (a ``certs.d`` directory as skopeo reads it); returns
        ``root``."""
        assert self.ca is not None
        directory = root / self.host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.ca.read_bytes())
        return root

    def login(self, auth_file: Path) -> None:
        """``skopeo login`` into ``auth_file`` with the registry's user."""
        tls = (f"--cert-dir={self.cert_dir}",) if self.tls else ("--tls-verify=false",)
        run(
            self.skopeo,
            "login",
            f"--authfile={auth_file}",
            *tls,
            f"--username={self.username}",
            "--password-stdin",
            self.host,
            input=self.password.encode(),
        )


def token_acl(user: str) -> dict[tuple[str | None, str], tuple[str, ...]]:
    """``user`` may push and pull everything; anyone (and any other user) may pull
    ``public/*``."""
    return {(user, "*"): ("pull", "push"), (None, "public/*"): ("pull",)}
