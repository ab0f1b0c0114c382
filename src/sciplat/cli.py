"""The `sciplat` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sciplat import __version__
from sciplat import render as render_mod
from sciplat import runner as runner_mod
from sciplat import secrets as secrets_mod
from sciplat.commands import cloud as cloud_cmd
from sciplat.commands import mydb as mydb_commands
from sciplat.paths import repo_root
from sciplat.spec import PlatformSpec
from sciplat.validate import Result, validate_inventory_dir

app = typer.Typer(
    help="Deploy and operate a self-hosted science platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
secrets_app = typer.Typer(help="Read and rotate the platform's generated secrets.", no_args_is_help=True)
testbed_app = typer.Typer(help="The local test bed: podman hosts that behave like servers.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")
app.add_typer(testbed_app, name="testbed")
app.add_typer(cloud_cmd.cloud_app, name="cloud")
app.add_typer(cloud_cmd.cost_app, name="cost")
app.add_typer(mydb_commands.app, name="mydb")

console = Console()
err = Console(stderr=True)

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

EXIT_INVALID = 2


def _print_problems(result: Result, inventory: Path, *, warnings: bool = True) -> None:
    for problem in result.problems if warnings else result.errors:
        style = "red" if problem.severity == "error" else "yellow"
        err.print(f"[{style}]{problem.severity}[/] {inventory}/{problem}", highlight=False, soft_wrap=True)


def _validated(inventory: Path, *, warnings: bool = True) -> PlatformSpec:
    """Validate or exit 2: no host is touched before the spec and inventory are sound."""
    result = validate_inventory_dir(inventory)
    _print_problems(result, inventory, warnings=warnings)
    if not result.ok or result.spec is None:
        err.print(f"[red]{len(result.errors)} problem(s) in {inventory}; nothing was changed.[/]")
        raise typer.Exit(EXIT_INVALID)
    return result.spec


@app.command()
def version() -> None:
    """Print sciplat's version."""
    console.print(__version__)


