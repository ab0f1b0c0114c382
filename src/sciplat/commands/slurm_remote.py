"""Run a command on the Slurm controller over SSH (for `sciplat allocations`, `drain`, `resume`)."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sciplat import render as render_mod
from sciplat.status import inventory_hostvars, ssh_command
from sciplat.validate import validate_inventory_dir


class RemoteError(Exception):
    """The controller could not be reached or the inventory has none; the message says what to do."""


@dataclass(frozen=True)
class Controller:
    host: str
    hostvars: dict[str, Any]

    def run(self, command: list[str], *, timeout: int = 120) -> subprocess.CompletedProcess[str]:
        remote = shlex.join(command)
        try:
            return subprocess.run(
                [*ssh_command(self.host, self.hostvars), remote],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host} did not answer within {timeout}s") from None


def controller(inventory: Path) -> Controller:
    """The host of group slurm_controller, with the variables SSH needs."""
    result = validate_inventory_dir(inventory)
    if not result.ok or result.spec is None:
        problems = "; ".join(str(p) for p in result.errors)
        raise RemoteError(f"{inventory} is not valid ({problems}); run `sciplat validate -i {inventory}`")
    if not (inventory / render_mod.STATE_DIR / "inventory").exists():
        render_mod.write_inventory_source(result.spec, inventory)
    groups, hostvars = inventory_hostvars(inventory)
    hosts = groups.get("slurm_controller", [])
    if not hosts:
        raise RemoteError(f"{inventory}/hosts.yml has no host in group slurm_controller: this platform runs no Slurm")
    return Controller(hosts[0], hostvars.get(hosts[0], {}))
