"""Run ansible-playbook with live progress, a full log and a summary.

ansible-playbook's own output goes to `<inventory>/logs/<time>-<playbook>.log`; the
sciplat_events callback writes JSON lines that this module follows to draw
progress (play, task, per-host counts) and to build the summary.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sciplat.render import STATE_DIR

STATUS_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "red",
    "unreachable": "red",
    "skipped": "dim",
}


@dataclass
class HostProgress:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0
    last_task: str = ""


@dataclass
class RunResult:
    returncode: int
    log_path: Path
    duration: float
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    diffs: list[dict[str, Any]] = field(default_factory=list)
    changed_tasks: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def total_changed(self) -> int:
        return sum(s.get("changed", 0) for s in self.stats.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "returncode": self.returncode,
            "duration_seconds": round(self.duration, 1),
            "log": str(self.log_path),
            "hosts": self.stats,
            "changed_tasks": self.changed_tasks,
            "failures": self.failures,
        }


@contextmanager
def vault_password_file(password: str) -> Iterator[Path]:
    """A 0600 file holding the vault password for the length of one run."""
    with tempfile.TemporaryDirectory(prefix="sciplat-") as tmp:
        path = Path(tmp) / "vault-pass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        yield path


def build_command(
    repo: Path,
    inventory_dir: Path,
    playbook: str,
    *,
    vault_file: Path | None,
    vault_password_path: Path | None,
    check: bool = False,
    tags: Sequence[str] = (),
    limit: str | None = None,
    extra_vars: dict[str, Any] | None = None,
) -> list[str]:
    command = [
        "ansible-playbook",
        "-i",
        str(inventory_dir / "hosts.yml"),
        "-i",
        str(inventory_dir / STATE_DIR / "inventory"),
        str(repo / "playbooks" / playbook),
    ]
    if vault_file is not None and vault_file.exists():
        command += ["-e", f"@{vault_file}"]
    if vault_password_path is not None:
        command += ["--vault-password-file", str(vault_password_path)]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    if check:
        command += ["--check", "--diff"]
    if tags:
        command += ["--tags", ",".join(tags)]
    if limit:
        command += ["--limit", limit]
    return command


def _ansible_env(repo: Path, events: Path, inventory_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": str(repo / "ansible.cfg"),
            "ANSIBLE_CALLBACKS_ENABLED": "sciplat_events",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "SCIPLAT_EVENTS": str(events),
            # facts are cached per inventory: two inventories may both have a host "gw"
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(inventory_dir / STATE_DIR / "facts"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    strategy = os.environ.get("SCIPLAT_ANSIBLE_STRATEGY", "mitogen_linear")
    if strategy.startswith("mitogen"):
        import ansible_mitogen

        env["ANSIBLE_STRATEGY_PLUGINS"] = str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")
    env["ANSIBLE_STRATEGY"] = strategy
    # the venv's ansible-playbook, even when sciplat is called by its full path
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def run_playbook(
    command: list[str],
    *,
    repo: Path,
    inventory_dir: Path,
    label: str,
    console: Console,
    quiet: bool = False,
) -> RunResult:
    logs = inventory_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    log_path = logs / f"{stamp}-{label}.log"
    events_path = logs / f".{stamp}-{label}.events"
    started = time.monotonic()
    hosts: dict[str, HostProgress] = {}
    result = RunResult(returncode=-1, log_path=log_path, duration=0.0)
    state = {"play": "", "task": ""}
    plain_progress = not quiet and not console.is_terminal

    def view() -> Group:
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in ("host", "ok", "changed", "failed", "last task"):
            table.add_column(column)
        for name in sorted(hosts):
            h = hosts[name]
            table.add_row(
                name,
                str(h.ok),
                Text(str(h.changed), style="yellow" if h.changed else ""),
                Text(str(h.failed + h.unreachable), style="red" if h.failed + h.unreachable else ""),
                h.last_task[:70],
            )
        elapsed = time.monotonic() - started
        head = Text(f"[{elapsed:5.0f}s] {state['play']} › {state['task']}"[:120], style="bold cyan")
        return Group(head, table)

    def consume(line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return
        kind = event.get("event")
        if kind == "play":
            state["play"], state["task"] = event["name"], ""
            if plain_progress:  # no terminal (CI, a pipe): one line per play
                console.print(f"[{time.monotonic() - started:5.0f}s] play: {event['name']}")
        elif kind == "task":
            state["task"] = event["name"]
        elif kind == "result":
            h = hosts.setdefault(event["host"], HostProgress())
            status = event["status"]
            setattr(h, status, getattr(h, status) + 1)
            h.last_task = event["task"]
            if status == "changed":
                result.changed_tasks.append({"host": event["host"], "task": event["task"]})
            if status in ("failed", "unreachable") and not event.get("ignored"):
                failure = {"host": event["host"], "task": event["task"], "play": state["play"]}
                failure["status"] = status
                failure["msg"] = event.get("msg", "")
                result.failures.append(failure)
        elif kind == "diff":
            result.diffs.append(event)
        elif kind == "stats":
            result.stats = event["hosts"]

    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n\n")
        log.flush()
        events_path.touch()
        with open(events_path, encoding="utf-8") as events:
            process = subprocess.Popen(
                command,
                cwd=repo,
                env=_ansible_env(repo, events_path, inventory_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            live = Live(view(), console=console, refresh_per_second=4, transient=True)
            if not quiet and console.is_terminal:
                live.start()
            try:
                while True:
                    line = events.readline()
                    if line:
                        consume(line)
                        continue
                    if process.poll() is not None:
                        for rest in events:
                            consume(rest)
                        break
                    if live.is_started:
                        live.update(view())
                    time.sleep(0.1)
            finally:
                if live.is_started:
                    live.stop()
    events_path.unlink(missing_ok=True)
    result.returncode = process.returncode
    result.duration = time.monotonic() - started
    return result


def run_with_vault(
    inventory: Path,
    password: str,
    playbook: str,
    *,
    label: str,
    console: Console,
    quiet: bool = False,
    check: bool = False,
    tags: Sequence[str] = (),
    limit: str | None = None,
    extra_vars: dict[str, Any] | None = None,
) -> RunResult:
    """Run one of the repository's playbooks on an inventory, with its vault open for
    the length of the run (sciplat up, backup, restore, upgrade)."""
    from sciplat.paths import repo_root
    from sciplat.secrets import VAULT_FILE

    repo = repo_root()
    with vault_password_file(password) as pass_file:
        command = build_command(
            repo,
            inventory.resolve(),
            playbook,
            vault_file=(inventory / VAULT_FILE).resolve(),
            vault_password_path=pass_file,
            check=check,
            tags=tags,
            limit=limit,
            extra_vars=extra_vars,
        )
        return run_playbook(
            command, repo=repo, inventory_dir=inventory.resolve(), label=label, console=console, quiet=quiet
        )


def print_summary(result: RunResult, console: Console, *, check: bool) -> None:
    if check and result.diffs:
        console.rule("changes check mode would make")
        for item in result.diffs:
            console.print(f"[bold]{item['host']}[/] › {item['task']}")
            console.print(Text(item["diff"].rstrip()))
    table = Table(title="recap", title_justify="left", box=None)
    for column in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
        table.add_column(column, justify="right" if column != "host" else "left")
    for host, s in sorted(result.stats.items()):
        table.add_row(
            host,
            str(s.get("ok", 0)),
            Text(str(s.get("changed", 0)), style="yellow" if s.get("changed") else ""),
            Text(str(s.get("failures", 0)), style="red" if s.get("failures") else ""),
            Text(str(s.get("unreachable", 0)), style="red" if s.get("unreachable") else ""),
            str(s.get("skipped", 0)),
        )
    console.print(table)
    for failure in result.failures:
        console.print(
            f"[red bold]FAILED[/] {failure['host']} › {failure['task']} ({failure['play']})\n  {failure['msg'].strip()}"
        )
    verb = "would change" if check else "changed"
    outcome = "[green]ok[/]" if result.ok else f"[red]failed (exit {result.returncode})[/]"
    console.print(f"{outcome} in {result.duration:.0f}s; {result.total_changed} tasks {verb}; log: {result.log_path}")
    if not result.ok and not result.failures:
        console.print(f"  ansible-playbook stopped before running tasks; read the end of {result.log_path}")
