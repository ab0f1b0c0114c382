"""S3 throughput through the gateway, beside the storage host's raw disk speed.

Measures, in one run on a deployed test bed (storage.backend ceph):
  disk_write / disk_read  sequential dd on the storage host (4 MiB blocks, O_DIRECT,
                          1 GiB), in the directory that holds the OSD's BlueStore file;
                          the median of --disk-runs runs (this disk varies by 1.5x
                          from one run to the next)
  put / get               S3 PUT and GET of 1 MiB and 64 MiB objects, 8 requests at a
                          time, from this machine through the gateway over TLS
                          (https://s3.<domain>:<port>) with boto3, as a user would,
                          once per client setting (--clients):
                            default    boto3's defaults: the payload SHA-256 signed,
                                       the body sent in urllib3's 16 KiB writes
                            efficient  UNSIGNED-PAYLOAD (TLS already protects the body;
                                       an S3 client option botocore documents) and
                                       1 MiB socket writes
                            curl       the same requests (SigV4, UNSIGNED-PAYLOAD,
                                       HTTP/1.1 over TLS) from curl, a client in C:
                                       8 curl processes, each sending its share of
                                       the objects over one kept-alive connection;
                                       every transfer's status and size is checked
and reports each S3 figure as a ratio of the raw disk figure in the same direction.
The client runs on the same two cores as the test bed's hosts, so every cycle it
spends is taken from radosgw, the OSD and nginx: boto3 spends about half a core
on TLS and Python per 100 MiB/s. curl is the closer measure of what the platform
delivers to a client on another machine.

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
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import yaml
from botocore.awsrequest import AWSHTTPSConnection
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


def raw_disk(inventory: Path, total_mib: int, runs: int) -> dict[str, Any]:
    """Median sequential write and read rates of `runs` dd runs, and every run's figures."""
    target = "/var/lib/ceph/osd/sciplat-bench.dat"
    count = total_mib // 4
    writes, reads = [], []
    for _ in range(runs):
        out = ssh(inventory, STORAGE, f"dd if=/dev/zero of={target} bs=4M count={count} oflag=direct conv=fsync 2>&1")
        writes.append(dd_rate(out))
        out = ssh(inventory, STORAGE, f"dd if={target} of=/dev/null bs=4M iflag=direct 2>&1; rm -f {target}")
        reads.append(dd_rate(out))
    return {
        "write": statistics.median(writes),
        "read": statistics.median(reads),
        "write_runs": writes,
        "read_runs": reads,
    }


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


CLIENTS = ("default", "efficient", "curl")
_HTTPS_INIT = AWSHTTPSConnection.__init__


def use_socket_writes(size: int) -> None:
    """Make botocore's HTTPS connections write request bodies `size` bytes at a time.

    http.client reads a file-like body (botocore wraps every PutObject body in one)
    `blocksize` bytes per write; urllib3 sets 16 KiB, which costs one Python-level
    TLS write per 16 KiB. botocore offers no setting for it.
    """

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = size
        _HTTPS_INIT(self, *args, **kwargs)

    AWSHTTPSConnection.__init__ = init  # type: ignore[method-assign]


