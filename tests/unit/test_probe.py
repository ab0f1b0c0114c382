"""The synthetic user (sciplat_hub.probe): which steps run and are exported, the
metrics file, `sciplat-probe status`, the hub service it signs in with, and the
spec fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat.status import SERVICES, service_enabled
from sciplat_hub import hub_config, probe


def settings(tmp_path: Path, **steps: bool) -> probe.Settings:
    return probe.Settings(
        public_url="https://platform.example.org",
        service_token="svc",
        ca_cert="",
        textfile_directory=str(tmp_path),
        steps=steps,
    )


class FakeProbe(probe.Probe):
    """Every hub and kernel call replaced; `fail` names the steps that raise."""

    def __init__(self, s: probe.Settings, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__(s)
        self.fail = fail
        self.calls: list[str] = []
        self.cells: list[str] = []

    def _maybe_fail(self, step: str) -> None:
        self.calls.append(step)
        if step in self.fail:
            raise probe.ProbeError(f"{step} is broken")

    def sign_in(self) -> None:
        self._maybe_fail("signin")

    def spawn(self) -> None:
        self._maybe_fail("spawn")

    def stop(self) -> None:
        self._maybe_fail("stop")

    def revoke_token(self) -> None:
        self.calls.append("revoke")

    def start_kernel(self) -> str:
        return "k1"

    def stop_kernel(self, kernel: str) -> None:
        self.calls.append("stop-kernel")

    def execute(self, kernel: str, code: str, timeout: float) -> str:
        for name, marker in (
            ("s3", "_sciplat_probe_s3"),
            ("mydb", "_sciplat_probe_mydb"),
            ("job", "_sciplat_probe_job"),
        ):
            if marker in code:
                self.cells.append(name)
                self._maybe_fail(name)
                return f"{name} ok"
        self._maybe_fail("cell")
        return "42\n"


def steps_of(results: list[probe.StepResult]) -> dict[str, bool]:
    return {r.step: r.ok for r in results}


def test_a_healthy_run_reports_every_deployed_step(tmp_path: Path) -> None:
    bot = FakeProbe(settings(tmp_path, s3=True, mydb=True, job=True))
    assert steps_of(bot.run()) == dict.fromkeys(probe.STEPS, True)
    assert bot.calls[-1] == "revoke"


def test_steps_of_absent_components_are_skipped_not_failed(tmp_path: Path) -> None:
    bot = FakeProbe(settings(tmp_path, s3=False, mydb=True, job=False))
    results = bot.run()
    assert steps_of(results) == {"signin": True, "spawn": True, "cell": True, "mydb": True, "stop": True}
    assert bot.cells == ["mydb"]
    text = probe.render_metrics(results, 1000.0)
    assert 'step="s3"' not in text and 'step="job"' not in text


def test_a_failing_step_is_zero_and_the_others_still_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bot = FakeProbe(settings(tmp_path, s3=True, mydb=True, job=True), fail={"s3"})
    with caplog.at_level("ERROR", logger="sciplat-probe"):
        results = bot.run()
    assert steps_of(results) == {**dict.fromkeys(probe.STEPS, True), "s3": False}
    assert "step s3 failed: s3 is broken" in caplog.text


def test_a_failed_spawn_exports_no_later_step_but_still_stops(tmp_path: Path) -> None:
    bot = FakeProbe(settings(tmp_path, s3=True, mydb=True, job=True), fail={"spawn"})
    assert steps_of(bot.run()) == {"signin": True, "spawn": False, "stop": True}
    assert "stop" in bot.calls and not bot.cells


def test_a_failed_sign_in_stops_the_run(tmp_path: Path) -> None:
    bot = FakeProbe(settings(tmp_path, s3=True), fail={"signin"})
    assert steps_of(bot.run()) == {"signin": False}


def test_metrics_file_is_written_atomically_and_parses_back(tmp_path: Path) -> None:
    s = settings(tmp_path)
    results = [probe.StepResult("signin", True, 0.25), probe.StepResult("s3", False, 1.5, "boom")]
    probe.write_metrics(s.metrics_file, probe.render_metrics(results, 1234.5))
    text = s.metrics_file.read_text()
    assert 'sciplat_probe_step_success{step="signin"} 1' in text
    assert 'sciplat_probe_step_success{step="s3"} 0' in text
    assert 'sciplat_probe_step_duration_seconds{step="s3"} 1.500' in text
    assert "sciplat_probe_last_run_timestamp_seconds 1234.500" in text
    assert [p.name for p in tmp_path.iterdir()] == ["sciplat_probe.prom"]  # no temporary left
    assert oct(s.metrics_file.stat().st_mode & 0o777) == "0o644"
    assert probe.parse_metrics(text) == (1234.5, {"signin": 1, "s3": 0})


def test_status_names_failing_steps_and_a_stale_run(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert probe.status(s) == (False, f"no run yet ({s.metrics_file} missing)")
    ok = [probe.StepResult(name, True, 1.0) for name in ("signin", "spawn")]
    probe.write_metrics(s.metrics_file, probe.render_metrics(ok, 1000.0))
    assert probe.status(s, now=1120.0) == (True, "last run 2 min ago; steps 2/2 ok")
    healthy, text = probe.status(s, now=1000.0 + 3600)
    assert not healthy and "too long ago" in text
    probe.write_metrics(s.metrics_file, probe.render_metrics([*ok, probe.StepResult("job", False, 3.0)], 1000.0))
    assert probe.status(s, now=1060.0) == (False, "last run 1 min ago; steps 2/3 ok; failing: job")


def test_settings_load_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"public_url": "https://x.example.org", "service_token": "t", "future": 1}))
    loaded = probe.Settings.load(path)
    assert loaded.user == "sciplat-probe" and not loaded.enabled("s3") and loaded.enabled("spawn")


@pytest.mark.parametrize(
    ("address", "expected"),
    [("10.0.0.5", ("10.0.0.5", 443)), ("10.0.0.5:8443", ("10.0.0.5", 8443)), ("[fd00::1]:444", ("fd00::1", 444))],
)
def test_gateway_address(address: str, expected: tuple[str, int]) -> None:
    assert probe._split_address(address, 443) == expected


def test_the_hub_service_of_the_bot_may_only_touch_the_bot() -> None:
    base: dict[str, Any] = {
        "prefix": "/opt/jupyterhub",
        "idle_timeout": 3600,
        "cull_every": 300,
        "admin_token": "a",
        "authenticators": [{"type": "native"}],
    }
    services, roles = hub_config.services(base)
    assert "sciplat-probe" not in {s["name"] for s in services}
    services, roles = hub_config.services({**base, "probe_token": "p"})
    assert {"name": "sciplat-probe", "api_token": "p"} in services
    role = next(r for r in roles if r["name"] == "sciplat-probe")
    assert role["services"] == ["sciplat-probe"]
    assert all(scope.endswith("!user=sciplat-probe") for scope in role["scopes"]), role["scopes"]


@pytest.mark.parametrize(
    ("monitoring", "enabled", "interval"),
    [
        ({}, True, 5),
        ({"probe": {"interval_minutes": 15}}, True, 15),
        ({"probe": {"enabled": False}}, False, 5),
        ({"enabled": False}, False, 5),
    ],
)
def test_probe_spec_renders(monitoring: dict[str, Any], enabled: bool, interval: int) -> None:
    spec = PlatformSpec.model_validate(
        {"platform": {"name": "lab", "domain": "lab.example.org"}, "monitoring": monitoring}
    )
    values = role_vars(spec, Path("/inv"))
    assert values["probe_enabled"] is enabled and values["probe_interval_minutes"] == interval
    service = next(s for s in SERVICES if s.name == "probe")
    assert service_enabled(service, {"probe_enabled": values["probe_enabled"]}) is enabled


def test_probe_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval_minutes"):
        PlatformSpec.model_validate(
            {"platform": {"name": "lab", "domain": "lab.example.org"}, "monitoring": {"probe": {"interval_minutes": 0}}}
        )
