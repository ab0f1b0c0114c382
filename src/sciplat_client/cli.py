"""`sciplat-client`: the platform API from a shell (a laptop, a notebook's terminal, a batch job).

    sciplat-client --url https://platform.example.org --ca ca.crt me
    sciplat-client groups create galaxies --description "Galaxy zoo follow-up"
    sciplat-client groups add galaxies bob
    sciplat-client shares create notebooks/fit.ipynb group:galaxies
    sciplat-client jobs submit run.sh --account galaxies --wait

The token comes from SCIPLAT_TOKEN or JUPYTERHUB_API_TOKEN (or --token), the URL
from --url or SCIPLAT_URL, the CA file from --ca or SCIPLAT_CA. Every command takes
--json (the API's answer as JSON on stdout). Exit status: 0 done, 1 refused or
failed (the API's sentence on stderr), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sciplat_client.client import Collaboration, Job, PlatformClient, PlatformError, Share

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(value: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if value is None:
        return "-"
    size = float(value)
    for unit in UNITS:
        if abs(size) < 1024 or unit == UNITS[-1]:
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    text = [[str(c) for c in header], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in text)


# ---------------------------------------------------------------------- human output


def show_me(me: dict[str, Any]) -> str:
    lines = [f"user    {me['name']}{' (operator)' if me.get('admin') else ''}"]
    lines.append(f"groups  {', '.join(me.get('groups') or []) or '-'}")
    quotas, usage = me.get("quotas") or {}, me.get("usage") or {}
    for key, label in (("home_bytes", "home"), ("bucket_bytes", "bucket"), ("mydb_bytes", "mydb")):
        used, limit = usage.get(key), quotas.get(key)
        if used is None and limit is None:
            lines.append(f"{label:<7} not on this platform")
            continue
        share = f" ({100 * used / limit:.0f}%)" if used is not None and limit else ""
        lines.append(f"{label:<7} {human_bytes(used)} of {human_bytes(limit) if limit else 'no limit'}{share}")
    if usage.get("core_hours") is not None:
        lines.append(f"compute {float(usage['core_hours']):.1f} core hours used")
    return "\n".join(lines)


def show_credentials(creds: dict[str, Any]) -> str:
    lines = []
    s3, mydb = creds.get("s3"), creds.get("mydb")
    if s3:
        lines += [
            f"S3_ENDPOINT_URL={s3['endpoint']}",
            f"AWS_ACCESS_KEY_ID={s3['access_key']}",
            f"AWS_SECRET_ACCESS_KEY={s3['secret_key']}",
            f"S3_BUCKET={s3['bucket']}",
        ]
    if mydb:
        lines += [
            f"PGHOST={mydb['host']}",
            f"PGPORT={mydb['port']}",
            f"PGDATABASE={mydb['dbname']}",
            f"PGUSER={mydb['user']}",
            f"PGPASSWORD={mydb['password']}",
            f"PGSSLMODE={mydb['sslmode']}",
        ]
    return "\n".join(lines) or "no S3 or MyDB on this platform"


def show_group(group: Collaboration) -> str:
    owners = set(group["owners"])
    lines = [
        f"group        {group['name']}{' (deleted: data kept until an operator purges it)' if group['deleted'] else ''}"
    ]
    if group.get("description"):
        lines.append(f"description  {group['description']}")
    members = [f"{m} (owner)" if m in owners else m for m in group["members"]]
    lines.append(f"members      {', '.join(members) or '-'}")
    for key, label in (
        ("directory", "directory"),
        ("bucket", "bucket"),
        ("database", "database"),
        ("slurm_account", "account"),
    ):
        if group.get(key):
            lines.append(f"{label:<12} {group[key]}")  # type: ignore[literal-required]
    return "\n".join(lines)


def show_groups(groups: list[Collaboration]) -> str:
    if not groups:
        return "no groups (create one: sciplat-client groups create NAME)"
    rows = [
        (g["name"], ", ".join(g["owners"]), len(g["members"]), "deleted" if g["deleted"] else "", g.get("description"))
        for g in groups
    ]
    return _table(rows, ("GROUP", "OWNERS", "MEMBERS", "STATE", "DESCRIPTION"))


def _share_rows(shares: list[Share], mine: bool) -> list[tuple[Any, ...]]:
    return [
        (s["id"], s["kind"], s["target"], s["grantee"] if mine else s["owner"], s["mode"], s.get("link") or "")
        for s in shares
    ]


def show_shares(shares: dict[str, list[Share]]) -> str:
    out = ["Shared by me:"]
    by_me, with_me = shares.get("by_me") or [], shares.get("with_me") or []
    out.append(_table(_share_rows(by_me, True), ("ID", "KIND", "TARGET", "WITH", "MODE", "LINK")) if by_me else "  -")
    out.append("Shared with me:")
    out.append(
        _table(_share_rows(with_me, False), ("ID", "KIND", "TARGET", "OWNER", "MODE", "LINK")) if with_me else "  -"
    )
    return "\n".join(out)


def show_share(share: Share) -> str:
    text = f"shared {share['kind']} {share['target']} with {share['grantee']} ({share['mode']}), id {share['id']}"
    return text + (f"\nlink: {share['link']}" if share.get("link") else "")


def show_job(job: Job) -> str:
    keys = ("id", "name", "phase", "account", "partition", "submitted", "started", "ended", "exit_code")
    return "\n".join(f"{k:<10} {'-' if job.get(k) is None else job.get(k)}" for k in keys if k in job)


def show_jobs(jobs: list[Job]) -> str:
    if not jobs:
        return "no jobs"
    rows = [
        (j["id"], j.get("name"), j["phase"], j.get("account"), j.get("submitted"), j.get("exit_code")) for j in jobs
    ]
    return _table(rows, ("ID", "NAME", "PHASE", "ACCOUNT", "SUBMITTED", "EXIT"))


def show_allocations(allocations: list[dict[str, Any]]) -> str:
    if not allocations:
        return "no allocations"
    rows = [(a["account"], a.get("core_hours_awarded"), a.get("core_hours_used"), a.get("until")) for a in allocations]
    return _table(rows, ("ACCOUNT", "AWARDED (core h)", "USED (core h)", "UNTIL"))


# ---------------------------------------------------------------------- commands


def _read_script(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise PlatformError(0, f"Cannot read the script {path}: {exc.strerror}.") from None


def _submit(client: PlatformClient, a: argparse.Namespace) -> Any:
    job = client.submit_job(
        _read_script(a.script),
        account=a.account,
        partition=a.partition,
        time_limit=a.time_limit,
        cpus=a.cpus,
        mem=a.mem,
        name=a.name,
    )
    return client.wait(job, a.timeout) if a.wait else job


def _unshare(client: PlatformClient, a: argparse.Namespace) -> dict[str, Any]:
    client.unshare(a.id)
    return {"id": a.id, "deleted": True}


Command = Callable[[PlatformClient, argparse.Namespace], Any]
# command -> (call, human formatter)
COMMANDS: dict[str, tuple[Command, Callable[[Any], str]]] = {
    "me": (lambda c, a: c.me(), show_me),
    "credentials": (lambda c, a: c.credentials(), show_credentials),
    "allocations": (lambda c, a: c.allocations(), show_allocations),
    "groups list": (lambda c, a: c.groups(all_groups=a.all), show_groups),
    "groups show": (lambda c, a: c.group(a.group), show_group),
    "groups create": (lambda c, a: c.create_group(a.group, a.description), show_group),
    "groups add": (lambda c, a: c.add_member(a.group, a.user, "owner" if a.owner else "member"), show_group),
    "groups remove": (lambda c, a: c.remove_member(a.group, a.user), show_group),
    "groups leave": (lambda c, a: c.leave(a.group), lambda g: f"you left {g['name']}"),
    "groups delete": (
        lambda c, a: c.delete_group(a.group),
        lambda g: f"deleted {g['name']}: its members lost access; the data is kept until an operator purges it",
    ),
    "shares list": (lambda c, a: c.shares(), show_shares),
    "shares create": (
        lambda c, a: c.share(a.target, a.grantee, kind=a.kind, mode="rw" if a.rw else "ro"),
        show_share,
    ),
    "shares delete": (_unshare, lambda answer: f"share {answer['id']} deleted"),
    "jobs submit": (_submit, show_job),
    "jobs list": (lambda c, a: c.jobs(), show_jobs),
    "jobs show": (lambda c, a: c.job(a.id), show_job),
    "jobs wait": (lambda c, a: c.wait(a.id, a.timeout), show_job),
    "jobs results": (lambda c, a: c.results(a.id), lambda r: (r["stdout"] + r["stderr"]).rstrip("\n")),
    "jobs cancel": (lambda c, a: c.cancel(a.id), show_job),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sciplat-client",
        description="The science platform's API from the command line.",
        epilog="Token: SCIPLAT_TOKEN or JUPYTERHUB_API_TOKEN (create one on the hub's token page).",
    )
    top.add_argument("--url", help="the platform's address, e.g. https://platform.example.org (default: SCIPLAT_URL)")
    top.add_argument("--ca", help="the platform's CA certificate file, if it has its own (default: SCIPLAT_CA)")
    top.add_argument("--token", help="an API token (prefer SCIPLAT_TOKEN: a command line is visible to others)")
    top.add_argument("--timeout", type=float, default=60, help="seconds per HTTP request (default 60)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, name: str, help_text: str, key: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--json", action="store_true", help="print the API's answer as JSON")
        cmd.set_defaults(key=key)
        return cmd

    command(sub, "me", "my profile, quotas and usage", "me")
    command(sub, "credentials", "my S3 and MyDB credentials (as environment variables)", "credentials")
    command(sub, "allocations", "the compute allocations of my accounts", "allocations")

    groups = sub.add_parser("groups", help="collaborations: list, create, add and remove members, leave")
    gsub = groups.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = command(gsub, "list", "my groups", "groups list")
    c.add_argument("--all", action="store_true", help="every group (operators)")
    command(gsub, "show", "a group, its members and its resources", "groups show").add_argument("group")
    c = command(gsub, "create", "a new group that I own", "groups create")
    c.add_argument("group", help="lower-case letters, digits and '-', starting with a letter")
    c.add_argument("--description", default="")
    c = command(gsub, "add", "add a member (or change their role)", "groups add")
    c.add_argument("group")
    c.add_argument("user")
    c.add_argument("--owner", action="store_true", help="as an owner (may manage members)")
    c = command(gsub, "remove", "remove a member: their access ends", "groups remove")
    c.add_argument("group")
    c.add_argument("user")
    command(gsub, "leave", "leave a group", "groups leave").add_argument("group")
    command(gsub, "delete", "delete a group (its data is kept until purged)", "groups delete").add_argument("group")

    shares = sub.add_parser("shares", help="sharing files, folders, bucket prefixes and tables")
    ssub = shares.add_subparsers(dest="action", required=True, metavar="ACTION")
    command(ssub, "list", "what I share and what is shared with me", "shares list")
    c = command(ssub, "create", "share with a user or a group", "shares create")
    c.add_argument("target", help="a path in my home or a group directory, 'bucket/prefix/', or a table")
    c.add_argument("grantee", help="user:NAME or group:NAME")
    c.add_argument("--kind", choices=("path", "prefix", "table"), default="path")
    c.add_argument("--rw", action="store_true", help="read-write (default: read-only)")
    command(ssub, "delete", "stop sharing", "shares delete").add_argument("id")

    jobs = sub.add_parser("jobs", help="batch jobs: submit, list, status, results, cancel")
    jsub = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = command(jsub, "submit", "submit a batch script (a file, or - for stdin)", "jobs submit")
    c.add_argument("script")
    c.add_argument("--account", help="the Slurm account to charge (e.g. a group's)")
    c.add_argument("--partition")
    c.add_argument("--time-limit", help="minutes, or Slurm's [D-]HH:MM:SS")
    c.add_argument("--cpus", type=int)
    c.add_argument("--mem", help="e.g. 2G")
    c.add_argument("--name")
    c.add_argument("--wait", action="store_true", help="wait until the job ended")
    c.add_argument("--timeout", type=float, default=3600, help="seconds to wait (default 3600)")
    command(jsub, "list", "my jobs", "jobs list")
    command(jsub, "show", "a job's state", "jobs show").add_argument("id")
    c = command(jsub, "wait", "wait until a job ended", "jobs wait")
    c.add_argument("id")
    c.add_argument("--timeout", type=float, default=3600)
    command(jsub, "results", "a job's stdout and stderr", "jobs results").add_argument("id")
    command(jsub, "cancel", "cancel a job", "jobs cancel").add_argument("id")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    call, human = COMMANDS[args.key]
    try:
        client = PlatformClient(args.url, args.token, args.ca, timeout=args.timeout)
        answer = call(client, args)
    except PlatformError as exc:
        print(f"sciplat-client: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"sciplat-client: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    else:
        print(human(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
