"""Slurm on the deployed test bed, as users and operators see it.

The test user is a plain local account created here with the same uid on the hub
(gw), the controller (data) and the compute nodes (c1, c2), so these tests need
no sign-in. Its home is on the shared /home (CephFS on the hub and the compute
nodes): what a job writes there on c1 or c2 is read back on the hub, where the
user submitted it.
"""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import INVENTORY, sciplat, wait_for

USER = "slurmtest"
UID = 45_001
ACCOUNT = "slurmtests"
SPENT = "slurmtests_spent"  # an account whose allocation is used up
SUBMIT = "gw"  # users submit from the hub (their notebooks' terminals)
NODES = ("c1", "c2")
SLURM_HOSTS = ("gw", "data", *NODES)
HOME = f"/home/{USER}"


def as_user(host: Any, command: str) -> Any:
    return host.run(f"cd {HOME} && runuser -u {USER} -- sh -c {shlex.quote(command)}")


def sacct(host: Any, job_id: str, fields: str = "State,NodeList,Reason") -> list[str]:
    out = host.check_output(f"sacct --noheader --parsable2 --allocations --jobs {job_id} --format={fields}")
    return out.splitlines()[0].split("|") if out.strip() else []


def squeue(host: Any, job_id: str) -> tuple[str, str]:
    out = host.check_output(f"squeue --noheader --jobs {job_id} --format='%T|%r'").strip()
    state, _, reason = out.partition("|")
    return state, reason


def submit(host: Any, args: str) -> str:
    done = as_user(host, f"sbatch --parsable {args}")
    assert done.rc == 0, done.stderr
    return str(done.stdout.strip().split(";")[0])


def finished(host: Any, job_id: str) -> list[str] | None:
    row = sacct(host, job_id)
    if row and row[0].split()[0] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
        return row
    return None


@pytest.fixture(scope="module")
def slurm_user(host_of: Callable[[str], Any]) -> Iterator[str]:
    """A local user with the same uid on every Slurm host, with an association under ACCOUNT."""
    for name in SLURM_HOSTS:
        host = host_of(name)
        host.run(f"id {USER} >/dev/null 2>&1 || useradd --uid {UID} --create-home --shell /bin/bash {USER}")
    data = host_of("data")
    for account in (ACCOUNT, SPENT):
        done = data.run(f"sciplat-slurm-accounts ensure-user {USER} {account}")
        assert done.rc == 0, done.stderr
    # ACCOUNT is the default account (the first association made)
    data.check_output(f"sacctmgr --immediate modify user where name={USER} set DefaultAccount={ACCOUNT}")
    yield USER
    for name in SLURM_HOSTS:
        host_of(name).run(f"scancel --user {USER} 2>/dev/null; true")


