"""`sciplat allocations`: awarded compute time (core-hours) per group, used and remaining.

An allocation is the group's Slurm account limit GrpTRESMins=cpu (usage never
decays on sciplat). The work happens on the controller
(`sciplat-slurm-accounts`, src/sciplat_hub/slurm_accounts.py) over SSH.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sciplat.commands.slurm_remote import RemoteError, controller

app = typer.Typer(help="Awarded compute allocations (core-hours) per group.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
TOOL = "sciplat-slurm-accounts"


def _call(inventory: Path, args: list[str]) -> Any:
    try:
        done = controller(inventory).run([TOOL, *args])
    except RemoteError as exc:
        err.print(f"[red]allocations:[/] {exc}")
        raise typer.Exit(1) from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        err.print(f"[red]allocations:[/] {message}")
        raise typer.Exit(1)
    return json.loads(done.stdout) if done.stdout.strip() else None


def _hours(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:,.1f}"


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("group", "user", "awarded", "used", "remaining", "until"):
        table.add_column(column, justify="right" if column in ("awarded", "used", "remaining") else "left")
    for row in rows:
        remaining = row["remaining_core_hours"]
        style = "red" if remaining is not None and remaining <= 0 else ""
        table.add_row(
            row["account"],
            "",
            _hours(row["awarded_core_hours"]),
            _hours(row["used_core_hours"]),
            f"[{style}]{_hours(remaining)}[/]" if style else _hours(remaining),
            row.get("until") or "",
        )
        for user, used in row.get("users", {}).items():
            table.add_row("", user, "", _hours(used), "", "")
    return table


@app.command("show")
def show(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Awarded, used and remaining core-hours per group, and what each user used."""
    rows = _call(inventory, ["show", "--json"]) or []
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console.print(_table(rows))
    console.print("core-hours; [dim]unlimited[/]: the group has no awarded allocation")


@app.command("set")
def set_allocation(
    group: Annotated[str, typer.Argument(help="The group (its Slurm account).")],
    inventory: InventoryOpt,
    core_hours: Annotated[float, typer.Option("--core-hours", help="Awarded core-hours (CPU-hours), in total.")],
    until: Annotated[
        str | None, typer.Option("--until", help="Last day of the allocation (YYYY-MM-DD); closed after it.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Award GROUP an allocation of core-hours (Slurm GrpTRESMins), optionally until a date."""
    args = ["set-allocation", group, "--core-hours", f"{core_hours:g}", "--json"]
    if until:
        try:
            day = dt.date.fromisoformat(until)
        except ValueError:
            err.print(f"[red]--until {until!r}[/] is not a date; write it as YYYY-MM-DD, e.g. 2027-03-31")
            raise typer.Exit(2) from None
        if day < dt.date.today():
            err.print(f"[red]--until {until}[/] is in the past; the allocation would be closed at once")
            raise typer.Exit(2)
        args += ["--until", day.isoformat()]
    row = _call(inventory, args)
    if as_json:
        print(json.dumps(row, indent=2))
        return
    console.print(_table([row]))