@app.command()
def validate(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Check platform.yaml and hosts.yml together; print every problem (exit 2 if any)."""
    result = validate_inventory_dir(inventory)
    if as_json:
        print(json.dumps({"ok": result.ok, "problems": [p.as_dict() for p in result.problems]}, indent=2))
    else:
        _print_problems(result, inventory)
        if result.ok:
            hosts = len(result.inventory.hostvars) if result.inventory else 0
            console.print(f"[green]valid[/]: {inventory} ({hosts} hosts)")
        else:
            err.print(f"[red]{len(result.errors)} problem(s)[/] in {inventory}")
    if not result.ok:
        raise typer.Exit(EXIT_INVALID)


def _prepare(inventory: Path, spec: PlatformSpec) -> tuple[dict[str, Any], str]:
    """Secrets (generated once) and rendered variables; returns (secrets, vault password)."""
    repo = repo_root()
    try:
        secrets, created = secrets_mod.ensure(
            inventory,
            repo,
            platform_name=spec.platform.name,
            ca_validity_days=spec.tls.ca_validity // 86400,
            settings=spec.model_dump(mode="json"),
        )
        password, _ = secrets_mod.password_source(spec.platform.name)
    except secrets_mod.SecretError as exc:
        err.print(f"[red]secrets:[/] {exc}")
        raise typer.Exit(1) from None
    if created:
        console.print(f"generated {len(created)} new secret(s) into {inventory / secrets_mod.VAULT_FILE}")
    render_mod.write_inventory_source(spec, inventory)
    render_mod.write_ca_cert(inventory, secrets)
    return secrets, password


@app.command()
def up(
    inventory: InventoryOpt,
    check: Annotated[bool, typer.Option("--check", help="Dry run: show what would change (diffs).")] = False,
    tags: Annotated[list[str] | None, typer.Option("--tags", "-t", help="Only these roles/tags.")] = None,
    limit: Annotated[str | None, typer.Option("--limit", "-l", help="Only these hosts (Ansible pattern).")] = None,
    extra_vars: Annotated[
        str | None,
        typer.Option("--extra-vars", "-e", help="Role variables as a JSON object, for this run only (debugging)."),
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="hosts: the hosts in hosts.yml; aws: create them with Pulumi first.")
    ] = "hosts",
    as_json: JsonOpt = False,
) -> None:
    """Validate, render and deploy the platform (playbooks/site.yml)."""
    if target not in cloud_cmd.TARGETS:
        err.print(f"[red]--target {target!r}[/]: use one of {', '.join(cloud_cmd.TARGETS)}")
        raise typer.Exit(EXIT_INVALID)
    if target == "aws":
        cloud_cmd.provision(inventory, err if as_json else console, check=check)
    overrides: dict[str, Any] | None = None
    if extra_vars:
        try:
            overrides = json.loads(extra_vars)
        except json.JSONDecodeError as exc:
            overrides, reason = None, str(exc)
        else:
            reason = "it is not a JSON object"
        if not isinstance(overrides, dict):
            err.print(f"[red]--extra-vars {extra_vars!r}: {reason}[/]; write e.g. '{{\"gateway_hsts_max_age\": 600}}'")
            raise typer.Exit(EXIT_INVALID)
    spec = _validated(inventory)
    _, password = _prepare(inventory, spec)
    result = runner_mod.run_with_vault(
        inventory,
        password,
        "site.yml",
        label="check" if check else "up",
        console=err if as_json else console,
        quiet=as_json,
        check=check,
        tags=[t for tag in tags or [] for t in tag.split(",") if t],
        limit=limit,
        extra_vars=overrides,
    )
    summary = result.as_dict() | {"check": check, "url": spec.public_url}
    (inventory / render_mod.STATE_DIR / "last-run.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        runner_mod.print_summary(result, console, check=check)
        if result.ok and not check:
            _print_access(inventory, spec)
    if not result.ok:
        raise typer.Exit(1)


def _print_access(inventory: Path, spec: PlatformSpec) -> None:
    ca = inventory / "pki" / "ca.crt"
    console.print(f"\n[bold]Platform:[/] {spec.public_url}")
    if spec.tls.mode == "internal-ca" and ca.exists():
        console.print(f"[bold]CA certificate:[/] {ca.resolve()}  (import it in your browser, or curl --cacert)")


@app.command()
def status(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Health of every host and service; exits 1 when anything is unhealthy."""
    from sciplat import status as status_mod

    spec = _validated(inventory, warnings=False)
    if not (inventory / render_mod.STATE_DIR / "inventory").exists():
        render_mod.write_inventory_source(spec, inventory)
    try:
        report = status_mod.collect(inventory, spec.public_url, spec.platform.name)
    except status_mod.StatusError as exc:
        err.print(f"[red]status:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        table = Table(box=None, header_style="bold")
        for column in ("host", "service", "unit", "state", "port", "probe", "healthy"):
            table.add_column(column)
        for host, rep in report["hosts"].items():
            if not rep["reachable"]:
                table.add_row(
                    host,
                    "-",
                    "-",
                    f"[red]unreachable[/] {rep.get('error', '')}",
                    "",
                    "",
                    "[red]no[/]",
                )
                continue
            for svc in rep["services"]:
                port = "" if "port" not in svc else f"{svc['port']}{'' if svc['listening'] else ' closed'}"
                table.add_row(
                    host,
                    svc["name"],
                    svc["unit"],
                    svc["state"],
                    port,
                    svc.get("probe", "") + (f" ({svc['detail']})" if svc.get("detail") else ""),
                    "[green]yes[/]" if svc["healthy"] else "[red]no[/]",
                )
            for unit in rep.get("failed_units", []):
                table.add_row(host, "(systemd)", unit, "[red]failed[/]", "", "", "[red]no[/]")
        console.print(table)
        endpoint = report["endpoint"]
        mark = "[green]ok[/]" if endpoint["healthy"] else f"[red]{endpoint.get('error', endpoint.get('status'))}[/]"
        console.print(f"URL: {report['url']}  {mark}")
        if report["ca_cert"]:
            console.print(f"CA certificate: {report['ca_cert']}")
        console.print("[green]healthy[/]" if report["healthy"] else "[red]unhealthy[/]")
    if not report["healthy"]:
        raise typer.Exit(1)


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="The reference page instead of JSON Schema.")] = False,
) -> None:
    """Print the platform.yaml JSON Schema (or its Markdown reference)."""
    from sciplat.schema_doc import json_schema, markdown_reference

    text = markdown_reference() if markdown else json.dumps(json_schema(), indent=2) + "\n"
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


# ------------------------------------------------------------------ secrets


@secrets_app.command("show")
def secrets_show(
    key: Annotated[str, typer.Argument(help="Secret name, e.g. pki_ca or pki_ca.cert.")],
    inventory: InventoryOpt,
) -> None:
    """Print one secret (a dotted name reaches inside a mapping)."""
    spec = _validated(inventory, warnings=False)
    try:
        password, _ = secrets_mod.password_source(spec.platform.name)
        data: Any = secrets_mod.read_vault(inventory / secrets_mod.VAULT_FILE, password)
    except secrets_mod.SecretError as exc:
        err.print(f"[red]secrets:[/] {exc}")
        raise typer.Exit(1) from None
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            err.print(f"[red]no secret named {key!r}[/]; `sciplat secrets list -i {inventory}` shows the names")
            raise typer.Exit(1)
        data = data[part]
    sys.stdout.write(data if isinstance(data, str) and data.endswith("\n") else f"{data}\n")


@secrets_app.command("list")
def secrets_list(inventory: InventoryOpt, as_json: JsonOpt = False) -> None:
    """Names of declared secrets, who declares them, and whether they exist yet."""
    spec = _validated(inventory, warnings=False)
    repo = repo_root()
    password, _ = secrets_mod.password_source(spec.platform.name)
    existing = secrets_mod.read_vault(inventory / secrets_mod.VAULT_FILE, password)
    rows: list[dict[str, str]] = [
        {
            "name": name,
            "kind": d.decl.kind,
            "declared_by": str(d.source.relative_to(repo)),
            "generated": "yes" if name in existing else "no",
            "rotation": f"--tags {','.join(d.decl.rotation.tags)}" if d.decl.rotation else "",
            "description": d.decl.description,
        }
        for name, d in sorted(secrets_mod.declarations(repo).items())
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "kind", "generated", "rotation", "declared by", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["kind"],
            row["generated"],
            row["rotation"],
            row["declared_by"],
            row["description"],
        )
    console.print(table)


