#!/usr/bin/python3
"""Restart this host's Ceph daemons, monitors first, then wait until the cluster
has settled: monitors in quorum, no OSD down, every placement group active and
fully replicated. The handler runs it one host at a time, so a changed ceph.conf
never stops more than one host's daemons at once.

Usage: ceph-restart-settle.py TIMEOUT_SECONDS. Exit 0 settled (or no cluster yet),
1 with Ceph's explanation when it did not settle in time.
"""

import json
import os
import subprocess
import sys
import time

TARGETS = ["ceph-mon.target", "ceph-mgr.target", "ceph-osd.target", "ceph-mds.target", "ceph-radosgw.target"]
# health checks that mean "a restart has not finished yet"
UNSETTLED = {"MON_DOWN", "OSD_DOWN", "OSD_HOST_DOWN", "PG_AVAILABILITY", "PG_DEGRADED", "MDS_ALL_DOWN", "FS_DEGRADED"}
ADMIN_KEYRING = "/etc/ceph/ceph.client.admin.keyring"


def health():
    done = subprocess.run(
        ["ceph", "--connect-timeout", "10", "health", "-f", "json"], capture_output=True, text=True, timeout=30
    )
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def main():
    timeout = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    for target in TARGETS:
        # Ceph's units allow 3 starts in 30 min; a deliberate restart must not trip that limit
        instances = target.replace(".target", "@*")
        subprocess.run(["systemctl", "reset-failed", instances], capture_output=True, check=False)
        subprocess.run(["systemctl", "restart", target], check=True)
    if not os.path.exists(ADMIN_KEYRING):
        print("no admin keyring on this host yet (a new cluster): nothing to wait for")
        return 0
    deadline = time.monotonic() + timeout
    pending = set()
    while time.monotonic() < deadline:
        time.sleep(5)
        try:
            state = health()
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            state = None
        if state is None:
            pending = {"no answer from the monitors"}
            continue
        pending = set(state.get("checks", {})) & UNSETTLED
        if not pending:
            print(f"settled: {state.get('status')}")
            return 0
    detail = subprocess.run(["ceph", "--connect-timeout", "10", "health", "detail"], capture_output=True, text=True)
    print(
        f"Ceph did not settle within {timeout}s after restarting this host's daemons "
        f"({', '.join(sorted(pending))}): {detail.stdout.strip()} {detail.stderr.strip()}",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
