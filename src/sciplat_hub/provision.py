"""Account provisioning: what a user needs before their first server starts.

The hub runs this at every sign-in, before it spawns a server, as
``python -m sciplat_hub.provision --json USERNAME`` in the platform_code venv on
the hub host (root: the components' ``client.json`` files are 0600 root). It
runs an ordered list of idempotent steps; a step runs only where its
component's ``/etc/sciplat/<component>/client.json`` exists on this host, and is
skipped with a log line otherwise (the component is not deployed, or not yet).

1. ``directory``: the LDAP account (stable uid, never reused) and its groups;
   without a directory client: ``local_account`` (a local POSIX user on this
   host, for hub-only inventories and test beds);
2. ``posix``: the home directory (0700, owned by the user, with its quota) and
   the group directories; without a posix client: ``local_home`` (the home
   directory on this host's own disk);
3. ``storage``: S3 credentials, the home bucket and the group buckets;
4. ``mydb``: the personal database and ``~/.pgpass``;
5. ``slurm``: the user's association under their group account;
6. ``sharing``: links ``~/shared/<owner>/<name>`` to what is shared with the user
   (a failure is only logged).

Steps 1 and 2 run one after the other: everything after them needs the uid,
the groups and the home they make. Steps 3 to 6 need only those, not each
other (their own services: radosgw, PostgreSQL, slurmdbd), so they run at the
same time (`Concurrently`), each on its own copy of what 1 and 2 learnt; the
user waits for the slowest of them instead of their sum.

Every step is idempotent, so a failure is retried in full at the next sign-in:
the server does not start until every available step succeeded, and the user
sees a plain sentence saying what failed (every step of a concurrent group that
failed, by name; the group's other steps still finish, and nothing any of them
produced reaches the server). What the steps produce (S3 keys, ``PG*``
variables, ``SCIPLAT_HOME_BUCKET`` …) is printed as JSON and goes into the
user's server environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("sciplat_hub.provision")

CONFIG_ROOT = Path("/etc/sciplat")
SETTINGS_FILE = CONFIG_ROOT / "hub" / "provision.json"
USERNAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


@dataclass
class Context:
    """What the steps learn and produce for one user, passed from step to step."""

    username: str
    display_name: str = ""
    email: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None
    gid: int | None = None
    home: str = ""
    groups: list[str] = field(default_factory=list)
    group_gids: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


class Step(Protocol):
    name: str

    def available(self) -> str | None:
        """None when the step can run on this host, else why it is skipped."""

    def run(self, ctx: Context) -> None:
        """Make the user's resources exist (idempotent); raise with a sentence on failure."""


@dataclass
class StepReport:
    name: str
    status: str  # done | skipped | failed
    detail: str = ""


@dataclass
class Result:
    username: str
    ok: bool
    env: dict[str, str]
    steps: list[StepReport]
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "ok": self.ok,
            "env": self.env,
            "steps": [vars(step) for step in self.steps],
            "message": self.message,
        }


class StepFailed(Exception):
    """A step could not finish; the message is shown to the user."""


class Concurrently:
    """Steps that need what the steps before them made, but nothing from each other.

    They run at the same time, each on its own copy of the context; what they
    add to the environment is merged in the order listed, and only when every
    one of them succeeded.
    """

    def __init__(self, *steps: Step) -> None:
        self.steps = tuple(steps)

    def __repr__(self) -> str:
        return f"Concurrently({', '.join(step.name for step in self.steps)})"


Plan = Sequence[Step | Concurrently]


def _failure_message(failed: list[StepReport]) -> str:
    if len(failed) == 1:
        what = f"the {failed[0].name} step failed ({failed[0].detail})"
    else:
        names = ", ".join(r.name for r in failed[:-1]) + f" and {failed[-1].name}"
        what = f"the {names} steps failed (" + "; ".join(f"{r.name}: {r.detail}" for r in failed) + ")"
    return (
        f"Your account could not be prepared: {what}. "
        "Nothing is lost; it is tried again when you next start a server. "
        "If this keeps happening, tell the platform's operators."
    )


def _run_one(ctx: Context, step: Step) -> StepReport:
    """Check and run one step; every outcome becomes a report (nothing raises)."""
    try:
        reason = step.available()
    except Exception as exc:  # a broken availability check is the step's failure, not the run's
        log.exception("provision %s: step %s could not be checked", ctx.username, step.name)
        return StepReport(step.name, "failed", str(exc) or type(exc).__name__)
    if reason is not None:
        log.info("provision %s: step %s skipped: %s", ctx.username, step.name, reason)
        return StepReport(step.name, "skipped", reason)
    began = time.monotonic()
    try:
        step.run(ctx)
    except Exception as exc:  # every failure becomes a message; the next sign-in retries
        log.exception("provision %s: step %s failed", ctx.username, step.name)
        return StepReport(step.name, "failed", str(exc) or type(exc).__name__)
    log.info("provision %s: step %s done in %.2f s", ctx.username, step.name, time.monotonic() - began)
    return StepReport(step.name, "done")


