"""Registry authentication (``composefs.oci.auth``): ``--creds``, ``WWW-Authenticate`` parsing,
auth files and credential helpers, and the Bearer/Basic token flow against a fake request
function. The same flow against a real registry and token server is in
``tests/integration/test_registry_auth.py``."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from composefs.errors import AuthenticationError, ImageReferenceError, TransportError, format_error
from composefs.oci import auth
from composefs.oci.auth import (
    Authenticator,
    AuthFileError,
    Challenge,
    CredentialHelperError,
    Credentials,
    HttpResponse,
    auth_file_paths,
    lookup_credentials,
    parse_creds,
    parse_www_authenticate,
)

PASSWORD = "s3cret-PASSWORD-9f2c"
IDENTITY = "identity-TOKEN-77ab"
TOKEN = "eyJhbGciOi.TOKEN-c0ffee.sig"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- --creds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "username", "password"),
    [
        ("alice:pw", "alice", "pw"),
        ("alice:", "alice", ""),  # an empty password
        ("alice", "alice", ""),  # skopeo would prompt; we cannot: empty password
        ("alice:a:b:c", "alice", "a:b:c"),  # the password keeps its colons
        ("al ice:p w", "al ice", "p w"),
    ],
)
def test_parse_creds(text: str, username: str, password: str) -> None:
    creds = parse_creds(text)
    assert (creds.username, creds.password, creds.identity_token) == (username, password, None)


@pytest.mark.parametrize("text", ["", ":pw", ":"])
def test_parse_creds_needs_a_user(text: str) -> None:
    with pytest.raises(AuthenticationError, match="user name is empty"):
        parse_creds(text)


def test_credentials_repr_hides_secrets() -> None:
    creds = Credentials("alice", PASSWORD, identity_token=IDENTITY)
    for text in (repr(creds), str(creds)):
        assert "alice" in text
        assert PASSWORD not in text
        assert IDENTITY not in text


# -- WWW-Authenticate ---------------------------------------------------------------------------

REAL_WORLD = [
    # Docker Hub, for a repository and for /v2/
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/alpine:pull",
        },
    ),
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io"',
        "bearer",
        {"realm": "https://auth.docker.io/token", "service": "registry.docker.io"},
    ),
    # ghcr.io
    (
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"',
        "bearer",
        {
            "realm": "https://ghcr.io/token",
            "service": "ghcr.io",
            "scope": "repository:user/image:pull",
        },
    ),
    # quay.io
    (
        'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
        "bearer",
        {"realm": "https://quay.io/v2/auth", "service": "quay.io"},
    ),
    # GCR / Artifact Registry
    (
        'Bearer realm="https://gcr.io/v2/token",service="gcr.io",'
        'scope="repository:google-containers/pause:pull"',
        "bearer",
        {
            "realm": "https://gcr.io/v2/token",
            "service": "gcr.io",
            "scope": "repository:google-containers/pause:pull",
        },
    ),
    # ECR: Basic
    (
        'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
        'service="ecr.amazonaws.com"',
        "basic",
        {
            "realm": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",
            "service": "ecr.amazonaws.com",
        },
    ),
    # the distribution registry with htpasswd
    ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
    # the distribution registry with token auth and a token lacking a scope
    (
        'Bearer realm="http://127.0.0.1:5001/token",service="test-registry",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"',
        "bearer",
        {
            "realm": "http://127.0.0.1:5001/token",
            "service": "test-registry",
            "scope": "repository:a/b:pull,push",
            "error": "insufficient_scope",
        },
    ),
    # Azure ACR, Harbor, GitLab
    (
        'Bearer realm="https://myregistry.azurecr.io/oauth2/token",service="myregistry.azurecr.io"',
        "bearer",
        {
            "realm": "https://myregistry.azurecr.io/oauth2/token",
            "service": "myregistry.azurecr.io",
        },
    ),
    (
        'Bearer realm="https://harbor.example/service/token",service="harbor-registry"',
        "bearer",
        {"realm": "https://harbor.example/service/token", "service": "harbor-registry"},
    ),
    (
        'Bearer realm="https://gitlab.com/jwt/auth",service="container_registry",'
        'scope="repository:group/project:pull"',
        "bearer",
        {
            "realm": "https://gitlab.com/jwt/auth",
            "service": "container_registry",
            "scope": "repository:group/project:pull",
        },
    ),
    # case-insensitive scheme and names, spaces around '=' and ',', tokens unquoted
    (
        'BEARER Realm = "https://r/t" ,  Service=svc',
        "bearer",
        {"realm": "https://r/t", "service": "svc"},
    ),
    # quoted-pair escapes
    (
        r'Basic realm="a \"quoted\" \\ realm"',
        "basic",
        {"realm": 'a "quoted" \\ realm'},
    ),
    # a scheme with no parameters
    ("Basic", "basic", {}),
]


@pytest.mark.parametrize(("header", "scheme", "params"), REAL_WORLD)
def test_real_world_challenges(header: str, scheme: str, params: dict[str, str]) -> None:
    assert parse_www_authenticate(header) == [Challenge(scheme, params)]


def test_several_challenges_in_one_header() -> None:
    header = (
        'Negotiate, Bearer realm="https://a/t", service="s", scope="x y" , '
        'Basic realm=simple, NTLM abc==, Digest realm="r", qop="auth, auth-int", nonce=n'
    )
    assert parse_www_authenticate(header) == [
        Challenge("negotiate"),
        Challenge("bearer", {"realm": "https://a/t", "service": "s", "scope": "x y"}),
        Challenge("basic", {"realm": "simple"}),
        Challenge("ntlm", {}, "abc=="),
        Challenge("digest", {"realm": "r", "qop": "auth, auth-int", "nonce": "n"}),
    ]
    # two headers joined with a comma, empty list elements
    assert parse_www_authenticate(" , Basic realm=a,, ,Bearer realm=b ,") == [
        Challenge("basic", {"realm": "a"}),
        Challenge("bearer", {"realm": "b"}),
    ]
    assert parse_www_authenticate("") == []
    # "realm=" alone is a token68 (RFC 7235), not a parameter without a value
    assert parse_www_authenticate("Bearer realm=") == [Challenge("bearer", {}, "realm=")]


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ('Bearer realm="unterminated', "unterminated quoted string"),
        ('Bearer realm="a" service="b"', "expected ',' between parameters"),
        ('"Bearer" realm=a', "expected an authentication scheme"),
        ("Bearer realm=a, realm=b", "given twice"),
        ("Bearer service=x, realm=", "expected a value for 'realm'"),
        ('Bearer realm="a\x01b"', "invalid character in a quoted string"),
        ('Bearer realm="a\\\x01"', "invalid escaped character"),
        ('Bearer="x"', "expected a space after the scheme"),
    ],
)
def test_malformed_challenges(header: str, why: str) -> None:
    with pytest.raises(AuthenticationError, match="malformed WWW-Authenticate header") as info:
        parse_www_authenticate(header)
    assert why in str(info.value)
    assert "\x01" not in str(info.value)  # the header's text is escaped


def test_overlong_challenge() -> None:
    with pytest.raises(AuthenticationError, match="too long"):
        parse_www_authenticate("Basic realm=" + "a" * auth.CHALLENGE_LIMIT)


# -- auth files ---------------------------------------------------------------------------------


class Home:
    """A temporary HOME, XDG_RUNTIME_DIR and PATH for lookups (``env`` for the functions)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.runtime = root / "run"
        self.bin = root / "bin"
        for d in (self.home, self.runtime, self.bin):
            d.mkdir()
        self.env: dict[str, str] = {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "PATH": f"{self.bin}:/usr/bin:/bin",
        }

    @property
    def runtime_auth(self) -> Path:
        return self.runtime / "containers" / "auth.json"

    @property
    def config_auth(self) -> Path:
        return self.home / ".config" / "containers" / "auth.json"

    @property
    def docker_config(self) -> Path:
        return self.home / ".docker" / "config.json"

    @property
    def dockercfg(self) -> Path:
        return self.home / ".dockercfg"

    def write(self, path: Path, doc: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return path

    def auths(self, path: Path, entries: dict[str, str | dict[str, Any]], **extra: Any) -> Path:
        doc: dict[str, Any] = {
            "auths": {
                k: ({"auth": b64(v)} if isinstance(v, str) else v) for k, v in entries.items()
            }
        }
        doc.update(extra)
        return self.write(path, doc)

    def lookup(self, registry: str) -> Credentials | None:
        return lookup_credentials(registry, env=self.env)

    def helper(self, name: str, script: str) -> Path:
        """``docker-credential-NAME``, a shell script; it logs its arguments and stdin."""
        path = self.bin / f"docker-credential-{name}"
        log = self.root / f"{name}.log"
        path.write_text(
            "#!/bin/sh\n"
            f'echo "args: $*" >> {log}\n'
            "input=$(cat)\n"
            f'echo "stdin: $input" >> {log}\n' + script
        )
        path.chmod(0o755)
        return path

    def helper_log(self, name: str) -> str:
        log = self.root / f"{name}.log"
        return log.read_text() if log.exists() else ""


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path)


