"""`sciplat upgrade`: rolling upgrades to the versions file, with a plan, a health gate and a backup first.

The versions file (`playbooks/group_vars/all/versions.yml`, variable `sciplat_versions`)
pins every component: the hub's pip packages, the proxy's npm package, the pip
packages of sciplat_hub's venv, and the Debian packages of each host group
("" follows the distribution). `--plan` compares what every host runs with it;
without `--plan` the command checks that `sciplat status` is green (or
`--force`), takes a backup (or `--skip-backup`), then runs
`playbooks/upgrade.yml`: stateful tiers one host at a time, the hub, and the
compute nodes in batches with drain and resume. See docs/upgrade.md.
"""

from __future__ import annotations

import copy
import json
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from sciplat import render as render_mod
from sciplat import runner as runner_mod
from sciplat import status as status_mod
from sciplat.paths import repo_root

console = Console()
err = Console(stderr=True)

VERSIONS_FILE = Path("playbooks") / "group_vars" / "all" / "versions.yml"

# Sections of sciplat_versions and where each is installed.
HUB_VENV_PYTHON = "/opt/jupyterhub/bin/python"
PLATFORM_CODE_PYTHON = "/opt/sciplat/venv/bin/python"
NOTEBOOK_VENV_PYTHON = "/opt/sciplat/notebook/bin/python"
PROXY_PACKAGE_JSON = "/opt/configurable-http-proxy/node_modules/configurable-http-proxy/package.json"
# keys of sciplat_versions.platform_code that are not the distribution's name
PLATFORM_CODE_ALIASES = {"boto3_aws": "boto3"}

# The plays of playbooks/upgrade.yml, in the order they run (variable upgrade_tiers).
TIERS = ("stateful", "stateless", "hub", "compute")

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]


class UpgradeError(Exception):
    """The upgrade cannot start or its inputs are wrong; the message says what to do."""


# ------------------------------------------------------------------ versions


