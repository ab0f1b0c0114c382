"""`sciplat backup` and `sciplat restore`: backups of the platform and restores onto the same hosts.

The hosts do the work (`sciplat-backup`, module sciplat_hub.backup, deployed by
roles/backup): `--now` and `restore` run playbooks/backup.yml and
playbooks/restore.yml through the runner; the listing asks every backup host for
its last runs over SSH (`sciplat-backup --json status`). See docs/backup.md.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sciplat import runner as runner_mod
from sciplat_hub.backup import BackupError, parse_time

console = Console()
err = Console(stderr=True)

KINDS = ("db", "homes", "directory", "slurm", "buckets")
# The group whose first host runs each kind (roles/backup/vars/main.yml); buckets only
# where object storage is Ceph RGW (the host then reports it).
KIND_GROUPS = {"db": "db", "homes": "hub", "directory": "directory", "slurm": "slurm_controller", "buckets": "hub"}

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]


class BackupCommandError(Exception):
    """Wrong input or unreachable hosts; the message says what to do."""


def parse_kinds(values: list[str] | None, *, allowed: tuple[str, ...] = KINDS) -> list[str]:
    """`--what` values (repeatable, comma-separated) as a list; ["all"] for none or all."""
    kinds = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    if not kinds or "all" in kinds:
        return ["all"]
    unknown = sorted(set(kinds) - set(allowed))
    if unknown:
        raise BackupCommandError(f"--what {', '.join(unknown)}: use all or one of {', '.join(allowed)}")
    return list(dict.fromkeys(kinds))


def parse_to(value: str | None, *, now: dt.datetime | None = None) -> str:
    """`--to` as an explicit UTC time for the hosts; a time without zone is the operator's local time."""
    if not value:
        return ""
    try:
        parsed = parse_time(value)
    except BackupError as exc:
        raise BackupCommandError(str(exc)) from None
    if parsed > (now or dt.datetime.now(dt.UTC)) + dt.timedelta(minutes=1):
        raise BackupCommandError(f"--to {value!r} is in the future; a restore can only go back in time")
    return parsed.isoformat()


def backup_hosts(groups: dict[str, list[str]]) -> dict[str, str]:
    """Kind -> the host that runs it (the first host of its group), for the groups that have hosts."""
    return {kind: groups[group][0] for kind, group in KIND_GROUPS.items() if groups.get(group)}


