"""Batch jobs with UWS-like semantics, run by Slurm as the user who asked.

A job submitted through the API is ``runuser -u USER -- sbatch`` with the script
on stdin, in the user's home directory, so Slurm sees the user (their
associations, limits and accounting) and the job runs with their uid. Its
stdout and stderr go to ``~/.sciplat/api-jobs/<jobid>.out`` and ``.err``; the
paths are kept in the job's Slurm comment (``{"sciplat-api": 1, ...}``,
AccountingStoreFlags=job_comment) so the results are found again from any hub
host, and are read back as the user (never as root: the files are the user's).

Phases (IVOA UWS) from Slurm's job states: see `phase_of`. A job of another
user, or one the API did not submit, is "not found" (404) for this user.
"""

from __future__ import annotations

import json
import logging
import pwd
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sciplat_hub.api.jobs")

MARKER = "sciplat-api"
OUTPUT_DIR = ".sciplat/api-jobs"
RESULT_BYTES = 64 * 1024
PHASES = ("PENDING", "QUEUED", "EXECUTING", "COMPLETED", "ERROR", "ABORTED")
ENDED = frozenset({"COMPLETED", "ERROR", "ABORTED"})

_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
_EXECUTING = {
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "STAGE_OUT",
    "SIGNALING",
    "STOPPED",
    "POWER_UP_NODE",
    "UPDATE_DB",
}
_ERROR = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
_HELD_REASONS = ("JobHeldUser", "JobHeldAdmin", "BeginTime")
# sbatch's words when slurmctld is down or busy: not the job's fault
_UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Slurm backup controller in standby mode")


class JobsError(Exception):
    """A refusal with a sentence for the user; ``status`` is the HTTP status (404, 409, 422, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def phase_of(state: str, reason: str = "") -> str:
    """Slurm job state (squeue/sacct) -> UWS phase.

    PENDING: held or waiting for its begin time (accepted, not yet queued to run);
    QUEUED: waiting for resources or its turn; EXECUTING: on a node; COMPLETED:
    exit code 0; ERROR: failed, timed out, out of memory, node lost; ABORTED:
    cancelled (by the user through the API, scancel, or an operator).
    """
    word = (state or "").split()[0].upper().rstrip("+") if state else ""
    if word == "PENDING" and any(reason.startswith(r) for r in _HELD_REASONS):
        return "PENDING"
    if word in _QUEUED:
        return "QUEUED"
    if word in _EXECUTING:
        return "EXECUTING"
    if word == "COMPLETED":
        return "COMPLETED"
    if word == "CANCELLED":
        return "ABORTED"
    if word in _ERROR:
        return "ERROR"
    return "QUEUED" if not word else "ERROR"


def _none(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "Unknown", "None", "N/A", "(null)") else value


def _iso(value: str) -> str | None:
    """Slurm's local time 2026-12-04T21:00:00 -> the same (ISO 8601), or None when unknown."""
    return _none(value)


def _exit_code(value: str) -> int | None:
    """sacct ExitCode "2:0" (code:signal) -> 2; a signal -> 128 + signal."""
    value = value.strip()
    if not value or ":" not in value:
        return None
    code, _, signal = value.partition(":")
    try:
        code_i, signal_i = int(code), int(signal)
    except ValueError:
        return None
    return 128 + signal_i if signal_i else code_i


@dataclass
class JobRequest:
    script: str
    account: str | None = None
    partition: str | None = None
    time_limit: int | None = None  # minutes
    cpus: int | None = None
    mem: str | None = None
    name: str | None = None


Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, errors="replace", timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JobsError(503, f"Slurm cannot be reached from the API right now ({exc}); try again later.") from None


SQUEUE_FORMAT = "%i|%j|%u|%T|%r|%a|%P|%V|%S|%e|%k"
SACCT_FORMAT = "JobID,JobName,User,State,Reason,Account,Partition,Submit,Start,End,ExitCode,Comment"


