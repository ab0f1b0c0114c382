"""`sciplat drain`, `resume` and `allocations` against a fake controller (no SSH)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.commands import allocations, compute


class FakeController:
    """Answers the commands the CLI sends with a node state machine."""

    def __init__(self, state: str = "idle", jobs: list[str] | None = None) -> None:
        self.state, self.jobs, self.sent = state, list(jobs or []), []  # type: ignore[var-annotated]

    def run(self, command: list[str], *, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        self.sent.append(command)
        out = ""
        if command[0] == "sh":
            out = f"{self.state}|{'reason' if 'drain' in self.state else 'none'}\n--\n" + "".join(
                f"{j}|alice|nb|1:00\n" for j in self.jobs
            )
        elif command[:2] == ["scontrol", "update"]:
            target = next(a for a in command if a.startswith("state=")).split("=")[1]
            self.state = (
                "drained" if target == "DRAIN" and not self.jobs else "draining" if target == "DRAIN" else "idle"
            )
        elif command[0] == "sciplat-slurm-accounts":
            out = json.dumps(
                [
                    {
                        "account": "astro",
                        "awarded_core_hours": 10.0,
                        "used_core_hours": 2.0,
                        "remaining_core_hours": 8.0,
                        "until": None,
                        "users": {"alice": 2.0},
                    }
                ]
            )
        return subprocess.CompletedProcess(command, 0, out, "")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeController:
    controller = FakeController()
    monkeypatch.setattr(compute, "controller", lambda inventory: controller)
    monkeypatch.setattr(allocations, "controller", lambda inventory: controller)
    return controller


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_drain_an_idle_node_and_again(fake: FakeController) -> None:
    first = invoke("drain", "c1", "-i", "inv", "--reason", "kernel upgrade", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["drained"] is True
    assert ["scontrol", "update", "nodename=c1", "state=DRAIN", "reason=kernel upgrade"] in fake.sent
    again = invoke("drain", "c1", "-i", "inv", "--reason", "kernel upgrade", "--json")
    assert again.exit_code == 0 and json.loads(again.output)["was"] == "drained"


def test_drain_without_waiting_reports_running_jobs(fake: FakeController) -> None:
    fake.jobs = ["41", "42"]
    done = invoke("drain", "c1", "-i", "inv", "--reason", "disk", "--no-wait")
    assert done.exit_code == 0
    assert "job 41 of alice" in done.output and "job 42 of alice" in done.output


def test_drain_needs_a_reason(fake: FakeController) -> None:
    assert invoke("drain", "c1", "-i", "inv", "--reason", " ").exit_code == 1
    assert fake.sent == []


def test_resume_is_safe_on_a_node_in_service(fake: FakeController) -> None:
    done = invoke("resume", "c1", "-i", "inv", "--json")
    assert done.exit_code == 0 and json.loads(done.output)["changed"] is False
    fake.state = "drained"
    done = invoke("resume", "c1", "-i", "inv", "--json")
    assert json.loads(done.output)["changed"] is True


def test_allocations_show_and_date_checks(fake: FakeController, tmp_path: Path) -> None:
    shown = invoke("allocations", "show", "-i", "inv", "--json")
    assert json.loads(shown.output)[0]["remaining_core_hours"] == 8.0
    past = invoke("allocations", "set", "astro", "-i", "inv", "--core-hours", "5", "--until", "2001-01-01")
    assert past.exit_code == 2 and "in the past" in past.output
    bad = invoke("allocations", "set", "astro", "-i", "inv", "--core-hours", "5", "--until", "next year")
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output
