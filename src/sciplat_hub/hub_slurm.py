"""Users' servers as Slurm jobs: the parts of the hub's Slurm spawner that need no JupyterHub.

`sciplat_hub.hub_spawner.SciplatSlurmSpawner` starts each server (named
servers too) as a batch job submitted *as the user* (the hub runs as root:
``runuser -u USER -- sbatch``), sized by the profile the user chose
(``--cpus-per-task``, ``--mem``) on the interactive partition with its time
limit. The job script (`job_script`) picks a free port of the port range the
firewall opens from the hub hosts, writes it into the job's own comment
(``scontrol update JobId=… Comment=sciplat-port=N``) and runs
jupyterhub-singleuser there. The hub reads state, node and comment with
``squeue`` (`parse_squeue`) and the node's address with ``sinfo``
(`parse_node_addresses`): the address comes from Slurm, never from the job,
so a job can only point the proxy at a port of the node it runs on.

Nothing secret is on a command line: the hub runs sbatch with an environment
of its own making (the server's JUPYTERHUB_* variables with its API token,
what provisioning returned) and ``--export=ALL`` hands exactly that to the
job; the script arrives on sbatch's standard input.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Marks the port in a job's comment; the rest of a comment is ignored.
COMMENT_KEY = "sciplat-port="
# Job states in which the server may still come up or is up.
ALIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "RESIZING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD"})
# The squeue format the hub parses: id, state, node, reason, comment (last: it is free text).
SQUEUE_FORMAT = "%i|%T|%N|%r|%k"
# The log of a server's job, relative to the user's home (the shared filesystem).
LOG_DIR = ".sciplat/logs"
# How often the hub asks: often at first (a job on a free node reports its port
# within a second or two, a server answers a few seconds later), less often
# when it takes longer, never less often than every POLL_MOST seconds.
POLL_FIRST = 0.1
POLL_FACTOR = 1.5
POLL_MOST = 1.0
# While it waits for the server to answer, the hub reads the job's state this
# often, so that a server that dies at start is reported with its log at once.
JOB_CHECK_EVERY = 2.0


class SlurmError(RuntimeError):
    """A Slurm command failed; the message is a sentence for the user or the hub log."""


def parse_port_range(text: str) -> tuple[int, int]:
    """'50000-50999' -> (50000, 50999); a clear ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"port range {text!r} is not LOW-HIGH, e.g. 50000-50999")
    low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"port range {text!r} must lie within 1024-65535 with LOW <= HIGH")
    return low, high


def job_name(user: str, server: str) -> str:
    """jupyter-USER-SERVER (SERVER 'default' for the unnamed one), safe for Slurm and file names."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", server or "default")
    return f"jupyter-{user}-{safe}"


def slurm_minutes(seconds: int) -> int:
    """A time limit in whole minutes (sbatch --time), never below one."""
    return max(1, math.ceil(int(seconds) / 60))


def slurm_cpus(cpus: float) -> int:
    """Slurm allocates whole CPUs: a profile's 0.5 CPU becomes 1."""
    return max(1, math.ceil(float(cpus)))


def slurm_memory_mib(memory: int) -> int:
    return max(1, math.ceil(int(memory) / 1024**2))


@dataclass(frozen=True)
class JobRequest:
    """One user server as a Slurm job."""

    user: str
    server: str  # "" for the default server
    home: str
    cpus: float
    memory: int  # bytes
    partition: str
    time_limit: int  # seconds
    port_range: tuple[int, int]
    notebook_prefix: str
    args: tuple[str, ...] = ()
    account: str = ""  # SCIPLAT_SLURM_ACCOUNT from provisioning; "" = the user's default account
    extra_options: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return job_name(self.user, self.server)

    @property
    def log_dir(self) -> str:
        return f"{self.home.rstrip('/')}/{LOG_DIR}"

    @property
    def log_pattern(self) -> str:
        return f"{self.log_dir}/{self.name}-%j.log"

    def log_file(self, job_id: str) -> str:
        return self.log_pattern.replace("%j", job_id)


def sbatch_argv(req: JobRequest) -> list[str]:
    """The hub's command (run as root) that submits REQ as the user; the script goes to stdin."""
    argv = [
        "/usr/sbin/runuser", "-u", req.user, "--",
        "sbatch", "--parsable",
        f"--job-name={req.name}",
        f"--partition={req.partition}",
        "--nodes=1", "--ntasks=1",
        f"--cpus-per-task={slurm_cpus(req.cpus)}",
        f"--mem={slurm_memory_mib(req.memory)}M",
        f"--time={slurm_minutes(req.time_limit)}",
        f"--chdir={req.home}",
        f"--output={req.log_pattern}",
        "--export=ALL",
        # the server gets SIGTERM (it shuts down cleanly) a minute before the time limit
        "--signal=B:TERM@60",
    ]  # fmt: skip
    if req.account:
        argv.append(f"--account={req.account}")
    argv.extend(req.extra_options)
    return argv


