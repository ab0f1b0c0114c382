"""Deploy-time benchmark on the local test bed.

Measures, in order:
  testbed_recreate  `sciplat testbed up --recreate` with the base image present
  testbed_noop      `sciplat testbed up` on a running bed
  cold_deploy       `sciplat up` on the freshly recreated hosts
  warm_rerun        `sciplat up` again on the converged platform (must change nothing)
  check_mode        `sciplat up --check` on the converged platform

Usage: .venv/bin/python benchmarks/deploy_times.py [--runs N] [--skip-cold]
Writes benchmarks/results/<timestamp>.json and prints a table. It recreates the
test bed's hosts, so do not run it while tests use the bed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCIPLAT = str(Path(sys.executable).parent / "sciplat")
INVENTORY = "inventories/local"


def timed(*args: str) -> tuple[float, dict[str, object] | None]:
    started = time.monotonic()
    done = subprocess.run([SCIPLAT, *args], cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"sciplat {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout) if "--json" in args else None
    return elapsed, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the warm re-run")
    parser.add_argument("--skip-cold", action="store_true", help="only the warm measurements")
    options = parser.parse_args()

    results: dict[str, object] = {}
    if not options.skip_cold:
        results["testbed_recreate_s"], _ = timed("testbed", "up", "-i", INVENTORY, "--recreate")
        results["cold_deploy_s"], cold = timed("up", "-i", INVENTORY, "--json")
        results["cold_deploy_changed_tasks"] = len(cold["changed_tasks"]) if cold else None  # type: ignore[arg-type]
    noop, _ = timed("testbed", "up", "-i", INVENTORY)
    results["testbed_noop_s"] = noop
    warm = []
    for _ in range(options.runs):
        seconds, summary = timed("up", "-i", INVENTORY, "--json")
        assert summary is not None and not summary["changed_tasks"], "warm re-run changed something"
        warm.append(seconds)
    results["warm_rerun_s"] = {"median": statistics.median(warm), "all": warm}
    results["check_mode_s"], _ = timed("up", "-i", INVENTORY, "--check", "--json")

    machine = {
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    record = {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine, "results": results}
    out = REPO / "benchmarks" / "results" / (dt.datetime.now().strftime("%Y%m%dT%H%M%S") + ".json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
