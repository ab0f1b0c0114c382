"""Rolling upgrades and faults on the test bed (docs/upgrade.md, docs/faults.md).

- `sciplat upgrade --plan` on a deployed bed shows no change, and shows one when
  a version is moved;
- an upgrade from an older JupyterLab pin brings the pinned versions, drains
  and resumes every compute node, and keeps a user's file and running server;
- a compute node whose upgrade fails is resumed and the run stops with a report;
- every running platform daemon has a restart policy.

A server surviving a plain hub restart: test_hub_slurm.py; kill -9 and host restarts:
test_faults.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import INVENTORY, probe_afresh, sciplat
from tests.integration.test_hub import api, new_approved_user, run_code, start_server
from tests.integration.test_hub_slurm import jobs_of

INV = str(INVENTORY)


def node_state(host_of: Callable[[str], Any], node: str) -> str:
    return str(host_of("data").check_output(f"sinfo -h -N -n {node} -o %T")).strip()


def in_service(state: str) -> bool:
    return bool(state) and not any(word in state for word in ("down", "drain", "fail", "*", "unknown"))


def status_json() -> dict[str, Any]:
    done = sciplat("status", "-i", INV, "--json", check=False)
    return dict(json.loads(done.stdout))


def unhealthy(report: dict[str, Any]) -> list[str]:
    bad = [
        f"{host}: {s['name']} {s['state']} {s.get('detail', '')}"
        for host, rep in report["hosts"].items()
        for s in rep.get("services", [])
        if not s["healthy"]
    ]
    bad += [f"{h}: failed {u}" for h, rep in report["hosts"].items() for u in rep.get("failed_units", [])]
    return bad + ([] if report["endpoint"]["healthy"] else [f"url: {report['endpoint']}"])


def upgrade(*args: str) -> tuple[int, dict[str, Any]]:
    done = sciplat("upgrade", "-i", INV, "--skip-backup", "--json", *args, check=False, timeout=1200)
    try:
        return done.returncode, dict(json.loads(done.stdout))
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON from sciplat upgrade:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}") from None


def changed_on(summary: dict[str, Any], host: str, words: str) -> bool:
    return any(
        t["host"] == host and words.lower() in t["task"].lower() for t in summary["run"].get("changed_tasks", [])
    )


# ------------------------------------------------------------------ plan


def test_plan_on_a_deployed_bed_shows_no_changes(deployed: dict[str, Any]) -> None:
    report = json.loads(sciplat("upgrade", "-i", INV, "--plan", "--json").stdout)
    assert report["reachable"]
    assert report["changes"] == 0 and report["up_to_date"], [
        (h, c) for h, r in report["hosts"].items() for c in r["changes"]
    ]
    gw = {c["component"]: c for c in report["hosts"]["gw"]["components"]}
    versions = yaml.safe_load((REPO / "playbooks/group_vars/all/versions.yml").read_text())["sciplat_versions"]
    assert gw["jupyterhub"]["installed"] == versions["hub"]["jupyterhub"]
    assert gw["configurable-http-proxy"]["installed"] == versions["hub_proxy"]["configurable-http-proxy"]
    assert "slurmd" in {c["component"] for c in report["hosts"]["c1"]["components"]}


def test_plan_shows_a_moved_version_on_the_hosts_that_run_it(deployed: dict[str, Any]) -> None:
    report = json.loads(
        sciplat("upgrade", "-i", INV, "--plan", "--json", "--to", "jupyterhub=99.0.0", "--to", "slurmd=0.1").stdout
    )
    gw = {c["component"]: c for c in report["hosts"]["gw"]["changes"]}
    assert gw["jupyterhub"]["action"] == "upgrade" and gw["jupyterhub"]["target"] == "99.0.0"
    # c1 runs slurmd, and users' servers (jupyterhub-singleuser in the notebook environment)
    c1 = {c["component"]: c for c in report["hosts"]["c1"]["changes"]}
    assert set(c1) == {"jupyterhub", "slurmd"}
    assert c1["jupyterhub"]["where"] == "/opt/sciplat/notebook" and c1["jupyterhub"]["target"] == "99.0.0"
    assert c1["slurmd"]["action"] == "downgrade"
    assert not report["hosts"]["data"]["changes"], "data runs neither"


def test_upgrade_refuses_unknown_components(deployed: dict[str, Any]) -> None:
    done = sciplat("upgrade", "-i", INV, "--plan", "--to", "nosuchthing=1", check=False)
    assert done.returncode == 2 and "not pinned" in done.stderr


# ------------------------------------------------------------------ rolling upgrade


# Older than versions.yml's pins. JupyterHub stays at its pin: every older 5.x the
# registry offers breaks a service of the hub's (5.4.x-5.5.2 refuse a service creating a
# user's token, 5.5.3 refused the services' own tokens once the platform API's custom
# scopes were configured), so the health gate would stop the upgrade before it starts.
OLDER_HUB = {"jupyterlab": "4.5.11"}
HUB_PYTHON = "/opt/jupyterhub/bin/python -c"
HUB_VERSIONS = f"{HUB_PYTHON} 'import jupyterhub as h, jupyterlab as l; print(h.__version__, l.__version__)'"


def hub_versions(host_of: Callable[[str], Any]) -> dict[str, str]:
    hub, lab = host_of("gw").check_output(HUB_VERSIONS).split()
    return {name: version for name, version in (("jupyterhub", hub), ("jupyterlab", lab)) if name in OLDER_HUB}


@pytest.mark.destructive
def test_upgrade_from_older_hub_pins_keeps_the_data_and_the_running_server(
    deployed: dict[str, Any], host_of: Callable[[str], Any], ca_cert: Any
) -> None:
    """The hub at an older JupyterLab pin, a user with a file and a running server (a
    Slurm job on a compute node); `sciplat upgrade` brings the pinned versions, drains and resumes
    every compute node without waiting for the server, and the server, its job and the file
    survive the hub restart."""
    pinned = yaml.safe_load((REPO / "playbooks/group_vars/all/versions.yml").read_text())["sciplat_versions"]["hub"]
    probe_afresh(host_of)  # the health gate needs a green status after the storage tests' outages
    code, summary = upgrade("--tier", "hub", *(f"--to={name}={version}" for name, version in OLDER_HUB.items()))
    assert code == 0 and summary["ok"], json.dumps(summary, indent=2)[-4000:]
    assert hub_versions(host_of) == OLDER_HUB

    user = new_approved_user("up", ca_cert)
    name, token = user["name"], user["token"]
    start_server(token, name, ca_cert, timeout=180)
    gw = host_of("gw")
    on_slurm = json.loads(gw.check_output("cat /etc/jupyterhub/sciplat.json")).get("spawner") == "slurm"
    job = jobs_of(gw, name, "RUNNING")[0]["id"] if on_slurm else None
    written = run_code(token, name, WRITE_FILE, ca_cert).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", written), written

    probe_afresh(host_of)
    started = time.monotonic()
    code, summary = upgrade("--serial", "1", "--drain-timeout", "60")
    assert code == 0 and summary["ok"], json.dumps(summary, indent=2)[-4000:]
    print(f"upgrade from {OLDER_HUB}: {time.monotonic() - started:.0f}s")
    assert hub_versions(host_of) == {k: pinned[k] for k in OLDER_HUB}
    for node in ("c1", "c2"):
        assert changed_on(summary, node, "Drain the node"), f"{node} was not drained"
        assert changed_on(summary, node, "Resume the node"), f"{node} was not resumed"
        assert in_service(node_state(host_of, node))
    assert summary["drained_nodes"] == [] and summary["health_after"]

    server = (api(token, "GET", f"/hub/api/users/{name}", ca_cert).json().get("servers") or {}).get("", {})
    assert server.get("ready"), f"the hub lost {name}'s server in the upgrade"
    if job:
        assert [j["id"] for j in jobs_of(gw, name, "RUNNING")] == [job], "the server's job did not survive"
    assert run_code(token, name, READ_FILE, ca_cert).strip() == written
    api(token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)


WRITE_FILE = """
import hashlib, os, pathlib
data = os.urandom(1 << 20)
pathlib.Path.home().joinpath("before-upgrade.bin").write_bytes(data)
print(hashlib.sha256(data).hexdigest())
"""
READ_FILE = """
import hashlib, pathlib
print(hashlib.sha256(pathlib.Path.home().joinpath("before-upgrade.bin").read_bytes()).hexdigest())
"""


@pytest.mark.destructive
def test_failed_compute_upgrade_resumes_the_node_and_stops(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    probe_afresh(host_of)
    code, summary = upgrade("--tier", "compute", "-e", json.dumps({"upgrade_fail_health_check": ["c1"]}))
    assert code == 1 and not summary["ok"] and summary["stage"] == "stopped"
    messages = " ".join(f["msg"] for f in summary["run"]["failures"])
    assert "UPGRADE STOPPED at compute node c1" in messages and "Injected health-check failure" in messages
    assert "resumed" in messages
    assert changed_on(summary, "c1", "Drain the node")
    assert not changed_on(summary, "c2", "Drain the node"), "the run went on after c1 failed"
    assert summary["drained_nodes"] == []
    assert in_service(node_state(host_of, "c1")) and in_service(node_state(host_of, "c2"))


# The policies are checked here; that they work (kill -9 of each daemon, a host
# restart, with the measured recovery times) is test_faults.py.


def test_every_platform_daemon_restarts_on_failure(host_of: Callable[[str], Any]) -> None:
    units = {
        "data": [
            "postgresql@15-main.service",
            "slurmctld.service",
            "slurmdbd.service",
            "slapd.service",
            "munge.service",
            "mariadb.service",
            "prometheus-postgres-exporter.service",
        ],
        "gw": [
            "nginx.service",
            "jupyterhub.service",
            "jupyterhub-proxy.service",
            "prometheus.service",
            "prometheus-alertmanager.service",
            "prometheus-nginx-exporter.service",
            "sssd.service",
        ],
        "c1": ["slurmd.service", "munge.service", "prometheus-node-exporter.service", "sssd.service"],
    }
    ceph = host_of("data").check_output("systemctl list-units --plain --no-legend 'ceph-*@*.service' | cut -d' ' -f1")
    units["data"] += ceph.split()
    assert len(ceph.split()) >= 4, f"the Ceph daemons (mon, mgr, osd, mds, radosgw) are not all running: {ceph}"
    missing = []
    for where, names in units.items():
        host = host_of(where)
        for unit in names:
            assert host.service(unit).is_running, f"{where}: {unit} does not run"
            restart = host.check_output(f"systemctl show -p Restart --value {unit}")
            if restart not in ("on-failure", "always", "on-abnormal", "on-abort"):
                missing.append(f"{where}: {unit} Restart={restart}")
    assert not missing, missing
