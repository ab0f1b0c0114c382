"""How the hub starts users' servers, and what runs before.

Runs inside JupyterHub. `SciplatSystemdSpawner` starts each server (named
servers too) as a transient systemd unit on the hub host, as the user's uid,
sized by the profile the user picked (compute.profiles). Tutorial users get a
system account of their own (no login, no home: /home is an empty tmpfs for
them), a read-only system but for their state directory, no credentials, the
tutorial's CPU and memory limits and a hard lifetime.

`SciplatSlurmSpawner` (hub_spawner: slurm) starts each server as a Slurm job
on the compute nodes instead (`sciplat_hub.hub_slurm` builds the job and reads
squeue); tutorial users stay on the hub host under the systemd path above.

`provision_hook` is the hub's pre-spawn hook: it runs account provisioning
(`sciplat_hub.provision`) in the platform_code venv and puts what it returns
into the server's environment; a failure stops the spawn with its sentence.
"""

from __future__ import annotations

import asyncio
import html
import json
import pwd
import re
import time
from typing import Any

from systemdspawner import SystemdSpawner
from tornado import web
from traitlets import Dict, Integer, List, Unicode, default

from sciplat_hub import hub_slurm
from sciplat_hub.hub_tutorial import TUTORIAL_PREFIX, TUTORIAL_STATE


def unit_safe(name: str) -> str:
    """A server name as part of a systemd unit name (systemd-escape style)."""
    return re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"\\x{ord(m.group(0)):02x}", name)


def pick_profile(profiles: list[dict[str, Any]], requested: str | None) -> dict[str, Any]:
    if requested:
        for profile in profiles:
            if profile["name"] == requested:
                return profile
        names = ", ".join(p["name"] for p in profiles)
        raise StartFailed(f"There is no server size {requested!r}; choose one of: {names}.")
    for profile in profiles:
        if profile.get("default"):
            return profile
    return profiles[0]


def profile_label(profile: dict[str, Any]) -> str:
    memory = int(profile["memory"])
    gib = memory / 1024**3
    size = f"{gib:g} GiB" if gib >= 1 else f"{memory // 1024**2} MiB"
    cpus = float(profile["cpus"])
    return f"{profile['name']}: {cpus:g} CPU{'s' if cpus != 1 else ''}, {size} memory"


class StartFailed(web.HTTPError):
    """A server could not start; its sentence is what the user reads.

    JupyterHub shows `jupyterhub_message` on the spawn page and in the progress
    events, and the log message of an HTTPError in the API's answer: for any
    other exception an API client got only {"status": 500, "message": "error"}.
    """

    def __init__(self, message: str) -> None:
        super().__init__(500, "%s", message)  # the message itself may hold a %
        self.jupyterhub_message = message

    def __str__(self) -> str:
        return self.jupyterhub_message