class Jobs:
    """The API's view of Slurm: submit, look up, list, read results, cancel, all as the user."""

    def __init__(self, runner: Runner | None = None, home_of: Callable[[str], str] | None = None) -> None:
        self._run = runner or _run
        self._home_of = home_of or (lambda user: pwd.getpwnam(user).pw_dir)

    # ------------------------------------------------------------ helpers

    def _as_user(self, user: str, argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self._run(["runuser", "-u", user, "--", *argv], stdin)

    def _home(self, user: str) -> str:
        try:
            return self._home_of(user)
        except KeyError:
            raise JobsError(
                409,
                f"The account {user} does not exist on the hub host yet; sign in to the hub once so that "
                "it is made, then submit again.",
            ) from None

    @staticmethod
    def _meta(comment: str) -> dict[str, Any]:
        try:
            meta = json.loads(comment or "{}")
        except ValueError:
            return {}
        return meta if isinstance(meta, dict) and meta.get(MARKER) else {}

    def _rows(self, argv: Sequence[str]) -> list[list[str]]:
        done = self._run(argv, None)
        if done.returncode != 0:
            if "Invalid job id" not in done.stderr:  # squeue's answer for a job it no longer holds
                log.warning("%s failed: %s", argv[0], done.stderr.strip())
            return []
        return [line.split("|") for line in done.stdout.splitlines() if line.strip()]

    @staticmethod
    def _from_squeue(row: list[str]) -> dict[str, Any]:
        job_id, name, user, state, reason, account, partition, submit, start, _end, comment = (row + [""] * 11)[:11]
        return {
            "id": job_id.strip(),
            "name": name,
            "user": user,
            "state": state,
            "reason": reason if reason != "None" else "",
            "account": _none(account),
            "partition": _none(partition),
            "submitted": _iso(submit),
            "started": _iso(start) if state not in ("PENDING",) else None,
            "ended": None,
            "exit_code": None,
            "comment": comment,
        }

    @staticmethod
    def _from_sacct(row: list[str]) -> dict[str, Any]:
        job_id, name, user, state, reason, account, partition, submit, start, end, exit_code, comment = (
            row + [""] * 12
        )[:12]
        return {
            "id": job_id.strip(),
            "name": name,
            "user": user,
            "state": state.split()[0] if state else "",
            "reason": reason if reason != "None" else "",
            "account": _none(account),
            "partition": _none(partition),
            "submitted": _iso(submit),
            "started": _iso(start),
            "ended": _iso(end),
            "exit_code": _exit_code(exit_code) if state and state.split()[0] not in _QUEUED | _EXECUTING else None,
            "comment": comment,
        }

    @staticmethod
    def _public(raw: dict[str, Any]) -> dict[str, Any]:
        phase = phase_of(raw["state"], raw.get("reason", ""))
        return {
            "id": raw["id"],
            "name": raw["name"],
            "phase": phase,
            "slurm_state": (raw["state"] or "").split()[0] if raw["state"] else "",
            "reason": raw.get("reason") or "",
            "account": raw.get("account"),
            "partition": raw.get("partition"),
            "submitted": raw.get("submitted"),
            "started": raw.get("started"),
            "ended": raw.get("ended") if phase in ENDED else None,
            "exit_code": raw.get("exit_code") if phase in ENDED else None,
        }

    def _lookup(self, job_id: str) -> dict[str, Any] | None:
        """The job as squeue (live) and sacct (history) know it, merged; None when neither does."""
        queue = self._rows(["squeue", "--noheader", "--states=all", "--jobs", job_id, f"--format={SQUEUE_FORMAT}"])
        acct = self._rows(
            ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id, f"--format={SACCT_FORMAT}"]
        )
        live = next((self._from_squeue(r) for r in queue if r[0].strip() == job_id), None)
        history = next((self._from_sacct(r) for r in acct if r[0].strip() == job_id), None)
        if live is None and history is None:
            return None
        if live is None:
            assert history is not None
            return history
        if history is not None:
            # squeue has the live state; sacct the end time and exit code once the job ended
            for key in ("ended", "exit_code", "started", "submitted"):
                if live.get(key) is None and history.get(key) is not None:
                    live[key] = history[key]
            if phase_of(live["state"]) not in ENDED and phase_of(history["state"]) in ENDED:
                live["state"] = history["state"]
            live["comment"] = live["comment"] or history["comment"]
        return live

    def _owned(self, user: str, job_id: str) -> dict[str, Any]:
        if not re.fullmatch(r"[0-9]{1,12}", job_id):
            raise JobsError(404, f"There is no job {job_id!r}: job ids are numbers, as GET /api/v1/jobs lists them.")
        raw = self._lookup(job_id)
        if raw is None or raw["user"] != user or not self._meta(raw["comment"]):
            raise JobsError(404, f"You have no job {job_id} (GET /api/v1/jobs lists the jobs you submitted here).")
        return raw

    # ------------------------------------------------------------ operations

    def submit(self, user: str, request: JobRequest) -> dict[str, Any]:
        home = self._home(user)
        out_dir = f"{home}/{OUTPUT_DIR}"
        made = self._as_user(user, ["mkdir", "-p", "-m", "0700", out_dir])
        if made.returncode != 0:
            raise JobsError(
                409, f"Your home directory {home} is not writable for the job's output: {made.stderr.strip()}"
            )
        files = {"stdout": f"{out_dir}/%j.out", "stderr": f"{out_dir}/%j.err"}
        comment = json.dumps({MARKER: 1, "files": files}, separators=(",", ":"))
        script = request.script if request.script.startswith("#!") else "#!/bin/bash\n" + request.script
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={request.name or 'api-job'}",
            f"--chdir={home}",
            f"--output={files['stdout']}",
            f"--error={files['stderr']}",
            f"--comment={comment}",
        ]
        if request.account:
            argv.append(f"--account={request.account}")
        if request.partition:
            argv.append(f"--partition={request.partition}")
        if request.time_limit:
            argv.append(f"--time={int(request.time_limit)}")
        if request.cpus:
            argv.append(f"--cpus-per-task={int(request.cpus)}")
        if request.mem:
            argv.append(f"--mem={request.mem}")
        done = self._as_user(user, argv, script)
        if done.returncode != 0 and any(text in done.stderr for text in _UNREACHABLE):
            raise JobsError(503, "Slurm's controller cannot be reached right now; submit again in a minute.")
        if done.returncode != 0:
            message = done.stderr.strip().removeprefix("sbatch: error: ").replace("\nsbatch: error: ", "; ")
            raise JobsError(422, f"Slurm refused the job: {message or 'sbatch failed'}")
        job_id = done.stdout.strip().split(";")[0]
        raw = self._lookup(job_id)
        if raw is None:  # accepted but not yet visible: it is queued
            return {
                "id": job_id,
                "name": request.name or "api-job",
                "phase": "QUEUED",
                "slurm_state": "PENDING",
                "reason": "",
                "account": request.account,
                "partition": request.partition,
                "submitted": None,
                "started": None,
                "ended": None,
                "exit_code": None,
            }
        return self._public(raw)

    def get(self, user: str, job_id: str) -> dict[str, Any]:
        return self._public(self._owned(user, job_id))

    def list(self, user: str, days: int = 14) -> list[dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = {}
        for row in self._rows(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--user={user}",
                f"--starttime=now-{int(days)}days",
                f"--format={SACCT_FORMAT}",
            ]
        ):
            raw = self._from_sacct(row)
            if raw["user"] == user and self._meta(raw["comment"]):
                jobs[raw["id"]] = raw
        for row in self._rows(["squeue", "--noheader", "--states=all", f"--user={user}", f"--format={SQUEUE_FORMAT}"]):
            raw = self._from_squeue(row)
            if raw["user"] == user and self._meta(raw["comment"]):
                known = jobs.get(raw["id"])
                if known is None or phase_of(known["state"]) not in ENDED:
                    jobs[raw["id"]] = {**(known or {}), **{k: v for k, v in raw.items() if v is not None}}
        return [self._public(raw) for _, raw in sorted(jobs.items(), key=lambda item: int(item[0]), reverse=True)]

    def results(self, user: str, job_id: str) -> dict[str, Any]:
        raw = self._owned(user, job_id)
        public = self._public(raw)
        if public["phase"] not in ENDED:
            raise JobsError(
                409,
                f"Job {job_id} has not ended yet (phase {public['phase']}); its results are there once it has.",
            )
        files = self._meta(raw["comment"]).get("files", {})
        out: dict[str, Any] = {"id": job_id, "phase": public["phase"], "exit_code": public["exit_code"]}
        for key in ("stdout", "stderr"):
            path = str(files.get(key, "")).replace("%j", job_id)
            out[key] = self._tail(user, path) if path else ""
        return out

    def _tail(self, user: str, path: str) -> str:
        # as the user: the file and every directory above it are theirs to choose
        done = self._as_user(user, ["tail", "-c", str(RESULT_BYTES), "--", path])
        if done.returncode != 0:
            return ""
        return done.stdout

    def cancel(self, user: str, job_id: str) -> dict[str, Any]:
        raw = self._owned(user, job_id)
        if phase_of(raw["state"], raw.get("reason", "")) not in ENDED:
            done = self._as_user(user, ["scancel", job_id])
            if done.returncode != 0:
                raise JobsError(409, f"Slurm did not cancel job {job_id}: {done.stderr.strip()}")
            raw = self._lookup(job_id) or raw
            if phase_of(raw["state"]) not in ENDED:
                # scancel returns at once; the job is being cancelled
                raw = {**raw, "state": "CANCELLED"}
        return self._public(raw)