def user_pw(creds: Credentials | None) -> tuple[str, str] | None:
    return None if creds is None else (creds.username, creds.password)


def test_no_files_no_credentials(home: Home) -> None:
    assert home.lookup("quay.io") is None
    assert home.lookup("docker.io/library/alpine") is None


def test_auth_file_order(home: Home) -> None:
    env = home.env
    assert auth_file_paths(env=env) == [
        str(home.runtime_auth),
        str(home.config_auth),
        str(home.docker_config),
        str(home.dockercfg),
    ]
    home.auths(home.dockercfg, {})  # legacy format: the top level is the auths map
    home.write(home.dockercfg, {"https://reg.example/v1/": {"auth": b64("legacy:4")}})
    assert user_pw(home.lookup("reg.example")) == ("legacy", "4")
    home.auths(home.docker_config, {"reg.example": "docker:3"})
    assert user_pw(home.lookup("reg.example")) == ("docker", "3")
    home.auths(home.config_auth, {"reg.example": "config:2"})
    assert user_pw(home.lookup("reg.example")) == ("config", "2")
    home.auths(home.runtime_auth, {"reg.example": "runtime:1"})
    assert user_pw(home.lookup("reg.example")) == ("runtime", "1")
    # a file without an entry for this registry does not stop the search
    assert user_pw(home.lookup("other.example")) is None
    home.auths(home.config_auth, {"other.example": "o:o"})
    assert user_pw(home.lookup("other.example")) == ("o", "o")


