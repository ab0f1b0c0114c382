"""`sciplat drain NODE --reason TEXT` and `sciplat resume NODE`: compute nodes in and out of service.

Draining stops new jobs from starting on the node; the jobs already running
finish. `drain` waits for them (up to --timeout) or, with --no-wait, reports
them. Both are safe to repeat: draining a drained node only updates its
reason; resuming a node in service changes nothing. Used by rolling upgrades.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sciplat.commands.slurm_remote import Controller, RemoteError, controller

console = Console()
err = Console(stderr=True)

InventoryOpt = Annotated[
    Path,
    typer.Option("-i", "--inventory", help="Inventory directory holding hosts.yml and platform.yaml."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _state(ctl: Controller, node: str) -> dict[str, Any]:
    """The node's state flags, reason and running jobs, in one SSH round trip."""
    script = (
        "set -e; "
        f"sinfo --noheader --Node --nodes={node} --format='%T|%E' | head -n1; echo '--'; "
        f"squeue --noheader --nodelist={node} --states=RUNNING,COMPLETING --format='%i|%u|%j|%M'"
    )
    done = ctl.run(["sh", "-c", script])
    if done.returncode != 0 or "--" not in done.stdout:
        raise RemoteError(f"could not read node {node!r} from Slurm: {(done.stderr or done.stdout).strip()}")
    head, _, jobs_text = done.stdout.partition("--")
    line = head.strip()
    if not line:
        raise RemoteError(f"Slurm has no node {node!r}; `sciplat status` lists the compute nodes")
    state, _, reason = line.partition("|")
    jobs = []
    for row in jobs_text.strip().splitlines():
        parts = [*row.split("|"), "", "", "", ""][:4]
        jobs.append({"job_id": parts[0], "user": parts[1], "name": parts[2], "elapsed": parts[3]})
    return {"node": node, "state": state.strip(), "reason": reason.strip(), "running_jobs": jobs}


def _not_answering(state: str) -> bool:
    return "down" in state.lower() or state.endswith("*")


def _scontrol(ctl: Controller, *args: str) -> None:
    done = ctl.run(["scontrol", "update", *args])
    if done.returncode != 0:
        raise RemoteError((done.stderr or done.stdout).strip())


def _fail(message: str) -> None:
    err.print(f"[red]{message}[/]")
    raise typer.Exit(1)


def drain(
    node: Annotated[str, typer.Argument(help="Compute node (Slurm node name, e.g. c1).")],
    inventory: InventoryOpt,
    reason: Annotated[str, typer.Option("--reason", help="Why (shown by sinfo and sciplat status).")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the running jobs to finish.")] = True,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds to wait for running jobs.")] = 600,
    as_json: JsonOpt = False,
) -> None:
    """Stop new jobs on NODE; wait for (or report) the jobs still running there."""
    if not reason.strip():
        _fail("--reason must say why the node is drained (e.g. 'kernel upgrade')")
    try:
        ctl = controller(inventory)
        before = _state(ctl, node)
        _scontrol(ctl, f"nodename={node}", "state=DRAIN", f"reason={reason}")
        deadline = time.monotonic() + timeout
        info = _state(ctl, node)
        while wait and info["running_jobs"] and time.monotonic() < deadline:
            if not as_json:
                ids = ", ".join(f"{j['job_id']} ({j['user']})" for j in info["running_jobs"])
                console.print(f"{node}: waiting for {len(info['running_jobs'])} running job(s): {ids}")
            time.sleep(min(10.0, max(1.0, deadline - time.monotonic())))
            info = _state(ctl, node)
    except RemoteError as exc:
        _fail(f"drain: {exc}")
    info["was"] = before["state"]
    info["drained"] = not info["running_jobs"]
    if as_json:
        print(json.dumps(info, indent=2))
    elif info["drained"]:
        again = " (it was already drained; reason updated)" if "drain" in before["state"] else ""
        console.print(f"[green]{node} drained[/]: no jobs running, none will start{again}. Reason: {reason}")
    else:
        console.print(f"[yellow]{node} draining[/]: no new jobs start there, but these still run:")
        for job in info["running_jobs"]:
            console.print(f"  job {job['job_id']} of {job['user']} ({job['name']}), running for {job['elapsed']}")
    if not info["drained"] and wait:
        raise typer.Exit(1)


def resume(
    node: Annotated[str, typer.Argument(help="Compute node (Slurm node name, e.g. c1).")],
    inventory: InventoryOpt,
    as_json: JsonOpt = False,
) -> None:
    """Put NODE back in service (after drain, or after it was DOWN and its slurmd is back)."""
    try:
        ctl = controller(inventory)
        before = _state(ctl, node)
        flags = before["state"].lower()
        if any(word in flags for word in ("drain", "down", "fail")):
            _scontrol(ctl, f"nodename={node}", "state=RESUME")
            changed = True
        else:
            changed = False
        info = _state(ctl, node)
        # after a resume slurmctld pings the node again: "idle*" for a moment is normal
        deadline = time.monotonic() + (20 if changed else 0)
        while _not_answering(info["state"]) and time.monotonic() < deadline:
            time.sleep(1)
            info = _state(ctl, node)
    except RemoteError as exc:
        _fail(f"resume: {exc}")
    info["was"] = before["state"]
    info["changed"] = changed
    if as_json:
        print(json.dumps(info, indent=2))
    elif changed:
        console.print(f"[green]{node} resumed[/]: was {before['state']}, now {info['state']}")
    else:
        console.print(f"{node} is already in service ({info['state']}); nothing to do")
    if _not_answering(info["state"]):
        err.print(
            f"[yellow]{node} is {info['state']}: its slurmd does not answer; start it (systemctl start slurmd)[/]"
        )
        raise typer.Exit(1)
