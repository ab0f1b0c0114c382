"""pgbench: the platform's PostgreSQL against a default-configuration one, same host, same run.

On the db host of a deployed test bed (over SSH, as the OS user postgres, both
through a Unix socket so that only the server configuration differs):

  platform  the platform's server (roles/postgresql settings), a scratch database
            pgbench_sciplat that is dropped afterwards;
  default   a throw-away cluster made by initdb with no settings changed
            (PostgreSQL's defaults, Debian's binaries), on port 5499, removed afterwards.
            Its data directory is on the same filesystem as the platform's
            (/var/lib/postgresql): /tmp is a tmpfs on the test-bed hosts, where
            fsync costs nothing, which would flatter the default server.

Each: `pgbench -i -s SCALE`, then `pgbench -c CLIENTS -j THREADS -T SECONDS` (TPC-B-like).
The two runs alternate (platform, default, platform, default ... for --rounds) so that
the machine's load affects both alike; the ratio of the median TPS is reported.

Usage: .venv/bin/python benchmarks/pgbench.py [-i inventories/local] [--scale 10]
       [--clients 8] [--seconds 60] [--rounds 1]
Writes benchmarks/results/pgbench-<timestamp>.json and prints the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 5499
BIN = "/usr/lib/postgresql/15/bin"

SETUP_DEFAULT = f"""
set -e; cd /tmp
rm -rf /tmp/pgbench-default /var/lib/postgresql/pgbench-default && mkdir -p /tmp/pgbench-default/sock
chown -R postgres:postgres /tmp/pgbench-default
runuser -u postgres -- {BIN}/initdb -D /var/lib/postgresql/pgbench-default >/dev/null
runuser -u postgres -- {BIN}/pg_ctl -D /var/lib/postgresql/pgbench-default -l /tmp/pgbench-default/log -w \
  -o "-p {DEFAULT_PORT} -k /tmp/pgbench-default/sock -c listen_addresses=''" start >/dev/null
"""
TEARDOWN_DEFAULT = f"""
runuser -u postgres -- {BIN}/pg_ctl -D /var/lib/postgresql/pgbench-default -m fast -w stop >/dev/null 2>&1
rm -rf /tmp/pgbench-default /var/lib/postgresql/pgbench-default
"""


def remote(host: str, ssh_config: Path, script: str, timeout: int = 3600) -> str:
    done = subprocess.run(
        ["ssh", "-F", str(ssh_config), host, "bash -s"],
        input=script,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"on {host}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def pgbench(host: str, ssh_config: Path, target: str, opts: argparse.Namespace) -> dict[str, float]:
    where = (
        "-h /var/run/postgresql -p 5432 pgbench_sciplat"
        if target == "platform"
        else f"-h /tmp/pgbench-default/sock -p {DEFAULT_PORT} pgbench_default"
    )
    run = f"-c {opts.clients} -j {opts.threads} -T {opts.seconds}"
    out = remote(
        host,
        ssh_config,
        f"set -e; cd /tmp; runuser -u postgres -- pgbench -n {run} {where} 2>&1",
        timeout=opts.seconds * 3 + 120,
    )
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([0-9.]+) ms", out)
    if not tps:
        sys.exit(f"no TPS in pgbench output:\n{out}")
    return {"tps": float(tps.group(1)), "latency_ms": float(latency.group(1)) if latency else -1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", default="inventories/local")
    parser.add_argument("--host", default="data", help="the db host's alias in the inventory's ssh_config")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1)
    opts = parser.parse_args()
    inventory = (REPO / opts.inventory).resolve()
    ssh_config = inventory / ".sciplat" / "ssh_config"
    host = opts.host

    facts = remote(
        host,
        ssh_config,
        "nproc; free -m | awk '/^Mem:/ {print $2}'; "
        "runuser -u postgres -- psql -XAtc \"SELECT name || '=' || setting || coalesce(unit, '') "
        "FROM pg_settings WHERE source NOT IN ('default', 'override') ORDER BY 1\"",
    ).splitlines()
    init = f"pgbench -i -q -s {opts.scale}"
    remote(
        host,
        ssh_config,
        SETUP_DEFAULT
        + f"""
runuser -u postgres -- psql -XAtq -c 'DROP DATABASE IF EXISTS pgbench_sciplat' -c 'CREATE DATABASE pgbench_sciplat'
runuser -u postgres -- {init} -h /var/run/postgresql -p 5432 pgbench_sciplat >/dev/null 2>&1
runuser -u postgres -- {BIN}/createdb -h /tmp/pgbench-default/sock -p {DEFAULT_PORT} pgbench_default
runuser -u postgres -- {init} -h /tmp/pgbench-default/sock -p {DEFAULT_PORT} pgbench_default >/dev/null 2>&1
""",
    )
    runs: dict[str, list[dict[str, float]]] = {"platform": [], "default": []}
    try:
        for round_ in range(opts.rounds):
            for target in ("platform", "default"):
                result = pgbench(host, ssh_config, target, opts)
                runs[target].append(result)
                print(f"round {round_ + 1} {target:8s} tps {result['tps']:9.1f}  latency {result['latency_ms']} ms")
    finally:
        remote(
            host,
            ssh_config,
            TEARDOWN_DEFAULT + "runuser -u postgres -- psql -XAtq -c 'DROP DATABASE IF EXISTS pgbench_sciplat'\n",
        )
    platform_tps = statistics.median(r["tps"] for r in runs["platform"])
    default_tps = statistics.median(r["tps"] for r in runs["default"])
    summary = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inventory": opts.inventory,
        "host": host,
        "host_cores": int(facts[0]),
        "host_memory_mb": int(facts[1]),
        "platform_settings": facts[2:],
        "scale": opts.scale,
        "clients": opts.clients,
        "threads": opts.threads,
        "seconds": opts.seconds,
        "runs": runs,
        "platform_tps": platform_tps,
        "default_tps": default_tps,
        "ratio": round(platform_tps / default_tps, 3),
    }
    out = REPO / "benchmarks" / "results" / f"pgbench-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"platform {platform_tps:.1f} tps, default {default_tps:.1f} tps, ratio {summary['ratio']} -> {out}")


if __name__ == "__main__":
    main()
