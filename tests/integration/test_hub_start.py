"""How a user's server start ends, as the user sees it (hub_spawner: slurm).

The Slurm spawner waits for the server itself once the job has reported its
port (sciplat_hub.hub_slurm.wait_until_answers), reading the job's state as it
waits: a server that dies while starting is reported within seconds with the
end of its log, instead of the hub waiting out its whole http_timeout for a
server that is gone. And provisioning, whose steps 3-6 run at the same time,
tells the operator in the hub's log how long each step took.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_hub import api, new_approved_user, start_server
from tests.integration.test_hub_slurm import _spawner_is_slurm

REFUSAL = "sciplat-test: this server refuses to start"


@pytest.fixture(scope="module")
def user(deployed: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]) -> Iterator[dict[str, Any]]:
    if not _spawner_is_slurm(host_of):
        pytest.skip("this bed's hub starts servers on the hub host (hub_spawner is not slurm)")
    made = new_approved_user("st", ca_cert)
    yield made
    api(made["token"], "DELETE", f"/hub/api/users/{made['name']}/server", ca_cert)


def _as_user(host: Any, name: str, command: str) -> Any:
    return host.run(f"runuser -u {name} -- sh -c {shlex.quote(command)}")


def test_a_first_start_logs_every_provisioning_step_with_its_duration(
    user: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    name, token = user["name"], user["token"]
    start_server(token, name, ca_cert)
    log = host_of("gw").check_output(f"journalctl -u jupyterhub --since -5min --no-pager | grep 'provision {name}:'")
    for step in ("directory", "posix", "storage", "mydb", "slurm"):
        assert f"step {step} done in " in log, f"no duration for the {step} step in the hub's log:\n{log}"
    stopped = api(token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)
    assert stopped.status_code in (202, 204), stopped.text


def test_a_server_that_dies_while_starting_is_reported_at_once_with_its_log(
    user: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    name, token = user["name"], user["token"]
    gw = host_of("gw")
    for _ in range(60):  # the previous test's server has stopped
        if not (api(token, "GET", f"/hub/api/users/{name}", ca_cert).json().get("servers") or {}):
            break
        time.sleep(1)
    # the home exists since the first start; a config that makes jupyter-server exit a few
    # seconds in: well after the job has reported its port, as when a server crashes at start
    made = _as_user(
        gw,
        name,
        "mkdir -p ~/.jupyter && printf 'import sys, time\\ntime.sleep(4)\\nsys.exit(%s)\\n' "
        f"{shlex.quote(repr(REFUSAL))} > ~/.jupyter/jupyter_server_config.py",
    )
    assert made.rc == 0, made.stderr
    try:
        began = time.monotonic()
        started = api(token, "POST", f"/hub/api/users/{name}/server", ca_cert)
        assert started.status_code in (201, 202, 500), started.text
        if started.status_code == 500:  # it failed within the hub's slow_spawn_timeout: the API says why
            assert "before the server started" in started.json()["message"], started.text
        while time.monotonic() - began < 90:
            server = (api(token, "GET", f"/hub/api/users/{name}", ca_cert).json().get("servers") or {}).get("")
            if not server:
                break
            assert not server.get("ready"), "a server whose jupyter-server exits at start became ready"
            time.sleep(0.5)
        took = time.monotonic() - began
        print(f"the failed start was reported after {took:.1f} s")
        # before the spawner waited for the server itself, the hub waited out http_timeout (120 s)
        assert took < 45, f"the failed start was reported after {took:.0f} s"
        progress = api(token, "GET", f"/hub/api/users/{name}/server/progress", ca_cert, stream=True)
        assert progress.status_code == 200, progress.text
        events = [
            json.loads(line.removeprefix("data:"))
            for line in progress.text.splitlines()
            if line.startswith("data:") and line.strip() != "data:"
        ]
        failed = [event for event in events if event.get("failed")]
        assert failed, events
        message = failed[-1]["message"]
        assert "Slurm job" in message and "before the server started" in message, message
        assert REFUSAL in message, f"the end of the job's log is not in the message: {message}"
    finally:
        _as_user(gw, name, "rm -f ~/.jupyter/jupyter_server_config.py")
