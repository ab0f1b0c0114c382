"""The deployed test bed, shared by every integration and e2e test.

`make test` brings the test bed up and deploys once, then sets SCIPLAT_DEPLOYED=1;
run on their own, these fixtures do both themselves (idempotent, so a converged
bed costs one warm re-run). Tests marked `destructive` run after all others.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

from sciplat import secrets as secrets_mod
from tests.conftest import REPO, SCIPLAT

# SCIPLAT_TEST_INVENTORY points the tests at another test bed laid out like
# inventories/local (same host names), e.g. a developer's own copy of it.
INVENTORY = Path(os.environ.get("SCIPLAT_TEST_INVENTORY", REPO / "inventories" / "local")).resolve()
SSH_CONFIG = INVENTORY / ".sciplat" / "ssh_config"
CA_CERT = INVENTORY / "pki" / "ca.crt"
_PLATFORM = yaml.safe_load((INVENTORY / "platform.yaml").read_text())["platform"]
PLATFORM_NAME: str = _PLATFORM["name"]
PUBLIC_URL: str = _PLATFORM.get("public_url") or "https://127.0.0.1:8443"


def sciplat(*args: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """Run the sciplat CLI from the repository root, as an operator would."""
    done = subprocess.run([SCIPLAT, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"sciplat {' '.join(args)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 1.0) -> Any:
    """Call `check` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tests that stop or break services run last, so they cannot disturb the others;
    # the restore drill (marker `rebuild`) destroys the whole bed: after all of them
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("rebuild") is not None:
            return 2
        return 1 if item.get_closest_marker("destructive") is not None else 0

    items.sort(key=order)


@pytest.fixture(scope="session")
def deployed() -> dict[str, Any]:
    """The test bed is up and the platform deployed; returns the last run's summary."""
    if os.environ.get("SCIPLAT_DEPLOYED") != "1":
        sciplat("testbed", "up", "-i", str(INVENTORY))
        sciplat("up", "-i", str(INVENTORY), "--json")
    summary: dict[str, Any] = json.loads((INVENTORY / ".sciplat" / "last-run.json").read_text())
    assert summary["ok"], summary
    return summary


@pytest.fixture(scope="session")
def host_of(deployed: dict[str, Any]) -> Callable[[str], Any]:
    """A testinfra host for a test-bed host alias (gw, data, c1, c2), over SSH."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            cache[name] = testinfra.get_host(f"ssh://{name}", ssh_config=str(SSH_CONFIG))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def secret(deployed: dict[str, Any]) -> Callable[[str], Any]:
    """Read a secret from the test bed's vault."""
    password, _ = secrets_mod.password_source(PLATFORM_NAME)
    data = secrets_mod.read_vault(INVENTORY / secrets_mod.VAULT_FILE, password)
    return lambda name: data[name]


@pytest.fixture(scope="session")
def ca_cert(deployed: dict[str, Any]) -> Path:
    assert CA_CERT.is_file(), "sciplat up writes the platform CA to inventories/local/pki/ca.crt"
    return CA_CERT


def probe_afresh(host_of: Callable[[str], Any]) -> None:
    """Run the synthetic user once now, where it is deployed, and wait for it to finish.

    `sciplat status` reports the probe's last run. A run that happened to fall into a
    deliberate outage of an earlier test (a stopped PostgreSQL, a restarting storage
    host) stays red until the next run, minutes later; tests that need a green status
    after such an outage call this first."""
    monitor = host_of("gw")
    if monitor.run("systemctl cat sciplat-probe.service").rc != 0:
        return
    for _ in range(3):  # the hub may need a few seconds to reconnect to its database
        monitor.run("timeout 240 systemctl start sciplat-probe.service")
        if monitor.run("/usr/local/bin/sciplat-probe status").rc == 0:
            return
        time.sleep(10)