def _remote_status(host: str, hostvars: dict[str, Any]) -> list[dict[str, Any]]:
    from sciplat.status import ssh_command

    command = [*ssh_command(host, hostvars), shlex.join(["sciplat-backup", "--json", "status"])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return [{"host": host, "ok": False, "error": f"{host} did not answer within 60s"}]
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return [{"host": host, "ok": False, "error": reason}]
    rows = json.loads(done.stdout or "[]")
    return [dict(row, host=row.get("host") or host) for row in rows]


def collect_status(inventory: Path) -> list[dict[str, Any]]:
    """The last backup of every kind, from the hosts that run them."""
    from sciplat.status import inventory_hostvars

    groups, hostvars = inventory_hostvars(inventory)
    hosts = sorted(set(backup_hosts(groups).values()))
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        answers = list(pool.map(lambda h: _remote_status(h, hostvars.get(h, {})), hosts))
    rows = [row for answer in answers for row in answer]
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(rows, key=lambda r: (order.get(str(r.get("what")), 99), str(r.get("host"))))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"


def _size(value: Any) -> str:
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return ""


def print_status(rows: list[dict[str, Any]]) -> None:
    table = Table(title="backups", title_justify="left", box=None)
    for column in ("what", "host", "last success (UTC)", "age", "took", "size", "kept", "last run"):
        table.add_column(column)
    for row in rows:
        success = row.get("last_success")
        when = dt.datetime.fromtimestamp(success, dt.UTC).strftime("%Y-%m-%d %H:%M") if success else ""
        last = "[green]ok[/]" if row.get("ok") else f"[red]failed[/] {str(row.get('error', ''))[:60]}"
        if row.get("last_run") is None and row.get("ok") is None:
            last = "[yellow]no run yet[/]"
        if row.get("restore_pending"):
            last = f"[red]restore first[/] {str(row['restore_pending'].get('reason', ''))[:80]}"
        took = row.get("duration_seconds")
        table.add_row(
            str(row.get("what", "?")),
            str(row.get("host", "")),
            when,
            _age(row.get("age_seconds")),
            f"{took:.0f}s" if isinstance(took, (int, float)) else "",
            _size(row.get("size_bytes")),
            str(row.get("backups", "")),
            last,
        )
    console.print(table)
    waiting = [str(r.get("what")) for r in rows if r.get("restore_pending")]
    if waiting:
        console.print(
            f"[red]{', '.join(waiting)}[/]: the repository holds backups this platform has not restored "
            "(hosts rebuilt); no backup of these runs until `sciplat restore -i DIR --what all` "
            "(or `sciplat-backup resume KIND` on the host, to start afresh and keep the old backups)"
        )


def _open(inventory: Path) -> tuple[Any, str]:
    from sciplat.cli import _prepare, _validated

    spec = _validated(inventory, warnings=False)
    if not spec.backup.enabled:
        err.print(f"[red]backups are off[/] (backup.enabled: false in {inventory}/platform.yaml)")
        raise typer.Exit(1)
    _, password = _prepare(inventory, spec)
    return spec, password


def run_backup_now(
    inventory: Path, what: str | list[str] = "all", *, kind: str = "auto", quiet: bool = False
) -> dict[str, Any]:
    """Back up now on every backup host (playbooks/backup.yml); {"ok", "run", "backups"}.

    `sciplat upgrade` calls it before it changes anything. Raises typer.Exit on an
    invalid inventory or with backups turned off.
    """
    kinds = parse_kinds([what] if isinstance(what, str) else what)
    _, password = _open(inventory)
    out = err if quiet else console
    result = runner_mod.run_with_vault(
        inventory,
        password,
        "backup.yml",
        label="backup",
        console=out,
        quiet=quiet,
        extra_vars={"backup_now_kinds": kinds, "backup_now_type": kind},
    )
    rows = collect_status(inventory)
    asked = [r for r in rows if "all" in kinds or r.get("what") in kinds]
    ok = result.ok and all(r.get("ok") for r in asked)
    return {"ok": ok, "run": result.as_dict(), "backups": rows}


def backup(
    inventory: InventoryOpt,
    now: Annotated[
        bool, typer.Option("--now", help="Back up now (otherwise: list the last backups and their age).")
    ] = False,
    what: Annotated[
        list[str] | None,
        typer.Option(
            "--what", "-w", help="With --now: all (default) or db, homes, directory, slurm, buckets (repeatable)."
        ),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="With --now: a full PostgreSQL backup, not a differential.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Back up the platform now, or list the last backups of every kind and their age."""
    try:
        kinds = parse_kinds(what)
    except BackupCommandError as exc:
        err.print(f"[red]backup:[/] {exc}")
        raise typer.Exit(2) from None
    if not now:
        from sciplat.cli import _validated

        _validated(inventory, warnings=False)
        rows = collect_status(inventory)
        if as_json:
            print(json.dumps({"backups": rows}, indent=2, default=str))
        else:
            print_status(rows)
        if not rows or any(not r.get("ok") for r in rows):
            raise typer.Exit(1)
        return
    summary = run_backup_now(inventory, kinds, kind="full" if full else "auto", quiet=as_json)
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        runner_mod.print_summary(runner_mod.RunResult(**_run_fields(summary["run"])), console, check=False)
        print_status(summary["backups"])
    if not summary["ok"]:
        raise typer.Exit(1)


def _run_fields(run: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a RunResult from its as_dict() for print_summary."""
    return {
        "returncode": run["returncode"],
        "log_path": Path(run["log"]),
        "duration": run["duration_seconds"],
        "stats": run["hosts"],
        "failures": run["failures"],
        "changed_tasks": run["changed_tasks"],
    }


def restore(
    inventory: InventoryOpt,
    what: Annotated[
        list[str],
        typer.Option("--what", "-w", help="all, db, homes, directory, slurm or buckets (repeatable)."),
    ],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Restore to this time (ISO 8601; no zone = local time). db: point in time; "
            "the others: their last backup before it. Default: the latest.",
        ),
    ] = None,
    path: Annotated[
        list[str] | None, typer.Option("--path", help="homes: only this path, e.g. /home/alice (repeatable).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Restore onto the same hosts (replaces current data: see docs/backup.md)."""
    try:
        kinds = parse_kinds(what)
        target = parse_to(to)
        paths = [p.rstrip("/") or "/" for p in path or []]
        if paths and kinds != ["homes"]:
            raise BackupCommandError("--path applies to --what homes only")
        if any(not p.startswith("/") for p in paths):
            raise BackupCommandError("--path takes absolute paths, e.g. /home/alice")
    except BackupCommandError as exc:
        err.print(f"[red]restore:[/] {exc}")
        raise typer.Exit(2) from None
    names = ", ".join(KINDS if kinds == ["all"] else kinds)
    if not yes:
        stops = [s for k, s in (("db", "PostgreSQL"), ("directory", "slapd"), ("slurm", "slurmdbd")) if k in names]
        typer.confirm(
            f"Restore {names} to {target or 'the latest backup'}? Current data is replaced"
            + (f"; {', '.join(stops)} stop(s) for the restore" if stops else "")
            + ".",
            abort=True,
        )
    _, password = _open(inventory)
    out = err if as_json else console
    result = runner_mod.run_with_vault(
        inventory,
        password,
        "restore.yml",
        label="restore",
        console=out,
        quiet=as_json,
        extra_vars={"backup_restore_kinds": kinds, "backup_restore_to": target, "backup_restore_paths": paths},
    )
    rows = collect_status(inventory)
    restored = [
        {"what": r.get("what"), "host": r.get("host"), **(r.get("last_restore") or {})}
        for r in rows
        if kinds == ["all"] or r.get("what") in kinds
    ]
    summary = {"ok": result.ok, "to": target or "latest", "run": result.as_dict(), "restored": restored}
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        runner_mod.print_summary(result, console, check=False)
        for row in restored:
            details = {k: v for k, v in row.items() if k not in ("what", "host")}
            console.print(f"{row['what']} on {row['host']}: {json.dumps(details, default=str)}")
    if not result.ok:
        raise typer.Exit(1)