_PICK_PORT = """\
import random, socket, sys
low, high = int(sys.argv[1]), int(sys.argv[2])
ports = list(range(low, high + 1))
random.shuffle(ports)
for port in ports:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            continue
    print(port)
    break
else:
    sys.exit(f"no free port in {low}-{high} on this node")
"""


def job_script(req: JobRequest) -> str:
    """The batch script of REQ: free port -> job comment -> jupyterhub-singleuser."""
    low, high = req.port_range
    prefix = req.notebook_prefix.rstrip("/")
    command = shlex.join([f"{prefix}/bin/jupyterhub-singleuser", *req.args])
    return f"""#!/bin/bash
# sciplat: the Jupyter server {req.server or "default"!r} of {req.user}, started by the hub.
# Picks a free port in {low}-{high} on this node (the port range the hub hosts
# may reach), tells the hub through this job's comment, runs the server there.
set -euo pipefail
port=$({shlex.quote(prefix + "/bin/python")} - {low} {high} <<'SCIPLAT_PICK_PORT'
{_PICK_PORT}SCIPLAT_PICK_PORT
)
scontrol update JobId="$SLURM_JOB_ID" Comment="{COMMENT_KEY}$port"
export JUPYTERHUB_SERVICE_URL="http://0.0.0.0:$port${{JUPYTERHUB_SERVICE_PREFIX:-/}}"
echo "sciplat: server of {req.user} in job $SLURM_JOB_ID on $(hostname), port $port"
# sbatch and srun in the server's terminals make jobs of their own, as from a
# login node, rather than steps inside this server's allocation
export SCIPLAT_SERVER_JOB_ID="$SLURM_JOB_ID"
for name in $(compgen -e | grep -E '^(SLURM|SBATCH|SALLOC|SRUN)_' || true); do unset "$name"; done
exec {command}
"""


@dataclass(frozen=True)
class JobStatus:
    """What squeue says about one job."""

    job_id: str
    state: str  # RUNNING, PENDING, … ; "GONE" when Slurm no longer knows the job
    node: str = ""
    reason: str = ""
    port: int | None = None

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def listening(self) -> bool:
        return self.state == "RUNNING" and self.port is not None and bool(self.node)


GONE = "GONE"


def port_from_comment(comment: str, port_range: tuple[int, int] | None = None) -> int | None:
    """The port a job wrote into its comment, if it is one of the allowed range."""
    match = re.search(re.escape(COMMENT_KEY) + r"(\d+)", comment or "")
    if not match:
        return None
    port = int(match.group(1))
    if port_range is not None and not port_range[0] <= port <= port_range[1]:
        return None
    return port


def parse_squeue(job_id: str, returncode: int, stdout: str, stderr: str, port_range: tuple[int, int]) -> JobStatus:
    """squeue --noheader --jobs=ID --states=all --format=SQUEUE_FORMAT -> JobStatus.

    A job Slurm has forgotten (MinJobAge after it ended) is GONE; any other
    failure of squeue (slurmctld unreachable) raises SlurmError, so that a
    caller does not mistake an outage for a stopped server.
    """
    if returncode != 0:
        if "invalid job id" in (stderr + stdout).lower():
            return JobStatus(job_id, GONE)
        raise SlurmError(f"squeue failed (exit {returncode}): {(stderr or stdout).strip()[:300]}")
    for line in stdout.splitlines():
        parts = line.strip().split("|", 4)
        if len(parts) < 5 or parts[0] != job_id:
            continue
        _, state, node, reason, comment = parts
        state = state.strip().split()[0].upper() if state.strip() else ""
        node = node.strip()
        if node in ("(null)", "n/a"):
            node = ""
        reason = reason.strip()
        return JobStatus(
            job_id, state, node, "" if reason == "None" else reason, port_from_comment(comment, port_range)
        )
    return JobStatus(job_id, GONE)


def parse_node_addresses(stdout: str) -> dict[str, str]:
    """sinfo --noheader --Node --format='%N|%o' -> {node name: address}."""
    addresses: dict[str, str] = {}
    for line in stdout.splitlines():
        name, sep, address = line.strip().partition("|")
        if sep and name and address.strip():
            addresses[name] = address.strip()
    return addresses