@secrets_app.command("rotate")
def secrets_rotate(
    name: Annotated[str, typer.Argument(help="Secret to replace, e.g. slurm_controller_munge_key.")],
    inventory: InventoryOpt,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    apply: Annotated[
        bool, typer.Option("--apply", help="Roll the new value out now: `sciplat up --tags` with its tags.")
    ] = False,
) -> None:
    """Replace one secret in the vault with a new value (only secrets that declare `rotation:`)."""
    spec = _validated(inventory, warnings=False)
    try:
        secrets_mod.rotatable(repo_root(), name)  # refused before anyone is asked to confirm
    except secrets_mod.SecretError as exc:
        err.print(f"[red]secrets:[/] {exc}")
        raise typer.Exit(1) from None
    if not yes:
        if not sys.stdin.isatty():
            err.print(f"[red]rotating {name} needs confirmation[/]: add --yes (stdin is not a terminal)")
            raise typer.Exit(1)
        typer.confirm(f"Replace {name} in {inventory / secrets_mod.VAULT_FILE} with a new value?", abort=True)
    try:
        rotated = secrets_mod.rotate(
            inventory,
            repo_root(),
            name,
            platform_name=spec.platform.name,
            ca_validity_days=spec.tls.ca_validity // 86400,
        )
    except secrets_mod.SecretError as exc:
        err.print(f"[red]secrets:[/] {exc}")
        raise typer.Exit(1) from None
    tags = ",".join(rotated.tags)
    console.print(
        f"rotated {name} in {rotated.vault}; the hosts still use the old value until it is rolled out", soft_wrap=True
    )
    if rotated.notice:
        console.print(f"while it is rolled out: {rotated.notice}", soft_wrap=True)
    if not apply:
        console.print(f"next: sciplat up -i {inventory} --tags {tags}   (every host: no --limit)", soft_wrap=True)
        return
    console.print(f"rolling it out: sciplat up -i {inventory} --tags {tags}", soft_wrap=True)
    up(inventory, tags=[tags])


# ------------------------------------------------------------------ test bed

TestbedInventory = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Test bed inventory directory (has testbed.yml)."),
]


@testbed_app.command("up")
def testbed_up(
    inventory: TestbedInventory = Path("inventories/local"),
    recreate: Annotated[bool, typer.Option("--recreate", help="Remove and recreate every host.")] = False,
) -> None:
    """Build the base image if needed and start the test bed's hosts (idempotent)."""
    from sciplat import testbed

    try:
        hosts = testbed.up(inventory, recreate=recreate, console=console)
    except testbed.TestbedError as exc:
        err.print(f"[red]test bed:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"[green]test bed up[/]: {', '.join(h.name for h in hosts)}; inventory {inventory / 'hosts.yml'}")


@testbed_app.command("down")
def testbed_down(
    inventory: TestbedInventory = Path("inventories/local"),
    remove_image: Annotated[bool, typer.Option("--remove-image", help="Also remove the base image.")] = False,
) -> None:
    """Remove the test bed's containers and network (caches are kept)."""
    from sciplat import testbed

    try:
        testbed.down(inventory, remove_image=remove_image, console=console)
    except testbed.TestbedError as exc:
        err.print(f"[red]test bed:[/] {exc}")
        raise typer.Exit(1) from None


@testbed_app.command("status")
def testbed_status(inventory: TestbedInventory = Path("inventories/local"), as_json: JsonOpt = False) -> None:
    """State of the test bed's image, network and hosts."""
    from sciplat import testbed

    try:
        report = testbed.status(inventory)
    except testbed.TestbedError as exc:
        err.print(f"[red]test bed:[/] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        console.print_json(json.dumps(report, default=str))


# ------------------------------------------------------------------ compute (Slurm)
from sciplat.commands import allocations as _allocations  # noqa: E402
from sciplat.commands import compute as _compute  # noqa: E402

app.add_typer(_allocations.app, name="allocations")
app.command("drain")(_compute.drain)
app.command("resume")(_compute.resume)


def main() -> None:  # pragma: no cover - console script entry
    app()


# sciplat users …, sciplat token USER (src/sciplat/commands/users.py)
from sciplat.commands import users as _users  # noqa: E402

app.add_typer(_users.app, name="users")
app.command("token")(_users.token)

# sciplat upgrade (src/sciplat/commands/upgrade.py)
from sciplat.commands import upgrade as _upgrade  # noqa: E402

app.command("upgrade")(_upgrade.upgrade)

# sciplat backup, sciplat restore (src/sciplat/commands/backup.py)
from sciplat.commands import backup as _backup  # noqa: E402

app.command("backup")(_backup.backup)
app.command("restore")(_backup.restore)
