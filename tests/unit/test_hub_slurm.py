"""Users' servers as Slurm jobs (sciplat_hub.hub_slurm), compute.notebooks and partition oversubscription."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from sciplat.render import AUTO_SPAWNER, role_vars
from sciplat.spec import PlatformSpec
from sciplat_hub import hub_config, hub_slurm

REPO = Path(__file__).resolve().parents[2]
TOKEN = "secret-api-token-0123456789"


def request(**changes: Any) -> hub_slurm.JobRequest:
    values: dict[str, Any] = {
        "user": "alice",
        "server": "",
        "home": "/home/alice",
        "cpus": 0.5,
        "memory": 2 * 1024**3,
        "partition": "interactive",
        "time_limit": 12 * 3600,
        "port_range": (50000, 50999),
        "notebook_prefix": "/opt/sciplat/notebook",
        "args": ("--SingleUserNotebookApp.default_url=/lab",),
        "account": "physics",
    }
    values.update(changes)
    return hub_slurm.JobRequest(**values)


def option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times in {argv}"
    return values[0]


# ------------------------------------------------------------------ the sbatch command


def test_sbatch_runs_as_the_user_sized_by_the_profile() -> None:
    argv = hub_slurm.sbatch_argv(request())
    assert argv[:5] == ["/usr/sbin/runuser", "-u", "alice", "--", "sbatch"]
    assert "--parsable" in argv
    assert option(argv, "cpus-per-task") == "1"  # 0.5 CPU: Slurm allocates whole CPUs
    assert option(argv, "mem") == "2048M"
    assert option(argv, "partition") == "interactive"
    assert option(argv, "time") == "720"
    assert option(argv, "job-name") == "jupyter-alice-default"
    assert option(argv, "account") == "physics"
    assert option(argv, "chdir") == "/home/alice"
    assert option(argv, "output") == "/home/alice/.sciplat/logs/jupyter-alice-default-%j.log"
    assert option(argv, "export") == "ALL"

    big = hub_slurm.sbatch_argv(request(cpus=2, memory=8 * 1024**3, server="gpu run", time_limit=90, account=""))
    assert option(big, "cpus-per-task") == "2" and option(big, "mem") == "8192M"
    assert option(big, "time") == "2"  # 90 s rounds up to whole minutes
    assert option(big, "job-name") == "jupyter-alice-gpu_run"
    assert not any(a.startswith("--account") for a in big)


def test_no_secret_on_the_command_line_they_travel_in_sbatchs_environment() -> None:
    req = request()
    base = {"JUPYTERHUB_API_TOKEN": TOKEN, "AWS_SECRET_ACCESS_KEY": "s3-secret", "PGHOST": "db", "VIRTUAL_ENV": "/x"}
    env = hub_slurm.server_environment(base, user="alice", home="/home/alice", notebook_prefix=req.notebook_prefix)
    argv = hub_slurm.sbatch_argv(req)
    script = hub_slurm.job_script(req)
    for secret in (TOKEN, "s3-secret"):
        assert not any(secret in a for a in argv)
        assert secret not in script
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN and env["AWS_SECRET_ACCESS_KEY"] == "s3-secret"
    assert env["PGHOST"] == "db"
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == ("/home/alice", "alice", "alice", "/bin/bash")
    assert env["PATH"].split(":")[0] == "/opt/sciplat/notebook/bin" and "/usr/bin" in env["PATH"].split(":")
    assert "VIRTUAL_ENV" not in env  # the hub's own venv is not the server's


def test_the_hub_environment_is_not_passed_on() -> None:
    env = hub_slurm.server_environment({}, user="a", home="/home/a", notebook_prefix="/nb")
    assert "JPY_COOKIE_SECRET" not in env and "CONFIGPROXY_AUTH_TOKEN" not in env
    assert set(env) == {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG"}


def test_job_script_picks_a_port_reports_it_and_starts_the_server(tmp_path: Path) -> None:
    """Run the script for real with stand-ins for scontrol and jupyterhub-singleuser."""
    prefix = tmp_path / "notebook"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    singleuser = prefix / "bin" / "jupyterhub-singleuser"
    singleuser.write_text(
        '#!/bin/sh\necho "SERVICE_URL=$JUPYTERHUB_SERVICE_URL"\necho "ARGS=$*"\n'
        'echo "JOB=$SCIPLAT_SERVER_JOB_ID"\nenv | grep "^SLURM_" || echo "no SLURM variables"\n'
    )
    singleuser.chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir()
    scontrol = tools / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.args\n')
    scontrol.chmod(0o755)
    req = request(notebook_prefix=str(prefix), port_range=(51000, 51009), args=("--debug", "a b"))
    script = tmp_path / "job.sh"
    script.write_text(hub_slurm.job_script(req))
    done = subprocess.run(
        ["bash", str(script)],
        env={
            "PATH": f"{tools}:{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242",
            "SLURM_CPUS_PER_TASK": "1",
            "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    reported = (tmp_path / "scontrol.args").read_text().split()
    assert reported[:2] == ["update", "JobId=4242"]
    port = hub_slurm.port_from_comment(reported[2].removeprefix("Comment="), (51000, 51009))
    assert port is not None, reported
    assert f"SERVICE_URL=http://0.0.0.0:{port}/user/alice/" in done.stdout
    assert "ARGS=--debug a b" in done.stdout
    # the server's own job is remembered, but sbatch/srun in its terminals start jobs of their own
    assert "JOB=4242" in done.stdout and "no SLURM variables" in done.stdout


def test_job_script_fails_when_no_port_is_free(tmp_path: Path) -> None:
    import socket

    prefix = tmp_path / "notebook"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python").symlink_to(sys.executable)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        busy = held.getsockname()[1]
        script = tmp_path / "job.sh"
        script.write_text(hub_slurm.job_script(request(notebook_prefix=str(prefix), port_range=(busy, busy))))
        done = subprocess.run(
            ["bash", str(script)],
            env={"PATH": os.environ["PATH"], "SLURM_JOB_ID": "1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    assert f"no free port in {busy}-{busy}" in done.stderr


# ------------------------------------------------------------------ reading Slurm


RANGE = (50000, 50999)


def test_squeue_running_job_with_its_port() -> None:
    status = hub_slurm.parse_squeue("17", 0, "17|RUNNING|c2|None|sciplat-port=50123\n", "", RANGE)
    assert (status.state, status.node, status.port, status.reason) == ("RUNNING", "c2", 50123, "")
    assert status.alive and status.listening


def test_squeue_pending_and_starting_jobs_are_alive_but_not_listening() -> None:
    pending = hub_slurm.parse_squeue("18", 0, "18|PENDING||Resources|\n", "", RANGE)
    assert pending.alive and not pending.listening and pending.reason == "Resources"
    starting = hub_slurm.parse_squeue("19", 0, "19|RUNNING|c1|None|\n", "", RANGE)
    assert starting.alive and not starting.listening  # running, but no port reported yet


def test_squeue_ended_and_forgotten_jobs() -> None:
    for line in ("20|COMPLETED|c1|None|sciplat-port=50001", "20|CANCELLED|c1|None|", "20|COMPLETING|c1|None|"):
        assert not hub_slurm.parse_squeue("20", 0, line, "", RANGE).alive, line
    gone = hub_slurm.parse_squeue("21", 1, "", "slurm_load_jobs error: Invalid job id specified\n", RANGE)
    assert gone.state == hub_slurm.GONE and not gone.alive
    assert hub_slurm.parse_squeue("22", 0, "", "", RANGE).state == hub_slurm.GONE


def test_squeue_outage_is_not_a_stopped_server() -> None:
    with pytest.raises(hub_slurm.SlurmError, match="Unable to contact slurm controller"):
        hub_slurm.parse_squeue("23", 1, "", "squeue: error: Unable to contact slurm controller", RANGE)


def test_a_port_outside_the_range_or_a_stray_comment_is_ignored() -> None:
    outside = hub_slurm.parse_squeue("24", 0, "24|RUNNING|c1|None|sciplat-port=22", "", RANGE)
    assert outside.port is None and not outside.listening
    piped = hub_slurm.parse_squeue("25", 0, "25|RUNNING|c1|None|note|x sciplat-port=50500", "", RANGE)
    assert piped.port == 50500
    other = hub_slurm.parse_squeue("26", 0, "27|RUNNING|c1|None|sciplat-port=50500", "", RANGE)
    assert other.state == hub_slurm.GONE  # another job's line


def test_node_addresses_and_job_ids() -> None:
    assert hub_slurm.parse_node_addresses("c1|10.0.0.12\nc2|10.0.0.13\n") == {"c1": "10.0.0.12", "c2": "10.0.0.13"}
    assert hub_slurm.parse_job_id("1234\n") == "1234"
    assert hub_slurm.parse_job_id("1234;cluster\n") == "1234"
    with pytest.raises(hub_slurm.SlurmError, match="did not print a job id"):
        hub_slurm.parse_job_id("sbatch: error: Batch job submission failed\n")


def test_state_round_trip_keeps_the_job_and_the_systemd_unit() -> None:
    state = hub_slurm.state_with_job({"unit_name": "jupyter-alice-default"}, "881")
    assert state == {"unit_name": "jupyter-alice-default", "slurm_job_id": "881"}
    assert hub_slurm.job_from_state(state) == "881"
    cleared = hub_slurm.state_with_job(state, "")
    assert cleared == {"unit_name": "jupyter-alice-default"} and hub_slurm.job_from_state(cleared) == ""
    assert hub_slurm.job_from_state(None) == "" and hub_slurm.job_from_state({"slurm_job_id": "x;rm"}) == ""


def test_messages_say_what_happened() -> None:
    ended = hub_slurm.JobStatus("30", "FAILED", "c1", "NonZeroExitCode")
    text = hub_slurm.start_failure_message(ended, "line1\nModuleNotFoundError: jupyterhub\n", "/home/a/x-30.log")
    assert "job 30 ended (FAILED)" in text and "/home/a/x-30.log" in text and "ModuleNotFoundError" in text
    waiting = hub_slurm.pending_message(hub_slurm.JobStatus("31", "PENDING", reason="Resources"), "large", 115)
    assert "size large within 115 s" in waiting and "reason: Resources" in waiting


# ------------------------------------------------------------------ waiting for the job and the server


def test_the_poll_schedule_is_sub_second_at_first_then_backs_off_to_a_second() -> None:
    delays = list(itertools.islice(hub_slurm.poll_delays(), 12))
    assert delays[0] <= 0.1
    assert delays == sorted(delays) and delays[-1] == 1.0 and max(delays) == 1.0
    elapsed = list(itertools.accumulate(delays))
    assert len([t for t in elapsed if t <= 1.5]) >= 5, f"squeue is asked often in the first second: {elapsed}"
    # a job that reports its port at 1.1 s is seen within 0.5 s (the old fixed 1 s pause: up to 1 s)
    first_after = next(t for t in elapsed if t >= 1.1)
    assert first_after - 1.1 < 0.5, elapsed
    with pytest.raises(ValueError, match="poll schedule"):
        next(hub_slurm.poll_delays(first=0))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _wait(answers_at: float | None, ends_at: float | None, deadline: float) -> tuple[str, FakeClock, list[float]]:
    clock = FakeClock()
    job_checks: list[float] = []

    async def answers() -> bool:
        return answers_at is not None and clock.now >= answers_at

    async def alive() -> bool:
        job_checks.append(clock.now)
        return ends_at is None or clock.now < ends_at

    outcome = asyncio.run(
        hub_slurm.wait_until_answers(answers, alive, deadline, clock=clock, sleep=clock.sleep, job_check_every=2.0)
    )
    return outcome, clock, job_checks


def test_the_spawner_sees_its_server_answer_within_a_fifth_of_a_second() -> None:
    outcome, clock, _ = _wait(answers_at=6.0, ends_at=None, deadline=100)
    assert outcome == "answers"
    assert 6.0 <= clock.now <= 6.2, "JupyterHub's own backoff could be seconds late here"
    assert max(clock.slept) <= 0.2


def test_a_server_that_dies_at_start_is_noticed_within_the_job_check_interval() -> None:
    outcome, clock, checks = _wait(answers_at=None, ends_at=3.0, deadline=100)
    assert outcome == "ended" and 3.0 <= clock.now <= 5.5
    assert all(b - a >= 2.0 for a, b in itertools.pairwise(checks)), "squeue is not asked at every poll"


def test_waiting_stops_at_the_deadline_and_leaves_the_rest_to_the_hub() -> None:
    outcome, clock, _ = _wait(answers_at=None, ends_at=None, deadline=7.25)
    assert outcome == "timeout" and clock.now == pytest.approx(7.25)


def test_server_answers_counts_any_answer_but_a_5xx_and_not_a_closed_port() -> None:
    async def scenario() -> list[bool]:
        statuses = iter([b"HTTP/1.1 200 OK", b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 502 Bad Gateway", b"garbage"])
        paths: list[bytes] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            paths.append((await reader.readline()).split()[1])
            writer.write(next(statuses) + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            seen = [await hub_slurm.server_answers("127.0.0.1", port, "/user/alice/api") for _ in range(4)]
        assert paths == [b"/user/alice/api"] * 4
        # nothing listens there any more
        seen.append(await hub_slurm.server_answers("127.0.0.1", port, "/user/alice/api", timeout=1))
        return seen

    assert asyncio.run(scenario()) == [True, True, False, False, False]


@pytest.mark.parametrize("text", ["50000", "50999-50000", "80-90", "a-b", "50000-70000"])
def test_bad_port_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="port range"):
        hub_slurm.parse_port_range(text)


# ------------------------------------------------------------------ the hub's configuration


class _Section:
    def __init__(self) -> None:
        object.__setattr__(self, "values", {})

    def __setattr__(self, name: str, value: Any) -> None:
        self.values[name] = value


class _Config:
    def __init__(self) -> None:
        self.sections: dict[str, _Section] = {}

    def __getattr__(self, name: str) -> _Section:
        return self.sections.setdefault(name, _Section())


def test_slurm_settings_bind_the_hub_for_the_nodes_and_keep_loopback_for_the_proxy() -> None:
    c = _Config()
    settings = {
        "hub_port": 8081,
        "notebook_prefix": "/opt/nb",
        "slurm": {
            "partition": "interactive",
            "time_limit": 3600,
            "port_range": "50000-50999",
            "hub_address": "10.0.0.10",
        },
    }
    hub_config.configure_slurm(c, settings)
    assert c.JupyterHub.values == {"hub_bind_url": "http://0.0.0.0:8081", "hub_connect_url": "http://127.0.0.1:8081"}
    spawner = c.SciplatSlurmSpawner.values
    assert spawner["hub_connect_url"] == "http://10.0.0.10:8081"
    assert (spawner["slurm_partition"], spawner["slurm_time_limit"]) == ("interactive", 3600)
    assert spawner["slurm_port_range"] == "50000-50999" and spawner["notebook_prefix"] == "/opt/nb"
    assert hub_config.SPAWNERS["slurm"].endswith("SciplatSlurmSpawner")


# ------------------------------------------------------------------ platform.yaml


def _spec(compute: dict[str, Any]) -> PlatformSpec:
    return PlatformSpec.model_validate({"platform": {"name": "lab", "domain": "lab.example.org"}, "compute": compute})


def _jinja(expression: str, groups: dict[str, list[str]]) -> str:
    jinja2 = pytest.importorskip("jinja2")
    return str(jinja2.Environment().from_string(expression).render(groups=groups))


def test_notebooks_render_to_the_hub_spawner(tmp_path: Path) -> None:
    assert role_vars(_spec({"notebooks": "compute"}), tmp_path)["hub_spawner"] == "slurm"
    assert role_vars(_spec({"notebooks": "hub"}), tmp_path)["hub_spawner"] == "systemd"
    assert role_vars(_spec({"scheduler": "none"}), tmp_path)["hub_spawner"] == "systemd"
    auto = role_vars(_spec({}), tmp_path)
    assert auto["hub_spawner"] == AUTO_SPAWNER
    assert _jinja(AUTO_SPAWNER, {"compute": ["c1", "c2"]}) == "slurm"
    assert _jinja(AUTO_SPAWNER, {"compute": []}) == "systemd"
    assert _jinja(AUTO_SPAWNER, {}) == "systemd"
    assert (auto["hub_slurm_partition"], auto["hub_slurm_time_limit"]) == ("interactive", 12 * 3600)


def test_servers_use_the_default_partition_without_an_interactive_one(tmp_path: Path) -> None:
    values = role_vars(
        _spec(
            {"partitions": [{"name": "short", "max_time": "2h"}, {"name": "main", "max_time": "1d", "default": True}]}
        ),
        tmp_path,
    )
    assert (values["hub_slurm_partition"], values["hub_slurm_time_limit"]) == ("main", 86400)


def test_notebooks_on_compute_need_slurm() -> None:
    with pytest.raises(ValidationError, match=r"notebooks: compute .* scheduler is 'none'"):
        _spec({"scheduler": "none", "notebooks": "compute"})
    with pytest.raises(ValidationError, match="notebooks"):
        _spec({"notebooks": "gpu"})


def test_oversubscribe_renders_only_where_asked(tmp_path: Path) -> None:
    values = role_vars(
        _spec(
            {
                "partitions": [
                    {"name": "interactive", "max_time": "12h", "default": True, "oversubscribe": 8},
                    {"name": "batch", "max_time": "2d"},
                ]
            }
        ),
        tmp_path,
    )
    assert values["slurm_controller_partitions"] == [
        {"name": "interactive", "max_time": 43200, "default": True, "oversubscribe": 8},
        {"name": "batch", "max_time": 172800, "default": False},
    ]
    for bad in (0, -1, "many"):
        with pytest.raises(ValidationError, match="oversubscribe"):
            _spec({"partitions": [{"name": "interactive", "default": True, "oversubscribe": bad}]})


def test_slurm_conf_has_oversubscribe_on_that_partition_only() -> None:
    jinja2 = pytest.importorskip("jinja2")
    template = (REPO / "roles" / "slurm_controller" / "templates" / "slurm.conf.j2").read_text()
    text = (
        jinja2.Environment()
        .from_string(template)
        .render(
            ansible_managed="test",
            __slurm_controller_all_settings={"ClusterName": "lab"},
            __slurm_controller_compute_hosts=[],
            hostvars={},
            slurm_controller_default_time_minutes=60,
            slurm_controller_partitions=[
                {"name": "interactive", "max_time": 43200, "default": True, "oversubscribe": 8},
                {"name": "batch", "max_time": 172800, "default": False},
            ],
        )
    )
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("PartitionName=")}
    assert "OverSubscribe=FORCE:8" in lines["PartitionName=interactive"]
    assert "OverSubscribe" not in lines["PartitionName=batch"]


def test_the_test_bed_runs_servers_on_compute_with_shared_cores(tmp_path: Path) -> None:
    import yaml

    spec = PlatformSpec.model_validate(yaml.safe_load((REPO / "inventories" / "local" / "platform.yaml").read_text()))
    values = role_vars(spec, tmp_path)
    assert values["hub_spawner"] == AUTO_SPAWNER
    interactive = next(p for p in values["slurm_controller_partitions"] if p["name"] == "interactive")
    assert interactive["oversubscribe"] == 8
