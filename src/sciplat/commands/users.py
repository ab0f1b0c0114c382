"""`sciplat users …` and `sciplat token USER`: the hub's users, from the operator's machine.

Each command runs `sciplat-hub-users` (sciplat_hub.hub_users, installed by the
hub role) over SSH on the first host of group hub, with the same SSH settings
Ansible uses for that host.
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

app = typer.Typer(help="The hub's users: sign-ups awaiting approval, approval, disabling.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Names = Annotated[list[str], typer.Argument(help="User names.")]


class UsersCommandError(Exception):
    pass


def hub_command(inventory: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run sciplat-hub-users ARGS on the hub host."""
    from sciplat.status import inventory_hostvars, ssh_command

    try:
        groups, hostvars = inventory_hostvars(inventory)
    except (subprocess.CalledProcessError, OSError, json.JSONDecodeError) as exc:
        raise UsersCommandError(f"cannot read the inventory {inventory}: {exc}") from None
    hubs = groups.get("hub", [])
    if not hubs:
        raise UsersCommandError(f"the inventory {inventory} has no host in group hub")
    host = hubs[0]
    remote = shlex.join(["sciplat-hub-users", *args])
    try:
        return subprocess.run(
            [*ssh_command(host, hostvars.get(host, {})), remote], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        raise UsersCommandError(f"sciplat-hub-users on {host} did not answer within 120 s") from None


def _run(inventory: Path, args: list[str]) -> Any:
    try:
        done = hub_command(inventory, [*args, "--json"])
    except UsersCommandError as exc:
        err.print(f"[red]users:[/] {exc}")
        raise typer.Exit(1) from None
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    if done.returncode != 0 or data is None:
        message = (data or {}).get("error") if isinstance(data, dict) else None
        err.print(f"[red]users:[/] {message or (done.stderr or done.stdout).strip()[-500:]}")
        raise typer.Exit(1)
    return data


@app.command("list")
def list_users(inventory: InventoryOpt = Path("inventories/local"), as_json: JsonOpt = False) -> None:
    """Every user: active, pending approval or disabled."""
    rows = _run(inventory, ["list"])
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("user", "status", "sign-in", "admin", "servers", "last activity")
    for row in rows:
        style = {"pending": "yellow", "disabled": "red"}.get(row["status"], "green")
        table.add_row(
            row["name"],
            f"[{style}]{row['status']}[/]",
            row["method"],
            "yes" if row["admin"] else "",
            ", ".join(s or "default" for s in row["servers"]),
            row.get("last_activity") or "",
        )
    console.print(table)


def _act(action: str, inventory: Path, names: list[str], as_json: bool) -> None:
    data = _run(inventory, [action, *names])
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        for message in data.get("messages", []):
            console.print(message)


@app.command("approve")
def approve(names: Names, inventory: InventoryOpt = Path("inventories/local"), as_json: JsonOpt = False) -> None:
    """Approve pending sign-ups (native sign-in with approval: admin)."""
    _act("approve", inventory, names, as_json)


@app.command("disable")
def disable(names: Names, inventory: InventoryOpt = Path("inventories/local"), as_json: JsonOpt = False) -> None:
    """Refuse sign-in, stop the users' servers and revoke their tokens; data stays."""
    _act("disable", inventory, names, as_json)


@app.command("enable")
def enable(names: Names, inventory: InventoryOpt = Path("inventories/local"), as_json: JsonOpt = False) -> None:
    """Allow disabled users to sign in again."""
    _act("enable", inventory, names, as_json)


def token(
    user: Annotated[str, typer.Argument(help="User the token acts as.")],
    inventory: InventoryOpt = Path("inventories/local"),
    note: Annotated[str, typer.Option(help="Note stored with the token.")] = "sciplat token",
    expires: Annotated[int | None, typer.Option(help="Lifetime in seconds (default: none).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """An API token of USER for scripts (Authorization: token …)."""
    args = ["token", user, "--note", note] + (["--expires", str(expires)] if expires else [])
    data = _run(inventory, args)
    print(json.dumps(data, indent=2) if as_json else data["token"])
