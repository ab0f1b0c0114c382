"""S3 throughput through the gateway, beside the storage host's raw disk speed.

Measures, in one run on a deployed test bed (storage.backend ceph):
  disk_write / disk_read  sequential dd on the storage host (4 MiB blocks, O_DIRECT,
                          1 GiB), in the directory that holds the OSD's BlueStore file
  put / get               S3 PUT and GET of 1 MiB and 64 MiB objects, 8 requests at a
                          time, from this machine through the gateway over TLS
                          (https://s3.<domain>:<port>) with boto3, as a user would
and reports each S3 figure as a ratio of the raw disk figure in the same direction.

Usage: .venv/bin/python benchmarks/s3_throughput.py [-i INVENTORY] [--total-mib 1024]
Writes benchmarks/results/s3-<timestamp>.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import yaml
from botocore.config import Config

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
CONCURRENCY = 8
HUB, STORAGE = "gw", "data"


def ssh(inventory: Path, host: str, command: str) -> str:
    done = subprocess.run(
        ["ssh", "-F", str(inventory / ".sciplat" / "ssh_config"), host, command],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"{host}: {command!r} failed: {done.stderr.strip()}")
    return done.stdout


def dd_rate(output: str) -> float:
    """Bytes per second from dd's summary line ('... copied, 2.1 s, 511 MB/s')."""
    match = re.search(r"(\d+) bytes .* copied, ([0-9.]+) s", output)
    if not match:
        raise SystemExit(f"cannot read dd's output: {output!r}")
    return int(match.group(1)) / float(match.group(2))


def raw_disk(inventory: Path, total_mib: int) -> dict[str, float]:
    target = "/var/lib/ceph/osd/sciplat-bench.dat"
    count = total_mib // 4
    write = ssh(inventory, STORAGE, f"dd if=/dev/zero of={target} bs=4M count={count} oflag=direct conv=fsync 2>&1")
    read = ssh(inventory, STORAGE, f"dd if={target} of=/dev/null bs=4M iflag=direct 2>&1; rm -f {target}")
    return {"write": dd_rate(write), "read": dd_rate(read)}


def provision(inventory: Path, user: str) -> dict[str, str]:
    code = f"""
import json
from sciplat_hub.storage.config import from_host_config
s = from_host_config()
c = s.ensure_user({user!r}, None)
s.ensure_home_bucket({user!r})
print(json.dumps({{"access_key": c.access_key, "secret_key": c.secret_key, "endpoint": c.endpoint}}))
"""
    return dict(json.loads(ssh(inventory, HUB, f"/opt/sciplat/venv/bin/python -c {shlex.quote(code)}")))


def resolve_to_loopback(name: str) -> None:
    """The endpoint's name points at the gateway, published on this machine's loopback."""
    original = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return original("127.0.0.1" if host == name else host, *args, **kwargs)

    socket.getaddrinfo = resolve  # type: ignore[assignment]


def s3_rates(keys: dict[str, str], ca: Path, bucket: str, size: int, count: int) -> dict[str, float]:
    client = boto3.client(
        "s3",
        endpoint_url=keys["endpoint"],
        aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"],
        region_name="default",
        verify=str(ca),
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            max_pool_connections=CONCURRENCY,
            retries={"max_attempts": 1},
        ),
    )
    body = os.urandom(size)
    names = [f"bench/{size}/{i}" for i in range(count)]

    def put(name: str) -> None:
        client.put_object(Bucket=bucket, Key=name, Body=body)

    def get(name: str) -> None:
        got = client.get_object(Bucket=bucket, Key=name)["Body"]
        while got.read(4 * MiB):
            pass

    rates = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for label, call in (("put", put), ("get", get)):
            start = time.perf_counter()
            list(pool.map(call, names))
            rates[label] = size * count / (time.perf_counter() - start)
        list(pool.map(lambda name: client.delete_object(Bucket=bucket, Key=name), names))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "local")
    parser.add_argument("--total-mib", type=int, default=1024, help="data per measurement (default 1024)")
    args = parser.parse_args()
    inventory = args.inventory.resolve()
    ca = inventory / "pki" / "ca.crt"
    spec = yaml.safe_load((inventory / "platform.yaml").read_text())

    user = f"bench-{secrets.token_hex(3)}"
    keys = provision(inventory, user)
    resolve_to_loopback(str(urlsplit(keys["endpoint"]).hostname))
    disk = raw_disk(inventory, args.total_mib)
    results: dict[str, Any] = {"disk": disk, "s3": {}}
    for size_mib in (1, 64):
        count = max(CONCURRENCY, args.total_mib // size_mib)
        results["s3"][f"{size_mib}MiB"] = s3_rates(keys, ca, f"home-{user}", size_mib * MiB, count)

    rows = [("raw disk (dd, O_DIRECT)", disk["write"], disk["read"], None, None)]
    for label, rates in results["s3"].items():
        rows.append(
            (
                f"S3 {label} x{CONCURRENCY}",
                rates["put"],
                rates["get"],
                rates["put"] / disk["write"],
                rates["get"] / disk["read"],
            )
        )
    print(f"{'measurement':<28}{'write/PUT MiB/s':>17}{'read/GET MiB/s':>16}{'PUT/disk':>10}{'GET/disk':>10}")
    for label, write, read, put_ratio, get_ratio in rows:
        ratios = "" if put_ratio is None else f"{put_ratio:>10.2f}{get_ratio:>10.2f}"
        print(f"{label:<28}{write / MiB:>17.1f}{read / MiB:>16.1f}{ratios}")

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    out = REPO / "benchmarks" / "results" / f"s3-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results.update(
        {
            "time": stamp,
            "platform": spec["platform"]["name"],
            "endpoint": keys["endpoint"],
            "concurrency": CONCURRENCY,
            "total_mib": args.total_mib,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        }
    )
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
