"""The grafana role: off by default (does nothing), and turned on without a
repository its preflight stops with a message that says what to set.
Runs the role against localhost with connection local; with these inputs it
never gets past its preflight, so nothing on this machine changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def run_role(tmp_path: Path, **extra: object) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "roles": [{"role": "grafana"}]}]))
    env = {
        **os.environ,
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    return subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            json.dumps({"grafana_admin_password": "x" * 32, **extra}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=tmp_path,
    )


def test_off_by_default_does_nothing(tmp_path: Path) -> None:
    done = run_role(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = json.loads(done.stdout)["stats"]["localhost"]
    assert stats["changed"] == 0 and stats["failures"] == 0, stats


def test_enabled_without_repository_explains(tmp_path: Path) -> None:
    done = run_role(tmp_path, grafana_enabled=True)
    assert done.returncode != 0
    assert "grafana_apt_repository" in done.stdout and "grafana_apt_key_url" in done.stdout, done.stdout[-3000:]
    assert "Debian does not package it" in done.stdout
