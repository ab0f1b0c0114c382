"""Secrets are generated once, kept encrypted, and never regenerated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from sciplat import secrets as s
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def isolated_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SCIPLAT_VAULT_PASSWORD", raising=False)
    monkeypatch.delenv("SCIPLAT_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def fake_repo(tmp_path: Path, body: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "roles" / "demo" / "meta").mkdir(parents=True)
    (repo / "roles" / "demo" / "meta" / "secrets.yml").write_text(body)
    return repo


DECL = """\
secrets:
  demo_password: {kind: password, length: 24, description: a password}
  demo_token: {kind: hex, length: 16}
  demo_ca: {kind: x509_ca}
"""


def test_generated_once_and_never_changed(tmp_path: Path) -> None:
    repo, inv = fake_repo(tmp_path, DECL), tmp_path / "inv"
    inv.mkdir()
    first, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    assert sorted(created) == ["demo_ca", "demo_password", "demo_token"]
    assert len(first["demo_password"]) == 24 and first["demo_password"].isalnum()
    assert len(first["demo_token"]) == 32
    vault = (inv / s.VAULT_FILE).read_bytes()
    assert vault.startswith(b"$ANSIBLE_VAULT;1.1;AES256")
    assert first["demo_password"].encode() not in vault
    assert (inv / s.VAULT_FILE).stat().st_mode & 0o777 == 0o600

    second, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    assert created == [] and second == first
    assert (inv / s.VAULT_FILE).read_bytes() == vault  # not even re-encrypted


def test_new_declaration_adds_only_the_new_secret(tmp_path: Path) -> None:
    repo, inv = fake_repo(tmp_path, DECL), tmp_path / "inv"
    inv.mkdir()
    first, _ = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    (repo / "playbooks" / "secrets").mkdir(parents=True)
    (repo / "playbooks" / "secrets" / "hub.yml").write_text("secrets:\n  hub_x: {kind: password}\n")
    second, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    assert created == ["hub_x"]
    assert {k: second[k] for k in first} == first


def test_ca_is_a_ca(tmp_path: Path) -> None:
    ca = s.make_ca("lab", 365)
    cert = x509.load_pem_x509_certificate(ca["cert"].encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "lab platform CA" in cert.subject.rfc4514_string()
    assert "PRIVATE KEY" in ca["key"]


def test_wrong_password_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, inv = fake_repo(tmp_path, DECL), tmp_path / "inv"
    inv.mkdir()
    s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    monkeypatch.setenv("SCIPLAT_VAULT_PASSWORD", "not-the-password")
    with pytest.raises(s.SecretError, match="vault password does not match"):
        s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)


def test_password_from_environment_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("hunter2-but-longer\n")
    monkeypatch.setenv("SCIPLAT_VAULT_PASSWORD_FILE", str(pw))
    assert s.password_source("lab") == ("hunter2-but-longer", str(pw))
    monkeypatch.setenv("SCIPLAT_VAULT_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(s.SecretError, match="does not exist"):
        s.password_source("lab")


def test_default_password_file_is_private_and_stable(tmp_path: Path) -> None:
    first, where = s.password_source("lab")
    assert Path(where).stat().st_mode & 0o777 == 0o600
    assert s.password_source("lab")[0] == first


def test_duplicate_declaration_is_rejected(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path, DECL)
    (repo / "playbooks" / "secrets").mkdir(parents=True)
    (repo / "playbooks" / "secrets" / "x.yml").write_text("secrets:\n  demo_token: {kind: hex}\n")
    with pytest.raises(s.SecretError, match="declared twice"):
        s.declarations(repo)


def test_bad_declaration_names_the_file(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path, "secrets:\n  demo: {kind: rot13}\n")
    with pytest.raises(s.SecretError, match=r"roles/demo/meta/secrets\.yml"):
        s.declarations(repo)


def test_repository_declarations_parse() -> None:
    assert "pki_ca" in s.declarations(REPO)


CONDITIONAL = """\
secrets:
  always_password: {kind: password}
  minio_only_password: {kind: password, needed_when: {storage.backend: minio}}
"""


def test_secret_not_needed_by_the_platform_is_not_generated(tmp_path: Path) -> None:
    repo, inv = fake_repo(tmp_path, CONDITIONAL), tmp_path / "inv"
    inv.mkdir()
    ceph = {"storage": {"backend": "ceph"}}
    first, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30, settings=ceph)
    assert created == ["always_password"] and "minio_only_password" not in first
    # switching to MinIO generates it once; switching back keeps it for a later switch
    minio = {"storage": {"backend": "minio"}}
    second, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30, settings=minio)
    assert created == ["minio_only_password"]
    third, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30, settings=ceph)
    assert created == [] and third == second


def test_needed_when_naming_an_unknown_field_is_an_error(tmp_path: Path) -> None:
    repo, inv = fake_repo(tmp_path, CONDITIONAL.replace("storage.backend", "storage.flavour")), tmp_path / "inv"
    inv.mkdir()
    with pytest.raises(s.SecretError, match=r"storage\.flavour"):
        s.ensure(inv, repo, platform_name="lab", ca_validity_days=30, settings={"storage": {"backend": "ceph"}})


def test_every_needed_when_in_the_repository_names_a_platform_field() -> None:
    from sciplat.spec import PlatformSpec

    example = yaml.safe_load((REPO / "inventories" / "example-site" / "platform.yaml").read_text())
    settings = PlatformSpec.model_validate(example).model_dump(mode="json")
    for declared in s.declarations(REPO).values():
        declared.decl.needed(settings)  # raises SecretError on an unknown field
