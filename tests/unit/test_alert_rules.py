"""The monitor role's alert rules: valid (`promtool check rules`), unit-tested
(`promtool test rules`), and documented (annotations and docs/monitoring.md).

promtool and amtool come from the Debian packages prometheus and
prometheus-alertmanager (scripts/install-system-deps.sh installs them).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

RULES_DIR = REPO / "roles" / "monitor" / "files" / "rules"
TESTS_DIR = RULES_DIR / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.yml"))

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: install the Debian package prometheus (scripts/install-system-deps.sh)",
)


def alerts_in(path: Path) -> list[dict[str, object]]:
    data = yaml.safe_load(path.read_text())
    return [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]


def all_alerts() -> dict[str, dict[str, object]]:
    return {str(rule["alert"]): rule for path in RULE_FILES for rule in alerts_in(path)}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, check=False)


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES, f"no rule files in {RULES_DIR}"
    assert TEST_FILES, f"no promtool test files in {TESTS_DIR}"


@needs_promtool
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    done = run(str(PROMTOOL), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_file_has_a_test_file() -> None:
    tested = set()
    for path in TEST_FILES:
        for rule_file in yaml.safe_load(path.read_text()).get("rule_files", []):
            tested.add((path.parent / rule_file).resolve())
    untested = [p.name for p in RULE_FILES if p.resolve() not in tested]
    assert not untested, f"rule files without a promtool test in {TESTS_DIR}: {untested}"


def test_every_alert_is_unit_tested() -> None:
    tested: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    tested.add(check["alertname"])
    missing = sorted(set(all_alerts()) - tested)
    assert not missing, f"alerts without a promtool test that expects them to fire: {missing}"


@pytest.mark.parametrize("name", sorted(all_alerts()))
def test_alert_has_severity_summary_and_runbook(name: str) -> None:
    rule = all_alerts()[name]
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    assert isinstance(labels, dict) and labels.get("severity") in ("critical", "warning"), (
        f"alert {name}: labels.severity must be critical or warning (Alertmanager routes on it)"
    )
    assert isinstance(annotations, dict) and annotations.get("summary"), f"alert {name}: annotation summary missing"
    assert annotations.get("runbook"), f"alert {name}: annotation runbook (what to do) missing"


def test_every_alert_is_documented() -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    missing = [name for name in all_alerts() if f"`{name}`" not in text]
    assert not missing, f"docs/monitoring.md has no table row for: {missing}"


AMTOOL = shutil.which("amtool")


@pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is missing: install the Debian package prometheus-alertmanager (scripts/install-system-deps.sh)",
)
def test_amtool_accepts_a_rendered_alertmanager_config(tmp_path: Path) -> None:
    """The template's output for email + webhook routes and the test receiver passes amtool."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / "roles" / "monitor" / "templates"))
    env.filters["to_json"] = json.dumps
    text = env.get_template("alertmanager.yml.j2").render(
        ansible_managed="test",
        monitor_alert_routes=[
            {
                "type": "email",
                "to": "ops@example.org",
                "smtp_host": "smtp.example.org",
                "smtp_port": 587,
                "severity": "critical",
            },
            {"type": "webhook", "url": "https://chat.example.org/hook", "severity": "all"},
        ],
        monitor_alert_email_from="alertmanager@example.org",
        monitor_alertmanager_group_wait="30s",
        monitor_alertmanager_group_interval="5m",
        monitor_alertmanager_repeat_interval="4h",
        monitor_test_receiver=True,
        monitor_test_receiver_port=9095,
    )
    config = tmp_path / "alertmanager.yml"
    config.write_text(text)
    done = run(str(AMTOOL), "check-config", str(config))
    assert done.returncode == 0, text + done.stdout + done.stderr
    routes = yaml.safe_load(text)["route"]["routes"]
    assert routes[0]["matchers"] == ['severity="critical"']
    assert "matchers" not in routes[1]
    assert routes[2]["receiver"] == "test-receiver"


def _template(name: str) -> object:
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / "roles" / "monitor" / "templates"))
    env.filters["to_json"] = json.dumps
    return env.get_template(name)


