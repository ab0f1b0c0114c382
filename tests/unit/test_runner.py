"""The runner follows ansible-playbook through the sciplat_events callback (real Ansible, local)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from rich.console import Console

from sciplat.runner import build_command, print_summary, run_playbook
from tests.conftest import REPO

PLAYBOOK = """\
- name: A local play
  hosts: all
  connection: local
  gather_facts: false
  tasks:
    - name: Nothing to do
      ansible.builtin.debug: {msg: hello}
    - name: Something changes
      ansible.builtin.command: "true"
      changed_when: true
    - name: This one breaks
      ansible.builtin.fail: {msg: the disk is on fire}
"""


def test_progress_summary_and_failure_report(tmp_path: Path) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK)
    out = io.StringIO()
    console = Console(file=out, width=200)
    result = run_playbook(
        [
            "ansible-playbook",
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        repo=REPO,
        inventory_dir=tmp_path,
        label="test",
        console=console,
    )
    assert result.returncode == 2
    assert result.stats["localhost"]["changed"] == 1
    assert result.stats["localhost"]["failures"] == 1
    assert result.changed_tasks == [{"host": "localhost", "task": "Something changes"}]
    (failure,) = result.failures
    assert failure["task"] == "This one breaks" and "the disk is on fire" in failure["msg"]
    assert "play: A local play" in out.getvalue()  # one line per play without a terminal
    log = result.log_path.read_text()
    assert "the disk is on fire" in log and result.log_path.parent == tmp_path / "logs"

    print_summary(result, console, check=False)
    text = out.getvalue()
    assert "FAILED localhost › This one breaks" in text
    assert str(result.log_path) in text


def test_command_line_carries_inventory_vault_and_options(tmp_path: Path) -> None:
    vault = tmp_path / "secrets.vault.yml"
    vault.write_text("x")
    command = build_command(
        REPO,
        tmp_path,
        "site.yml",
        vault_file=vault,
        vault_password_path=tmp_path / "pw",
        check=True,
        tags=["gateway", "pki"],
        limit="gw",
    )
    joined = " ".join(command)
    assert f"-i {tmp_path}/hosts.yml -i {tmp_path}/.sciplat/inventory" in joined
    assert f"-e @{vault}" in joined and f"--vault-password-file {tmp_path}/pw" in joined
    assert "--check --diff" in joined and "--tags gateway,pki" in joined and "--limit gw" in joined
