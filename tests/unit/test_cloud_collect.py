"""`sciplat cost collect`: measured use from the hosts, through Ansible (here: the local host)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.cloud import collect as collect_mod
from sciplat.cloud import cost

FIXTURES = Path(__file__).parent / "fixtures" / "cloud"


@pytest.fixture
def local_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One local host in every group; fake sreport and psql print the fixtures."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, fixture in (("sreport", "sreport.txt"), ("psql", "dbsizes.txt")):
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/{name}.args\ncat {FIXTURES / fixture}\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    groups = tmp_path / "groups"
    (groups / "survey-team" / "sub").mkdir(parents=True)
    (groups / "survey-team" / "sub" / "a.fits").write_bytes(b"x" * 3000)
    (groups / "theory").mkdir()
    (groups / "theory" / "b.txt").write_bytes(b"y" * 1000)
    inv = tmp_path / "inv"
    (inv / ".sciplat" / "inventory").mkdir(parents=True)
    (inv / "platform.yaml").write_text("platform: {name: astro, domain: science.example.org}\n")
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {
        "all": {
            "hosts": {"ctl": host},
            "children": {g: {"hosts": {"ctl": None}} for g in ("slurm_controller", "db", "hub")},
        }
    }
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return inv


def test_collect_through_ansible_reads_accounting_database_sizes_and_group_dirs(local_inventory: Path) -> None:
    from tests.conftest import REPO

    runner = collect_mod.ansible_runner(local_inventory, REPO)
    usage = collect_mod.collect("2026-10", runner, groups_root=str(local_inventory.parent / "groups"), db_become=None)
    assert usage.core_hours == {"survey-team": 12000.0, "survey-ops": 500.0, "theory": 3000.0, "staff": 100.0}
    assert usage.mydb_bytes == {"survey-team": 20 * 1024**3, "theory": 60 * 1024**3}
    assert usage.stored_bytes == {"survey-team": 3000, "theory": 1000}
    args = (local_inventory.parent / "sreport.args").read_text()
    assert "start=2026-10-01 end=2026-11-01" in args


def test_collect_command_writes_a_usage_file_the_report_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "slurm_controller[0]": (FIXTURES / "sreport.txt").read_text(),
        "db[0]": (FIXTURES / "dbsizes.txt").read_text(),
        "hub[0]": '{"theory": 1000}\n',
    }
    monkeypatch.setattr(
        collect_mod, "ansible_runner", lambda inventory, repo: lambda pattern, *_: {"h": answers[pattern]}
    )
    (tmp_path / "platform.yaml").write_text("platform: {name: astro, domain: science.example.org}\n")
    out = tmp_path / "usage.yml"
    result = CliRunner().invoke(app, ["cost", "collect", "-i", str(tmp_path), "--month", "2026-10", "-o", str(out)])
    assert result.exit_code == 0, result.output
    usage = cost.load_usage(out)
    assert usage.core_hours["theory"] == 3000.0 and usage.stored_bytes == {"theory": 1000}
    assert usage.mydb_bytes["survey-team"] == 20 * 1024**3


def test_collect_reports_a_failing_host_command(tmp_path: Path) -> None:
    def failing(pattern: str, module: str, args: str, become: str | None) -> dict[str, str]:
        raise cost.CostError("ctl: ansible.builtin.command 'sreport' failed: sreport: command not found")

    with pytest.raises(cost.CostError, match="command not found"):
        collect_mod.collect("2026-10", failing)