def _monitor_filters() -> Any:
    spec = importlib.util.spec_from_file_location(
        "sciplat_monitor", REPO / "roles" / "monitor" / "filter_plugins" / "sciplat_monitor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DECLARED_TARGETS = [
    {"job": "node", "group": "all", "port": 9100},
    {"job": "postgres", "group": "db", "port": "9187"},
    {"job": "hub", "group": "hub", "port": 8000, "path": "/hub/metrics", "bearer_token": "s3cret"},
    {"job": "ceph", "group": "storage", "port": 9283, "scheme": "https"},
    {"job": "slurm", "group": "slurm_controller", "port": 9341},
]


@needs_promtool
def test_promtool_accepts_a_rendered_prometheus_config(tmp_path: Path) -> None:
    """One job per declared target, one target per host of its group; empty groups give no job."""
    hostvars = {
        "gw": {"ansible_host": "10.0.0.10"},
        "data": {"ansible_host": "10.0.0.11", "monitor_scrape_address": "data.internal"},
        "c1": {},
    }
    groups = {"all": ["gw", "data", "c1"], "db": ["data"], "monitor": ["gw"], "hub": ["gw"], "storage": ["data"]}
    filters = _monitor_filters()
    assert filters.target_errors(DECLARED_TARGETS, groups) == []
    text = _template("prometheus.yml.j2").render(  # type: ignore[attr-defined]
        ansible_managed="test",
        inventory_hostname="gw",
        hostvars=hostvars,
        groups=groups,
        monitor_scrape_interval="15s",
        monitor_evaluation_interval="15s",
        monitor_prometheus_listen_address="127.0.0.1",
        monitor_prometheus_port=9090,
        monitor_alertmanager_listen_address="127.0.0.1",
        monitor_alertmanager_port=9093,
        monitor_scrape_ca_file=str(tmp_path / "ca.crt"),
        __monitor_targets=filters.targets(DECLARED_TARGETS),
        __monitor_rules_dir=str(tmp_path / "rules"),
        __monitor_token_dir=str(tmp_path / "tokens"),
    )
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "hub").write_text("s3cret\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    done = run(str(PROMTOOL), "check", "config", str(config))
    assert done.returncode == 0, text + done.stdout + done.stderr
    assert "s3cret" not in text, "the bearer token belongs in its file, not in prometheus.yml"
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    assert set(jobs) == {"prometheus", "alertmanager", "node", "postgres", "hub", "ceph"}, "slurm_controller is empty"
    node = {sc["labels"]["instance"]: sc["targets"] for sc in jobs["node"]["static_configs"]}
    assert node == {"c1": ["c1:9100"], "data": ["data.internal:9100"], "gw": ["10.0.0.10:9100"]}
    assert jobs["postgres"]["static_configs"] == [{"targets": ["data.internal:9187"], "labels": {"instance": "data"}}]
    assert jobs["postgres"]["metrics_path"] == "/metrics" and jobs["postgres"]["scheme"] == "http"
    assert jobs["hub"]["metrics_path"] == "/hub/metrics"
    assert jobs["hub"]["authorization"] == {"type": "Bearer", "credentials_file": str(tmp_path / "tokens" / "hub")}
    assert "authorization" not in jobs["node"]
    assert jobs["ceph"]["scheme"] == "https" and jobs["ceph"]["tls_config"]["ca_file"] == str(tmp_path / "ca.crt")


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([{"job": "node", "group": "all", "port": 9100}, {"job": "node", "group": "db", "port": 1}], "declared twice"),
        ([{"job": "prometheus", "group": "all", "port": 9100}], "the monitor role's own"),
        ([{"job": "Bad-Name", "group": "all", "port": 9100}], "job must be"),
        ([{"job": "x", "group": "all", "port": 70000}], "port must be"),
        ([{"job": "x", "group": "all", "port": 1, "scheme": "ftp"}], "scheme must be"),
        ([{"job": "x", "group": "all", "port": 1, "path": "metrics"}], "path must be"),
        ([{"job": "x", "group": "all", "port": 1, "token": "t"}], "unknown keys"),
        ([{"job": "x", "port": 1}], "group must"),
        ("node", "must be a list"),
    ],
)
def test_bad_target_declarations_are_explained(items: Any, expected: str) -> None:
    errors = _monitor_filters().target_errors(items, {"all": ["gw"]})
    assert any(expected in e for e in errors), errors