def parse_job_id(stdout: str) -> str:
    """sbatch --parsable prints JOBID or JOBID;CLUSTER."""
    job_id = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch did not print a job id: {stdout.strip()[:200]!r}")
    return job_id


STATE_KEY = "slurm_job_id"


def state_with_job(state: dict[str, Any], job_id: str) -> dict[str, Any]:
    """The spawner's saved state with the server's job id (none: the key is left out)."""
    state = dict(state)
    state.pop(STATE_KEY, None)
    if job_id:
        state[STATE_KEY] = str(job_id)
    return state


def job_from_state(state: dict[str, Any] | None) -> str:
    """The job id a saved state holds; "" for a state of the systemd path or none."""
    job_id = str((state or {}).get(STATE_KEY) or "")
    return job_id if job_id.isdigit() else ""


def server_environment(
    base: dict[str, str], *, user: str, home: str, notebook_prefix: str, shell: str = "/bin/bash"
) -> dict[str, str]:
    """The environment sbatch runs with, and so the server's (sbatch --export=ALL).

    BASE is what JupyterHub gives a server (JUPYTERHUB_*, its API token, the
    spawner's environment with what provisioning returned). Nothing of the
    hub's own environment goes in: it holds the hub's secrets.
    """
    env = {str(k): str(v) for k, v in base.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(
        {
            "HOME": home,
            "USER": user,
            "LOGNAME": user,
            "SHELL": shell,
            "PATH": f"{notebook_prefix.rstrip('/')}/bin:/usr/local/bin:/usr/bin:/bin",
            "LANG": base.get("LANG", "C.UTF-8"),
        }
    )
    return env


def start_failure_message(status: JobStatus, log_tail: str, log_file: str) -> str:
    """A sentence for the user when the job ended before the server listened."""
    tail = "\n".join(log_tail.strip().splitlines()[-8:])
    what = "was forgotten by Slurm" if status.state == GONE else f"ended ({status.state})"
    message = f"Your server's Slurm job {status.job_id} {what} before the server started."
    if status.reason:
        message += f" Slurm's reason: {status.reason}."
    message += f" Its log is {log_file}"
    return message + (f"; it ends with:\n{tail}" if tail else ".")


def pending_message(status: JobStatus, size: str, seconds: int) -> str:
    reason = status.reason or "none given"
    return (
        f"No compute node had room for a server of size {size} within {seconds} s "
        f"(Slurm job {status.job_id} was {status.state.lower()}, reason: {reason}). "
        "Try a smaller size, or again later."
    )


# ------------------------------------------------------------------ waiting for the server


def poll_delays(first: float = POLL_FIRST, factor: float = POLL_FACTOR, most: float = POLL_MOST) -> Iterator[float]:
    """The pauses between two polls: FIRST, then FACTOR times longer each time, at most MOST."""
    if first <= 0 or factor < 1 or most < first:
        raise ValueError(f"poll schedule first={first} factor={factor} most={most} does not grow from first to most")
    delay = first
    while True:
        yield delay
        delay = min(most, delay * factor)


async def server_answers(host: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """Whether an HTTP server at HOST:PORT answers GET PATH with a status below 500.

    The same test as JupyterHub's own wait for a new server (any answer but a
    5xx counts), made with a plain connection: a refused or silent port is False.
    """
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.split()
    return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and int(parts[1]) < 500


async def wait_until_answers(
    answers: Callable[[], Awaitable[bool]],
    job_alive: Callable[[], Awaitable[bool]],
    deadline: float,
    *,
    delays: Iterator[float] | None = None,
    job_check_every: float = JOB_CHECK_EVERY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> str:
    """Poll ANSWERS until it is true: "answers"; "ended" if JOB_ALIVE says no; "timeout" at DEADLINE.

    JupyterHub's own wait for a new server backs off to pauses of up to 5 s
    (random, 2.5 s on average once a server takes a few seconds to start); the
    spawner waits here with short pauses instead, so that the hub's wait finds
    the server up at its first try.
    """
    # a refused connection costs the node nothing: every 0.1-0.2 s (each pause is time the
    # user may wait for nothing; at 0.5 s the servers' answers were seen 0.25 s late on average)
    delays = delays if delays is not None else poll_delays(first=0.1, most=0.2)
    next_job_check = clock() + job_check_every
    while True:
        if await answers():
            return "answers"
        now = clock()
        if now >= next_job_check:
            if not await job_alive():
                return "ended"
            next_job_check = now + job_check_every
        if now >= deadline:
            return "timeout"
        await sleep(min(next(delays), max(0.0, deadline - now)))
