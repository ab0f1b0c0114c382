"""How the hub starts users' servers, and what runs before.

Runs inside JupyterHub. `SciplatSystemdSpawner` starts each server (named
servers too) as a transient systemd unit on the hub host, as the user's uid,
sized by the profile the user picked (compute.profiles). Tutorial users get a
system account of their own (no login, no home: /home is an empty tmpfs for
them), a read-only system but for their state directory, no credentials, the
tutorial's CPU and memory limits and a hard lifetime.

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
from typing import Any

from systemdspawner import SystemdSpawner
from traitlets import Dict, Integer, List, Unicode

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
        raise ValueError(f"There is no server size {requested!r}; choose one of: {names}.")
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
        return await super().start()


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


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
        raise RuntimeError(f"The tutorial session could not be prepared ({out.strip()[:200]}).")


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
        raise RuntimeError(
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
        raise RuntimeError(message)
    spawner.environment = {**spawner.environment, **result.get("env", {})}
