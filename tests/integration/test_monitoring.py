"""Monitoring on the deployed test bed: every scrape target is up, the exporters
are reachable from the monitor host only, stopping PostgreSQL delivers a
PostgreSQLDown alert to the test receiver, then its resolution, and
monitoring.enabled: false stops every exporter.

Test bed: gw = monitor and gateway (Prometheus, Alertmanager, the test
receiver, the nginx exporter), data = db. The hosts and groups come from the
bed's hosts.yml, so a smaller bed (gw and data only) works too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import INVENTORY, probe_afresh, sciplat
from tests.integration.test_common import address_of, tcp_from_host

MONITOR = "gw"
DB = "data"
GATEWAY = "gw"


def inventory_groups() -> dict[str, list[str]]:
    """Host groups of the bed (hosts.yml): every child group and `all`."""
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]
    groups = {name: sorted((body or {}).get("hosts") or {}) for name, body in (inventory.get("children") or {}).items()}
    groups["all"] = sorted(inventory.get("hosts") or {})
    return groups


HOSTS = inventory_groups()["all"]


def expected_targets() -> set[tuple[str, str]]:
    """(job, instance) of every target the bed's Prometheus must scrape."""
    groups = inventory_groups()
    expected = {("node", name) for name in groups["all"]}
    expected |= {("postgres", name) for name in groups.get("db", [])}
    expected |= {("nginx", name) for name in groups.get("gateway", [])}
    expected |= {("prometheus", name) for name in groups.get("monitor", [])}
    expected |= {("alertmanager", name) for name in groups.get("monitor", [])}
    if (REPO / "roles" / "hub" / "tasks" / "main.yml").is_file():
        expected |= {("hub", name) for name in groups.get("hub", [])}
    # targets other components declare (ceph, slurm, ...) are checked too: every
    # target Prometheus has must be up (test_every_scrape_target_is_up)
    return expected


PROMETHEUS = "http://127.0.0.1:9090"
RECEIVER = "http://127.0.0.1:9095/"
POSTGRESQL_UNIT = "postgresql@15-main.service"


def get_json(host: Any, url: str) -> Any:
    """GET a URL on a test-bed host (its loopback) and parse the JSON answer."""
    return json.loads(host.check_output(f"curl -fsS --max-time 10 {url}"))


def targets(host: Any) -> list[dict[str, Any]]:
    data = get_json(host, f"{PROMETHEUS}/api/v1/targets?state=active")
    return list(data["data"]["activeTargets"])


def wait_targets_up(
    host: Any, expected: set[tuple[str, str]], timeout: float = 90, every: bool = False
) -> list[dict[str, Any]]:
    """Wait until every (job, instance) in `expected` (and with `every`, every active
    target) is scraped and up; return the targets."""
    deadline = time.monotonic() + timeout
    while True:
        found = targets(host)
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in found}
        if every:
            expected = expected | set(health)
        if expected <= set(health) and all(health[key] == "up" for key in expected):
            return found
        if time.monotonic() > deadline:
            bad = {
                f"{job}/{instance}": health.get((job, instance), "missing")
                for job, instance in sorted(expected)
                if health.get((job, instance)) != "up"
            }
            errors = {
                f"{t['labels']['job']}/{t['labels']['instance']}": t["lastError"] for t in found if t["lastError"]
            }
            raise AssertionError(f"scrape targets not up after {timeout:.0f}s: {bad}; errors: {errors}")
        time.sleep(5)


def notifications(host: Any, since: float) -> list[dict[str, Any]]:
    """Alerts (with the notification's status) the test receiver got after `since` (host clock)."""
    alerts = []
    for record in get_json(host, RECEIVER):
        if record["received_at"] < since:
            continue
        for alert in record["payload"].get("alerts", []):
            alerts.append({**alert, "received_at": record["received_at"]})
    return alerts