def write_notebook(host_of: Callable[[str], Any], name: str, cells: list[tuple[str, str, list[str]]]) -> str:
    """A notebook in the user's shared HOME, written on the hub where the user submits."""
    notebook = {
        "cells": [
            {"cell_type": kind, "metadata": {"tags": tags}, "source": source, "outputs": [], "execution_count": None}
            if kind == "code"
            else {"cell_type": kind, "metadata": {}, "source": source}
            for kind, source, tags in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = f"{HOME}/{name}"
    body = json.dumps(notebook)
    host_of(SUBMIT).check_output(f"printf %s {shlex.quote(body)} > {path} && chown {USER}: {path}")
    return path


def job_status(host: Any, job_id: str) -> dict[str, Any]:
    done = as_user(host, f"sciplat-job status {job_id} --json")
    assert done.stdout.strip(), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ------------------------------------------------------------------ cluster


def test_controller_accounting_and_nodes_are_up(host_of: Callable[[str], Any]) -> None:
    data = host_of("data")
    for unit in ("munge", "mariadb", "slurmdbd", "slurmctld", "sciplat-slurm-exporter"):
        assert data.service(unit).is_running, unit
    for name in NODES:
        assert host_of(name).service("slurmd").is_running
    states = data.check_output("sinfo --noheader --Node --format='%N %T'").splitlines()
    assert sorted({line.split()[0] for line in states}) == sorted(NODES)  # once per partition
    partitions = data.check_output("sinfo --noheader --format='%P %l'").split()
    # platform.yaml's default partitions; the default one is marked with '*'
    assert "interactive*" in partitions and "batch" in partitions


def test_enforcement_settings(host_of: Callable[[str], Any]) -> None:
    config = host_of("data").check_output("scontrol show config")
    assert "limits,qos,safe" in config  # AccountingStorageEnforce
    assert "priority/multifactor" in config
    assert "proctrack/cgroup" in config  # the test bed's compute nodes have CAP_SYS_ADMIN


def test_sbatch_from_the_hub_runs_on_a_compute_node(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw = host_of(SUBMIT)
    job_id = submit(gw, f"--output={HOME}/slurmtest-%j.out --wrap 'hostname; id -un'")
    row = wait_for(f"job {job_id} to finish", lambda: finished(gw, job_id), timeout=90)
    assert row[0] == "COMPLETED", row
    node = row[1]
    assert node in NODES
    # the output appears in the shared home, read on the hub
    assert gw.file(f"{HOME}/slurmtest-{job_id}.out").content_string.split() == [node, USER]


def test_srun_from_the_hub_reaches_both_nodes(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    # srun's steps connect back to the hub on SrunPortRange (the firewall declaration)
    done = as_user(host_of(SUBMIT), "timeout 90 srun --nodes=2 --mem=50M hostname")
    assert done.rc == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(NODES)


def test_memory_overuse_is_killed_by_the_cgroup(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw = host_of(SUBMIT)
    hog = "python3 -c 'import time; b = bytearray(400 * 2**20); time.sleep(3)'"
    job_id = submit(gw, f"--mem=100M --output=/dev/null --wrap {shlex.quote(hog)}")
    row = wait_for(f"job {job_id} to end", lambda: finished(gw, job_id), timeout=90)
    assert row[0] == "OUT_OF_MEMORY", row


def test_third_job_waits_for_the_cpu_limit(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    data, gw = host_of("data"), host_of(SUBMIT)
    where = f"where name={USER} account={ACCOUNT}"
    data.check_output(f"sacctmgr --immediate modify user {where} set GrpTRES=cpu=2")
    jobs: list[str] = []
    try:
        jobs = [submit(gw, "--cpus-per-task=1 --mem=100M --output=/dev/null --wrap 'sleep 120'") for _ in range(3)]
        wait_for("two jobs running", lambda: [squeue(gw, j)[0] for j in jobs[:2]] == ["RUNNING", "RUNNING"], 60)
        state, reason = wait_for(
            "the third job's reason", lambda: (s := squeue(gw, jobs[2]))[1] != "None" and s, timeout=30
        )
        assert (state, reason) == ("PENDING", "AssocGrpCpuLimit")
        words = as_user(gw, f"sciplat-job status {jobs[2]}").stdout
        assert "all the CPUs your account may use at once" in words
    finally:
        gw.run(f"scancel {' '.join(jobs)}")
        data.check_output(f"sacctmgr --immediate modify user {where} set GrpTRES=cpu=8")


def test_used_up_allocation_blocks_jobs_and_says_why(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw = host_of(SUBMIT)
    done = sciplat("allocations", "set", SPENT, "-i", str(INVENTORY), "--core-hours", "0", "--until", "2099-12-31")
    shown = json.loads(sciplat("allocations", "show", "-i", str(INVENTORY), "--json").stdout)
    spent = next(row for row in shown if row["account"] == SPENT)
    assert (spent["awarded_core_hours"], spent["remaining_core_hours"], spent["until"]) == (0, 0, "2099-12-31"), done
    notebook = write_notebook(host_of, "spent.ipynb", [("code", "print('never runs')", [])])
    run = as_user(gw, f"sciplat-job run {notebook} --account {SPENT} --wait 20")
    try:
        assert run.rc == 0, run.stderr
        assert "awarded compute allocation is used up" in run.stdout, run.stdout
        assert f"account {SPENT}" in run.stdout
    finally:
        as_user(gw, f"scancel --account {SPENT}")


def test_batch_notebook_with_parameters(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw = host_of(SUBMIT)
    notebook = write_notebook(
        host_of,
        "square.ipynb",
        [
            ("code", "n = 2\nlabel = 'two'", ["parameters"]),
            ("code", "import socket\nprint(label, n * n, socket.gethostname())", []),
        ],
    )
    run = as_user(gw, f"sciplat-job run {notebook} -p n=7 -p label=seven --cpus 1 --mem 500M --partition batch --json")
    assert run.rc == 0, run.stderr
    job_id = json.loads(run.stdout)["job_id"]
    status = wait_for(
        "the notebook job to finish",
        lambda: (s := job_status(gw, job_id))["state"] not in ("PENDING", "RUNNING", "COMPLETING") and s,
        timeout=180,
        every=2,
    )
    assert status["state"] == "COMPLETED", status
    node = status["node"]
    # it ran on a compute node and lands next to the input in the shared home, where the user is
    assert node != SUBMIT
    executed = json.loads(gw.file(f"{HOME}/square-{job_id}.ipynb").content_string)
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "n = 7" in "".join(injected[0]["source"])
    outputs = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert f"seven 49 {node}" in outputs


def test_failing_notebook_reports_the_failing_cell(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw = host_of(SUBMIT)
    notebook = write_notebook(
        host_of,
        "broken.ipynb",
        [("markdown", "# A notebook that fails", []), ("code", "x = 1", []), ("code", "x / 0", [])],
    )
    run = as_user(gw, f"sciplat-job run {notebook} --json")
    assert run.rc == 0, run.stderr
    job_id = json.loads(run.stdout)["job_id"]
    status = wait_for(
        "the failing notebook to end",
        lambda: (s := job_status(gw, job_id))["state"] not in ("PENDING", "RUNNING", "COMPLETING") and s,
        timeout=180,
        every=2,
    )
    assert status["state"] == "FAILED", status
    # the user reads why on the hub, from the files the node wrote into the shared home
    hub_view = as_user(gw, f"sciplat-job status {job_id}")
    assert hub_view.rc == 1
    assert "failed in cell 3" in hub_view.stdout and "ZeroDivisionError" in hub_view.stdout, hub_view.stdout
    log = as_user(gw, f"sciplat-job logs {job_id}").stdout
    assert "the notebook failed in cell 3" in log


def test_status_reports_slurm() -> None:
    report = json.loads(sciplat("status", "-i", str(INVENTORY), "--json", check=False).stdout)
    data = {s["name"]: s for s in report["hosts"]["data"]["services"]}
    assert data["slurmctld"]["healthy"] and data["slurmdbd"]["healthy"], data
    nodes = data["slurm-nodes"]["detail"]
    for name in NODES:
        assert f"{name}=" in nodes
        service = next(s for s in report["hosts"][name]["services"] if s["name"] == "slurmd")
        assert service["healthy"] and service["detail"].startswith("node "), service


def test_metrics_collector(host_of: Callable[[str], Any]) -> None:
    text = host_of("data").check_output("curl -fsS http://localhost:9341/metrics")
    assert "slurm_up 1" in text
    assert 'slurm_node_state{node="c1"' in text
    assert "slurm_cpus_total" in text


# ------------------------------------------------------------------ maintenance (runs last)


@pytest.mark.destructive
def test_drain_waits_for_running_jobs_and_resume(slurm_user: str, host_of: Callable[[str], Any]) -> None:
    gw, inventory = host_of(SUBMIT), str(INVENTORY)
    reason = f"test {uuid.uuid4().hex[:6]}"
    job_id = submit(gw, "--nodelist=c2 --mem=100M --output=/dev/null --wrap 'sleep 15'")
    wait_for("the job to run on c2", lambda: squeue(gw, job_id)[0] == "RUNNING", 60)
    try:
        reported = sciplat("drain", "c2", "-i", inventory, "--reason", reason, "--no-wait", "--json")
        info = json.loads(reported.stdout)
        assert [j["job_id"] for j in info["running_jobs"]] == [job_id] and not info["drained"]
        waited = json.loads(
            sciplat("drain", "c2", "-i", inventory, "--reason", reason, "--timeout", "90", "--json").stdout
        )
        assert waited["drained"] and not waited["running_jobs"]
        assert finished(gw, job_id) is not None  # it ran to its end, not killed
        again = json.loads(sciplat("drain", "c2", "-i", inventory, "--reason", reason, "--json").stdout)
        assert "drain" in again["was"] and again["drained"]  # safe when already drained
        assert reason in host_of("data").check_output("sinfo --noheader --Node --nodes=c2 --format=%E")
    finally:
        resumed = json.loads(sciplat("resume", "c2", "-i", inventory, "--json").stdout)
    assert resumed["changed"] and "drain" not in resumed["state"]
    assert json.loads(sciplat("resume", "c2", "-i", inventory, "--json").stdout)["changed"] is False


@pytest.mark.destructive
def test_stopped_slurmd_marks_the_node_down_and_comes_back(host_of: Callable[[str], Any]) -> None:
    data, c2 = host_of("data"), host_of("c2")

    def state() -> str:
        # one line per partition: the first is enough
        return str(data.check_output("sinfo --noheader --Node --nodes=c2 --format=%T | head -n1")).strip()

    c2.check_output("systemctl stop slurmd")
    try:
        # SlurmdTimeout (60 s) plus the controller's ping interval
        wait_for("c2 to be marked down", lambda: "down" in state(), timeout=180, every=5)
    finally:
        c2.check_output("systemctl start slurmd")
    sciplat("resume", "c2", "-i", str(INVENTORY))
    wait_for("c2 back in service", lambda: state() in ("idle", "mixed", "allocated"), timeout=60, every=2)
