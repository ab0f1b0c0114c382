"""The versions file, `--to` overrides and the per-host targets of `sciplat upgrade`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import yaml

from sciplat.commands import upgrade as up
from tests.conftest import REPO


def test_versions_file_pins_every_hub_and_platform_code_package() -> None:
    versions = up.load_versions(REPO)
    assert versions["hub"]["jupyterhub"] and versions["hub"]["jupyterlab"]
    assert versions["hub_proxy"]["configurable-http-proxy"]
    for section in ("hub", "hub_proxy", "platform_code"):
        for name, version in versions[section].items():
            assert re.fullmatch(r"\d+(\.\d+)+", str(version)), f"{section}.{name}: {version!r} is not an exact version"


def test_no_pip_pin_outside_the_versions_file() -> None:
    """Every `name==version` the components declare comes from sciplat_versions."""
    for path in (REPO / "playbooks" / "group_vars" / "all").glob("*.yml"):
        if path.name == "versions.yml":
            continue
        for line in path.read_text().splitlines():
            assert not re.search(r"==\s*\d", line), f"{path.name}: a literal pin {line.strip()!r}; use sciplat_versions"
    assert not (REPO / "roles" / "hub" / "vars" / "versions.yml").exists()


def test_hub_role_reads_the_versions_file() -> None:
    defaults = yaml.safe_load((REPO / "roles" / "hub" / "defaults" / "main.yml").read_text())
    assert "sciplat_versions.hub" in defaults["hub_python_packages"]
    assert "sciplat_versions.hub_proxy" in defaults["hub_proxy_version"]


def test_to_name_equals_version_changes_every_place_it_is_pinned() -> None:
    versions = up.load_versions(REPO)
    out = up.apply_overrides(versions, ["jupyterhub=9.9.9", "munge=0.5.15-2"])
    assert out["hub"]["jupyterhub"] == "9.9.9"
    assert out["notebook"]["jupyterhub"] == "9.9.9", "the servers' jupyterhub-singleuser follows the hub"
    assert out["debian"]["compute"]["munge"] == "0.5.15-2"
    assert out["debian"]["slurm_controller"]["munge"] == "0.5.15-2"
    assert versions["hub"]["jupyterhub"] != "9.9.9", "the loaded versions are not modified"


def test_to_file_overlays_sections(tmp_path: Path) -> None:
    overlay = tmp_path / "v.yml"
    overlay.write_text("sciplat_versions:\n  hub:\n    jupyterlab: '4.0.0'\n")
    out = up.apply_overrides(up.load_versions(REPO), [str(overlay)])
    assert out["hub"]["jupyterlab"] == "4.0.0"
    assert out["hub"]["jupyterhub"] == up.load_versions(REPO)["hub"]["jupyterhub"]


@pytest.mark.parametrize("bad", ["nosuchthing=1.0", "/nonexistent/versions.yml"])
def test_to_refuses_unknown_names_and_files(bad: str) -> None:
    with pytest.raises(up.UpgradeError, match="--to"):
        up.apply_overrides(up.load_versions(REPO), [bad])


def test_host_targets_follow_groups() -> None:
    versions = up.load_versions(REPO)
    compute = up.host_targets(versions, ["compute"], {})
    assert "slurmd" in compute["debian"] and "slapd" not in compute["debian"]
    assert "sssd" in compute["debian"], "packages of group all apply everywhere"
    assert up.HUB_VENV_PYTHON not in compute["pip"] and not compute["npm"]
    assert compute["pip"][up.NOTEBOOK_VENV_PYTHON]["jupyterlab"] == versions["notebook"]["jupyterlab"]
    assert up.NOTEBOOK_VENV_PYTHON not in up.host_targets(versions, ["db"], {})["pip"]
    hub = up.host_targets(versions, ["hub", "gateway"], {})
    assert hub["pip"][up.HUB_VENV_PYTHON]["jupyterhub"] == versions["hub"]["jupyterhub"]
    assert "nginx" in hub["debian"]
    assert "boto3_aws" not in hub["pip"][up.PLATFORM_CODE_PYTHON]
    aws = up.host_targets(versions, ["hub"], {"sciplat_storage_backend": "s3"})
    assert aws["pip"][up.PLATFORM_CODE_PYTHON]["boto3"] == versions["platform_code"]["boto3_aws"]


def test_backup_adapter_calls_run_backup_now_and_stops_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from sciplat.commands import backup

    calls: list[tuple[Path, str]] = []

    def succeeding(inventory_dir: Path, what: str = "all") -> dict[str, object]:
        calls.append((inventory_dir, what))
        return {"ok": True}

    monkeypatch.setattr(backup, "run_backup_now", succeeding)
    up.run_backup(Path("inv"))
    assert calls == [(Path("inv"), "all")]

    def exiting(inventory_dir: Path, what: str = "all") -> dict[str, object]:
        raise typer.Exit(1)

    monkeypatch.setattr(backup, "run_backup_now", exiting)
    with pytest.raises(up.UpgradeError, match="failed \\(exit 1\\); nothing was upgraded"):
        up.run_backup(Path("inv"))

    def unsuccessful(inventory_dir: Path, what: str = "all") -> dict[str, object]:
        return {"ok": False}

    monkeypatch.setattr(backup, "run_backup_now", unsuccessful)
    with pytest.raises(up.UpgradeError, match="did not succeed; nothing was upgraded"):
        up.run_backup(Path("inv"))


def test_cli_offers_upgrade_with_its_options() -> None:
    from typer.testing import CliRunner

    from sciplat.cli import app

    done = CliRunner().invoke(app, ["upgrade", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    for option in ("--plan", "--to", "--serial", "--force", "--skip-backup", "--drain-timeout", "--tier", "--json"):
        assert option in done.output
    assert "DANGEROUS" in done.output


def test_upgrade_playbook_runs_stateful_tiers_one_host_at_a_time() -> None:
    plays = yaml.safe_load((REPO / "playbooks" / "upgrade.yml").read_text())
    by_hosts = {play["hosts"]: play for play in plays}
    stateful = by_hosts["directory:db:storage:slurm_controller"]
    assert stateful["serial"] == 1 and stateful["any_errors_fatal"]
    compute = by_hosts["compute"]
    assert "upgrade_serial" in str(compute["serial"]) and compute["any_errors_fatal"]
    assert [p.get("hosts") for p in plays].index("hub") < [p.get("hosts") for p in plays].index("compute")
    tasks = yaml.safe_load((REPO / "playbooks" / "tasks" / "upgrade_compute.yml").read_text())
    block = next(t for t in tasks if "block" in t)
    assert any("RESUME" in str(t) for t in block["rescue"]), "a failed node is resumed"