def wait_for_alert(host: Any, name: str, instance: str, status: str, since: float, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for alert in notifications(host, since):
            labels = alert.get("labels", {})
            if labels.get("alertname") == name and labels.get("instance") == instance and alert["status"] == status:
                return alert
        if time.monotonic() > deadline:
            got = [
                (a["labels"].get("alertname"), a["labels"].get("instance"), a["status"])
                for a in notifications(host, since)
            ]
            raise AssertionError(f"no {status} {name} for {instance} within {timeout:.0f}s; received since: {got}")
        time.sleep(5)


def host_clock(host: Any) -> float:
    return float(host.check_output("date +%s.%N"))


def check_postgresql_down_is_delivered(monitor: Any, db: Any, db_name: str) -> None:
    """Stop PostgreSQL on `db`; the receiver on `monitor` gets PostgreSQLDown firing, then resolved."""
    try:
        since = host_clock(monitor)
        db.check_output(f"systemctl stop {POSTGRESQL_UNIT}")
        started = time.monotonic()
        firing = wait_for_alert(monitor, "PostgreSQLDown", db_name, "firing", since, timeout=180)
        fired_after = time.monotonic() - started
        assert firing["labels"]["severity"] == "critical"
        assert firing["annotations"].get("summary") and firing["annotations"].get("runbook")
        assert fired_after < 180, f"PostgreSQLDown reached the receiver after {fired_after:.0f}s"
    finally:
        db.run(f"systemctl start {POSTGRESQL_UNIT}")
        db.run("for i in $(seq 30); do pg_isready -q && break; sleep 1; done")
    assert db.service(POSTGRESQL_UNIT).is_running
    since = host_clock(monitor)
    wait_for_alert(monitor, "PostgreSQLDown", db_name, "resolved", since, timeout=180)


def test_every_scrape_target_is_up(host_of: Callable[[str], Any]) -> None:
    expected = expected_targets()
    found = wait_targets_up(host_of(MONITOR), expected, every=True)
    down = [f"{t['labels']['job']}/{t['labels']['instance']}: {t['lastError']}" for t in found if t["health"] != "up"]
    assert not down, f"targets down: {down}"


def test_alert_rules_are_loaded(host_of: Callable[[str], Any]) -> None:
    data = get_json(host_of(MONITOR), f"{PROMETHEUS}/api/v1/rules")
    names = {rule["name"] for group in data["data"]["groups"] for rule in group["rules"]}
    assert {"HostDown", "PostgreSQLDown", "FilesystemAlmostFull", "SystemdUnitFailed"} <= names, names


def test_prometheus_and_alertmanager_listen_on_loopback_only(host_of: Callable[[str], Any]) -> None:
    monitor = host_of(MONITOR)
    for port in (9090, 9093, 9095):
        assert monitor.socket(f"tcp://127.0.0.1:{port}").is_listening, f"nothing on 127.0.0.1:{port}"
        assert not monitor.socket(f"tcp://0.0.0.0:{port}").is_listening, f"port {port} listens on every address"
    assert monitor.service("prometheus.service").is_running
    assert monitor.service("prometheus-alertmanager.service").is_running
    assert monitor.service("sciplat-alert-receiver.service").is_running


def test_exporters_answer_the_monitor_host_only(host_of: Callable[[str], Any]) -> None:
    data, gateway = address_of(DB), address_of(GATEWAY)
    assert tcp_from_host(host_of(MONITOR), data, 9100) == "open"
    assert tcp_from_host(host_of(MONITOR), data, 9187) == "open"
    outsider = "c1" if "c1" in HOSTS else DB  # a host that is not the monitor host
    if outsider != DB:
        assert tcp_from_host(host_of(outsider), data, 9100) == "dropped"
        assert tcp_from_host(host_of(outsider), data, 9187) == "dropped"
    assert tcp_from_host(host_of(outsider), gateway, 9100) == "dropped"
    assert tcp_from_host(host_of(outsider), gateway, 9113) == "dropped"


def test_nginx_stub_status_is_on_loopback_only(host_of: Callable[[str], Any]) -> None:
    gateway = host_of(GATEWAY)
    assert gateway.socket("tcp://127.0.0.1:8089").is_listening
    assert not gateway.socket("tcp://0.0.0.0:8089").is_listening
    page = gateway.check_output("curl -fsS --max-time 5 http://127.0.0.1:8089/stub_status")
    assert page.startswith("Active connections:"), page
    # the exporter turns it into metrics, and nginx counts the requests users make
    data = get_json(host_of(MONITOR), f"{PROMETHEUS}/api/v1/query --data-urlencode 'query=nginx_up{{job=\"nginx\"}}'")
    values = {r["metric"]["instance"]: r["value"][1] for r in data["data"]["result"]}
    assert values.get(GATEWAY) == "1", values


def test_certificate_expiry_metric(host_of: Callable[[str], Any]) -> None:
    data = get_json(
        host_of(MONITOR),
        f"{PROMETHEUS}/api/v1/query --data-urlencode 'query=sciplat_tls_cert_expiry_timestamp_seconds'",
    )
    instances = {r["metric"]["instance"] for r in data["data"]["result"]}
    assert set(HOSTS) <= instances, f"certificate expiry metric only from {sorted(instances)}"
    for result in data["data"]["result"]:
        assert float(result["value"][1]) > time.time(), f"expired: {result['metric']}"


def test_new_alert_rules_are_loaded(host_of: Callable[[str], Any]) -> None:
    data = get_json(host_of(MONITOR), f"{PROMETHEUS}/api/v1/rules")
    names = {rule["name"] for group in data["data"]["groups"] for rule in group["rules"]}
    expected = {
        "GatewayDown",
        "CephHealthError",
        "SlurmNodeDown",
        "SlurmNodeDrainedTooLong",
        "HubSpawnFailures",
        "HubSpawnSlow",
        "BackupTooOld",
        "SyntheticUserStepFailing",
        "TLSCertificateExpiringSoon",
    }
    assert expected <= names, sorted(expected - names)


def test_component_alerts_stay_quiet_on_a_healthy_bed(host_of: Callable[[str], Any]) -> None:
    """Rules for components the bed does not run, or runs healthily, are neither pending nor firing."""
    data = get_json(host_of(MONITOR), f"{PROMETHEUS}/api/v1/rules?type=alert")
    groups = {"sciplat-ceph", "sciplat-slurm", "sciplat-hub", "sciplat-backup", "sciplat-probe", "sciplat-nginx"}
    loaded = {group["name"] for group in data["data"]["groups"]}
    assert groups <= loaded, sorted(groups - loaded)
    monitor = host_of(MONITOR)
    active = active_alerts(data, groups)
    probe_said = ""
    if any(name == "SyntheticUserStepFailing" for name, *_ in active):
        # One failed probe run makes its alert pending (firing takes 10 minutes of
        # failures): a run that fell into an earlier test's load or outage. Keep what
        # it said, run it again on the bed as it is now, and let Prometheus see it.
        probe_said = monitor.run("journalctl -u sciplat-probe -n 30 --no-pager").stdout
        probe_afresh(host_of)
        deadline = time.monotonic() + 120
        while active and time.monotonic() < deadline:
            time.sleep(10)
            active = active_alerts(get_json(monitor, f"{PROMETHEUS}/api/v1/rules?type=alert"), groups)
    assert not active, (active, probe_said)


def active_alerts(rules: dict[str, Any], groups: set[str]) -> list[tuple[str, str, str, str]]:
    """(alert, instance, step, state) of every pending or firing alert of GROUPS."""
    return [
        (rule["name"], alert["labels"].get("instance", ""), alert["labels"].get("step", ""), alert["state"])
        for group in rules["data"]["groups"]
        if group["name"] in groups
        for rule in group["rules"]
        for alert in rule.get("alerts", [])
    ]


@pytest.mark.destructive
def test_monitoring_disabled_stops_every_exporter(host_of: Callable[[str], Any]) -> None:
    """monitoring.enabled: false (rendered as these two variables) stops and disables them; on again starts them."""
    units = {
        MONITOR: ["prometheus", "prometheus-alertmanager", "prometheus-node-exporter"],
        DB: ["prometheus-postgres-exporter", "prometheus-node-exporter"],
        GATEWAY: ["prometheus-nginx-exporter"],
    }
    off = json.dumps({"monitor_enabled": False, "node_exporter_enabled": False})
    try:
        sciplat("up", "-i", str(INVENTORY), "--tags", "monitoring", "--extra-vars", off)
        for name, services in units.items():
            for unit in services:
                service = host_of(name).service(unit)
                assert not service.is_running and not service.is_enabled, f"{unit} on {name} still on"
    finally:
        sciplat("up", "-i", str(INVENTORY), "--tags", "monitoring")
    for name, services in units.items():
        for unit in services:
            service = host_of(name).service(unit)
            assert service.is_running and service.is_enabled, f"{unit} on {name} not back"
    wait_targets_up(host_of(MONITOR), expected_targets())


@pytest.mark.destructive
def test_postgresql_down_alert_is_delivered(host_of: Callable[[str], Any]) -> None:
    wait_targets_up(host_of(MONITOR), {("postgres", DB)})
    check_postgresql_down_is_delivered(host_of(MONITOR), host_of(DB), DB)
