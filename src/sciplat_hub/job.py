"""`sciplat-job`: run a Jupyter notebook as a Slurm batch job (papermill under sbatch).

    sciplat-job run analysis.ipynb -p year=2024 -p band=r --cpus 2 --mem 4G [--partition batch] [--time 1:00:00]
    sciplat-job status JOBID [--json]
    sciplat-job logs JOBID
    sciplat-job cancel JOBID
    sciplat-job list [--json]

The executed notebook lands next to the input as `<name>-<jobid>.ipynb` with its
log `<name>-<jobid>.log` (on the shared home both are visible from the hub and
every node). Parameters go into the notebook's cell tagged `parameters`, as
papermill does; values are read as JSON when they parse (numbers, true/false,
lists), else as text. A failing notebook is reported with the failing cell; a
job that waits because a limit or the group's awarded allocation is used up is
explained in words.

What a job needs to find its files again is kept in its Slurm comment
(AccountingStoreFlags=job_comment), so `status`, `logs` and `list` work from any
host where the user can read the files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKER = "sciplat-job"
PYTHON = Path(sys.executable)
_SIZE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)

# Why a job waits, in words (squeue's reason codes).
REASONS: dict[str, str] = {
    "Priority": "waiting for its turn: jobs with a higher priority (fair share) are ahead of it.",
    "Resources": "waiting for free CPUs or memory on a compute node.",
    "AssocGrpCpuLimit": "waiting: your jobs already use all the CPUs your account may use at once (GrpTRES cpu); "
    "it starts when one of them ends.",
    "AssocGrpMemLimit": "waiting: your jobs already use all the memory your account may use at once (GrpTRES mem); "
    "it starts when one of them ends.",
    "AssocMaxJobsLimit": "waiting: you already run as many jobs as you may at once (MaxJobs).",
    "AssocGrpJobsLimit": "waiting: your group already runs as many jobs as it may at once.",
    "AssocMaxWallDurationPerJobLimit": "cannot start: its time limit is longer than you may ask for (MaxWall); "
    "cancel it and ask for less with --time.",
    "PartitionTimeLimit": "cannot start: its time limit is longer than the partition allows; cancel it and ask "
    "for less with --time, or choose another partition.",
    "ReqNodeNotAvail": "waiting: the nodes it needs are drained or down (maintenance).",
    "PartitionDown": "waiting: the partition is down (maintenance).",
    "BeginTime": "waiting for its start time.",
    "Dependency": "waiting for the jobs it depends on.",
    "JobHeldUser": "held by you: release it with `scontrol release JOBID`.",
    "JobHeldAdmin": "held by an administrator.",
    "QOSMaxWallDurationPerJobLimit": "cannot start: its time limit is longer than its QOS allows.",
    "InvalidAccount": "cannot start: you have no Slurm account (sign in to the hub once, or ask an administrator).",
}

ALLOCATION_REASONS = (
    "AssocGrpCPUMinutesLimit",
    "AssocGrpCpuMinutesLimit",
    "AssocGrpCPURunMinutesLimit",
    "AssocGrpCpuRunMinutesLimit",
    "AssocGrpBillingMinutes",
    "AssocGrpBillingRunMinutes",
)


class JobError(Exception):
    """Something the user can fix; the message says what."""


def _run(command: Sequence[str], *, check: bool = True) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise JobError(f"{command[0]} is not available here ({exc.strerror}); run sciplat-job on the hub") from None
    if check and done.returncode != 0:
        raise JobError((done.stderr or done.stdout).strip() or f"{command[0]} exited {done.returncode}")
    return done.stdout


# ------------------------------------------------------------------ parameters and paths


def parse_parameter(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise JobError(f"-p {text!r}: write a parameter as name=value, e.g. -p year=2024")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def paths_for(notebook: Path, job_id: str) -> dict[str, str]:
    stem = notebook.with_suffix("")
    return {
        "input": str(notebook),
        "output": f"{stem}-{job_id}.ipynb",
        "log": f"{stem}-{job_id}.log",
        "status": str(notebook.parent / f".{notebook.stem}-{job_id}.sciplat-job.json"),
    }


def explain(reason: str, *, allocation: dict[str, Any] | None = None) -> str:
    """squeue's reason code -> a sentence (the code stays in brackets)."""
    if reason in ALLOCATION_REASONS or ("Minutes" in reason and reason.startswith("AssocGrp")):
        text = "cannot start: your group's awarded compute allocation is used up"
        if allocation:
            text += (
                f" (account {allocation['account']}: {allocation['used']:.1f} of "
                f"{allocation['awarded']:.1f} core-hours used, {allocation['remaining']:.1f} left"
            )
            if allocation.get("needed") is not None:
                text += f"; this job may need up to {allocation['needed']:.1f}"
            text += ")"
        text += (
            ". It waits until the allocation is raised: ask your platform's allocation committee or an "
            "administrator (`sciplat allocations set`), or cancel it with `sciplat-job cancel`. A job may "
            "also start if it asks for less time or fewer CPUs (--time, --cpus)."
        )
        return f"{text} [{reason}]"
    if reason in REASONS:
        return f"{REASONS[reason]} [{reason}]"
    return reason if reason and reason != "None" else ""