def test_environment_moves_the_files(home: Home, tmp_path: Path) -> None:
    env = dict(home.env)
    del env["XDG_RUNTIME_DIR"]
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["DOCKER_CONFIG"] = str(tmp_path / "dockerconf")
    assert auth_file_paths(env=env) == [
        f"/run/containers/{os.getuid()}/auth.json",
        str(tmp_path / "xdg" / "containers" / "auth.json"),
        str(tmp_path / "dockerconf" / "config.json"),
        str(home.dockercfg),
    ]
    home.auths(tmp_path / "dockerconf" / "config.json", {"r.example": "d:c"})
    assert user_pw(lookup_credentials("r.example", env=env)) == ("d", "c")
    home.auths(tmp_path / "xdg" / "containers" / "auth.json", {"r.example": "x:c"})
    assert user_pw(lookup_credentials("r.example", env=env)) == ("x", "c")


def test_registry_auth_file_is_the_only_file(home: Home, tmp_path: Path) -> None:
    """skopeo's --authfile (default $REGISTRY_AUTH_FILE): that file alone is searched."""
    home.auths(home.runtime_auth, {"r.example": "runtime:1"})
    home.auths(home.docker_config, {"r.example": "docker:3", "s.example": "s:s"})
    explicit = home.auths(tmp_path / "mine.json", {"r.example": "mine:0"})
    env = {**home.env, "REGISTRY_AUTH_FILE": str(explicit)}
    assert auth_file_paths(env=env) == [str(explicit)]
    assert user_pw(lookup_credentials("r.example", env=env)) == ("mine", "0")
    assert lookup_credentials("s.example", env=env) is None
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "missing.json")
    assert lookup_credentials("r.example", env=env) is None


def test_most_specific_key_first(home: Home) -> None:
    home.auths(
        home.config_auth,
        {
            "reg.example/ns/sub/image": "image:1",
            "reg.example/ns": "ns:2",
            "reg.example": "registry:3",
            "reg.example:5000": "port:4",
            "reg.example/ns/sub/image2/x": "deeper:5",
        },
    )
    assert user_pw(home.lookup("reg.example/ns/sub/image")) == ("image", "1")
    assert user_pw(home.lookup("reg.example/ns/sub/other")) == ("ns", "2")
    assert user_pw(home.lookup("reg.example/ns/sub/image2")) == ("ns", "2")
    assert user_pw(home.lookup("reg.example/other/image")) == ("registry", "3")
    assert user_pw(home.lookup("reg.example")) == ("registry", "3")
    assert user_pw(home.lookup("reg.example:5000/ns/image")) == ("port", "4")
    assert user_pw(home.lookup("reg.example:5000")) == ("port", "4")
    assert home.lookup("reg.example:5001/ns") is None


