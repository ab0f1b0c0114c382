"""The synthetic user on the deployed test bed: a run (started by hand, as the
timer would) shows every deployed step green in Prometheus; its hub service can
touch nothing but the bot; the bot is no sign-up awaiting approval; and with
radosgw stopped one step goes to 0 (spawn, since the hub provisions S3 at every
spawn, or s3) and its alert is pending, and
back to 1 once radosgw runs again.

Test bed: gw = monitor (the probe, Prometheus) and hub; data = storage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import INVENTORY, PUBLIC_URL, sciplat
from tests.integration.test_monitoring import PROMETHEUS, get_json

MONITOR = "gw"
STORAGE = "data"
BOT = "sciplat-probe"
ALWAYS = {"signin", "spawn", "cell", "stop"}
RADOSGW = "ceph-radosgw.target"


def expected_steps(host: Any) -> set[str]:
    """The steps this bed's probe runs: the fixed ones plus those of deployed components."""
    config = json.loads(host.check_output("cat /etc/sciplat/probe/client.json"))
    return ALWAYS | {name for name, on in config["steps"].items() if on}


def run_probe(host: Any) -> float:
    """One run, as the timer starts it; returns the host time before it started."""
    started = float(host.check_output("date +%s.%N"))
    done = host.run("timeout 240 systemctl start sciplat-probe.service")
    assert done.rc == 0, f"the probe's run did not complete: {done.stderr}\n" + host.check_output(
        "journalctl -u sciplat-probe.service --since @%s --no-pager -o cat | tail -20", str(int(started))
    )
    return started


def prometheus_steps(host: Any, since: float, timeout: float = 60) -> dict[str, int]:
    """sciplat_probe_step_success by step, once Prometheus has scraped a run that finished after `since`."""
    deadline = time.monotonic() + timeout
    while True:
        last = get_json(host, f"{PROMETHEUS}/api/v1/query?query=sciplat_probe_last_run_timestamp_seconds")
        stamps = [float(r["value"][1]) for r in last["data"]["result"] if r["metric"].get("instance") == MONITOR]
        if stamps and stamps[0] >= since:
            data = get_json(host, f"{PROMETHEUS}/api/v1/query?query=sciplat_probe_step_success")
            return {
                r["metric"]["step"]: int(float(r["value"][1]))
                for r in data["data"]["result"]
                if r["metric"].get("instance") == MONITOR
            }
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus has no probe run newer than {since} after {timeout:.0f}s: {last}")
        time.sleep(2)


def journal(host: Any, since: float) -> str:
    return str(host.check_output("journalctl -u sciplat-probe.service --since @%s --no-pager -o cat", str(int(since))))


@pytest.fixture(scope="module")
def monitor(host_of: Callable[[str], Any]) -> Any:
    host = host_of(MONITOR)
    if not host.file("/etc/sciplat/probe/client.json").exists:
        pytest.skip("the synthetic user is not deployed on this bed (probe_enabled false)")
    return host


def test_a_run_shows_every_deployed_step_green(monitor: Any) -> None:
    started = run_probe(monitor)
    steps = prometheus_steps(monitor, started)
    expected = expected_steps(monitor)
    assert set(steps) == expected, (steps, journal(monitor, started))
    assert all(steps.values()), (steps, journal(monitor, started))
    # the bed deploys storage, MyDB and Slurm: none of their steps may be skipped here
    assert {"s3", "mydb", "job"} <= expected
    durations = get_json(monitor, f"{PROMETHEUS}/api/v1/query?query=sciplat_probe_step_duration_seconds")
    assert {r["metric"]["step"] for r in durations["data"]["result"]} == expected
    # the server is stopped at the end of a run
    status = sciplat("status", "-i", str(INVENTORY), "--json", check=False)
    report = json.loads(status.stdout)
    probe = next(s for s in report["hosts"][MONITOR]["services"] if s["name"] == "probe")
    assert probe["healthy"], probe
    assert "failing" not in probe.get("detail", ""), probe


def test_the_bot_is_no_sign_up_and_its_service_reaches_only_the_bot(
    monitor: Any, secret: Callable[[str], Any], ca_cert: Path
) -> None:
    users = json.loads(sciplat("users", "list", "-i", str(INVENTORY), "--json").stdout)
    bot = next(u for u in users if u["name"] == BOT)
    assert bot["status"] == "active" and bot["method"] != "native" and not bot["admin"], bot
    headers = {"Authorization": f"token {secret('probe_hub_token')}"}

    def call(method: str, path: str) -> int:
        url = PUBLIC_URL + "/hub/api" + path
        return requests.request(method, url, headers=headers, verify=str(ca_cert), timeout=30).status_code

    assert call("GET", f"/users/{BOT}") == 200
    assert call("GET", "/users") in (200, 403)  # an empty list at most: checked below
    listing = requests.get(PUBLIC_URL + "/hub/api/users", headers=headers, verify=str(ca_cert), timeout=30)
    if listing.status_code == 200:
        assert {u["name"] for u in listing.json()} <= {BOT}, listing.json()
    other = next((u["name"] for u in users if u["name"] != BOT), "admin")
    assert call("GET", f"/users/{other}") in (403, 404)
    assert call("POST", f"/users/{other}/tokens") in (403, 404)
    assert call("POST", f"/users/{other}/server") in (403, 404)
    assert call("POST", "/users/someone-new") in (403, 404)  # JupyterHub hides what a token may not see


@pytest.fixture
def radosgw_stopped(host_of: Callable[[str], Any], monitor: Any) -> Iterator[Any]:
    storage = host_of(STORAGE)
    storage.run_expect([0], f"systemctl stop {RADOSGW}")
    try:
        yield storage
    finally:
        storage.run(f"systemctl start {RADOSGW}")


@pytest.mark.destructive
def test_stopped_storage_fails_one_step_and_recovers(monitor: Any, radosgw_stopped: Any) -> None:
    started = run_probe(monitor)
    steps = prometheus_steps(monitor, started)
    # the hub provisions S3 credentials at every spawn, so without radosgw the run
    # fails at spawn (before its s3 cell); either way only that step is 0
    failing = {step for step, ok in steps.items() if ok == 0}
    assert failing in ({"s3"}, {"spawn"}), (steps, journal(monitor, started))
    (step,) = failing
    assert f"step {step} failed:" in journal(monitor, started)
    # the alert is pending (it fires after 10 minutes of failure)
    deadline = time.monotonic() + 60
    while True:
        alerts = get_json(monitor, f"{PROMETHEUS}/api/v1/alerts")["data"]["alerts"]
        found = [
            a
            for a in alerts
            if a["labels"].get("alertname") == "SyntheticUserStepFailing" and a["labels"].get("step") == step
        ]
        if found and found[0]["state"] in ("pending", "firing"):
            break
        assert time.monotonic() < deadline, f"SyntheticUserStepFailing for {step} is not pending: {alerts}"
        time.sleep(3)
    radosgw_stopped.run_expect([0], f"systemctl start {RADOSGW}")
    radosgw_stopped.run_expect(
        [0],
        "for i in $(seq 60); do curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:7480/ && exit 0; sleep 1; done;"
        " exit 1",
    )
    again = run_probe(monitor)
    steps = prometheus_steps(monitor, again)
    assert steps.get("s3") == 1 and all(steps.values()), (steps, journal(monitor, again))