def s3_rates(keys: dict[str, str], ca: Path, bucket: str, size: int, count: int, mode: str) -> dict[str, float]:
    efficient = mode == "efficient"
    use_socket_writes(MiB if efficient else 16 * 1024)
    client = boto3.client(
        "s3",
        endpoint_url=keys["endpoint"],
        aws_access_key_id=keys["access_key"],
        aws_secret_access_key=keys["secret_key"],
        region_name="default",
        verify=str(ca),
        config=Config(
            s3={"addressing_style": "path", **({"payload_signing_enabled": False} if efficient else {})},
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


# curl's line per transfer: status, bytes sent, bytes received
REPORT = "%{http_code} %{size_upload} %{size_download}\\n"


def curl_rates(keys: dict[str, str], ca: Path, bucket: str, size: int, count: int) -> dict[str, float]:
    """PUT then GET `count` objects of `size` bytes with 8 curl processes; bytes per second each way."""
    url = urlsplit(keys["endpoint"])
    base = f"{keys['endpoint']}/{bucket}/bench-curl/{size}"
    with tempfile.TemporaryDirectory(prefix="s3-bench-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(os.urandom(size))
        config = Path(tmp) / "curlrc"  # the keys stay off the command line
        config.touch(mode=0o600)
        config.write_text(
            f'user = "{keys["access_key"]}:{keys["secret_key"]}"\n'
            'aws-sigv4 = "aws:amz:default:s3"\n'
            'header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\n'
            f'cacert = "{ca}"\n'
            f'resolve = "{url.hostname}:{url.port or 443}:127.0.0.1"\n'
        )
        shares = [list(range(count))[worker::CONCURRENCY] for worker in range(CONCURRENCY)]

        def run(direction: str) -> float:
            commands = []
            for share in shares:
                argv = [
                    "curl",
                    "-K",
                    str(config),
                    "--http1.1",
                    "-sS",
                    "-w",
                    "%{http_code} %{size_upload} %{size_download}\\n",
                ]
                for index in share:
                    argv += (["-T", str(body)] if direction == "put" else []) + [f"{base}/{index}", "-o", "/dev/null"]
                commands.append(argv)
            start = time.perf_counter()
            running = [
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in commands
            ]
            outputs = [process.communicate() for process in running]
            elapsed = time.perf_counter() - start
            for (out, err), share in zip(outputs, shares, strict=True):
                moved = [line.split() for line in out.splitlines()]
                column = 1 if direction == "put" else 2
                if len(moved) != len(share) or any(m[0] != "200" or int(m[column]) != size for m in moved):
                    raise SystemExit(f"curl {direction}: a transfer failed: {out!r} {err.strip()!r}")
            return size * count / elapsed

        rates = {"put": run("put"), "get": run("get")}
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", type=Path, default=REPO / "inventories" / "local")
    parser.add_argument("--total-mib", type=int, default=1024, help="data per measurement (default 1024)")
    parser.add_argument("--disk-runs", type=int, default=3, help="dd runs per direction; the median counts")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS), help="client settings to run")
    args = parser.parse_args()
    inventory = args.inventory.resolve()
    ca = inventory / "pki" / "ca.crt"
    spec = yaml.safe_load((inventory / "platform.yaml").read_text())

    user = f"bench-{secrets.token_hex(3)}"
    keys = provision(inventory, user)
    resolve_to_loopback(str(urlsplit(keys["endpoint"]).hostname))
    disk = raw_disk(inventory, args.total_mib, args.disk_runs)
    results: dict[str, Any] = {"disk": disk, "s3": {}}
    for mode in args.clients:
        for size_mib in (1, 64):
            count = max(CONCURRENCY, args.total_mib // size_mib)
            bucket = f"home-{user}"
            if mode == "curl":
                rates = curl_rates(keys, ca, bucket, size_mib * MiB, count)
            else:
                rates = s3_rates(keys, ca, bucket, size_mib * MiB, count, mode)
            rates.update(put_ratio=rates["put"] / disk["write"], get_ratio=rates["get"] / disk["read"])
            results["s3"][f"{mode} {size_mib}MiB"] = rates

    print(f"{'measurement':<32}{'write/PUT MiB/s':>17}{'read/GET MiB/s':>16}{'PUT/disk':>10}{'GET/disk':>10}")
    print(f"{'raw disk (dd, O_DIRECT, median)':<32}{disk['write'] / MiB:>17.1f}{disk['read'] / MiB:>16.1f}")
    for label, rates in results["s3"].items():
        print(
            f"{'S3 ' + label + ' x' + str(CONCURRENCY):<32}{rates['put'] / MiB:>17.1f}{rates['get'] / MiB:>16.1f}"
            f"{rates['put_ratio']:>10.2f}{rates['get_ratio']:>10.2f}"
        )

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