def test_docker_hub_keys(home: Home) -> None:
    home.write(
        home.docker_config,
        {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")}}},
    )
    for name in ("docker.io", "docker.io/library/alpine", "index.docker.io/x/y"):
        assert user_pw(home.lookup(name)) == ("hub", "pw"), name
    assert user_pw(home.lookup("registry-1.docker.io")) == ("hub", "pw")
    assert home.lookup("quay.io") is None
    # a namespaced entry still wins over the registry-wide URL key
    home.auths(
        home.docker_config,
        {"docker.io/me": "me:1", "https://index.docker.io/v1/": "hub:pw"},
    )
    assert user_pw(home.lookup("docker.io/me/app")) == ("me", "1")
    assert user_pw(home.lookup("docker.io/library/alpine")) == ("hub", "pw")


def test_url_keys_are_normalized(home: Home) -> None:
    home.auths(home.docker_config, {"http://reg.example:5000/v2/": "u:p"})
    assert user_pw(home.lookup("reg.example:5000/app")) == ("u", "p")
    assert home.lookup("reg.example") is None


def test_entry_forms(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    home.write(
        home.config_auth,
        {
            "auths": {
                "token.example": {"auth": b64("bob:"), "identitytoken": IDENTITY},
                "onlytoken.example": {"identitytoken": IDENTITY},
                "nul.example": {"auth": b64("u:pw\x00\x00")},
                "nopad.example": {"auth": b64("u:pw1").rstrip("=")},
                "nocolon.example": {"auth": b64(PASSWORD)},
                "empty.example": {},
                "emptyuser.example": {"auth": b64(":pw")},
            }
        },
    )
    creds = home.lookup("token.example")
    assert creds == Credentials("bob", "", identity_token=IDENTITY)
    creds = home.lookup("onlytoken.example")
    assert creds == Credentials("<token>", "", identity_token=IDENTITY)
    assert user_pw(home.lookup("nul.example")) == ("u", "pw")
    assert user_pw(home.lookup("nopad.example")) == ("u", "pw1")
    assert user_pw(home.lookup("emptyuser.example")) == ("", "pw")
    with caplog.at_level(logging.DEBUG, logger="composefs.oci.auth"):
        assert home.lookup("nocolon.example") is None
    assert "no ':'" in caplog.text
    assert PASSWORD not in caplog.text
    assert home.lookup("empty.example") is None


def test_an_empty_marker_ends_the_file(home: Home) -> None:
    """containers/image: the most specific entry present decides for its file (an empty one,
    docker's credential-helper marker, gives nothing); the search goes on in the next file."""
    home.auths(home.config_auth, {"r.example/ns": {}, "r.example": "reg:1"})
    home.auths(home.docker_config, {"r.example": "docker:2"})
    assert user_pw(home.lookup("r.example/ns/app")) == ("docker", "2")
    assert user_pw(home.lookup("r.example/other")) == ("reg", "1")


def secret_file(home: Home, content: str) -> Path:
    return home.write(home.config_auth, content)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"auths": {"r.example": {"auth": "' + b64("u:" + PASSWORD) + '"', "not valid JSON"),
        ("[1, 2]", "does not hold a JSON object"),
        ('{"auths": []}', '"auths" is not a JSON object'),
        ('{"auths": {"r.example": "' + PASSWORD + '"}}', 'auths["r.example"] is not a JSON object'),
        ('{"auths": {"r.example": {"auth": "%%' + PASSWORD + '"}}}', '"auth" is not valid base64'),
        ('{"auths": {"r.example": {"auth": 5}}}', '"auth" is not a string'),
        ('{"auths": {}, "credHelpers": {"r.example": 1}}', "is not a string"),
        ('{"auths": {}, "credsStore": ["x"]}', '"credsStore" is not a string'),
        ('{"auths": {}, "credHelpers": {"r.example": "../../bin/sh"}}', "invalid credential"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_auth_files(home: Home, content: str, why: str) -> None:
    path = secret_file(home, content)
    with pytest.raises(AuthFileError) as info:
        home.lookup("r.example")
    text = format_error(info.value)
    assert str(path) in text
    assert why in text
    assert PASSWORD not in text


def test_non_utf8_and_empty_files(home: Home) -> None:
    path = home.config_auth
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"auths": {"\xff": {}}}')
    with pytest.raises(AuthFileError, match="is not UTF-8"):
        home.lookup("r.example")
    path.write_bytes(b"  \n")  # an empty file holds no credentials (docker reads it so too)
    assert home.lookup("r.example") is None


def test_auth_files_are_bounded(home: Home) -> None:
    path = home.config_auth
    path.parent.mkdir(parents=True)
    path.write_text('{"auths": {}, "pad": "' + "x" * auth.AUTH_FILE_LIMIT + '"}')
    with pytest.raises(AuthFileError, match="too large"):
        home.lookup("r.example")
    path.unlink()
    os.mkfifo(path)  # never waited on
    with pytest.raises(AuthFileError, match="not a regular file"):
        home.lookup("r.example")
    path.unlink()
    path.mkdir()
    with pytest.raises(AuthFileError, match="not a regular file"):
        home.lookup("r.example")


def test_invalid_registry_names(home: Home) -> None:
    for name in ("", "/x", "r.example/a:tag", "r.example/a@sha256:00", "r\nx", "r x"):
        with pytest.raises(ImageReferenceError):
            home.lookup(name)


# -- credential helpers -------------------------------------------------------------------------

ECHO_CREDS = """
case "$input" in
  r.example) printf '{"ServerURL":"r.example","Username":"helper-user","Secret":"%s"}' "$SECRET" ;;
  tok.example) printf '{"Username":"<token>","Secret":"%s"}' "$SECRET" ;;
  https://index.docker.io/v1/) printf '{"Username":"hub","Secret":"%s"}' "$SECRET" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def test_cred_helpers(home: Home) -> None:
    home.env["SECRET"] = PASSWORD
    home.helper("test", ECHO_CREDS)
    home.write(
        home.config_auth,
        {
            "auths": {"r.example": {"auth": b64("file:pw")}},
            "credHelpers": {"r.example": "test", "tok.example": "test", "none.example": "test"},
        },
    )
    home.auths(home.docker_config, {"none.example": "next:file"})
    # credHelpers comes first, with the registry (host) as the server URL
    assert home.lookup("r.example/ns/app") == Credentials("helper-user", PASSWORD)
    assert "args: get" in home.helper_log("test")
    assert "stdin: r.example\n" in home.helper_log("test")
    # "<token>": an identity token
    assert home.lookup("tok.example") == Credentials("<token>", "", identity_token=PASSWORD)
    # not found in the helper: the next file is searched
    assert user_pw(home.lookup("none.example")) == ("next", "file")


def test_creds_store(home: Home) -> None:
    home.env["SECRET"] = PASSWORD
    home.helper("store", ECHO_CREDS)
    home.write(
        home.docker_config,
        {
            "auths": {"https://index.docker.io/v1/": {}, "plain.example": {"auth": b64("p:q")}},
            "credsStore": "store",
        },
    )
    # Docker Hub is asked for under docker's server URL
    assert home.lookup("docker.io/library/alpine") == Credentials("hub", PASSWORD)
    assert "stdin: https://index.docker.io/v1/" in home.helper_log("store")
    # an entry with credentials in the file is used before the store
    assert user_pw(home.lookup("plain.example")) == ("p", "q")
    assert home.lookup("other.example") is None


def test_missing_helpers(home: Home, caplog: pytest.LogCaptureFixture) -> None:
    home.write(home.config_auth, {"auths": {}, "credsStore": "absent"})
    home.auths(home.docker_config, {"r.example": "after:store"})
    # a credsStore that is not installed is skipped with a warning (a copied docker config)
    with caplog.at_level(logging.WARNING, logger="composefs.oci.auth"):
        assert user_pw(home.lookup("r.example")) == ("after", "store")
    assert "docker-credential-absent, which is not installed" in caplog.text
    # a helper named for this very registry must work
    home.write(home.config_auth, {"auths": {}, "credHelpers": {"r.example": "absent"}})
    with pytest.raises(CredentialHelperError, match=r"docker-credential-absent .* not installed"):
        home.lookup("r.example")


def test_failing_helper(home: Home) -> None:
    home.helper("bad", 'echo "keychain locked: cannot read" >&2; exit 3\n')
    home.write(home.config_auth, {"credHelpers": {"r.example": "bad"}})
    with pytest.raises(CredentialHelperError) as info:
        home.lookup("r.example")
    text = format_error(info.value)
    assert "docker-credential-bad failed for r.example (exit status 3)" in text
    assert "keychain locked: cannot read" in text
    # a failing helper that printed its answer anyway: not shown
    home.helper("leaky", f'printf \'{{"Username":"u","Secret":"{PASSWORD}"}}\'; exit 1\n')
    home.write(home.config_auth, {"credHelpers": {"r.example": "leaky"}})
    with pytest.raises(CredentialHelperError) as info:
        home.lookup("r.example")
    text = format_error(info.value)
    assert text.endswith("docker-credential-leaky failed for r.example (exit status 1)")
    home.helper("killed", "kill -9 $$\n")
    home.write(home.config_auth, {"credHelpers": {"r.example": "killed"}})
    with pytest.raises(CredentialHelperError, match="killed by signal 9"):
        home.lookup("r.example")


@pytest.mark.parametrize(
    "output",
    [
        f'{{"Username": "u", "Secret": "{PASSWORD}"',  # cut short
        f'{{"Username": "u", "Password": "{PASSWORD}"}}',  # no Secret
        f'["{PASSWORD}"]',
        f"{PASSWORD}\n",
    ],
)
def test_helper_nonsense_is_not_echoed(home: Home, output: str) -> None:
    home.helper("odd", f"printf '%s' '{output}'\n")
    home.write(home.config_auth, {"credHelpers": {"r.example": "odd"}})
    with pytest.raises(
        CredentialHelperError, match=r"answered r\.example with something else"
    ) as i:
        home.lookup("r.example")
    assert PASSWORD not in format_error(i.value)


def test_helper_timeout_and_output_bounds(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "HELPER_TIMEOUT", 0.5)
    home.helper("slow", "exec sleep 30\n")
    home.write(home.config_auth, {"credHelpers": {"r.example": "slow"}})
    started = time.monotonic()
    with pytest.raises(CredentialHelperError, match=r"did not answer for r\.example within 0\.5 s"):
        home.lookup("r.example")
    assert time.monotonic() - started < 5
    home.helper("chatty", "yes\n")
    home.write(home.config_auth, {"credHelpers": {"r.example": "chatty"}})
    with pytest.raises(CredentialHelperError, match="wrote more than"):
        home.lookup("r.example")


def test_helper_leaving_a_daemon_behind(home: Home) -> None:
    """A helper whose child keeps stdout open (an agent it started) is not waited for."""
    home.helper(
        "agent",
        f"""(sleep 3) &
printf '{{"Username":"u","Secret":"{PASSWORD}"}}'
""",
    )
    home.write(home.config_auth, {"credHelpers": {"r.example": "agent"}})
    started = time.monotonic()
    assert home.lookup("r.example") == Credentials("u", PASSWORD)
    assert time.monotonic() - started < 10


# -- the token flow -----------------------------------------------------------------------------

Handler = Callable[[str, str, Mapping[str, str], bytes | None], HttpResponse]


def json_response(
    status: int, doc: object, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(status, dict(headers or {}), json.dumps(doc).encode())


class FakeTokenServer:
    """A RequestFunction answering token requests; records every request."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes | None]] = []
        self.count = 0
        self.handler = handler or self.default
        self.lock = threading.Lock()
        self.delay = 0.0

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        with self.lock:
            self.requests.append((method, url, dict(headers), body))
            self.count += 1
            number = self.count
        if self.delay:
            time.sleep(self.delay)
        self.number = number
        return self.handler(method, url, headers, body)

    def default(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> HttpResponse:
        return json_response(200, {"token": f"{TOKEN}-{self.count}", "expires_in": 300})

    def query(self, index: int = -1) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.requests[index][1]).query)

    def form(self, index: int = -1) -> dict[str, list[str]]:
        body = self.requests[index][3]
        assert body is not None
        return urllib.parse.parse_qs(body.decode())


REALM = "https://auth.example/token"
BEARER = f'Bearer realm="{REALM}",service="registry.example"'
SCOPE = "repository:library/alpine:pull"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth, "_clock", fake)
    return fake


def bearer_of(headers: Mapping[str, str]) -> str:
    value = headers["Authorization"]
    assert value.startswith("Bearer ")
    return value.removeprefix("Bearer ")


def test_anonymous_bearer(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", None, server)
    assert a.headers(SCOPE) == {}
    a.challenge(f'{BEARER},scope="{SCOPE}"', SCOPE)
    assert server.requests[0][0] == "GET"
    assert server.requests[0][2] == {}  # no Authorization without credentials
    assert server.query() == {"service": ["registry.example"], "scope": [SCOPE]}
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"
    assert server.count == 1


def test_credentialed_bearer(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    a.challenge(BEARER, SCOPE)  # no scope in the challenge: the requested one
    method, url, headers, body = server.requests[0]
    assert (method, body) == ("GET", None)
    assert url.startswith(REALM + "?")
    assert headers["Authorization"] == "Basic " + b64(f"alice:{PASSWORD}")
    assert server.query() == {
        "service": ["registry.example"],
        "scope": [SCOPE],
        "account": ["alice"],
    }
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"


def test_scopes_from_the_challenge(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", None, server)
    a.challenge(f'{BEARER},scope="repository:a:pull repository:b:pull"', "repository:a:pull")
    assert server.query()["scope"] == ["repository:a:pull", "repository:b:pull"]
    # /v2/: no scope at all, no service either
    a.challenge(f'Bearer realm="{REALM}?x=1"', "")
    assert server.requests[-1][1] == REALM + "?x=1"
    assert bearer_of(a.headers("")) == f"{TOKEN}-2"


def test_tokens_are_cached_per_scope(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", None, server)
    a.challenge(BEARER, SCOPE)
    other = "repository:library/busybox:pull"
    # a scope never challenged: its token is fetched before the request (no 401 round trip)
    assert bearer_of(a.headers(other)) == f"{TOKEN}-2"
    assert server.query()["scope"] == [other]
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"
    assert bearer_of(a.headers(other)) == f"{TOKEN}-2"
    assert server.count == 2


@pytest.mark.parametrize(
    ("reply", "lifetime"),
    [
        ({"token": TOKEN, "expires_in": 300}, 300),
        ({"access_token": TOKEN, "expires_in": 3600}, 3600),
        ({"token": TOKEN}, 60),  # the default
        ({"token": TOKEN, "expires_in": "300"}, 60),  # nonsense: the default
        ({"token": TOKEN, "expires_in": True}, 60),
        ({"token": TOKEN, "expires_in": -5}, 60),
        ({"token": TOKEN, "expires_in": 10}, 10),
    ],
)
def test_tokens_are_refreshed_before_they_expire(
    clock: Clock, reply: dict[str, Any], lifetime: float
) -> None:
    server = FakeTokenServer(lambda *_: json_response(200, reply))
    a = Authenticator("registry.example", None, server)
    a.challenge(BEARER, SCOPE)
    margin = min(lifetime * 0.2, 60)
    clock.now += lifetime - margin - 0.5
    a.headers(SCOPE)
    assert server.count == 1
    clock.now += 1  # within the margin before expiry: a new token
    a.headers(SCOPE)
    assert server.count == 2
    assert server.query()["scope"] == [SCOPE]


def test_401_with_a_cached_token_fetches_once(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    a.challenge(BEARER, SCOPE)
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"  # a request that succeeds
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"  # the next one: 401 (token revoked)
    a.challenge(BEARER, SCOPE)
    assert server.count == 2
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-2"  # the retry: 401 again
    with pytest.raises(AuthenticationError) as info:
        a.challenge(BEARER, SCOPE)
    assert str(info.value) == "authentication failed for registry.example (credentials rejected)"
    assert server.count == 2
    # a later request starts afresh
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-2"
    a.challenge(BEARER, SCOPE)
    assert server.count == 3


def test_second_401_without_credentials(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", None, server)
    a.headers(SCOPE)
    a.challenge(BEARER, SCOPE)
    a.headers(SCOPE)
    with pytest.raises(AuthenticationError) as info:
        a.challenge(BEARER, SCOPE)
    message = str(info.value)
    assert "authentication failed for registry.example" in message
    assert "refused without credentials" in message
    assert "--creds" in message


def test_identity_token_uses_oauth2(clock: Clock) -> None:
    def handler(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Any:
        return json_response(
            200,
            {"access_token": f"{TOKEN}-{server.count}", "refresh_token": f"next-{server.count}"},
        )

    server = FakeTokenServer(handler)
    creds = Credentials("<token>", "", identity_token=IDENTITY)
    a = Authenticator("registry.example", creds, server)
    a.challenge(f'{BEARER},scope="{SCOPE}"', SCOPE)
    method, url, headers, _ = server.requests[0]
    assert (method, url) == ("POST", REALM)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in headers
    assert server.form() == {
        "grant_type": ["refresh_token"],
        "refresh_token": [IDENTITY],
        "service": ["registry.example"],
        "scope": [SCOPE],
        "client_id": ["composefs"],
    }
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"
    # the refresh token the server handed back is used next
    clock.now += 100
    a.headers(SCOPE)
    assert server.form()["refresh_token"] == ["next-1"]


def test_password_grant_when_get_is_not_supported(clock: Clock) -> None:
    def handler(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Any:
        if method == "GET":
            return json_response(405, {})
        return json_response(200, {"access_token": TOKEN})

    server = FakeTokenServer(handler)
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    a.challenge(f'{BEARER},scope="a b"', SCOPE)
    assert [r[0] for r in server.requests] == ["GET", "POST"]
    assert server.form() == {
        "grant_type": ["password"],
        "username": ["alice"],
        "password": [PASSWORD],
        "service": ["registry.example"],
        "scope": ["a b"],
        "client_id": ["composefs"],
    }
    assert bearer_of(a.headers(SCOPE)) == TOKEN


def test_basic(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    assert a.headers(SCOPE) == {}
    a.challenge('Basic realm="Registry Realm"', SCOPE)
    expected = {"Authorization": "Basic " + b64(f"alice:{PASSWORD}")}
    assert a.headers(SCOPE) == expected
    assert a.headers("repository:other:pull") == expected  # every scope
    assert server.count == 0
    # the retry was refused: the credentials are wrong
    a.headers(SCOPE)
    a.challenge('Basic realm="Registry Realm"', SCOPE)
    a.headers(SCOPE)
    with pytest.raises(AuthenticationError, match=r"\(credentials rejected\)"):
        a.challenge('Basic realm="Registry Realm"', SCOPE)


def test_bearer_is_preferred_to_basic(clock: Clock) -> None:
    server = FakeTokenServer()
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    a.challenge(f'Basic realm="x", {BEARER}', SCOPE)
    assert bearer_of(a.headers(SCOPE)) == f"{TOKEN}-1"


def test_basic_without_credentials() -> None:
    a = Authenticator("registry.example", None, FakeTokenServer())
    with pytest.raises(AuthenticationError) as info:
        a.challenge('Basic realm="Registry Realm"', SCOPE)
    message = str(info.value)
    assert "authentication required for registry.example" in message
    assert "--creds USER:PASSWORD" in message
    assert "login" in message
    only_token = Credentials("<token>", "", identity_token=IDENTITY)
    a = Authenticator("registry.example", only_token, FakeTokenServer())
    with pytest.raises(AuthenticationError, match="identity token"):
        a.challenge('Basic realm="Registry Realm"', SCOPE)


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "HTTP 401 without a WWW-Authenticate challenge"),
        ("", "HTTP 401 without a WWW-Authenticate challenge"),
        ('Negotiate, NTLM abc=, Digest realm="x"', "unsupported authentication scheme"),
        ("Bearer service=x", "has no http(s) realm"),
        ('Bearer realm="file:///etc/passwd"', "has no http(s) realm"),
        ('Bearer realm="/token"', "has no http(s) realm"),
        ('Bearer realm="unterminated', "cannot read its challenge"),
    ],
)
def test_unusable_challenges(header: str | None, why: str) -> None:
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), FakeTokenServer())
    with pytest.raises(
        AuthenticationError, match=r"authentication failed for registry\.example"
    ) as i:
        a.challenge(header, SCOPE)
    assert why in format_error(i.value)


def test_credentials_over_plain_http_only_to_the_registry_host(clock: Clock) -> None:
    creds = Credentials("alice", PASSWORD)
    server = FakeTokenServer()
    a = Authenticator("registry.example:5000", creds, server)
    with pytest.raises(AuthenticationError, match="refusing to send credentials"):
        a.challenge('Bearer realm="http://elsewhere.example/token"', SCOPE)
    assert server.count == 0
    # the registry's own host (another port): the user chose to talk to it
    a.challenge('Bearer realm="http://registry.example:5001/token"', SCOPE)
    # no credentials: nothing to leak
    b = Authenticator("registry.example:5000", None, server)
    b.challenge('Bearer realm="http://elsewhere.example/token"', SCOPE)
    assert server.count == 2


@pytest.mark.parametrize(
    ("status", "body", "error", "why"),
    [
        (401, {"details": "incorrect username or password"}, AuthenticationError, "rejected"),
        (403, {"errors": [{"message": "denied"}]}, AuthenticationError, "rejected"),
        (500, {"error": "boom"}, TransportError, "answered HTTP 500 (boom)"),
        (200, {"token": ""}, AuthenticationError, "no token"),
        (200, {"expires_in": 5}, AuthenticationError, "no token"),
        (200, [TOKEN], AuthenticationError, "something else than a JSON object"),
        (200, {"token": TOKEN + "\r\nX-Injected: 1"}, AuthenticationError, "a malformed token"),
        (200, {"token": TOKEN + " x"}, AuthenticationError, "a malformed token"),
        (200, {"token": "a" * (auth.TOKEN_LIMIT + 1)}, AuthenticationError, "malformed token"),
        (
            200,
            {"token": TOKEN, "pad": "x" * auth.TOKEN_RESPONSE_LIMIT},
            AuthenticationError,
            "large",
        ),
    ],
)
def test_token_server_failures(
    clock: Clock, status: int, body: object, error: type[Exception], why: str
) -> None:
    server = FakeTokenServer(lambda *_: json_response(status, body))
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    with pytest.raises(error) as info:
        a.challenge(BEARER, SCOPE)
    text = format_error(info.value)
    assert "registry.example" in text
    assert why in text
    assert "auth.example" in text  # the token server is named
    assert TOKEN not in text
    if error is TransportError:
        assert not isinstance(info.value, AuthenticationError)


def test_token_server_unreachable(clock: Clock) -> None:
    def handler(*_: Any) -> HttpResponse:
        raise TransportError("connection refused")

    a = Authenticator("registry.example", None, FakeTokenServer(handler))
    with pytest.raises(TransportError) as info:
        a.challenge(BEARER, SCOPE)
    assert format_error(info.value) == (
        "Error: fetching a token for registry.example from auth.example failed\n\n"
        "Caused by:\n    connection refused"
    )


def test_concurrent_requests_share_one_fetch(clock: Clock) -> None:
    server = FakeTokenServer()
    server.delay = 0.2
    a = Authenticator("registry.example", None, server)
    a.challenge(BEARER, SCOPE)
    tokens: list[str] = []
    other = "repository:x:pull"
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        tokens.append(bearer_of(a.headers(other)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.count == 2
    assert tokens == [f"{TOKEN}-2"] * 8


def test_concurrent_401s_refetch_once(clock: Clock) -> None:
    """Eight layers fetched at once, all refused with the same (revoked) token: one new token,
    every thread retries with it, and none of them sees 'credentials rejected'."""
    server = FakeTokenServer()
    a = Authenticator("registry.example", Credentials("alice", PASSWORD), server)
    a.challenge(BEARER, SCOPE)
    barrier = threading.Barrier(8)
    retried: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            a.headers(SCOPE)  # the request: 401
            barrier.wait()
            a.challenge(BEARER, SCOPE)
            retried.append(bearer_of(a.headers(SCOPE)))  # the retry: 200
            a.headers(SCOPE)  # the next request
        except BaseException as e:
            errors.append(e)

    server.delay = 0.1
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.count == 2
    assert retried == [f"{TOKEN}-2"] * 8


def test_secrets_never_shown(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """Every error of the flow formatted with its causes, every log line at DEBUG and every
    repr: no password, identity token or token."""
    texts: list[str] = []
    creds = Credentials("alice", PASSWORD)

    def echo_secrets(method: str, url: str, headers: Mapping[str, str], body: bytes | None) -> Any:
        # a hostile token server that echoes what it was sent
        said = f"{url} {headers} {body!r}"
        return json_response(401, {"errors": [{"message": said}]})

    def echo_password(*_: Any) -> HttpResponse:
        return json_response(401, {"details": f"wrong password {PASSWORD}"})

    scenarios: list[tuple[Credentials | None, Handler, str]] = [
        (creds, echo_secrets, BEARER),
        (creds, echo_password, BEARER),
        (Credentials("<token>", "", identity_token=IDENTITY), echo_secrets, BEARER),
        (creds, lambda *_: json_response(200, {"token": TOKEN + "\n"}), BEARER),
        (creds, lambda *_: json_response(500, {"details": PASSWORD}), BEARER),
        (creds, FakeTokenServer(), 'Bearer realm="http://elsewhere/t"'),
        (None, FakeTokenServer(), 'Basic realm="x"'),
    ]
    with caplog.at_level(logging.DEBUG, logger="composefs.oci.auth"):
        for scenario_creds, handler, header in scenarios:
            a = Authenticator("registry.example", scenario_creds, handler)
            texts.append(repr(a))
            with pytest.raises(TransportError) as info:
                a.challenge(header, SCOPE)
            texts.append(format_error(info.value))
        # a token that worked, then rejected
        a = Authenticator("registry.example", creds, FakeTokenServer())
        a.challenge(BEARER, SCOPE)
        a.headers(SCOPE)
        with pytest.raises(AuthenticationError) as info:
            a.challenge(BEARER, SCOPE)
        texts.append(format_error(info.value))
        texts.append(repr(a))
    texts.append(caplog.text)
    joined = "\n".join(texts)
    assert "***" in joined  # the echoed secrets were masked, the message kept
    for secret in (PASSWORD, IDENTITY, TOKEN, b64(f"alice:{PASSWORD}")):
        assert secret not in joined


def test_secrets_not_in_helper_errors(home: Home) -> None:
    home.env["SECRET"] = PASSWORD
    home.helper("odd", 'printf "{\\"Username\\": 1, \\"Secret\\": \\"%s\\"}" "$SECRET"\n')
    home.write(home.config_auth, {"credHelpers": {"r.example": "odd"}})
    with pytest.raises(CredentialHelperError) as info:
        home.lookup("r.example")
    assert PASSWORD not in format_error(info.value)


def test_auth_file_permissions_do_not_matter(home: Home) -> None:
    """A mode-0600 file (as login tools write) is read."""
    path = home.auths(home.config_auth, {"r.example": "u:p"})
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert user_pw(home.lookup("r.example")) == ("u", "p")
