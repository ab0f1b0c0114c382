"""Users' servers as Slurm jobs on the compute nodes (hub_spawner: slurm), as users see them.

A user signs up, is approved and starts a server: it runs on c1 or c2 (the
hostname read inside the server), as a Slurm job of theirs; from its kernel
`sbatch --wait` runs a job whose output lands in the shared home, and `psql`
and `pandas.read_sql` reach MyDB with no credentials typed. `scancel` of the
job makes the hub report the server stopped; stopping the server through the
hub ends the job. The firewall opens the servers' ports to the hub host only.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_hub import api, new_approved_user, run_code, start_server

NODES = ("c1", "c2")
PORTS = (50000, 50999)  # hub_slurm_port_range's default


def _spawner_is_slurm(host_of: Callable[[str], Any]) -> bool:
    settings = host_of("gw").run("cat /etc/jupyterhub/sciplat.json")
    return settings.rc == 0 and json.loads(settings.stdout).get("spawner") == "slurm"


@pytest.fixture(scope="module")
def user(deployed: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]) -> Iterator[dict[str, Any]]:
    if not _spawner_is_slurm(host_of):
        pytest.skip("this bed's hub starts servers on the hub host (hub_spawner is not slurm)")
    made = new_approved_user("s", ca_cert)
    name, token = made["name"], made["token"]
    yield {"name": name, "token": token}
    api(token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)


def jobs_of(host: Any, name: str, states: str = "PENDING,RUNNING,COMPLETING") -> list[dict[str, str]]:
    """The user's server jobs in squeue: id, state, node, partition, cpus, memory."""
    out = host.check_output(
        f"squeue --noheader --user={name} --states={states} --name=jupyter-{name}-default --format='%i|%T|%N|%P|%C|%m'"
    )
    keys = ("id", "state", "node", "partition", "cpus", "memory")
    return [dict(zip(keys, line.strip().split("|"), strict=True)) for line in out.splitlines() if line.strip()]


def server_of(token: str, name: str, ca_cert: Any) -> dict[str, Any]:
    return dict((api(token, "GET", f"/hub/api/users/{name}", ca_cert).json().get("servers") or {}).get("", {}))


