"""Measure a month's use per platform group on the platform's own hosts.

``sciplat cost collect`` runs three read-only commands through Ansible (ad hoc, the
same inventory as ``sciplat up``) and writes the usage file ``sciplat cost report``
reads:

- Slurm core-hours per account: ``sreport`` on the ``slurm_controller`` host;
- MyDB size per group database (``g_<group>``): ``pg_database_size`` on the ``db`` host;
- bytes in each group directory under ``/groups`` on the first ``hub`` host (CephFS's
  recursive ``ceph.dir.rbytes`` when present, else a walk of the tree).

Bytes are a snapshot at collection time: run it at the end of the month (or average
several snapshots) for a month's storage figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from sciplat.cloud.cost import CostError, Usage, month_bounds, parse_database_sizes, parse_sreport

#: (host pattern, module, module args, become user or None) -> stdout per host
Runner = Callable[[str, str, str, str | None], dict[str, str]]

GROUP_BYTES_SCRIPT = """\
import json, os, sys
root = sys.argv[1] if len(sys.argv) > 1 else '/groups'
out = {}
for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    path = os.path.join(root, name)
    if not os.path.isdir(path) or os.path.islink(path):
        continue
    try:
        out[name] = int(os.getxattr(path, 'ceph.dir.rbytes'))
        continue
    except OSError:
        pass
    total = 0
    for top, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(top, f)).st_size
            except OSError:
                pass
    out[name] = total
print(json.dumps(out))
"""
DB_SIZES_SQL = "select datname, pg_database_size(datname) from pg_database where not datistemplate"


def sreport_args(month: str) -> str:
    start, end = month_bounds(month)
    return f"sreport -nP -t Hours cluster AccountUtilizationByUser start={start} end={end} format=Account,Login,Used"


def ansible_runner(inventory_dir: Path, repo: Path) -> Runner:
    """Run one ad hoc module on a host pattern; return each host's stdout (raise CostError on failure)."""

    def run(pattern: str, module: str, args: str, become_user: str | None) -> dict[str, str]:
        command = [
            str(Path(sys.executable).parent / "ansible"),
            pattern,
            "-i",
            str(inventory_dir / "hosts.yml"),
            "-i",
            str(inventory_dir / ".sciplat" / "inventory"),
            "-m",
            module,
            "-a",
            args,
        ]
        if become_user:
            command += ["--become", "--become-user", become_user]
        env = dict(os.environ)
        env.update(
            {
                "ANSIBLE_CONFIG": str(repo / "ansible.cfg"),
                "ANSIBLE_STDOUT_CALLBACK": "json",
                "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(inventory_dir / ".sciplat" / "facts"),
            }
        )
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, check=False)
        try:
            report = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            raise CostError(f"`ansible {pattern} -m {module}` failed: {done.stderr.strip() or done.stdout}") from None
        out: dict[str, str] = {}
        for play in report.get("plays", []):
            for task in play.get("tasks", []):
                for host, result in task.get("hosts", {}).items():
                    if result.get("failed") or result.get("unreachable") or result.get("rc", 0) != 0:
                        why = result.get("stderr") or result.get("msg") or "failed"
                        raise CostError(f"{host}: {module} {args.split()[0]!r} failed: {why}")
                    out[host] = str(result.get("stdout", ""))
        if not out:
            raise CostError(f"no host matched {pattern!r} in {inventory_dir / 'hosts.yml'}")
        return out

    return run


def _first(results: dict[str, str]) -> str:
    return results[sorted(results)[0]]


def collect(month: str, runner: Runner, *, groups_root: str = "/groups", db_become: str | None = "postgres") -> Usage:
    """The month's use per group, measured on the hosts."""
    core_hours = parse_sreport(
        _first(runner("slurm_controller[0]", "ansible.builtin.command", sreport_args(month), None))
    )
    psql = f"psql -XAtF| -c '{DB_SIZES_SQL}'"
    mydb = parse_database_sizes(_first(runner("db[0]", "ansible.builtin.command", psql, db_become)))
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(GROUP_BYTES_SCRIPT)
    try:
        raw = _first(
            runner("hub[0]", "ansible.builtin.script", f"{script.name} {groups_root} executable=python3", None)
        )
    finally:
        os.unlink(script.name)
    try:
        stored = {str(k): int(v) for k, v in json.loads(raw.strip().splitlines()[-1]).items()}
    except (ValueError, IndexError, AttributeError):
        raise CostError(f"cannot read the group directories' sizes from: {raw[:200]!r}") from None
    return Usage(month=month, core_hours=core_hours, stored_bytes=stored, mydb_bytes=mydb)


def write_usage(usage: Usage, path: Path) -> None:
    text = (
        f"# Measured by `sciplat cost collect` for {usage.month}: Slurm core-hours (sreport), MyDB bytes\n"
        "# (pg_database_size of g_<group>), bytes in /groups/<group> at collection time.\n"
    )
    text += yaml.safe_dump(usage.model_dump(exclude_defaults=False), sort_keys=False, default_flow_style=False)
    path.write_text(text)
