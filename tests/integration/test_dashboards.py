"""Every Grafana dashboard query (roles/grafana/files/dashboards) is accepted by
the test bed's Prometheus and returns data — without Grafana.

A query needs data only when the bed deploys the component it belongs to: the
component's host group has hosts in the bed's hosts.yml and the component is
not listed in `sciplat_test_absent_components` in the bed's group_vars/all.yml
(docs/monitoring.md, "Dashboards and Grafana"). Panels marked
`sciplat_may_be_empty` (series that appear only after some activity) must be
valid but may be empty.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY
from tests.integration.test_monitoring import MONITOR, PROMETHEUS, inventory_groups
from tests.unit.test_dashboards import COMPONENT_GROUPS, DASHBOARDS, queries


def absent_components() -> set[str]:
    path = INVENTORY / "group_vars" / "all.yml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    listed = (data or {}).get("sciplat_test_absent_components") or []
    unknown = set(listed) - set(COMPONENT_GROUPS)
    assert not unknown, f"{path}: sciplat_test_absent_components names unknown components {sorted(unknown)}"
    return set(listed)


def deployed_components() -> set[str]:
    groups = inventory_groups()
    return {c for c, group in COMPONENT_GROUPS.items() if groups.get(group)} - absent_components()


def query(host: Any, expr: str) -> dict[str, Any]:
    """Run an instant query on the bed's Prometheus; return its JSON answer (errors included)."""
    command = f"curl -sS --max-time 20 {PROMETHEUS}/api/v1/query --data-urlencode {shlex.quote('query=' + expr)}"
    answer: dict[str, Any] = json.loads(host.check_output(command))
    return answer


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_query_returns_data(host_of: Callable[[str], Any], path: Any) -> None:
    monitor = host_of(MONITOR)
    deployed = deployed_components()
    pending = list(queries(path))
    deadline = time.monotonic() + 90  # rate() windows need a few scrapes after a fresh deploy
    while True:
        invalid, empty = [], []
        for title, component, expr, may_be_empty in pending:
            answer = query(monitor, expr)
            if answer.get("status") != "success":
                invalid.append(f"{title}: {answer.get('error')} in {expr}")
            elif not answer["data"]["result"] and component in deployed and not may_be_empty:
                empty.append((title, component, expr, may_be_empty))
        assert not invalid, "Prometheus refuses these queries:\n" + "\n".join(invalid)
        if not empty or time.monotonic() > deadline:
            break
        pending = empty
        time.sleep(10)
    assert not empty, f"queries without data (deployed components: {sorted(deployed)}):\n" + "\n".join(
        f"{title} [{component}]: {expr}" for title, component, expr, _ in empty
    )
