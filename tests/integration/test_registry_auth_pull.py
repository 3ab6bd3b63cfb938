"""End-to-end pulls from registries that need credentials: ``composefs.oci.pull(repo,
"docker://...", auth=..., tls_verify=...)`` through the native registry transport
(``composefs.oci.registry``), against the ``basic_registry`` (htpasswd over TLS, CA from
``certs.d``) and ``token_registry`` (Bearer tokens) fixtures.

These tests need the native ``docker://`` client (issue 11); they were written on the auth branch
before it landed and run once both are merged. A failing ``skopeo`` is first on ``PATH``
throughout: a ``docker://`` pull must not run skopeo.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from composefs import oci
from composefs.errors import AuthenticationError, ComposefsError, error_chain, format_error
from composefs.oci.auth import Credentials
from composefs.oci.pull import PullResult
from composefs.repository import Repository
from support.registry import OciImage
from support.registry_auth import AuthRegistry


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME of its own (no auth files, no certs.d but what a test writes), and a ``skopeo``
    on PATH that fails loudly. Returns the HOME."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    runtime = tmp_path / "run"
    runtime.mkdir()
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    skopeo = fake_bin / "skopeo"
    skopeo.write_text("#!/bin/sh\necho 'skopeo must not run for docker://' >&2\nexit 99\n")
    skopeo.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    for name in ("XDG_CONFIG_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    yield home


def new_repo(path: Path) -> Repository:
    repo, _ = Repository.init(path, "sha256", insecure=True)
    return repo


def check_same_as_layout(result: PullResult, image: OciImage, tmp_path: Path) -> None:
    """The registry pull stored what a pull of the image's OCI layout stores."""
    assert result.manifest_digest == image.manifest.digest
    assert result.config_digest == image.config.digest
    assert result.tag == "img"
    with new_repo(tmp_path / "from-layout") as repo:
        expected = oci.pull(repo, image.ref, name="img")
    assert (result.manifest_verity, result.config_verity, result.layers) == (
        expected.manifest_verity,
        expected.config_verity,
        expected.layers,
    )


def test_pull_basic_auth_over_tls(
    basic_registry: AuthRegistry, oci_image: OciImage, isolated: Path, tmp_path: Path
) -> None:
    ref = basic_registry.push(oci_image.ref, "e2e/basic:v1")
    basic_registry.certs_d(isolated / ".config" / "containers" / "certs.d")
    with new_repo(tmp_path / "repo") as repo:
        result = oci.pull(repo, ref, name="img", auth=basic_registry.credentials(), tls_verify=True)
        assert repo.fsck().ok
    check_same_as_layout(result, oci_image, tmp_path)


def test_pull_token_auth(
    token_registry: AuthRegistry, oci_image: OciImage, isolated: Path, tmp_path: Path
) -> None:
    ref = token_registry.push(oci_image.ref, "e2e/token:v1")
    with new_repo(tmp_path / "repo") as repo:
        result = oci.pull(
            repo, ref, name="img", auth=token_registry.credentials(), tls_verify=False
        )
        assert repo.fsck().ok
    check_same_as_layout(result, oci_image, tmp_path)


def test_pull_token_anonymous(
    token_registry: AuthRegistry, oci_image: OciImage, isolated: Path, tmp_path: Path
) -> None:
    ref = token_registry.push(oci_image.ref, "public/e2e:v1")
    with new_repo(tmp_path / "repo") as repo:
        result = oci.pull(repo, ref, name="img", tls_verify=False)
    check_same_as_layout(result, oci_image, tmp_path)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_pull_with_credentials_from_the_auth_file(
    kind: str,
    request: pytest.FixtureRequest,
    oci_image: OciImage,
    isolated: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ``auth``: the credentials ``skopeo login`` stored in ``$REGISTRY_AUTH_FILE``."""
    registry: AuthRegistry = request.getfixturevalue(f"{kind}_registry")
    ref = registry.push(oci_image.ref, f"e2e/{kind}-file:v1")
    auth_file = tmp_path / "auth.json"
    registry.login(auth_file)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    if registry.tls:
        registry.certs_d(isolated / ".config" / "containers" / "certs.d")
    with new_repo(tmp_path / "repo") as repo:
        result = oci.pull(repo, ref, name="img", tls_verify=registry.tls)
    check_same_as_layout(result, oci_image, tmp_path)


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_pull_with_a_wrong_password(
    kind: str,
    request: pytest.FixtureRequest,
    oci_image: OciImage,
    isolated: Path,
    tmp_path: Path,
) -> None:
    registry: AuthRegistry = request.getfixturevalue(f"{kind}_registry")
    ref = registry.push(oci_image.ref, f"e2e/{kind}-wrong:v1")
    if registry.tls:
        registry.certs_d(isolated / ".config" / "containers" / "certs.d")
    wrong = "wrong-" + registry.password
    with new_repo(tmp_path / "repo") as repo:
        with pytest.raises(ComposefsError) as info:
            oci.pull(
                repo,
                ref,
                name="img",
                auth=Credentials(registry.username, wrong),
                tls_verify=registry.tls,
            )
        assert oci.list_refs(repo) == []
    causes: list[BaseException] = []
    current: BaseException | None = info.value
    while current is not None:
        causes.append(current)
        current = current.__cause__
    assert any(isinstance(e, AuthenticationError) for e in causes)
    text = format_error(info.value)
    assert "credentials rejected" in text
    assert wrong not in text
    assert registry.password not in text
    assert "skopeo must not run" not in "\n".join(error_chain(info.value))