def allocation_of(account: str) -> dict[str, Any] | None:
    try:
        text = _run(
            [
                "sshare",
                "--noheader",
                "--parsable2",
                "--accounts",
                account,
                "--format=Account,User,GrpTRESMins,GrpTRESRaw",
            ]
        )
    except JobError:
        return None
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 4 and parts[0].strip() == account and not parts[1].strip():
            limit = _tres(parts[2]).get("cpu")
            if limit is None:
                return None
            used = _tres(parts[3]).get("cpu", 0.0) / 60
            return {"account": account, "awarded": limit / 60, "used": used, "remaining": max(0.0, limit / 60 - used)}
    return None


def _tres(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------ Slurm queries


def job_info(job_id: str) -> dict[str, Any]:
    """State, reason, node, account, comment (the paths) of one job, from squeue or sacct."""
    if not job_id.isdigit():
        raise JobError(f"{job_id!r} is not a job id (a number, as `sciplat-job list` shows)")
    info: dict[str, Any] = {"job_id": job_id}
    queue = _run(["squeue", "--noheader", "--jobs", job_id, "--format=%T|%r|%N|%a|%l|%C|%k"], check=False)
    line = queue.strip().splitlines()[0] if queue.strip() else ""
    if line:
        state, reason, nodes, account, limit, cpus, comment = (line.split("|") + [""] * 7)[:7]
        info.update(
            state=state, reason=reason, node=nodes, account=account, time_limit=limit, cpus=cpus, comment=comment
        )
    acct = _run(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--jobs",
            job_id,
            "--format=State,ExitCode,NodeList,Account,Start,End,Elapsed,Comment,JobName,Reason",
        ],
        check=False,
    )
    rows = [r.split("|") for r in acct.strip().splitlines() if r.strip()]
    if rows:
        state, exit_code, nodes, account, start, end, elapsed, comment, name, reason = (rows[0] + [""] * 10)[:10]
        info.setdefault("state", state.split()[0] if state else "UNKNOWN")
        if "state" in info and not line:
            info["state"] = state.split()[0] if state else "UNKNOWN"
        info.setdefault("reason", reason)
        info.setdefault("account", account)
        if nodes and nodes != "None assigned":
            info["node"] = nodes
        info.setdefault("comment", comment)
        info.update(exit_code=exit_code, start=start, end=end, elapsed=elapsed, name=name)
    if "state" not in info:
        raise JobError(f"no job {job_id} is known to Slurm (it may be older than the accounting keeps)")
    try:
        meta = json.loads(info.get("comment") or "{}")
    except json.JSONDecodeError:
        meta = {}
    files = meta.get("files", {}) if isinstance(meta, dict) and meta.get(MARKER) else {}
    info["files"] = {key: str(value).replace("{jobid}", job_id) for key, value in files.items()}
    return info


def describe(info: dict[str, Any]) -> dict[str, Any]:
    """A job's info plus what a person needs to read: sentence, failing cell, files."""
    state = str(info.get("state", "UNKNOWN")).upper()
    out = dict(info)
    message = ""
    if state == "PENDING":
        reason = str(info.get("reason", ""))
        allocation = None
        if "Minutes" in reason and info.get("account"):
            allocation = allocation_of(str(info["account"]))
            if allocation and info.get("cpus") and info.get("time_limit"):
                minutes = _limit_minutes(str(info["time_limit"]))
                if minutes is not None:
                    allocation["needed"] = int(info["cpus"]) * minutes / 60
        message = explain(reason, allocation=allocation) or "waiting in the queue."
    elif state == "RUNNING":
        message = f"running on {info.get('node', '?')} for {info.get('elapsed', '?')}."
    elif state == "COMPLETED":
        message = f"finished on {info.get('node', '?')}; the executed notebook is {info['files'].get('output', '?')}"
    elif state in ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "NODE_FAIL"):
        message = {
            "FAILED": "failed",
            "OUT_OF_MEMORY": "was killed: it used more memory than it asked for (ask for more with --mem)",
            "TIMEOUT": "was stopped at its time limit (ask for more with --time)",
            "CANCELLED": "was cancelled",
            "NODE_FAIL": "was lost with its node",
        }[state]
        message += f" on {info.get('node', '?')}."
    status_file = info["files"].get("status")
    if status_file and os.path.exists(status_file):
        try:
            status = json.loads(Path(status_file).read_text())
        except (OSError, json.JSONDecodeError):
            status = {}
        out["notebook"] = status
        if status.get("error"):
            error = status["error"]
            message = (
                f"the notebook failed in cell {error['cell']} (execution count {error.get('execution_count')}): "
                f"{error['ename']}: {error['evalue']}. The executed notebook with the error is "
                f"{info['files'].get('output')}"
            )
    elif status_file and state in ("COMPLETED", "FAILED"):
        message += f" (its files are on {info.get('node', 'the compute node')}; homes are not shared here)"
    out["message"] = message
    return out


