"""`sciplat secrets rotate`: one declared, rotatable secret gets a new value; nothing else changes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sciplat import runner as runner_mod
from sciplat import secrets as s
from sciplat.cli import app
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def isolated_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SCIPLAT_VAULT_PASSWORD", raising=False)
    monkeypatch.delenv("SCIPLAT_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


DECL = """\
secrets:
  demo_key: {kind: hex, length: 32, rotation: {tags: [demo], notice: jobs keep running}}
  demo_password: {kind: password, length: 24, rotation: {tags: [demo, web]}}
  demo_db_password: {kind: password, description: held by other services}
  demo_ca: {kind: x509_ca}
"""


def fake_repo(tmp_path: Path, body: str = DECL) -> Path:
    repo = tmp_path / "repo"
    (repo / "roles" / "demo" / "meta").mkdir(parents=True)
    (repo / "roles" / "demo" / "meta" / "secrets.yml").write_text(body)
    return repo


def generated(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    repo, inv = fake_repo(tmp_path), tmp_path / "inv"
    inv.mkdir()
    first, _ = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    return repo, inv, first


def test_rotation_replaces_only_that_secret_and_the_vault_still_opens(tmp_path: Path) -> None:
    repo, inv, before = generated(tmp_path)
    rotated = s.rotate(inv, repo, "demo_key", platform_name="lab", ca_validity_days=30)
    assert rotated.tags == ("demo",) and rotated.notice == "jobs keep running"
    password, _ = s.password_source("lab")
    after = s.read_vault(inv / s.VAULT_FILE, password)  # opens with the same password
    assert after["demo_key"] != before["demo_key"]
    assert len(after["demo_key"]) == 64 and int(after["demo_key"], 16) >= 0  # same kind and length
    assert {k: v for k, v in after.items() if k != "demo_key"} == {k: v for k, v in before.items() if k != "demo_key"}
    assert (inv / s.VAULT_FILE).stat().st_mode & 0o777 == 0o600
    # a later `sciplat up` keeps the rotated value (ensure never changes an existing secret)
    again, created = s.ensure(inv, repo, platform_name="lab", ca_validity_days=30)
    assert created == [] and again == after


def test_a_password_is_rotated_as_a_password(tmp_path: Path) -> None:
    repo, inv, before = generated(tmp_path)
    rotated = s.rotate(inv, repo, "demo_password", platform_name="lab", ca_validity_days=30)
    password, _ = s.password_source("lab")
    new = s.read_vault(inv / s.VAULT_FILE, password)["demo_password"]
    assert rotated.tags == ("demo", "web")
    assert new != before["demo_password"] and len(new) == 24 and new.isalnum()


def test_unknown_name_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    repo, inv, _ = generated(tmp_path)
    vault = (inv / s.VAULT_FILE).read_bytes()
    with pytest.raises(s.SecretError, match=r"no secret named 'demo_nope' is declared"):
        s.rotate(inv, repo, "demo_nope", platform_name="lab", ca_validity_days=30)
    assert (inv / s.VAULT_FILE).read_bytes() == vault


@pytest.mark.parametrize("name", ["demo_db_password", "demo_ca"])
def test_secret_without_rotation_is_refused_and_nothing_changes(tmp_path: Path, name: str) -> None:
    repo, inv, _ = generated(tmp_path)
    vault = (inv / s.VAULT_FILE).read_bytes()
    with pytest.raises(s.SecretError, match=rf"{name} cannot be rotated by sciplat.*roles/demo/meta/secrets.yml"):
        s.rotate(inv, repo, name, platform_name="lab", ca_validity_days=30)
    assert (inv / s.VAULT_FILE).read_bytes() == vault


def test_secret_not_generated_yet_is_refused(tmp_path: Path) -> None:
    repo, inv = fake_repo(tmp_path), tmp_path / "inv"
    inv.mkdir()
    with pytest.raises(s.SecretError, match="has not been generated yet"):
        s.rotate(inv, repo, "demo_key", platform_name="lab", ca_validity_days=30)
    assert not (inv / s.VAULT_FILE).exists()


def test_a_ca_cannot_declare_rotation(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path, "secrets:\n  demo_ca: {kind: x509_ca, rotation: {tags: [pki]}}\n")
    with pytest.raises(s.SecretError, match="x509_ca secret cannot declare rotation"):
        s.declarations(repo)


def test_rotation_needs_tags(tmp_path: Path) -> None:
    repo = fake_repo(tmp_path, "secrets:\n  demo_key: {kind: hex, rotation: {tags: []}}\n")
    with pytest.raises(s.SecretError, match="invalid secret declaration"):
        s.declarations(repo)


def test_every_rotation_in_the_repository_names_tags_of_the_site_playbook() -> None:
    tags: set[str] = set()
    for play in yaml.safe_load((REPO / "playbooks" / "site.yml").read_text()):
        tags.update(play.get("tags", []))
    rotatable = {n: d.decl.rotation for n, d in s.declarations(REPO).items() if d.decl.rotation}
    assert "slurm_controller_munge_key" in rotatable
    for name, rotation in rotatable.items():
        assert rotation is not None and set(rotation.tags) <= tags, f"{name}: {rotation}"


# ------------------------------------------------------------------ the command


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "site"
    shutil.copytree(REPO / "inventories" / "example-site", inv)
    return inv


def vault_of(inv: Path) -> dict[str, Any]:
    platform = yaml.safe_load((inv / "platform.yaml").read_text())["platform"]["name"]
    password, _ = s.password_source(platform)
    return s.read_vault(inv / s.VAULT_FILE, password)


def fake_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_with_vault(inventory: Path, password: str, playbook: str, **kwargs: Any) -> runner_mod.RunResult:
        calls.append({"playbook": playbook, "vault": vault_of(inventory)} | kwargs)
        return runner_mod.RunResult(returncode=0, log_path=tmp_path / "run.log", duration=1.0)

    monkeypatch.setattr(runner_mod, "run_with_vault", run_with_vault)
    return calls


def test_command_rotates_and_says_what_to_run_next(
    inventory: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_up(monkeypatch, tmp_path)
    assert CliRunner().invoke(app, ["up", "-i", str(inventory)]).exit_code == 0  # the vault exists
    before = vault_of(inventory)
    calls.clear()
    done = CliRunner().invoke(app, ["secrets", "rotate", "slurm_controller_munge_key", "-i", str(inventory), "--yes"])
    assert done.exit_code == 0, done.output
    after = vault_of(inventory)
    assert after["slurm_controller_munge_key"] != before["slurm_controller_munge_key"]
    assert {k: v for k, v in after.items() if k != "slurm_controller_munge_key"} == {
        k: v for k, v in before.items() if k != "slurm_controller_munge_key"
    }
    assert f"sciplat up -i {inventory} --tags slurm" in done.output
    assert (
        before["slurm_controller_munge_key"] not in done.output
        and after["slurm_controller_munge_key"] not in done.output
    )
    assert calls == []  # nothing deployed without --apply


def test_command_with_apply_deploys_the_rotation_tags(
    inventory: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = fake_up(monkeypatch, tmp_path)
    assert CliRunner().invoke(app, ["up", "-i", str(inventory)]).exit_code == 0
    before = vault_of(inventory)["slurm_controller_munge_key"]
    calls.clear()
    args = ["secrets", "rotate", "slurm_controller_munge_key", "-i", str(inventory), "--yes", "--apply"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    (call,) = calls
    assert call["playbook"] == "site.yml" and call["tags"] == ["slurm"] and call["limit"] is None
    # the run already sees the new key
    assert call["vault"]["slurm_controller_munge_key"] != before


def test_command_refuses_the_ca_and_needs_confirmation(
    inventory: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_up(monkeypatch, tmp_path)
    assert CliRunner().invoke(app, ["up", "-i", str(inventory)]).exit_code == 0
    before = (inventory / s.VAULT_FILE).read_bytes()
    refused = CliRunner().invoke(app, ["secrets", "rotate", "pki_ca", "-i", str(inventory)])
    assert refused.exit_code == 1 and "pki_ca cannot be rotated by sciplat" in refused.output
    unconfirmed = CliRunner().invoke(app, ["secrets", "rotate", "slurm_controller_munge_key", "-i", str(inventory)])
    assert unconfirmed.exit_code == 1 and "add --yes" in unconfirmed.output
    assert (inventory / s.VAULT_FILE).read_bytes() == before