def _run_concurrently(ctx: Context, group: Concurrently) -> list[StepReport]:
    """Run GROUP's steps at the same time; merge their environments only if none failed."""
    copies = [replace(ctx, env={}, groups=list(ctx.groups), group_gids=dict(ctx.group_gids)) for _ in group.steps]
    with ThreadPoolExecutor(max_workers=max(1, len(group.steps)), thread_name_prefix="provision") as pool:
        reports = list(pool.map(_run_one, copies, group.steps))
    if all(report.status != "failed" for report in reports):
        for copy in copies:  # in the order listed: a later step's name wins, as in a sequence
            ctx.env.update(copy.env)
    return reports


def run_steps(ctx: Context, steps: Plan) -> Result:
    """Run the available steps in order (a `Concurrently` group at once); stop at the first failure."""
    reports: list[StepReport] = []
    for item in steps:
        done = _run_concurrently(ctx, item) if isinstance(item, Concurrently) else [_run_one(ctx, item)]
        reports.extend(done)
        failed = [report for report in done if report.status == "failed"]
        if failed:
            return Result(ctx.username, False, {}, reports, _failure_message(failed))
    return Result(ctx.username, True, dict(ctx.env), reports)


# ------------------------------------------------------------------ the real steps


def _client_config(component: str) -> Path:
    return CONFIG_ROOT / component / "client.json"