def load_versions(repo: Path | None = None) -> dict[str, Any]:
    """`sciplat_versions` from the repository's versions file."""
    path = (repo or repo_root()) / VERSIONS_FILE
    data = yaml.safe_load(path.read_text()) or {}
    versions = data.get("sciplat_versions")
    if not isinstance(versions, dict):
        raise UpgradeError(f"{path} has no mapping sciplat_versions")
    return versions


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(versions: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    """Apply `--to` values: NAME=VERSION (every place NAME is pinned) or a YAML file of the same layout."""
    out = copy.deepcopy(versions)
    for target in targets:
        if "=" in target:
            name, _, version = target.partition("=")
            name, version = name.strip(), version.strip()
            found = False
            for section in ("hub", "hub_proxy", "platform_code", "notebook"):
                if name in out.get(section, {}):
                    out[section][name] = version
                    found = True
            for packages in out.get("debian", {}).values():
                if name in packages:
                    packages[name] = version
                    found = True
            if not found:
                raise UpgradeError(
                    f"--to {target}: {name!r} is not pinned in {VERSIONS_FILE}; "
                    "use a name listed there (e.g. jupyterhub=5.5.4, configurable-http-proxy=5.0.1, slurmd=)"
                )
            continue
        path = Path(target)
        if not path.is_file():
            raise UpgradeError(f"--to {target}: neither NAME=VERSION nor a readable versions file")
        data = yaml.safe_load(path.read_text()) or {}
        overlay = data.get("sciplat_versions", data) if isinstance(data, dict) else None
        if not isinstance(overlay, dict):
            raise UpgradeError(f"--to {target}: the file must hold a mapping like {VERSIONS_FILE}")
        unknown = set(overlay) - set(out)
        if unknown:
            raise UpgradeError(f"--to {target}: unknown section(s) {sorted(unknown)}; known: {sorted(out)}")
        out = _merge(out, overlay)
    return out


def host_targets(versions: dict[str, Any], groups: list[str], hostvars: dict[str, Any]) -> dict[str, Any]:
    """What one host should run, by where it is installed."""
    debian: dict[str, str] = {}
    for group in ["all", *groups]:
        debian.update({k: str(v or "") for k, v in (versions.get("debian", {}).get(group) or {}).items()})
    platform_code = {k: str(v) for k, v in (versions.get("platform_code") or {}).items()}
    if hostvars.get("sciplat_storage_backend", "ceph") == "s3" and "boto3_aws" in platform_code:
        platform_code["boto3"] = platform_code["boto3_aws"]
    platform_code = {k: v for k, v in platform_code.items() if k not in PLATFORM_CODE_ALIASES}
    pip = {PLATFORM_CODE_PYTHON: platform_code}
    npm: dict[str, str] = {}
    if {"hub", "compute"} & set(groups):
        # the users' servers and kernels (roles/notebook_env)
        pip[NOTEBOOK_VENV_PYTHON] = {k: str(v) for k, v in (versions.get("notebook") or {}).items()}
    if "hub" in groups:
        pip[HUB_VENV_PYTHON] = {k: str(v) for k, v in (versions.get("hub") or {}).items()}
        if proxy := (versions.get("hub_proxy") or {}).get("configurable-http-proxy"):
            npm[PROXY_PACKAGE_JSON] = str(proxy)
    return {"debian": debian, "pip": pip, "npm": npm}


# Runs on each host; prints one JSON list of {component, kind, where, installed, target, action}.
_PLAN_SCRIPT = r"""
import json, os, subprocess, sys
want = json.loads(sys.argv[1])
rows = []
def sh(args):
    p = subprocess.run(args, capture_output=True, text=True)
    return p.returncode, p.stdout.strip()
def deb_cmp(a, op, b):
    return subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
for name, pin in sorted(want["debian"].items()):
    code, installed = sh(["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Version}", name])
    if code != 0 or not installed.startswith("ii"):
        continue  # not installed here: `sciplat up` installs what a role needs
    installed = installed.split("|", 1)[1]
    target = pin
    if not pin:
        code, policy = sh(["apt-cache", "policy", name])
        cand = [l.split(":", 1)[1].strip() for l in policy.splitlines() if l.strip().startswith("Candidate:")]
        target = cand[0] if cand and cand[0] != "(none)" else installed
    action = "none" if installed == target else ("upgrade" if deb_cmp(installed, "lt", target) else "downgrade")
    rows.append({"component": name, "kind": "debian", "where": "apt", "installed": installed,
                 "target": target, "action": action, "follows": "distribution" if not pin else "pin"})
def pyver(v):
    out = []
    for part in v.replace("-", ".").split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return out
for python, pins in sorted(want["pip"].items()):
    if not os.path.exists(python):
        continue
    code, text = sh([python, "-c", "import json, importlib.metadata as m; print(json.dumps("
        "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"])
    have = json.loads(text) if code == 0 and text else {}
    for name, target in sorted(pins.items()):
        key = name.lower().replace("_", "-")
        if key not in have:
            continue  # not declared for this host
        inst = have[key]
        action = "none" if inst == target else ("upgrade" if pyver(inst) < pyver(target) else "downgrade")
        rows.append({"component": name, "kind": "pip", "where": os.path.dirname(os.path.dirname(python)),
                     "installed": inst, "target": target, "action": action})
for path, target in sorted(want["npm"].items()):
    inst = None
    try:
        inst = json.load(open(path))["version"]
    except (OSError, ValueError, KeyError):
        pass
    action = "install" if inst is None else ("none" if inst == target else
              ("upgrade" if pyver(inst) < pyver(target) else "downgrade"))
    rows.append({"component": "configurable-http-proxy", "kind": "npm", "where": path.split("/node_modules")[0],
                 "installed": inst, "target": target, "action": action})
print(json.dumps(rows))
"""


def _plan_host(host: str, hostvars: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    remote = "python3 -c " + shlex.quote(_PLAN_SCRIPT) + " " + shlex.quote(json.dumps(want))
    try:
        done = subprocess.run(
            [*status_mod.ssh_command(host, hostvars), remote], capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return {"reachable": False, "error": "ssh timed out after 120s", "components": []}
    if done.returncode != 0:
        return {"reachable": False, "error": (done.stderr or done.stdout).strip()[-300:], "components": []}
    return {"reachable": True, "components": json.loads(done.stdout)}


def plan(inventory: Path, versions: dict[str, Any]) -> dict[str, Any]:
    """Per host: every pinned component it runs, installed vs target, and what would change."""
    groups, hostvars = status_mod.inventory_hostvars(inventory)
    member_of = {
        host: sorted(g for g, members in groups.items() if host in members and g not in ("all", "ungrouped"))
        for host in hostvars
    }
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {
            host: pool.submit(_plan_host, host, hostvars[host], host_targets(versions, member_of[host], hostvars[host]))
            for host in sorted(hostvars)
        }
        hosts = {host: future.result() for host, future in futures.items()}
    for host, report in hosts.items():
        report["groups"] = member_of[host]
        report["changes"] = [c for c in report["components"] if c["action"] != "none"]
    changes = sum(len(r["changes"]) for r in hosts.values())
    reachable = all(r["reachable"] for r in hosts.values())
    return {"hosts": hosts, "changes": changes, "up_to_date": reachable and changes == 0, "reachable": reachable}


def _print_plan(report: dict[str, Any], *, show_all: bool) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("host", "component", "kind", "installed", "target", "action"):
        table.add_column(column)
    for host, rep in report["hosts"].items():
        if not rep["reachable"]:
            table.add_row(host, "-", "-", "-", "-", f"[red]unreachable[/] {rep.get('error', '')}")
            continue
        for c in rep["components"] if show_all else rep["changes"]:
            style = {"none": "dim", "upgrade": "yellow", "downgrade": "red", "install": "yellow"}[c["action"]]
            table.add_row(
                host, c["component"], c["kind"], str(c["installed"]), str(c["target"]), f"[{style}]{c['action']}[/]"
            )
    if table.row_count:
        console.print(table)
    if report["up_to_date"]:
        console.print("[green]up to date[/]: every host runs the versions of the versions file")
    else:
        console.print(f"{report['changes']} change(s) would be made by `sciplat upgrade`")


# ------------------------------------------------------------------ backup (adapter)


def run_backup(inventory: Path) -> None:
    """Take a full backup before the upgrade (sciplat.commands.backup.run_backup_now).

    Raises UpgradeError when the backup fails, so the upgrade never starts without one.
    """
    from sciplat.commands.backup import run_backup_now

    try:
        result = run_backup_now(inventory, what="all")
    except typer.Exit as exc:
        if exc.exit_code:
            raise UpgradeError(
                f"the backup before the upgrade failed (exit {exc.exit_code}); nothing was upgraded"
            ) from None
        return
    except Exception as exc:
        raise UpgradeError(f"the backup before the upgrade failed: {exc}; nothing was upgraded") from None
    if not result.get("ok"):
        raise UpgradeError("the backup before the upgrade did not succeed; nothing was upgraded")


# ------------------------------------------------------------------ the run


def _unhealthy(report: dict[str, Any]) -> list[str]:
    out = []
    for host, rep in report["hosts"].items():
        if not rep.get("reachable", True):
            out.append(f"{host}: unreachable ({rep.get('error', '')})")
            continue
        out += [f"{host}: {s['name']} ({s['unit']} {s['state']})" for s in rep["services"] if not s["healthy"]]
        out += [f"{host}: failed unit {u}" for u in rep.get("failed_units", [])]
    if not report["endpoint"]["healthy"]:
        out.append(f"public URL: {report['endpoint'].get('error', report['endpoint'].get('status'))}")
    return out


def compute_nodes(inventory: Path) -> dict[str, str]:
    """Every Slurm node and its state (empty when the platform has no Slurm)."""
    from sciplat.commands.slurm_remote import RemoteError, controller

    try:
        ctl = controller(inventory)
        done = ctl.run(["sinfo", "--noheader", "--Node", "--format=%N|%T"])
    except RemoteError:
        return {}
    nodes: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, state = line.strip().partition("|")
        if name:
            nodes[name] = state
    return nodes


def upgrade(
    inventory: InventoryOpt,
    show_plan: Annotated[bool, typer.Option("--plan", help="Only show what would change on each host.")] = False,
    to: Annotated[
        list[str] | None,
        typer.Option("--to", help="NAME=VERSION, or a versions file of the same layout, overriding versions.yml."),
    ] = None,
    serial: Annotated[int, typer.Option("--serial", min=1, help="Compute nodes upgraded at once.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Upgrade even when `sciplat status` is not green.")] = False,
    skip_backup: Annotated[
        bool,
        typer.Option(
            "--skip-backup", help="DANGEROUS: no backup first; the hub's database migration cannot be undone."
        ),
    ] = False,
    drain_timeout: Annotated[
        int, typer.Option("--drain-timeout", min=0, help="Seconds to wait for the jobs of a drained node.")
    ] = 600,
    extra_vars: Annotated[
        str | None, typer.Option("--extra-vars", "-e", help="Extra playbook variables as a JSON object (tests).")
    ] = None,
    tiers: Annotated[
        list[str] | None,
        typer.Option("--tier", help="Only these tiers: stateful, stateless, hub, compute (repeatable)."),
    ] = None,
    show_all: Annotated[bool, typer.Option("--all", help="With --plan: list unchanged components too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Upgrade the platform tier by tier to the versions file (health gate, backup, drain, resume)."""
    from sciplat.cli import _prepare, _validated

    out = err if as_json else console
    spec = _validated(inventory, warnings=False)
    try:
        overrides = json.loads(extra_vars) if extra_vars else {}
        if not isinstance(overrides, dict):
            raise UpgradeError("--extra-vars must be a JSON object")
        versions = apply_overrides(load_versions(), to or [])
        unknown_tiers = set(tiers or []) - set(TIERS)
        if unknown_tiers:
            raise UpgradeError(f"--tier {', '.join(sorted(unknown_tiers))}: use one of {', '.join(TIERS)}")
    except (UpgradeError, json.JSONDecodeError) as exc:
        err.print(f"[red]upgrade:[/] {exc}")
        raise typer.Exit(2) from None

    if show_plan:
        if not (inventory / render_mod.STATE_DIR / "inventory").exists():
            render_mod.write_inventory_source(spec, inventory)
        report = plan(inventory, versions)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            _print_plan(report, show_all=show_all)
        if not report["reachable"]:
            raise typer.Exit(1)
        return

    summary: dict[str, Any] = {"ok": False, "stage": "health gate"}

    def finish(code: int) -> None:
        state = inventory / render_mod.STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        (state / "last-upgrade.json").write_text(json.dumps(summary, indent=2))
        if as_json:
            print(json.dumps(summary, indent=2))
        raise typer.Exit(code)

    _, password = _prepare(inventory, spec)
    before = status_mod.collect(inventory, spec.public_url, spec.platform.name)
    summary["health_before"] = before["healthy"]
    if not before["healthy"]:
        problems = _unhealthy(before)
        summary["unhealthy_before"] = problems
        if not force:
            out.print("[red]upgrade refused[/]: the platform is not healthy (`sciplat status`):")
            for line in problems:
                out.print(f"  {line}")
            out.print("Fix these first, or give --force to upgrade anyway.")
            finish(1)
        out.print(f"[yellow]--force: upgrading an unhealthy platform[/] ({len(problems)} problem(s))")

    summary["stage"] = "backup"
    if skip_backup:
        out.print("[yellow]--skip-backup: upgrading WITHOUT a backup[/]")
    else:
        out.print("backup before the upgrade …")
        try:
            run_backup(inventory)
        except UpgradeError as exc:
            out.print(f"[red]upgrade stopped before it began:[/] {exc}")
            summary["error"] = str(exc)
            finish(1)
        out.print("[green]backup done[/]")

    summary["stage"] = "rolling upgrade"
    variables = {
        **overrides,
        "sciplat_versions": versions,
        "upgrade_serial": serial,
        "upgrade_drain_timeout": drain_timeout,
        "upgrade_backup_done": not skip_backup,
        "upgrade_skip_backup": skip_backup,
        "upgrade_tiers": list(tiers or TIERS),
    }
    result = runner_mod.run_with_vault(
        inventory, password, "upgrade.yml", label="upgrade", console=out, quiet=as_json, extra_vars=variables
    )
    summary["run"] = result.as_dict()
    nodes = compute_nodes(inventory)
    summary["nodes"] = nodes
    summary["drained_nodes"] = sorted(n for n, s in nodes.items() if "drain" in s.lower())
    after = status_mod.collect(inventory, spec.public_url, spec.platform.name)
    summary["health_after"] = after["healthy"]
    if not after["healthy"]:
        summary["unhealthy_after"] = _unhealthy(after)
    summary["ok"] = result.ok and after["healthy"]
    summary["stage"] = "done" if result.ok else "stopped"
    if not as_json:
        runner_mod.print_summary(result, console, check=False)
        if nodes:
            console.print("compute nodes: " + ", ".join(f"{n} {s}" for n, s in sorted(nodes.items())))
        if summary["drained_nodes"]:
            console.print(f"[yellow]still drained[/]: {', '.join(summary['drained_nodes'])}")
        if result.ok:
            console.print("[green]upgrade finished[/]" if after["healthy"] else "[red]upgrade finished, unhealthy:[/]")
        else:
            console.print("[red]upgrade STOPPED[/]: see the failure above; docs/upgrade.md says how to continue")
        for line in summary.get("unhealthy_after", []):
            console.print(f"  {line}")
    finish(0 if summary["ok"] else 1)
