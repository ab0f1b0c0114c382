"""The deployed test bed as an operator sees it: re-runs, check mode, secrets, status."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import INVENTORY, PUBLIC_URL, probe_afresh, sciplat

VAULT = INVENTORY / "secrets.vault.yml"


def test_second_run_changes_nothing_and_keeps_secrets(deployed: dict[str, Any], secret: Callable[[str], Any]) -> None:
    vault_before = hashlib.sha256(VAULT.read_bytes()).hexdigest()
    ca_before = secret("pki_ca")["cert"]
    summary = json.loads(sciplat("up", "-i", str(INVENTORY), "--json").stdout)
    assert summary["ok"]
    assert set(summary["hosts"]) == {"gw", "data", "c1", "c2"}
    changed = {host: stats["changed"] for host, stats in summary["hosts"].items()}
    assert changed == dict.fromkeys(changed, 0), f"not idempotent: {summary['changed_tasks']}"
    assert hashlib.sha256(VAULT.read_bytes()).hexdigest() == vault_before, "the vault was rewritten"
    assert (INVENTORY / "pki" / "ca.crt").read_text() == ca_before


def test_check_mode_on_a_converged_bed_reports_no_changes(deployed: dict[str, Any]) -> None:
    summary = json.loads(sciplat("up", "-i", str(INVENTORY), "--check", "--json").stdout)
    assert summary["ok"] and summary["check"]
    assert summary["changed_tasks"] == []


def test_status_json_lists_every_host_and_service_healthy(deployed: dict[str, Any]) -> None:
    done = sciplat("status", "-i", str(INVENTORY), "--json", check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report, indent=2)
    assert report["healthy"] and report["url"] == PUBLIC_URL
    assert report["endpoint"]["healthy"]
    services = {host: {s["name"] for s in rep["services"]} for host, rep in report["hosts"].items()}
    assert services["gw"] >= {"sshd", "firewall", "node_exporter", "gateway", "prometheus", "alertmanager"}
    assert services["data"] >= {"sshd", "firewall", "node_exporter", "postgresql", "postgres_exporter"}
    assert services["c1"] == services["c2"]
    assert services["c1"] >= {"sshd", "firewall", "node_exporter", "munge", "slurmd", "cephfs-home"}


def test_secrets_show_prints_one_secret(deployed: dict[str, Any], secret: Callable[[str], Any]) -> None:
    shown = sciplat("secrets", "show", "pki_ca.cert", "-i", str(INVENTORY)).stdout
    assert shown == secret("pki_ca")["cert"]
    missing = sciplat("secrets", "show", "no_such_secret", "-i", str(INVENTORY), check=False)
    assert missing.returncode == 1 and "no secret named" in missing.stderr


@pytest.mark.destructive
def test_status_reports_a_stopped_postgresql(deployed: dict[str, Any], host_of: Callable[[str], Any]) -> None:
    data = host_of("data")
    data.run("systemctl stop postgresql@15-main.service")
    try:
        done = sciplat("status", "-i", str(INVENTORY), "--json", check=False)
        report = json.loads(done.stdout)
        assert done.returncode != 0 and not report["healthy"]
        (pg,) = [s for s in report["hosts"]["data"]["services"] if s["name"] == "postgresql"]
        assert not pg["healthy"] and pg["state"] == "inactive"
        # the synthetic user rightly notices the outage (the hub keeps its state in PostgreSQL)
        others = [s for h, r in report["hosts"].items() for s in r["services"] if h != "data" and s["name"] != "probe"]
        assert all(s["healthy"] for s in others), "only PostgreSQL (and its exporter) should be reported"
    finally:
        data.run("systemctl start postgresql@15-main.service")
    probe_afresh(host_of)
    done = sciplat("status", "-i", str(INVENTORY), check=False)
    assert done.returncode == 0, done.stdout[-3000:]