def _module_missing(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"module {module} is not installed on this host ({exc})"
    return None


class _ComponentStep:
    """A step that needs its component's client.json and module on this host."""

    name = ""
    component = ""
    module = ""

    def available(self) -> str | None:
        path = _client_config(self.component)
        if not path.is_file():
            return f"{path} does not exist (the {self.component} component is not deployed for this host)"
        return _module_missing(self.module)

    def run(self, ctx: Context) -> None:
        raise NotImplementedError


class DirectoryStep(_ComponentStep):
    name = "directory"
    component = "directory"
    module = "sciplat_hub.directory"

    def run(self, ctx: Context) -> None:
        from sciplat_hub import directory  # type: ignore[attr-defined]

        d = directory.Directory.from_host_config()
        account = d.ensure_user(ctx.username, display_name=ctx.display_name, email=ctx.email)
        if account.disabled:
            raise StepFailed(f"the account {ctx.username} is disabled")
        ctx.uid, ctx.gid, ctx.home = account.uid, account.gid, account.home
        ctx.groups = []
        for group in d.groups_of(ctx.username):
            name = group if isinstance(group, str) else group.name
            if name == ctx.username:  # the user-private group
                continue
            info = group if not isinstance(group, str) else d.get_group(name)
            ctx.groups.append(name)
            if info is not None:
                ctx.group_gids[name] = info.gid


class LocalAccountStep:
    """Without a directory client: a local POSIX account on this host.

    For inventories whose hub runs servers itself (hub_spawner: systemd) and
    that deploy no directory yet. The uid is allocated by useradd from the
    local range, so it is *not* the same on other hosts.
    """

    name = "local_account"

    def __init__(self, runner: Callable[[list[str]], None] | None = None) -> None:
        self._run = runner or (lambda argv: subprocess.run(argv, check=True, capture_output=True, text=True))

    def available(self) -> str | None:
        if _client_config("directory").is_file():
            return "the directory step manages accounts on this host"
        return None

    def run(self, ctx: Context) -> None:
        home = f"/home/{ctx.username}"
        try:
            entry = pwd.getpwnam(ctx.username)
        except KeyError:
            try:
                self._run(
                    [
                        "useradd",
                        "--create-home",
                        "--home-dir",
                        home,
                        "--shell",
                        "/bin/bash",
                        "--user-group",
                        ctx.username,
                    ]
                )
            except subprocess.CalledProcessError as exc:
                raise StepFailed(f"useradd {ctx.username} failed: {exc.stderr.strip()}") from None
            entry = pwd.getpwnam(ctx.username)
        os.makedirs(entry.pw_dir, mode=0o700, exist_ok=True)
        os.chown(entry.pw_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(entry.pw_dir, 0o700)
        ctx.uid, ctx.gid, ctx.home = entry.pw_uid, entry.pw_gid, entry.pw_dir


class PosixStep(_ComponentStep):
    name = "posix"
    component = "posix"
    module = "sciplat_hub.posix"

    def run(self, ctx: Context) -> None:
        from sciplat_hub import posix  # type: ignore[attr-defined]

        if ctx.uid is None or ctx.gid is None:
            raise StepFailed("no uid/gid: the account step did not run")
        p = posix.Posix.from_host_config()
        ctx.home = p.ensure_home(ctx.username, ctx.uid, ctx.gid, ctx.settings.get("home_quota"))
        for group, gid in ctx.group_gids.items():
            p.ensure_group_dir(group, gid, ctx.settings.get("group_dir_quota"))
        if p.ensure_public_area() is not None:  # ~/public: the public-datasets area
            p.ensure_public_link(ctx.home, ctx.uid, ctx.gid)


class LocalHomeStep:
    """Without a posix client: the home directory on this host's own /home.

    For inventories without the shared filesystem (the server runs on this host);
    0700, owned by the user, no quota.
    """

    name = "local_home"

    def available(self) -> str | None:
        if _client_config("posix").is_file():
            return "the posix step makes homes on the shared filesystem"
        return None

    def run(self, ctx: Context) -> None:
        if ctx.uid is None or ctx.gid is None:
            raise StepFailed("no uid/gid: the account step did not run")
        home = ctx.home or f"/home/{ctx.username}"
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.chown(home, ctx.uid, ctx.gid)
        os.chmod(home, 0o700)
        ctx.home = home


class StorageStep(_ComponentStep):
    name = "storage"
    component = "storage"
    module = "sciplat_hub.storage.config"

    def run(self, ctx: Context) -> None:
        from sciplat_hub.storage import config  # type: ignore[attr-defined]

        store = config.from_host_config()
        credentials = store.ensure_user(ctx.username, ctx.settings.get("s3_user_quota"))
        bucket = store.ensure_home_bucket(ctx.username)
        ctx.env.update(credentials.env())
        ctx.env["SCIPLAT_HOME_BUCKET"] = bucket
        ca_bundle = ctx.settings.get("ca_bundle", "/etc/ssl/certs/ca-certificates.crt")
        ctx.env.setdefault("AWS_CA_BUNDLE", ca_bundle)


class MyDBStep(_ComponentStep):
    name = "mydb"
    component = "mydb"
    module = "sciplat_hub.mydb"

    def run(self, ctx: Context) -> None:
        from sciplat_hub import mydb  # type: ignore[attr-defined]

        db = mydb.MyDB.from_host_config()
        credentials = db.ensure_user_database(ctx.username)
        if ctx.home and ctx.uid is not None and ctx.gid is not None:
            db.write_pgpass(credentials, ctx.home, ctx.uid, ctx.gid)
        env = dict(credentials.env())
        env.pop("PGPASSWORD", None)  # ~/.pgpass holds it; the environment is visible to every process
        ctx.env.update(env)


class SlurmStep(_ComponentStep):
    name = "slurm"
    component = "slurm"
    module = "sciplat_hub.slurm_accounts"

    def run(self, ctx: Context) -> None:
        from sciplat_hub import slurm_accounts  # type: ignore[attr-defined]

        accounts = slurm_accounts.SlurmAccounts.from_host_config()
        # The default account first: Slurm makes a user's first association their default
        # account, and a group (a collaboration the user may leave) must never be it.
        # (ensure_user makes the account when it is missing: no separate ensure_account, whose
        # sacctmgr query would only repeat ensure_user's own, 0.2 s of every start.)
        account = str(ctx.settings.get("slurm_default_account", "default"))
        accounts.ensure_user(ctx.username, account)
        # One association per group the directory lists now: a member removed from a group
        # (sciplat_hub.collab) is no longer listed, so this never adds them back.
        for group in ctx.groups:
            accounts.ensure_user(ctx.username, group)
        ctx.env["SCIPLAT_SLURM_ACCOUNT"] = account


class SharingStep(_ComponentStep):
    """Links ~/shared/<owner>/<name> to what is shared with the user (sciplat_hub.sharing).

    A failure here is logged and does not stop the server from starting: the links are a
    convenience, the access itself (ACLs) does not depend on them.
    """

    name = "sharing"
    component = "mydb"  # the share registry
    module = "sciplat_hub.sharing"

    def run(self, ctx: Context) -> None:
        from sciplat_hub import sharing  # type: ignore[attr-defined]

        try:
            sharing.Sharing.from_host_config().sync_user(ctx.username)
        except Exception:  # see the docstring
            log.warning("provision %s: no links to what is shared with them", ctx.username, exc_info=True)


def default_steps() -> list[Step | Concurrently]:
    return [
        DirectoryStep(),
        LocalAccountStep(),
        PosixStep(),
        LocalHomeStep(),
        # each needs the account and the home above, none needs another's result
        Concurrently(StorageStep(), MyDBStep(), SlurmStep(), SharingStep()),
    ]


def load_settings(path: Path = SETTINGS_FILE) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def provision(username: str, *, display_name: str = "", email: str = "", steps: Plan | None = None) -> Result:
    if not USERNAME.match(username):
        report = StepReport("username", "failed", f"{username!r} is not a valid account name")
        message = (
            f"The user name {username!r} cannot be an account on this platform (lower-case letters, "
            "digits and '-', starting with a letter, at most 32 characters). Ask the operators."
        )
        return Result(username, False, {}, [report], message)
    ctx = Context(username=username, display_name=display_name, email=email, settings=load_settings())
    return run_steps(ctx, default_steps() if steps is None else steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-provision", description=__doc__.splitlines()[0])
    parser.add_argument("username")
    parser.add_argument("--display-name", default="")
    parser.add_argument("--email", default="")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    result = provision(args.username, display_name=args.display_name, email=args.email)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for step in result.steps:
            print(f"{step.name:14} {step.status}{': ' + step.detail if step.detail else ''}")
        if not result.ok:
            print(result.message, file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
