"""`sciplat mydb`: operators' view of MyDB (personal and group databases).

Every command runs `python -m sciplat_hub.mydb` as root on the first host of
group hub over SSH (that host holds the provisioning settings) and reads its
JSON answer.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sciplat.units import format_size, parse_size

app = typer.Typer(help="MyDB: users' and groups' PostgreSQL databases.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

REMOTE_PYTHON = "/opt/sciplat/venv/bin/python"

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class MyDbCommandError(Exception):
    pass


def run_remote(inventory: Path, *args: str) -> Any:
    """Run `python -m sciplat_hub.mydb ARGS` on the first hub host; its JSON answer."""
    from sciplat import status as status_mod

    try:
        groups, hostvars = status_mod.inventory_hostvars(inventory)
    except (subprocess.CalledProcessError, OSError, json.JSONDecodeError) as exc:
        raise MyDbCommandError(f"cannot read the inventory {inventory}: {exc}") from None
    hubs = groups.get("hub", [])
    if not hubs:
        raise MyDbCommandError(f"{inventory}/hosts.yml has no host in group hub, where MyDB is administered")
    host = hubs[0]
    remote = " ".join(shlex.quote(a) for a in (REMOTE_PYTHON, "-m", "sciplat_hub.mydb", *args))
    try:
        done = subprocess.run(
            [*status_mod.ssh_command(host, hostvars[host]), remote], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        raise MyDbCommandError(f"{host}: no answer within 300 s") from None
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict) and "error" in answer:
        raise MyDbCommandError(answer["error"])
    if done.returncode != 0 or answer is None:
        detail = (done.stderr or done.stdout).strip()[-500:]
        raise MyDbCommandError(
            f"{host}: `{remote}` exited {done.returncode}: {detail or 'no output'} "
            "(is the platform deployed with MyDB? `sciplat up` installs it)"
        )
    return answer


def _call(inventory: Path, *args: str) -> Any:
    try:
        return run_remote(inventory, *args)
    except MyDbCommandError as exc:
        err.print(f"[red]mydb:[/] {exc}")
        raise typer.Exit(1) from None


def _size(value: int) -> str:
    return format_size(value)


@app.command("list")
def list_(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Every MyDB database: kind, owner, size and quota."""
    rows = _call(inventory, "list")
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("database", "kind", "owner", "size", "quota", "state"):
        table.add_column(column)
    for row in rows:
        owner = row["owner"] + (" (disabled)" if row["owner_disabled"] else "")
        table.add_row(
            row["database"], row["kind"], owner, _size(row["size_bytes"]), _size(row["quota_bytes"]), row["state"]
        )
    console.print(table)


@app.command()
def usage(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Size against quota per database, fullest first, with what users were told."""
    rows = sorted(_call(inventory, "list"), key=lambda r: -(r["percent"] or 0))
    if as_json:
        print(
            json.dumps(
                [
                    {
                        k: r[k]
                        for k in (
                            "database",
                            "owner",
                            "size_bytes",
                            "quota_bytes",
                            "percent",
                            "state",
                            "message",
                            "measured",
                        )
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    table = Table(box=None, header_style="bold")
    for column in ("database", "used", "quota", "%", "state", "measured"):
        table.add_column(column)
    for r in rows:
        style = {"over": "red", "warning": "yellow"}.get(r["state"], "")
        state = f"[{style}]{r['state']}[/]" if style else r["state"]
        table.add_row(
            r["database"],
            _size(r["size_bytes"]),
            _size(r["quota_bytes"]),
            f"{r['percent']}",
            state,
            r["measured"] or "-",
        )
    console.print(table)


@app.command("reset-password")
def reset_password(
    user: Annotated[str, typer.Argument(help="Platform user name.")],
    inventory: InventoryOpt,
) -> None:
    """Give a user a new MyDB password (their ~/.pgpass on the hub host is rewritten; their sessions end).

    A running server keeps the old password in PGPASSWORD until it restarts.
    """
    answer = _call(inventory, "reset-password", user)
    console.print(
        f"new password for {user} (database {answer['database']})"
        + (f"; {answer['pgpass']} updated" if answer.get("pgpass") else "; no home on the hub host")
    )


@app.command()
def move(
    database: Annotated[str, typer.Argument(help="The database to move, e.g. u_olduser.")],
    to: Annotated[str, typer.Option("--to", help="User who gets it (account merge).")],
    inventory: InventoryOpt,
) -> None:
    """Give a user's database, and everything in it, to another user; it is renamed u_<to>__<old>."""
    answer = _call(inventory, "move", database, "--to", to)
    console.print(f"{database} now belongs to {to} as {answer['moved_to']}")


@app.command("set-quota")
def set_quota(
    database: Annotated[str, typer.Argument(help="MyDB database name.")],
    quota: Annotated[str, typer.Argument(help="A size such as 20GiB, or 'default' for platform.yaml's.")],
    inventory: InventoryOpt,
) -> None:
    """A quota for one database (checked at the next quota run)."""
    if quota != "default":
        try:
            quota = str(parse_size(quota))
        except ValueError as exc:
            err.print(f"[red]mydb:[/] {exc}")
            raise typer.Exit(2) from None
    _call(inventory, "set-quota", database, quota)
    console.print(f"{database}: quota {quota if quota == 'default' else _size(int(quota))}")