class SciplatSystemdSpawner(SystemdSpawner):  # type: ignore[misc]
    profiles = List(config=True, help="Server sizes: dicts of name, cpus, memory (bytes), default.")
    tutorial = Dict(config=True, help="The anonymous method's settings: cpus, memory, lifetime (s).")
    provision_python = Unicode("/opt/sciplat/venv/bin/python", config=True)
    provision_timeout = Integer(120, config=True)

    unit_name_template = Unicode("jupyter-{USERNAME}-{SERVERNAME}", config=True)

    def _expand_user_vars(self, string: str) -> str:
        return string.format(USERNAME=self.user.name, USERID=self.user.id, SERVERNAME=unit_safe(self.name or "default"))

    @property
    def is_tutorial(self) -> bool:
        return bool(self.tutorial) and self.user.name.startswith(TUTORIAL_PREFIX)

    def _options_form_default(self) -> str:
        if len(self.profiles) < 2:
            return ""
        options = []
        for profile in self.profiles:
            selected = " selected" if profile.get("default") else ""
            value, label = html.escape(profile["name"]), html.escape(profile_label(profile))
            options.append(f'<option value="{value}"{selected}>{label}</option>')
        return (
            '<label for="sciplat-profile">Server size</label>'
            '<select class="form-control" name="profile" id="sciplat-profile">' + "".join(options) + "</select>"
        )

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return {"profile": (formdata.get("profile") or [""])[0]}

    async def start(self) -> Any:
        if self.is_tutorial:
            name = self.user.name
            await ensure_tutorial_account(name)
            self.user_workingdir = f"{TUTORIAL_STATE}/{name}"
            # a throw-away user has no platform account: no SCIPLAT_* settings (the API's URL
            # included), as no S3 or PG* ones
            self.environment = {k: v for k, v in self.environment.items() if not k.startswith("SCIPLAT_")}
            self.cpu_limit = float(self.tutorial.get("cpus", 1))
            self.mem_limit = int(self.tutorial.get("memory", 1024**3))
            self.unit_extra_properties = {
                **self.unit_extra_properties,
                "RuntimeMaxSec": str(int(self.tutorial.get("lifetime", 3600))),
                "StateDirectory": f"{TUTORIAL_STATE.rsplit('/', 1)[1]}/{name}",
                "ProtectHome": "tmpfs",
                "ProtectSystem": "strict",
                "PrivateTmp": "yes",
            }
        else:
            profile = pick_profile(self.profiles, (self.user_options or {}).get("profile"))
            self.cpu_limit = float(profile["cpus"])
            self.mem_limit = int(profile["memory"])
        # a server unit that ended badly (a tutorial's lifetime reached, killed) is dropped
        # by systemd, not kept as a failed unit that turns `sciplat status` red
        self.unit_extra_properties = {**self.unit_extra_properties, "CollectMode": "inactive-or-failed"}
        return await super().start()


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def _run_split(
    argv: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run ARGV (no shell); return (exit code, stdout, stderr). A hung command counts as failed."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd="/",  # not the hub's 0700 state directory: some commands run as the user
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "", f"{argv[0]} did not answer within {timeout:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class SciplatSlurmSpawner(SciplatSystemdSpawner):
    """Each user server is a Slurm job on the compute nodes (tutorial users: the systemd path).

    The job id is the spawner's state, so a hub restart finds the servers
    again; `poll` reads the job's state (a job that ended stops the server);
    `stop` cancels the job and waits until Slurm has ended it.
    """

    slurm_partition = Unicode("interactive", config=True, help="Partition of the servers' jobs.")
    slurm_time_limit = Integer(43200, config=True, help="Time limit of a server's job (seconds).")
    slurm_port_range = Unicode("50000-50999", config=True, help="Ports a server may listen on (LOW-HIGH).")
    notebook_prefix = Unicode("/opt/sciplat/notebook", config=True, help="The notebook venv on the compute nodes.")
    slurm_command_timeout = Integer(60, config=True, help="Seconds a Slurm command may take.")
    slurm_stop_timeout = Integer(60, config=True, help="Seconds to wait for a cancelled job to end.")

    job_id = Unicode("")

    # a job that ended is seen within this many seconds (JupyterHub's default is 30)
    @default("poll_interval")
    def _poll_interval_default(self) -> int:
        return 10

    # ---------------------------------------------------------------- state

    def get_state(self) -> dict[str, Any]:
        return hub_slurm.state_with_job(super().get_state(), self.job_id)

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.job_id = hub_slurm.job_from_state(state)

    def clear_state(self) -> None:
        super().clear_state()
        self.job_id = ""

    # ---------------------------------------------------------------- Slurm

    @property
    def _port_range(self) -> tuple[int, int]:
        return hub_slurm.parse_port_range(self.slurm_port_range)

    async def _job_status(self, job_id: str) -> hub_slurm.JobStatus:
        argv = ["squeue", "--noheader", f"--jobs={job_id}", "--states=all", f"--format={hub_slurm.SQUEUE_FORMAT}"]
        code, out, err = await _run_split(argv, timeout=self.slurm_command_timeout)
        return hub_slurm.parse_squeue(job_id, code, out, err, self._port_range)

    async def _node_address(self, node: str) -> str:
        argv = ["sinfo", "--noheader", "--Node", f"--nodes={node}", "--format=%N|%o"]
        code, out, err = await _run_split(argv, timeout=self.slurm_command_timeout)
        address = hub_slurm.parse_node_addresses(out).get(node, "") if code == 0 else ""
        if not address:
            raise hub_slurm.SlurmError(f"Slurm did not give the address of node {node}: {err.strip()[:200]}")
        return address

    async def _log_tail(self, user: str, path: str) -> str:
        # as the user: root may not read a home on the shared filesystem
        code, out, _ = await _run_split(["/usr/sbin/runuser", "-u", user, "--", "tail", "-n", "20", path], timeout=15)
        return out if code == 0 else ""

    def _job_request(self, home: str) -> hub_slurm.JobRequest:
        return hub_slurm.JobRequest(
            user=self.user.name,
            server=self.name or "",
            home=home,
            cpus=float(self.cpu_limit or 1),
            memory=int(self.mem_limit or 1024**3),
            partition=self.slurm_partition,
            time_limit=int(self.slurm_time_limit),
            port_range=self._port_range,
            notebook_prefix=self.notebook_prefix,
            args=tuple(self.get_args()),
            account=str(self.environment.get("SCIPLAT_SLURM_ACCOUNT", "")),
        )

    async def start(self) -> Any:
        if self.is_tutorial:
            return await super().start()
        if self.job_id:  # a job the hub lost track of: never two servers for one name
            await self._cancel(self.job_id)
            self.job_id = ""
        profile = pick_profile(self.profiles, (self.user_options or {}).get("profile"))
        self.cpu_limit = float(profile["cpus"])
        self.mem_limit = int(profile["memory"])
        try:
            account = pwd.getpwnam(self.user.name)
        except KeyError:
            raise StartFailed(f"There is no account {self.user.name} on the hub host; sign in again.") from None
        request = self._job_request(account.pw_dir)
        env = hub_slurm.server_environment(
            self.get_env(), user=self.user.name, home=account.pw_dir, notebook_prefix=self.notebook_prefix
        )
        code, _, err = await _run_split(
            ["/usr/sbin/runuser", "-u", self.user.name, "--", "mkdir", "-p", request.log_dir], env=env, timeout=30
        )
        if code != 0:
            raise StartFailed(f"Your home directory is not writable ({err.strip()[:200]}).")
        code, out, err = await _run_split(
            hub_slurm.sbatch_argv(request),
            stdin=hub_slurm.job_script(request),
            env=env,
            timeout=self.slurm_command_timeout,
        )
        if code != 0:
            raise StartFailed(f"Slurm refused your server's job: {(err or out).strip()[:400]}")
        self.job_id = hub_slurm.parse_job_id(out)
        self.log.info("server %s of %s: Slurm job %s submitted", self.name or "default", self.user.name, self.job_id)
        self._save_state()

        # give up a little before JupyterHub's own start_timeout, with the reason Slurm gives
        deadline = time.monotonic() + max(10, int(self.start_timeout) - 5)
        status = hub_slurm.JobStatus(self.job_id, "PENDING")
        delays = hub_slurm.poll_delays()  # sub-second at first: most jobs start at once
        while time.monotonic() < deadline:
            try:
                status = await self._job_status(self.job_id)
            except hub_slurm.SlurmError as exc:
                self.log.warning("server of %s: %s", self.user.name, exc)
            else:
                if status.listening:
                    address = await self._node_address(status.node)
                    self.log.info(
                        "server %s of %s: job %s on %s (%s) port %s",
                        self.name or "default", self.user.name, self.job_id, status.node, address, status.port,
                    )  # fmt: skip
                    prefix = str(env.get("JUPYTERHUB_SERVICE_PREFIX") or "/")
                    status = await self._wait_until_answers(status, address, prefix, deadline)
                    if status.alive:
                        return f"http://{address}:{status.port}"
                if not status.alive:
                    tail = await self._log_tail(self.user.name, request.log_file(self.job_id))
                    self.job_id = ""
                    raise StartFailed(hub_slurm.start_failure_message(status, tail, request.log_file(status.job_id)))
            await asyncio.sleep(next(delays))
        await self._cancel(self.job_id, wait=False)  # the message now, not after JupyterHub's own timeout
        self.job_id = ""
        raise StartFailed(hub_slurm.pending_message(status, profile_label(profile), int(self.start_timeout)))

    async def _wait_until_answers(
        self, status: hub_slurm.JobStatus, address: str, prefix: str, deadline: float
    ) -> hub_slurm.JobStatus:
        """Wait, polling often, until the job's server answers (or its job ended); its last status.

        The hub's own wait after `start` returns backs off to pauses of several
        seconds; this one finds the server up within a fraction of a second.
        Past the deadline the hub's own wait (http_timeout) takes over.
        """
        began = time.monotonic()
        port = int(status.port or 0)
        last = status

        async def job_alive() -> bool:
            nonlocal last
            try:
                last = await self._job_status(status.job_id)
            except hub_slurm.SlurmError as exc:  # slurmctld busy: keep waiting for the server
                self.log.warning("server of %s: %s", self.user.name, exc)
                return True
            return last.alive

        outcome = await hub_slurm.wait_until_answers(
            lambda: hub_slurm.server_answers(address, port, f"{prefix.rstrip('/')}/api"), job_alive, deadline
        )
        self.log.info(
            "server %s of %s: job %s %s after %.2f s",
            self.name or "default", self.user.name, status.job_id,
            {"answers": "answered", "ended": "ended", "timeout": "did not answer yet"}[outcome],
            time.monotonic() - began,
        )  # fmt: skip
        return last if outcome == "ended" else status

    def _save_state(self) -> None:
        # the job id reaches the hub's database at once: a hub restart during the start
        # leaves no orphan job (the next start cancels it)
        orm, db = getattr(self, "orm_spawner", None), getattr(self, "db", None)
        if orm is None or db is None:
            return
        try:
            orm.state = self.get_state()
            db.commit()
        except Exception:  # the hub saves the state itself once the server is up
            self.log.exception("could not save the job id of %s's server early", self.user.name)

    async def _cancel(self, job_id: str, wait: bool = True) -> None:
        code, out, err = await _run_split(["scancel", job_id], timeout=self.slurm_command_timeout)
        if code != 0 and "invalid job id" not in (err + out).lower():
            self.log.warning("scancel %s: %s", job_id, (err or out).strip())
        deadline = time.monotonic() + int(self.slurm_stop_timeout)
        while wait and time.monotonic() < deadline:
            try:
                if not (await self._job_status(job_id)).alive:
                    return
            except hub_slurm.SlurmError as exc:
                self.log.warning("job %s: %s", job_id, exc)
            await asyncio.sleep(1)

    async def stop(self, now: bool = False) -> None:
        if not self.job_id:
            await super().stop(now=now)  # a tutorial server, or one started before the switch to Slurm
            return
        await self._cancel(self.job_id, wait=not now)

    async def poll(self) -> int | None:
        if not self.job_id:
            return await super().poll()  # type: ignore[no-any-return]
        try:
            status = await self._job_status(self.job_id)
        except hub_slurm.SlurmError as exc:
            # slurmctld unreachable: not a reason to drop the user's server
            self.log.warning("server of %s: cannot read job %s: %s", self.user.name, self.job_id, exc)
            return None
        if status.alive:
            return None
        self.log.info("server of %s: Slurm job %s %s", self.user.name, self.job_id, status.state.lower())
        return 0


async def ensure_tutorial_account(name: str) -> None:
    """A system account without login or home for a tutorial user's server.

    systemd's DynamicUser would do, but it is not available everywhere (not in
    containers); the tutorial reaper removes the account with the user.
    """
    if not name.startswith(TUTORIAL_PREFIX):
        raise ValueError(f"{name} is not a tutorial user")
    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    code, out = await _run(
        "useradd", "--system", "--no-create-home", "--home-dir", f"{TUTORIAL_STATE}/{name}",
        "--shell", "/usr/sbin/nologin", "--user-group", name,
    )  # fmt: skip
    if code != 0:
        raise StartFailed(f"The tutorial session could not be prepared ({out.strip()[:200]}).")


async def provision_hook(spawner: Any) -> None:
    """Pre-spawn hook: provision the user's account, then pass its environment on."""
    if getattr(spawner, "is_tutorial", False):
        return
    python = getattr(spawner, "provision_python", "/opt/sciplat/venv/bin/python")
    timeout = getattr(spawner, "provision_timeout", 120)
    username = spawner.user.name
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "sciplat_hub.provision",
        "--json",
        username,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise StartFailed(
            f"Preparing your account took longer than {timeout} s. It is tried again when you next start a server."
        ) from None
    for line in err.decode(errors="replace").splitlines():
        spawner.log.info("provision %s: %s", username, line)
    try:
        result = json.loads(out.decode() or "{}")
    except json.JSONDecodeError:
        result = {}
    if not result.get("ok"):
        message = result.get("message") or (
            "Your account could not be prepared (internal error). It is tried again when you next start a server."
        )
        raise StartFailed(message)
    spawner.environment = {**spawner.environment, **result.get("env", {})}