def _limit_minutes(text: str) -> float | None:
    match = re.match(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(x) if x else 0 for x in match.groups())
    return days * 1440 + hours * 60 + minutes + seconds / 60


# ------------------------------------------------------------------ commands


def submit(args: argparse.Namespace) -> dict[str, Any]:
    notebook = Path(args.notebook).expanduser().resolve()
    if notebook.suffix != ".ipynb" or not notebook.is_file():
        raise JobError(f"{args.notebook}: no such notebook (a .ipynb file readable here)")
    if not os.access(notebook.parent, os.W_OK):
        raise JobError(f"{notebook.parent} is not writable: the executed notebook is written next to the input")
    if args.mem and not _SIZE.match(args.mem):
        raise JobError(f"--mem {args.mem!r}: write memory as e.g. 4G or 500M")
    parameters = dict(parse_parameter(p) for p in args.parameter or [])
    files = paths_for(notebook, "%j")
    comment = json.dumps({MARKER: 1, "files": {k: v.replace("%j", "{jobid}") for k, v in files.items()}})
    inner = [
        str(PYTHON),
        "-m",
        "sciplat_hub.job",
        "_execute",
        str(notebook),
        "--parameters",
        json.dumps(parameters),
    ]
    script = f"#!/bin/sh\nexec {shlex.join(inner)}\n"
    command = [
        "sbatch",
        "--parsable",
        f"--job-name=nb:{notebook.stem}"[:64],
        f"--output={files['log']}",
        f"--chdir={notebook.parent}",
        f"--cpus-per-task={args.cpus}",
        f"--time={args.time}",
        f"--comment={comment}",
    ]
    if args.mem:
        command.append(f"--mem={args.mem}")
    if args.partition:
        command.append(f"--partition={args.partition}")
    if args.account:
        command.append(f"--account={args.account}")
    try:
        done = subprocess.run(command, input=script, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise JobError(f"sbatch is not available here ({exc.strerror}); run sciplat-job on the hub") from None
    if done.returncode != 0:
        raise JobError(f"Slurm refused the job: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    result: dict[str, Any] = {"job_id": job_id, "files": paths_for(notebook, job_id), "parameters": parameters}
    # A job that cannot start is explained at once, not left to be discovered.
    deadline = time.monotonic() + args.wait
    info: dict[str, Any] = {}
    while True:
        info = describe(job_info(job_id))
        if info.get("state") != "PENDING" or info.get("reason") not in ("None", "", "Priority", "Resources"):
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    result.update(state=info.get("state"), reason=info.get("reason", ""), message=info.get("message", ""))
    return result


def execute(notebook: str, parameters: str) -> int:
    """Inside the job: papermill, then a status file that says how it went."""
    job_id = os.environ.get("SLURM_JOB_ID", "local")
    files = paths_for(Path(notebook), job_id)
    status: dict[str, Any] = {
        "job_id": job_id,
        "input": notebook,
        "output": files["output"],
        "host": os.uname().nodename,
    }
    started = time.time()
    try:
        import papermill
        from papermill.exceptions import PapermillExecutionError
    except ImportError:
        print("sciplat-job: papermill is not installed on this node (platform_code role)", file=sys.stderr)
        return 2
    code = 0
    try:
        papermill.execute_notebook(
            notebook,
            files["output"],
            parameters=json.loads(parameters),
            kernel_name="python3",
            log_output=True,
            cwd=str(Path(notebook).parent),
            progress_bar=False,
        )
        status["result"] = "completed"
    except PapermillExecutionError as exc:
        status["result"] = "failed"
        status["error"] = {
            "cell": exc.cell_index + 1,
            "execution_count": exc.exec_count,
            "ename": exc.ename,
            "evalue": exc.evalue,
        }
        print(
            f"sciplat-job: the notebook failed in cell {exc.cell_index + 1} "
            f"(execution count {exc.exec_count}): {exc.ename}: {exc.evalue}",
            file=sys.stderr,
        )
        code = 1
    except Exception as exc:  # papermill's own errors: missing kernel, unreadable notebook...
        status["result"] = "failed"
        status["error"] = {"cell": None, "execution_count": None, "ename": type(exc).__name__, "evalue": str(exc)}
        print(f"sciplat-job: the notebook could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    status["seconds"] = round(time.time() - started, 3)
    Path(files["status"]).write_text(json.dumps(status, indent=2) + "\n")
    return code


def list_jobs() -> list[dict[str, Any]]:
    text = _run(
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--starttime=now-14days",
            "--format=JobID,JobName,State,Submit,Elapsed,NodeList,Comment",
        ]
    )
    jobs = []
    for line in text.splitlines():
        parts = (line.split("|") + [""] * 7)[:7]
        job_id, name, state, submitted, elapsed, nodes, comment = parts
        if MARKER not in comment:
            continue
        try:
            files = json.loads(comment).get("files", {})
        except json.JSONDecodeError:
            files = {}
        jobs.append(
            {
                "job_id": job_id,
                "notebook": files.get("input", name),
                "state": state.split()[0] if state else "",
                "submitted": submitted,
                "elapsed": elapsed,
                "node": nodes,
            }
        )
    return jobs


def _files(info: dict[str, Any]) -> dict[str, str]:
    return {k: str(v).replace("{jobid}", info["job_id"]) for k, v in info.get("files", {}).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-job", description="Run notebooks as Slurm batch jobs (papermill).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="submit a notebook")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE", help="a notebook parameter")
    run.add_argument("--cpus", type=int, default=1)
    run.add_argument("--mem", default="", help="memory, e.g. 4G (default: the partition's per-CPU default)")
    run.add_argument("--partition", default="")
    run.add_argument("--account", default="", help="Slurm account (group) to charge; default: your default one")
    run.add_argument("--time", default="1:00:00", help="time limit, e.g. 30:00 or 1-00:00:00")
    run.add_argument("--wait", type=float, default=5.0, help="seconds to watch whether it can start")
    run.add_argument("--json", action="store_true")
    for name in ("status", "logs", "cancel"):
        cmd = sub.add_parser(name)
        cmd.add_argument("job_id")
        if name == "status":
            cmd.add_argument("--json", action="store_true")
    listing = sub.add_parser("list", help="your notebook jobs of the last 14 days")
    listing.add_argument("--json", action="store_true")
    execute_cmd = sub.add_parser("_execute", help=argparse.SUPPRESS)
    execute_cmd.add_argument("notebook")
    execute_cmd.add_argument("--parameters", default="{}")
    args = parser.parse_args(argv)
    try:
        if args.command == "_execute":
            return execute(args.notebook, args.parameters)
        if args.command == "run":
            result = submit(args)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(f"job {result['job_id']}: {result['files']['input']}")
                print(f"  executed notebook: {result['files']['output']}")
                print(f"  log:               {result['files']['log']}")
                print(f"  {str(result['state']).lower()}: {result['message']}")
            return 0
        if args.command == "status":
            info = describe(job_info(args.job_id))
            info["files"] = _files(info)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                print(f"job {info['job_id']} {info.get('state')}: {info['message']}")
            state = str(info.get("state"))
            return 1 if state in ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL") else 0
        if args.command == "logs":
            info = job_info(args.job_id)
            log = _files(info).get("log")
            if not log:
                raise JobError(f"job {args.job_id} was not submitted with sciplat-job; its log is where sbatch put it")
            try:
                sys.stdout.write(Path(log).read_text())
            except FileNotFoundError:
                raise JobError(
                    f"{log} is not here (yet): the job is {info.get('state')} on {info.get('node') or 'no node yet'}"
                ) from None
            return 0
        if args.command == "cancel":
            job_info(args.job_id)
            _run(["scancel", args.job_id])
            print(f"job {args.job_id} cancelled")
            return 0
        if args.command == "list":
            jobs = list_jobs()
            if args.json:
                print(json.dumps(jobs, indent=2))
            else:
                print(f"{'job':>8}  {'state':<12} {'elapsed':>10}  {'node':<8} notebook")
                for job in jobs:
                    row = f"{job['job_id']:>8}  {job['state']:<12} {job['elapsed']:>10}  {job['node']:<8}"
                    print(f"{row} {job['notebook']}")
            return 0
    except JobError as exc:
        print(f"sciplat-job: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
