"""Slurm scheduling latency on the test bed: submit-to-start for N one-second jobs.

    .venv/bin/python benchmarks/slurm_throughput.py [-i inventories/local] [--jobs 100]

Submits N `sleep 1` batch jobs (1 CPU, 50 MiB) in one burst from the hub host as
root, waits for all to end, and reads each job's Submit, Start and End times
from the accounting (sacct, whole seconds). Reports submit-to-start p50/p95/max,
the time from the first submission to the last job's end, and jobs per minute.
With 2 CPUs per node the test bed runs 4 jobs at a time, so later jobs wait for
free CPUs: the p95 measures queueing, the p50 of the first wave the scheduler.
Results go to benchmarks/results/slurm-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ssh(inventory: Path, host: str, command: str, timeout: int = 600) -> str:
    done = subprocess.run(
        ["ssh", "-F", str(inventory / ".sciplat" / "ssh_config"), host, command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "local")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--host", default="gw", help="host to submit from (hub)")
    args = parser.parse_args()
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    submit = (
        f"for i in $(seq {args.jobs}); do sbatch --parsable --job-name={tag} --cpus-per-task=1 --mem=50M "
        "--time=5 --output=/dev/null --wrap 'sleep 1' || exit 1; done"
    )
    started = time.monotonic()
    ids = ssh(args.inventory, args.host, submit).split()
    submitted = time.monotonic() - started
    query = (
        f"SLURM_TIME_FORMAT=%s sacct --noheader --parsable2 --allocations --name={tag} "
        "--starttime=now-1hour --format=JobID,State,Submit,Start,End"
    )
    deadline = time.monotonic() + 1800
    while True:
        rows = [line.split("|") for line in ssh(args.inventory, args.host, query).splitlines() if line.strip()]
        done = [r for r in rows if r[1] not in ("PENDING", "RUNNING", "COMPLETING")]
        if len(done) >= len(ids):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(done)} of {len(ids)} jobs ended within 30 minutes")
        time.sleep(2)
    failed = [r for r in rows if r[1] != "COMPLETED"]
    latency = [float(int(r[3]) - int(r[2])) for r in rows]
    first_submit = min(int(r[2]) for r in rows)
    last_end = max(int(r[4]) for r in rows)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": subprocess.check_output(["nproc"], text=True).strip(), "python": platform.python_version()},
        "jobs": len(rows),
        "failed": len(failed),
        "submit_seconds": round(submitted, 1),
        "submit_to_start_min_s": min(latency),
        "submit_to_start_p50_s": percentile(latency, 0.5),
        "submit_to_start_p95_s": percentile(latency, 0.95),
        "submit_to_start_max_s": max(latency),
        "first_submit_to_last_end_s": last_end - first_submit,
        "jobs_per_minute": round(60 * len(rows) / max(1, last_end - first_submit), 1),
    }
    out = REPO / "benchmarks" / "results" / f"slurm-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