def test_the_server_is_a_slurm_job_on_a_compute_node(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    started = time.monotonic()
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    elapsed = time.monotonic() - started
    out = run_code(
        user["token"],
        user["name"],
        "import getpass, os, socket; print(socket.gethostname(), getpass.getuser(), os.getcwd())",
        ca_cert,
    )
    hostname, login_name, cwd = out.split()
    assert hostname in NODES, out
    assert (login_name, cwd) == (user["name"], f"/home/{user['name']}")
    jobs = jobs_of(host_of("gw"), user["name"], "RUNNING")
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["node"] == hostname and job["partition"] == "interactive"
    assert job["cpus"] == "1" and job["memory"] == "2G", job  # the default profile: small, 1 CPU, 2 GiB
    print(f"server start through Slurm took {elapsed:.1f} s, on {hostname}")


def test_the_servers_environment_has_the_users_settings_and_no_hub_secrets(user: dict[str, Any], ca_cert: Any) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    code = (
        "import os, shutil\n"
        "print(sorted(k for k in os.environ if k.startswith(('AWS_ACCESS', 'PG', 'SCIPLAT_', 'JUPYTERHUB_API_URL'))))\n"
        "print(os.environ['HOME'], os.environ['USER'], shutil.which('sbatch'), shutil.which('jupyter'))\n"
        "hub = ('JPY_COOKIE_SECRET', 'CONFIGPROXY_AUTH_TOKEN', 'JUPYTERHUB_CRYPT_KEY')\n"
        "print([k for k in os.environ if k in hub])\n"
    )
    keys, where, hub_secrets = run_code(user["token"], user["name"], code, ca_cert).strip().split("\n")
    for key in ("PGHOST", "PGUSER", "PGDATABASE", "SCIPLAT_SLURM_ACCOUNT", "AWS_ACCESS_KEY_ID", "JUPYTERHUB_API_URL"):
        assert f"'{key}'" in keys, keys
    home, login_name, sbatch, jupyter = where.split()
    assert (home, login_name, sbatch) == (f"/home/{user['name']}", user["name"], "/usr/bin/sbatch")
    assert jupyter.startswith("/opt/sciplat/notebook/bin/"), jupyter
    assert hub_secrets == "[]"


def test_sbatch_from_the_server_runs_on_a_compute_node_and_writes_to_the_shared_home(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    code = (
        "import subprocess\n"
        "done = subprocess.run(['sbatch', '--wait', '--parsable', '--time=2', '--output=slurm-test-%j.out',"
        " '--wrap', 'echo ran-on $(hostname)'], capture_output=True, text=True, timeout=150)\n"
        "print(done.returncode, done.stdout.strip().split(';')[0], done.stderr.strip()[-300:])\n"
    )
    out = run_code(user["token"], user["name"], code, ca_cert).strip()
    code_, _, rest = out.partition(" ")
    assert code_ == "0", out
    job_id = rest.split()[0]
    gw = host_of("gw")
    path = f"/home/{user['name']}/slurm-test-{job_id}.out"
    text = wait_for(
        f"{path} on gw",
        lambda: gw.run(f"runuser -u {user['name']} -- cat {shlex.quote(path)}").stdout.strip(),
        timeout=30,
    )
    match = re.fullmatch(r"ran-on (\S+)", text)
    assert match and match.group(1) in NODES, text


def test_psql_and_pandas_read_sql_need_no_credentials(user: dict[str, Any], ca_cert: Any) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    code = (
        "import subprocess\n"
        "done = subprocess.run(['psql', '-XAtc', 'select 1'], capture_output=True, text=True, timeout=30)\n"
        "print(done.stdout.strip() or done.stderr.strip().replace(chr(10), ' '))\n"
        "import pandas, sqlalchemy\n"
        "engine = sqlalchemy.create_engine('postgresql+psycopg://')\n"
        "frame = pandas.read_sql('select 41 + 1 as answer, current_user as who', engine)\n"
        "import os\n"
        "print(int(frame.answer[0]), frame.who[0], os.environ['PGUSER'])\n"
    )
    lines = run_code(user["token"], user["name"], code, ca_cert).strip().split("\n")
    assert lines[0] == "1", lines
    answer, who, pguser = lines[1].split()
    assert answer == "42" and who == pguser == f"u_{user['name']}", lines  # MyDB roles are u_<user>


def test_the_servers_port_is_open_to_the_hub_host_only(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    gw = host_of("gw")
    job = jobs_of(gw, user["name"], "RUNNING")[0]
    comment = gw.check_output(f"squeue --noheader --jobs={job['id']} --format=%k")
    port = int(re.search(r"sciplat-port=(\d+)", comment).group(1))  # type: ignore[union-attr]
    assert PORTS[0] <= port <= PORTS[1]
    # one line per partition the node is in
    address = gw.check_output(f"sinfo --noheader --Node --nodes={job['node']} --format=%o").split()[0]
    probe = f"timeout 5 bash -c '</dev/tcp/{address}/{port}' && echo open || echo closed"
    assert gw.check_output(probe).strip() == "open"
    assert host_of("data").check_output(probe).strip() == "closed"


def test_scancel_of_the_job_stops_the_server_in_the_hub(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    gw = host_of("gw")
    job = jobs_of(gw, user["name"], "RUNNING")[0]
    cancelled = time.monotonic()
    gw.run_expect([0], f"runuser -u {user['name']} -- scancel {job['id']}")
    wait_for("the hub to report the server stopped", lambda: not server_of(user["token"], user["name"], ca_cert), 45)
    print(f"the hub saw the cancelled job after {time.monotonic() - cancelled:.1f} s")
    # and the user can start a new one
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    assert jobs_of(gw, user["name"], "RUNNING")[0]["id"] != job["id"]


def test_stopping_the_server_through_the_hub_ends_the_job(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    gw = host_of("gw")
    job_id = jobs_of(gw, user["name"], "RUNNING")[0]["id"]
    stopped = api(user["token"], "DELETE", f"/hub/api/users/{user['name']}/server", ca_cert)
    assert stopped.status_code in (202, 204), stopped.text
    wait_for("the hub to stop the server", lambda: not server_of(user["token"], user["name"], ca_cert), 90)
    wait_for("squeue to stop listing the job", lambda: not jobs_of(gw, user["name"]), 60)
    state = gw.check_output(f"sacct --noheader --parsable2 --allocations --jobs={job_id} --format=State")
    assert state.strip().split()[0] in ("CANCELLED", "COMPLETED"), state


@pytest.mark.destructive
def test_a_hub_restart_keeps_the_server_and_its_job(
    user: dict[str, Any], ca_cert: Any, host_of: Callable[[str], Any]
) -> None:
    """The job id is the spawner's state: after a restart the hub finds the running job again."""
    start_server(user["token"], user["name"], ca_cert, timeout=180)
    gw = host_of("gw")
    job_id = jobs_of(gw, user["name"], "RUNNING")[0]["id"]
    gw.run_expect([0], "systemctl restart jupyterhub.service")
    wait_for("the hub to answer again", lambda: gw.run("curl -fsS http://127.0.0.1:8000/hub/health").rc == 0, 90)
    time.sleep(5)  # the hub's first poll of the restored servers
    assert server_of(user["token"], user["name"], ca_cert).get("ready"), "the hub lost the server"
    assert [j["id"] for j in jobs_of(gw, user["name"], "RUNNING")] == [job_id]
    out = run_code(user["token"], user["name"], "import socket; print(socket.gethostname())", ca_cert)
    assert out.strip() in NODES
