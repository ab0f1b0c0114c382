"""The Grafana dashboards (roles/grafana/files/dashboards/*.json): each parses,
has a unique uid, uses the provisioned Prometheus datasource, and every panel
has PromQL queries that Prometheus's parser accepts (`promtool check rules` on
a rule file made of them). tests/integration/test_dashboards.py checks that they
return data on the test bed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

DASHBOARDS_DIR = REPO / "roles" / "grafana" / "files" / "dashboards"
DASHBOARDS = sorted(DASHBOARDS_DIR.glob("*.json"))
DATASOURCE_UID = "sciplat-prometheus"
# component -> the host group whose hosts must exist for its queries to have data
COMPONENT_GROUPS = {
    "hosts": "all",
    "monitoring": "monitor",
    "probe": "monitor",
    "postgresql": "db",
    "gateway": "gateway",
    "hub": "hub",
    "ceph": "storage",
    "slurm": "slurm_controller",
}
EXPECTED = {"overview", "hub", "storage", "slurm", "postgresql", "hosts"}


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a JSON object"
    return data


def dashboard_component(dashboard: dict[str, Any]) -> str:
    tags = [t for t in dashboard.get("tags", []) if isinstance(t, str) and t.startswith("component:")]
    assert len(tags) == 1, f"{dashboard.get('uid')}: needs exactly one tag component:<name>, has {tags}"
    return tags[0].split(":", 1)[1]


def queries(path: Path) -> list[tuple[str, str, str, str | None]]:
    """(panel title, component, expr, may-be-empty reason) of every query of a dashboard."""
    dashboard = load(path)
    default = dashboard_component(dashboard)
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(
                (
                    str(panel.get("title")),
                    str(panel.get("sciplat_component", default)),
                    str(target.get("expr", "")),
                    panel.get("sciplat_may_be_empty"),
                )
            )
    return found


def test_every_dashboard_is_there() -> None:
    assert {p.stem for p in DASHBOARDS} == EXPECTED


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert dashboard.get("uid", "").startswith("sciplat-") and dashboard.get("title")
    assert dashboard_component(dashboard) in COMPONENT_GROUPS
    panels = dashboard.get("panels")
    assert isinstance(panels, list) and panels, f"{path.name}: no panels"
    ids = [p.get("id") for p in panels]
    assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat: {ids}"
    for panel in panels:
        title = panel.get("title")
        assert title, f"{path.name}: a panel without a title"
        assert panel.get("datasource", {}).get("uid") == DATASOURCE_UID, f"{path.name}/{title}: datasource"
        assert panel.get("sciplat_component", "hosts") in COMPONENT_GROUPS, f"{path.name}/{title}: component"
        targets = panel.get("targets")
        assert isinstance(targets, list) and targets, f"{path.name}/{title}: no query"
        for target in targets:
            assert str(target.get("expr", "")).strip(), f"{path.name}/{title}: empty query"
            assert "$" not in target["expr"], f"{path.name}/{title}: template variables cannot be checked"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (Debian package prometheus)")
def test_every_query_parses(tmp_path: Path) -> None:
    rules = [
        {"record": f"sciplat:check_{i}", "expr": expr}
        for i, (_, _, expr, _) in enumerate(q for path in DASHBOARDS for q in queries(path))
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_datasource_uid_matches_provisioning() -> None:
    text = (REPO / "roles" / "grafana" / "templates" / "datasource.yml.j2").read_text()
    assert f"uid: {DATASOURCE_UID}" in text
