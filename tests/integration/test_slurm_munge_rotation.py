"""Rotating the munge key on the deployed test bed, as an operator does it and users see it.

`sciplat secrets rotate slurm_controller_munge_key --apply` puts a new key in the
vault and rolls it out with `sciplat up --tags slurm`: munge restarts on every
Slurm host at once, then slurmdbd, slurmctld and slurmd. A job that was running
keeps running, new jobs work, and every node is back in service. This changes the
bed's vault (inventories/local/secrets.vault.yml) for good, as a real rotation does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from sciplat import secrets as secrets_mod
from tests.integration.conftest import INVENTORY, PLATFORM_NAME, sciplat, wait_for
from tests.integration.test_slurm import (
    NODES,
    SLURM_HOSTS,
    SUBMIT,
    as_user,
    finished,
    sacct,
    slurm_user,
    squeue,
    submit,
)

__all__ = ["slurm_user"]  # a fixture of test_slurm used here

KEY = "/etc/munge/munge.key"
SECRET = "slurm_controller_munge_key"


def key_digests(host_of: Callable[[str], Any]) -> dict[str, str]:
    """sha256 of the munge key on every Slurm host (the key itself is never read here)."""
    return {name: host_of(name).check_output(f"sha256sum {KEY}").split()[0] for name in SLURM_HOSTS}


def vault_digest() -> str:
    password, _ = secrets_mod.password_source(PLATFORM_NAME)
    key = secrets_mod.read_vault(INVENTORY / secrets_mod.VAULT_FILE, password)[SECRET]
    return hashlib.sha256(str(key).encode()).hexdigest()


def started_at(host: Any, unit: str) -> float:
    """When the unit last became active, in seconds of CLOCK_MONOTONIC. The test bed's
    hosts are containers on one kernel, so these instants compare across hosts."""
    return int(host.check_output(f"systemctl show {unit} --property=ActiveEnterTimestampMonotonic --value")) / 1e6


def node_states(data: Any) -> dict[str, str]:
    out = data.check_output("sinfo --noheader --Node --format='%N %T'")
    return {node: state for node, state in (line.split() for line in out.splitlines() if line.strip())}


@pytest.mark.destructive
def test_rotating_the_munge_key_keeps_jobs_running(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw, data = host_of(SUBMIT), host_of("data")
    before = key_digests(host_of)
    assert len(set(before.values())) == 1, before  # one key everywhere to start with
    assert before["data"] == vault_digest()

    munge_before = {name: started_at(host_of(name), "munge") for name in SLURM_HOSTS}

    running = submit(gw, "--nodelist=c1 --mem=100M --time=10 --output=/dev/null --wrap 'sleep 120'")
    wait_for("the user's job to run on c1", lambda: squeue(gw, running)[0] == "RUNNING", 60)

    started = time.monotonic()
    done = sciplat("secrets", "rotate", SECRET, "-i", str(INVENTORY), "--yes", "--apply", timeout=600)
    print(f"rotation and roll-out took {time.monotonic() - started:.0f} s")
    assert f"rotated {SECRET}" in done.stdout

    after = key_digests(host_of)
    assert after["c1"] != before["c1"], "the key on c1 did not change"
    assert after == dict.fromkeys(SLURM_HOSTS, after["data"]), after  # every host has the controller's key
    assert after["data"] == vault_digest()  # ... and it is the vault's new one

    # munge restarted on every host within seconds of each other, then slurmdbd, slurmctld, slurmd
    munge = {name: started_at(host_of(name), "munge") for name in SLURM_HOSTS}
    assert all(munge[name] > munge_before[name] for name in SLURM_HOSTS), (munge_before, munge)
    window = max(munge.values()) - min(munge.values())
    print(f"munge restarts on {len(munge)} hosts within {window:.2f} s")
    assert window < 10, munge
    dbd, ctld = started_at(data, "slurmdbd"), started_at(data, "slurmctld")
    slurmd = [started_at(host_of(node), "slurmd") for node in NODES]
    assert max(munge.values()) <= dbd <= ctld <= min(slurmd), (munge, dbd, ctld, slurmd)

    # the job that ran through the rotation is still running, and ends normally
    state = squeue(gw, running)[0]
    assert state == "RUNNING", f"job {running} is {state!r} right after the rotation"
    row = wait_for(f"job {running} to end", lambda: finished(gw, running), timeout=120, every=3)
    assert row[0] == "COMPLETED", row

    # a new job is accepted, runs on a compute node and succeeds
    new = as_user(gw, "sbatch --wait --parsable --mem=100M --time=2 --output=/dev/null --wrap 'true'")
    assert new.rc == 0, new.stderr
    job = new.stdout.strip().split(";")[0]
    state, node = sacct(gw, job, "State,NodeList")[:2]
    assert state == "COMPLETED" and node in NODES, (state, node)

    # no node is left DOWN or not responding
    states = node_states(data)
    assert set(states) == set(NODES), states
    assert all(s in ("idle", "mixed", "allocated") for s in states.values()), states
