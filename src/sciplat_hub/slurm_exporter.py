"""Slurm figures in the Prometheus text format (sinfo, squeue, sshare, sacct).

Debian packages no Slurm exporter, so this small collector runs on the
controller as `sciplat-slurm-exporter.service` (slurm_controller role) and
answers GET /metrics. Every scrape runs the Slurm commands afresh (each takes a
few milliseconds against slurmctld/slurmdbd); a command that fails is reported
as `slurm_scrape_ok{source=...} 0` instead of failing the whole scrape.

Parsers take the commands' text output, so unit tests feed them recorded output.
Standard library only.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Commands, with parseable output (fields separated by '|').
SINFO = ["sinfo", "--noheader", "--Node", "--format=%N|%T|%c|%m|%O|%e|%C|%E"]
SQUEUE = ["squeue", "--noheader", "--all", "--format=%T|%P|%a|%u|%C|%r"]
SSHARE = [
    "sshare",
    "--noheader",
    "--parsable2",
    "--all",
    "--format=Account,User,RawShares,FairShare,GrpTRESMins,GrpTRESRaw",
]
SACCT_WINDOW = 3600  # finished jobs of the last hour
SACCT = [
    "sacct",
    "--noheader",
    "--parsable2",
    "--allusers",
    "--allocations",
    "--endtime=now",
    "--format=State,Partition,Account",
]

Runner = Callable[[list[str]], str]


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=True)
    return done.stdout


# ------------------------------------------------------------------ parsers


def base_state(state: str) -> str:
    """'idle*', 'drained', 'mixed+drain', 'down*' -> a state name for a label."""
    state = state.strip().lower()
    state = state.rstrip("*~#!%$@^-")
    return state.split("+")[0] or "unknown"


def parse_sinfo(text: str) -> list[dict[str, str]]:
    """One entry per node (sinfo --Node lists a node once per partition)."""
    nodes = []
    seen: set[str] = set()
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 8 or parts[0] in seen:
            continue
        seen.add(parts[0])
        name, state, cpus, memory, load, free_mem, cpu_states, reason = parts[:8]
        allocated, idle, other, total = ([*cpu_states.split("/"), "0", "0", "0", "0"])[:4]
        nodes.append(
            {
                "node": name,
                "state": base_state(state),
                "raw_state": state.strip(),
                "not_responding": "1" if state.strip().endswith("*") else "0",
                "cpus": cpus,
                "memory_mb": memory,
                "load": load,
                "free_memory_mb": free_mem,
                "cpus_allocated": allocated,
                "cpus_idle": idle,
                "cpus_other": other,
                "cpus_total": total,
                "reason": reason if reason not in ("none", "(null)") else "",
            }
        )
    return nodes


def parse_squeue(text: str) -> list[dict[str, str]]:
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 6:
            continue
        state, partition, account, user, cpus, reason = parts[:6]
        jobs.append(
            {
                "state": state.lower(),
                "partition": partition,
                "account": account,
                "user": user,
                "cpus": cpus,
                "reason": reason,
            }
        )
    return jobs


def parse_tres(text: str) -> dict[str, float]:
    """'cpu=120,mem=4096,node=1' -> {'cpu': 120.0, ...}; empty or '' -> {}."""
    values: dict[str, float] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key and value:
            try:
                values[key.strip()] = float(value)
            except ValueError:
                continue
    return values


def parse_sshare(text: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 6:
            continue
        account, user, raw_shares, fairshare, grp_tres_mins, grp_tres_raw = parts[:6]
        rows.append(
            {
                "account": account.strip(),
                "user": user.strip(),
                "fairshare": _float(fairshare),
                "limit_cpu_minutes": parse_tres(grp_tres_mins).get("cpu"),
                "used_cpu_minutes": parse_tres(grp_tres_raw).get("cpu", 0.0),
                "raw_shares": raw_shares,
            }
        )
    return rows


def parse_sacct(text: str) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        state = parts[0].split()[0].lower() if parts[0].strip() else "unknown"
        counts[(state, parts[1], parts[2])] += 1
    return counts


def _float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


# ------------------------------------------------------------------ exposition


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Samples grouped by metric family (the text format wants each family in one block)."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float, **labels: str) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        label_text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
        number = repr(float(value)) if value != int(value) else str(int(value))
        family[2].append(f"{name}{{{label_text}}} {number}" if label_text else f"{name} {number}")

    def text(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(lines) + "\n"


NODE_STATES = ("idle", "mixed", "allocated", "completing", "drained", "draining", "down", "reserved", "unknown")
JOB_STATES = ("pending", "running", "completing", "suspended")


def collect(runner: Runner = run, now: float | None = None) -> str:
    metrics = Metrics()
    ok: dict[str, bool] = {}

    def attempt(source: str, command: list[str]) -> str | None:
        try:
            text = runner(command)
        except (OSError, subprocess.SubprocessError):
            ok[source] = False
            return None
        ok[source] = True
        return text

    text = attempt("sinfo", SINFO)
    if text is not None:
        nodes = parse_sinfo(text)
        by_state = Counter(node["state"] for node in nodes)
        for state in sorted(set(NODE_STATES) | set(by_state)):
            metrics.add("slurm_nodes", "gauge", "Compute nodes by state.", by_state.get(state, 0), state=state)
        for node in nodes:
            labels = {"node": node["node"]}
            metrics.add(
                "slurm_node_state",
                "gauge",
                "1 for the state a node is in (state label; drain and down are alert conditions).",
                1,
                node=node["node"],
                state=node["state"],
                reason=node["reason"],
            )
            metrics.add(
                "slurm_node_not_responding",
                "gauge",
                "1 when the controller cannot reach the node's slurmd.",
                float(node["not_responding"]),
                **labels,
            )
            for key, name, help_text in (
                ("cpus_total", "slurm_node_cpus", "CPUs of the node."),
                ("cpus_allocated", "slurm_node_cpus_allocated", "CPUs allocated to jobs."),
                ("memory_mb", "slurm_node_memory_bytes", "Memory of the node (RealMemory)."),
            ):
                value = _float(node[key])
                if value is not None:
                    factor = 1024**2 if name.endswith("_bytes") else 1
                    metrics.add(name, "gauge", help_text, value * factor, **labels)
        cpus_total = sum(_float(node["cpus_total"]) or 0 for node in nodes)
        cpus_alloc = sum(_float(node["cpus_allocated"]) or 0 for node in nodes)
        metrics.add("slurm_cpus_total", "gauge", "CPUs of all compute nodes.", cpus_total)
        metrics.add("slurm_cpus_allocated", "gauge", "CPUs allocated to jobs on all nodes.", cpus_alloc)

    text = attempt("squeue", SQUEUE)
    if text is not None:
        jobs = parse_squeue(text)
        by_state = Counter(job["state"] for job in jobs)
        for state in sorted(set(JOB_STATES) | set(by_state)):
            metrics.add("slurm_jobs", "gauge", "Jobs in the queue by state.", by_state.get(state, 0), state=state)
        pending_reasons = Counter(job["reason"] for job in jobs if job["state"] == "pending")
        for reason, count in sorted(pending_reasons.items()):
            metrics.add("slurm_jobs_pending_reason", "gauge", "Pending jobs by reason.", count, reason=reason)
        per_account: Counter[tuple[str, str]] = Counter()
        for job in jobs:
            per_account[(job["account"], job["state"])] += 1
        for (account, state), count in sorted(per_account.items()):
            metrics.add(
                "slurm_account_jobs", "gauge", "Jobs per account and state.", count, account=account, state=state
            )

    text = attempt("sshare", SSHARE)
    if text is not None:
        for row in parse_sshare(text):
            account, user = str(row["account"]), str(row["user"])
            if not account or account == "root":
                continue
            labels = {"account": account, "user": user}
            used = row["used_cpu_minutes"]
            metrics.add(
                "slurm_account_cpu_hours_used",
                "gauge",
                "Core-hours used (accumulated, never decayed) per account, and per user when user is set.",
                float(used or 0) / 60,  # type: ignore[arg-type]
                **labels,
            )
            if row["limit_cpu_minutes"] is not None and not user:
                metrics.add(
                    "slurm_account_cpu_hours_awarded",
                    "gauge",
                    "Awarded allocation (GrpTRESMins cpu) in core-hours.",
                    float(row["limit_cpu_minutes"]) / 60,  # type: ignore[arg-type]
                    account=account,
                )
            if row["fairshare"] is not None and user:
                metrics.add("slurm_user_fairshare", "gauge", "Fair-share factor (0-1).", row["fairshare"], **labels)  # type: ignore[arg-type]

    moment = time.time() if now is None else now
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(moment - SACCT_WINDOW))
    text = attempt("sacct", [*SACCT, f"--starttime={start}", "--state=CD,F,TO,OOM,CA,NF,PR"])
    if text is not None:
        for (state, partition, account), count in sorted(parse_sacct(text).items()):
            metrics.add(
                "slurm_jobs_finished_last_hour",
                "gauge",
                "Jobs that ended in the last hour, by final state.",
                count,
                state=state,
                partition=partition,
                account=account,
            )

    for source, good in sorted(ok.items()):
        metrics.add("slurm_scrape_ok", "gauge", "1 when the Slurm command answered.", 1 if good else 0, source=source)
    metrics.add(
        "slurm_up",
        "gauge",
        "1 when slurmctld answered (sinfo and squeue).",
        1 if ok.get("sinfo") and ok.get("squeue") else 0,
    )
    return metrics.text()


# ------------------------------------------------------------------ server


class Handler(BaseHTTPRequestHandler):
    runner: Runner = staticmethod(run)

    def do_GET(self) -> None:
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics")
            return
        body = collect(type(self).runner).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sciplat-slurm-exporter", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=9341)
    parser.add_argument("--once", action="store_true", help="print the metrics once and exit")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.once:
        print(collect(), end="")
        return
    ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
