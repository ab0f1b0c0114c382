"""`sciplat up --target aws`, `sciplat cloud …` and `sciplat cost report`.

``up --target aws`` runs the Pulumi program in ``stacks/aws`` through the Automation
API, renders the stack outputs into ``hosts.yml`` (the on-prem format) and then the
usual ``up`` continues with the same ``playbooks/site.yml``. Pulumi state lives in
``<inventory>/.sciplat/pulumi`` unless ``PULUMI_BACKEND_URL`` says otherwise; its
secrets passphrase is the inventory's vault password unless ``PULUMI_CONFIG_PASSPHRASE``
is set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from sciplat.cloud import config as cloud_config
from sciplat.cloud import cost as cost_mod
from sciplat.cloud import inventory as inventory_mod
from sciplat.paths import repo_root
from sciplat.spec import PlatformSpec

cloud_app = typer.Typer(help="The platform's AWS stack (created by `sciplat up --target aws`).", no_args_is_help=True)
cost_app = typer.Typer(help="What the platform costs, split per tenant.", no_args_is_help=True)

console = Console()
err = Console(stderr=True)

TARGETS = ("hosts", "aws")
EXIT_INVALID = 2

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding platform.yaml (and hosts.yml)."),
]


class CloudError(Exception):
    """Something the operator must install or fix; the CLI prints it and exits 1."""


# ------------------------------------------------------------------ helpers


def load_spec(inventory: Path) -> PlatformSpec:
    """platform.yaml alone (hosts.yml does not exist before the stack does); exit 2 when invalid."""
    path = inventory / "platform.yaml"
    try:
        return PlatformSpec.model_validate(yaml.safe_load(path.read_text()))
    except OSError as exc:
        err.print(f"[red]{path}: {exc.strerror}[/]")
    except (yaml.YAMLError, ValidationError) as exc:
        err.print(f"[red]{path} is not valid[/]; `sciplat validate -i {inventory}` explains:\n{exc}")
    raise typer.Exit(EXIT_INVALID)


def _require_pulumi() -> Any:
    try:
        from pulumi import automation
    except ImportError:
        raise CloudError(
            "the Pulumi Python packages are missing; install sciplat's cloud extra: pip install -e '.[cloud]'"
        ) from None
    if shutil.which("pulumi") is None:
        raise CloudError(
            "the Pulumi CLI (`pulumi`, version 3) is not installed or not on PATH; `--target aws` drives it "
            "through the Automation API. Install it (Pulumi's documentation: 'Download & install Pulumi'), "
            "check with `pulumi version`, then run this command again"
        )
    return automation


def _private_key(public_key_file: str, inventory: Path) -> Path:
    public = Path(public_key_file).expanduser()
    if not public.is_absolute():
        public = inventory / public
    private = public.with_suffix("") if public.suffix == ".pub" else public
    if not private.is_file():
        raise CloudError(
            f"cloud.ssh_public_key_file is {public}, but its private key {private} does not exist; "
            "Ansible needs it to reach the hosts"
        )
    return private.resolve()


def _workspace_env(inventory: Path, spec: PlatformSpec) -> dict[str, str]:
    from sciplat import secrets as secrets_mod

    env = {
        "PULUMI_BACKEND_URL": os.environ.get("PULUMI_BACKEND_URL")
        or f"file://{(inventory / '.sciplat' / 'pulumi').resolve()}",
        "PULUMI_PYTHON_CMD": sys.executable,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    }
    if "PULUMI_BACKEND_URL" not in os.environ:
        (inventory / ".sciplat" / "pulumi").mkdir(parents=True, exist_ok=True)
    if "PULUMI_CONFIG_PASSPHRASE" not in os.environ and "PULUMI_CONFIG_PASSPHRASE_FILE" not in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE"] = secrets_mod.password_source(spec.platform.name)[0]
    return env


def _stack(inventory: Path, spec: PlatformSpec) -> Any:
    auto = _require_pulumi()
    assert spec.cloud is not None
    stack = auto.create_or_select_stack(
        stack_name=spec.platform.name,
        work_dir=str(repo_root() / "stacks" / "aws"),
        opts=auto.LocalWorkspaceOptions(env_vars=_workspace_env(inventory, spec)),
    )
    stack.set_config("aws:region", auto.ConfigValue(value=spec.cloud.region))
    stack.set_config("sciplat:spec", auto.ConfigValue(value=str((inventory / "platform.yaml").resolve())))
    key = Path(spec.cloud.ssh_public_key_file).expanduser()
    stack.set_config(
        "sciplat:sshPublicKeyFile",
        auto.ConfigValue(value=str(key if key.is_absolute() else (inventory / key).resolve())),
    )
    return stack


def policy_args(inventory: Path, spec: PlatformSpec) -> dict[str, list[str]]:
    """The sciplat policy pack and its configuration, enforced on every preview and up."""
    assert spec.cloud is not None
    config = {
        "sciplat-ingress": {"adminCidrs": list(spec.cloud.admin_cidrs)},
        "sciplat-budgets": {"tenants": [t.name for t in spec.cloud.tenants]},
    }
    path = (inventory / ".sciplat" / "pulumi-policy-config.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return {"policy_packs": [str(repo_root() / "stacks" / "aws" / "policy")], "policy_pack_configs": [str(path)]}


def _checked(inventory: Path) -> PlatformSpec:
    spec = load_spec(inventory)
    problems = cloud_config.check_spec_for_aws(spec)
    if problems:
        for problem in problems:
            err.print(f"[red]error[/] {inventory}/platform.yaml: {problem}", highlight=False, soft_wrap=True)
        err.print(f"[red]{len(problems)} problem(s); nothing was created.[/]")
        raise typer.Exit(EXIT_INVALID)
    return spec


def render_inventory(inventory: Path, spec: PlatformSpec, outputs: dict[str, Any], out: Console) -> None:
    """hosts.yml and the cloud variables from the stack outputs (and the pools' running instances)."""
    assert spec.cloud is not None
    private = _private_key(spec.cloud.ssh_public_key_file, inventory)
    try:
        nodes = inventory_mod.compute_nodes(outputs.get("compute_pools") or [], spec.cloud.region)
    except Exception as exc:  # boto3 raises many kinds; all mean "cannot list the pools"
        raise CloudError(f"cannot list the compute pools' instances: {exc}") from None
    hosts_path, vars_path = inventory_mod.write(inventory, outputs, nodes, private_key=private)
    out.print(
        f"inventory: {hosts_path} ({len(outputs['hosts'])} hosts, {len(nodes)} compute nodes); {vars_path}",
        soft_wrap=True,
    )


def provision(inventory: Path, out: Console, *, check: bool = False) -> None:
    """Create or update the AWS stack, then render the inventory (called by `sciplat up --target aws`).

    With ``check`` the stack is only previewed (nothing is created) and the inventory is
    rendered from the outputs of the last real run, if there was one.
    """
    spec = _checked(inventory)
    assert spec.cloud is not None
    try:
        _private_key(spec.cloud.ssh_public_key_file, inventory)
        cloud_config.read_public_key(spec.cloud.ssh_public_key_file, inventory)
        stack = _stack(inventory, spec)
        print_line = lambda line: out.print(line, highlight=False, markup=False, end="")  # noqa: E731
        if check:
            out.print(f"pulumi preview: stack {spec.platform.name} in {spec.cloud.region}")
            stack.preview(on_output=print_line, **policy_args(inventory, spec))
            outputs = {k: v.value for k, v in stack.outputs().items()}
            if not outputs:
                raise CloudError(
                    "--check previewed the stack; it has never been created, so there are no hosts to check yet"
                )
        else:
            out.print(f"pulumi up: stack {spec.platform.name} in {spec.cloud.region}")
            result = stack.up(on_output=print_line, **policy_args(inventory, spec))
            outputs = {k: v.value for k, v in result.outputs.items()}
        render_inventory(inventory, spec, outputs, out)
    except (CloudError, cloud_config.CloudConfigError) as exc:
        err.print(f"[red]aws:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


# ------------------------------------------------------------------ sciplat cloud …


@cloud_app.command("inventory")
def cloud_inventory(inventory: InventoryOpt) -> None:
    """Re-render hosts.yml from the stack's outputs (e.g. after a compute pool scaled)."""
    spec = _checked(inventory)
    try:
        outputs = {k: v.value for k, v in _stack(inventory, spec).outputs().items()}
        if not outputs:
            raise CloudError(f"the stack {spec.platform.name} has no outputs yet; run `sciplat up --target aws` first")
        render_inventory(inventory, spec, outputs, console)
    except CloudError as exc:
        err.print(f"[red]aws:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


@cloud_app.command("down")
def cloud_down(
    inventory: InventoryOpt,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask; destroy.")] = False,
) -> None:
    """Destroy the AWS stack (RDS deletion protection and non-empty buckets stop it: data is never lost silently)."""
    spec = _checked(inventory)
    if not yes and not typer.confirm(f"Destroy every AWS resource of {spec.platform.name}?"):
        raise typer.Exit(1)
    try:
        _stack(inventory, spec).destroy(on_output=lambda line: console.print(line, markup=False, end=""))
    except CloudError as exc:
        err.print(f"[red]aws:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


# ------------------------------------------------------------------ sciplat cost report


@cost_app.command("report")
def cost_report(
    inventory: InventoryOpt,
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM.")],
    usage_file: Annotated[
        Path | None, typer.Option("--usage", help="Measured use per group (YAML/JSON; see docs/cloud-aws.md).")
    ] = None,
    source: Annotated[
        str, typer.Option("--source", help="aws (Cost Explorer), onprem (use x rates) or auto.")
    ] = "auto",
    whole_account: Annotated[
        bool,
        typer.Option("--whole-account", help="AWS: include costs not tagged with the platform (a dedicated account)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """The month's cost per tenant; shares always add up to the total to the cent."""
    spec = load_spec(inventory)
    try:
        cost_mod.check_month(month)
    except ValueError as exc:
        err.print(f"[red]--month:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    if source == "auto":
        deployed = (inventory / ".sciplat" / "inventory" / inventory_mod.CLOUD_VARS_FILE).is_file()
        source = "aws" if deployed else "onprem"
    if source not in ("aws", "onprem"):
        err.print(f"[red]--source {source!r}[/]: use aws, onprem or auto")
        raise typer.Exit(EXIT_INVALID)
    tenants = list(spec.cloud.tenants) if spec.cloud else []
    try:
        usage = cost_mod.load_usage(usage_file) if usage_file else cost_mod.Usage(month=month)
        if usage.month != month:
            raise cost_mod.CostError(f"{usage_file} measures {usage.month}, not {month}")
        if source == "onprem" and usage_file is None:
            raise cost_mod.CostError("the on-prem report is use x rates: give the month's use with --usage FILE")
        if source == "aws":
            import boto3

            if usage.s3_locations:
                measured = cost_mod.measure_s3(usage.s3_locations, boto3.client("s3", region_name=_region(spec)))
                for group, size in measured.items():
                    usage.stored_bytes[group] = usage.stored_bytes.get(group, 0) + size
            ce = boto3.client("ce", region_name="us-east-1")  # Cost Explorer's one endpoint
            costs = cost_mod.aws_costs(ce, month, spec.platform.name, whole_account=whole_account)
        else:
            rates = spec.cloud.rates if spec.cloud else None
            if rates is None:
                raise cost_mod.CostError("platform.yaml has no cloud.rates; the on-prem report needs prices")
            costs = cost_mod.onprem_costs(cost_mod.tenant_usage(usage, tenants), rates, month)
    except cost_mod.CostError as exc:
        err.print(f"[red]cost:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except ImportError:
        err.print("[red]cost:[/] boto3 is missing; install sciplat's cloud extra: pip install -e '.[cloud]'")
        raise typer.Exit(1) from None
    if usage_file is None and source == "aws":
        err.print("[yellow]warning[/] no --usage: shared costs are split equally between the tenants")
    data = cost_mod.report(month=month, source=source, costs=costs, usage=usage, tenants=tenants)
    if as_json:
        print(json.dumps(data, indent=2))
    elif as_csv:
        sys.stdout.write(cost_mod.to_csv(data))
    else:
        table = Table(box=None, header_style="bold", title=f"{spec.platform.name} {month} ({source})")
        for column in ("tenant", "total USD", "share %", "direct USD", "core-hours", "GiB stored", "MyDB GiB"):
            table.add_column(column, justify="left" if column == "tenant" else "right")
        for row in data["tenants"]:
            table.add_row(
                row["tenant"],
                row["total"],
                f"{row['share_percent']:.2f}",
                row["direct"] or "",
                f"{row['core_hours']:.1f}",
                f"{row['stored_gib']:.1f}",
                f"{row['mydb_gib']:.1f}",
            )
        table.add_row("[bold]total[/]", f"[bold]{data['total']}[/]", "100.00", "", "", "", "")
        console.print(table)
        console.print(f"method: {data['method']}", highlight=False)


def _region(spec: PlatformSpec) -> str:
    return spec.cloud.region if spec.cloud else "us-east-1"


@cost_app.command("collect")
def cost_collect(
    inventory: InventoryOpt,
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the usage file.")] = Path("usage.yml"),
) -> None:
    """Measure the month's use per group on the hosts (Slurm core-hours, MyDB size, /groups bytes)."""
    from sciplat.cloud import collect as collect_mod

    load_spec(inventory)
    try:
        cost_mod.check_month(month)
        usage = collect_mod.collect(month, collect_mod.ansible_runner(inventory.resolve(), repo_root()))
    except ValueError as exc:
        err.print(f"[red]--month:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    except cost_mod.CostError as exc:
        err.print(f"[red]cost:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    collect_mod.write_usage(usage, output)
    console.print(
        f"{output}: {len(usage.core_hours)} Slurm accounts, {len(usage.mydb_bytes)} group databases, "
        f"{len(usage.stored_bytes)} group directories"
    )
