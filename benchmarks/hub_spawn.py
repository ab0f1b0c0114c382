"""Server start latency through the hub's REST API, one after another and all at once.

Makes N users (native sign-up, approved with `sciplat users approve`, a token
with `sciplat token`), then starts their default servers one after another and
then all at once (not with --sequential-only), timing each from the POST until
the hub reports the server ready (one after another: each once the previous
one's Slurm job has left the queue), and notes where each server runs: the compute
node of its Slurm job (hub_spawner slurm) or "hub" (a systemd unit on the hub
host). Samples the hub process's CPU and memory meanwhile, and notes the
machine's load average. Stops the servers afterwards. Writes
benchmarks/results/hub-spawn-<time>.json.

    .venv/bin/python benchmarks/hub_spawn.py -i inventories/local --users 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
SCIPLAT = str(Path(sys.executable).parent / "sciplat")


def sciplat(*args: str) -> str:
    return subprocess.run([SCIPLAT, *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


class Bed:
    def __init__(self, inventory: Path) -> None:
        self.inventory = inventory
        spec = yaml.safe_load((inventory / "platform.yaml").read_text())["platform"]
        self.url = spec.get("public_url") or "https://127.0.0.1:8443"
        self.ca = str(inventory / "pki" / "ca.crt")
        self.ssh = ["ssh", "-F", str(inventory / ".sciplat" / "ssh_config"), "gw"]

    def make_user(self, name: str, password: str) -> str:
        session = requests.Session()
        session.trust_env = False
        session.verify = self.ca
        page = session.get(self.url + "/hub/signup", timeout=60).text
        xsrf = page.split('name="_xsrf" value="', 1)[1].split('"', 1)[0]
        session.post(
            self.url + "/hub/signup",
            data={
                "_xsrf": xsrf,
                "username": name,
                "signup_password": password,
                "signup_password_confirmation": password,
            },
            timeout=60,
        ).raise_for_status()
        sciplat("users", "approve", name, "-i", str(self.inventory))
        return json.loads(sciplat("token", name, "-i", str(self.inventory), "--json"))["token"]

    def api(self, token: str, method: str, path: str) -> requests.Response:
        return requests.request(
            method,
            self.url + "/hub/api" + path,
            headers={"Authorization": f"token {token}"},
            verify=self.ca,
            timeout=120,
        )

    def start(self, name: str, token: str, timeout: float = 300) -> float:
        began = time.monotonic()
        response = self.api(token, "POST", f"/users/{name}/server")
        if response.status_code not in (201, 202):
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:200]}")
        while time.monotonic() - began < timeout:
            server = (self.api(token, "GET", f"/users/{name}").json().get("servers") or {}).get("", {})
            if server.get("ready"):
                return time.monotonic() - began
            time.sleep(0.25)
        raise RuntimeError(f"{name}: not ready after {timeout} s")

    def stop(self, name: str, token: str) -> None:
        self.api(token, "DELETE", f"/users/{name}/server")
        for _ in range(120):
            if not (self.api(token, "GET", f"/users/{name}").json().get("servers") or {}):
                return
            time.sleep(0.5)

    def wait_job_gone(self, name: str, timeout: float = 60) -> float:
        """Seconds until the user's server job has left squeue (its node no longer COMPLETING it).

        Slurm starts no new job on a node while a job there is completing, so without this
        wait a start right after a stop measures the previous server's shutdown too.
        """
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            out = subprocess.run(
                [*self.ssh, f"squeue --noheader --user={name} --format=%i 2>/dev/null || echo unknown"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if not out.strip():
                break
            time.sleep(0.5)
        return time.monotonic() - began

    def nodes(self) -> dict[str, str]:
        """User -> compute node of their running default server's Slurm job (squeue on the hub host)."""
        out = subprocess.run(
            [*self.ssh, "squeue --noheader --states=RUNNING --format='%j|%N' 2>/dev/null"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        found = {}
        for line in out.splitlines():
            job, _, node = line.strip().partition("|")
            if job.startswith("jupyter-") and job.endswith("-default"):
                found[job.removeprefix("jupyter-").removesuffix("-default")] = node
        return found

    def hub_usage(self) -> tuple[float, int]:
        """CPU seconds and resident bytes of the hub's main process (ps: cgroup accounting may be off)."""
        out = subprocess.run(
            [*self.ssh, "ps -o cputimes=,rss= -p $(systemctl show -p MainPID --value jupyterhub.service)"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if len(out) != 2:
            return 0.0, 0
        return float(out[0]), int(out[1]) * 1024


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p95": round(percentile(values, 95), 2),
        "max": round(max(values), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "local")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument(
        "--sequential-only",
        action="store_true",
        help="only the starts one after another (a shared bed: no burst of N starts at once)",
    )
    args = parser.parse_args()
    bed = Bed(args.inventory.resolve())
    password = "bench-" + secrets.token_hex(8)
    users = {f"bench{secrets.token_hex(3)}": "" for _ in range(args.users)}
    for name in users:
        users[name] = bed.make_user(name, password)

    samples: list[tuple[float, float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            cpu, memory = bed.hub_usage()
            samples.append((time.monotonic(), cpu, memory))
            done.wait(2)

    sampler = threading.Thread(target=sample, daemon=True)
    load_at_start = list(os.getloadavg())
    sampler.start()
    sequential, sequential_nodes, teardown = [], [], []
    for name, token in users.items():
        sequential.append(bed.start(name, token))
        sequential_nodes.append(bed.nodes().get(name, "hub"))
        bed.stop(name, token)
        teardown.append(round(bed.wait_job_gone(name), 2))
    concurrent: list[float] = []
    concurrent_nodes: list[str] = []
    if not args.sequential_only:
        with ThreadPoolExecutor(max_workers=len(users)) as pool:
            concurrent = list(pool.map(lambda item: bed.start(*item), users.items()))
        running = bed.nodes()
        concurrent_nodes = [running.get(name, "hub") for name in users]
        for name, token in users.items():
            bed.stop(name, token)
    done.set()
    sampler.join()
    cpu_percent = [100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]
    result: dict[str, Any] = {
        "time": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "users": args.users,
        "sequential_s": summary(sequential),
        "concurrent_s": summary(concurrent) if concurrent else None,
        # the machine's 1/5/15-minute load when the starts began and when they ended
        "load_average": {"start": load_at_start, "end": list(os.getloadavg())},
        "hub_cpu_percent": {"mean": round(statistics.mean(cpu_percent), 1), "max": round(max(cpu_percent), 1)}
        if cpu_percent
        else {},
        "hub_memory_mib_max": round(max(s[2] for s in samples) / 2**20, 1) if samples else None,
        # where the servers ran: a compute node (Slurm job) or "hub" (systemd unit on the hub host)
        "servers_per_node": {
            "sequential": dict(Counter(sequential_nodes)),
            "concurrent": dict(Counter(concurrent_nodes)),
        },
        "raw": {
            "sequential": sequential,
            "concurrent": concurrent,
            "sequential_nodes": sequential_nodes,
            # seconds from the hub's "stopped" until the job had left squeue (not timed as a start)
            "sequential_teardown": teardown,
            "concurrent_nodes": concurrent_nodes,
        },
    }
    out = REPO / "benchmarks" / "results" / f"hub-spawn-{datetime.now():%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
