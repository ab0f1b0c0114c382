"""platform.yaml monitoring.enabled turns Prometheus, Alertmanager and every
exporter on or off: the rendered role variables, and which services
`sciplat status` expects."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat.status import SERVICES, service_enabled


def spec(enabled: bool) -> PlatformSpec:
    return PlatformSpec.model_validate(
        {"platform": {"name": "lab", "domain": "lab.example.org"}, "monitoring": {"enabled": enabled}}
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_monitoring_switch_is_rendered_for_every_monitoring_role(enabled: bool) -> None:
    values = role_vars(spec(enabled), Path("/inv"))
    assert values["monitor_enabled"] is enabled
    assert values["node_exporter_enabled"] is enabled


def expected_services(hostvars: dict[str, object]) -> set[str]:
    return {s.name for s in SERVICES if service_enabled(s, hostvars)}


def test_status_skips_monitoring_services_when_turned_off() -> None:
    monitoring = {"node_exporter", "prometheus", "alertmanager", "postgres_exporter", "nginx_exporter"}
    assert monitoring <= expected_services({})
    assert monitoring <= expected_services({"monitor_enabled": True, "node_exporter_enabled": True})
    off = expected_services({"monitor_enabled": False, "node_exporter_enabled": False})
    assert not (monitoring & off)
    assert {"sshd", "gateway", "postgresql"} <= off
    # operators' group_vars may spell it as a string
    assert "nginx_exporter" not in expected_services({"monitor_nginx_exporter_enabled": "false"})
