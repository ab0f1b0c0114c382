"""`sciplat status`: is every host and service of the platform healthy?

Each host gets one SSH connection running a small Python script that reports, for
every service the host should run: the systemd unit's state, whether its port is
listening, and a service-specific probe. The public URL is probed from here, over
TLS verified against the platform CA. Services register themselves in SERVICES.
"""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sciplat.render import STATE_DIR


class StatusError(Exception):
    """The inventory could not be read; nothing was checked."""


@dataclass(frozen=True)
class Service:
    name: str
    group: str  # hosts of this group run it ("all" for every host)
    unit: str
    port: int | None = None
    probe: str | None = None  # shell command on the host; exit 0 = healthy
    # host variables that turn the service off when false (e.g. monitoring.enabled: false)
    enabled_by: tuple[str, ...] = ()
    # (host variable, value, its default): the service exists only when the variable has
    # that value, e.g. Ceph only for storage.backend ceph
    selected_by: tuple[tuple[str, str, str], ...] = ()


def service_enabled(service: Service, hostvars: dict[str, Any]) -> bool:
    """False when one of the service's `enabled_by` host variables is false ("false", "no", "0" too),
    or one of its `selected_by` variables has another value."""
    for name, value, default in service.selected_by:
        if str(hostvars.get(name, default)) != value:
            return False
    for name in service.enabled_by:
        value = hostvars.get(name, True)
        if value is False or (isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off")):
            return False
    return True


_CEPH_BACKEND = ("sciplat_storage_backend", "ceph", "ceph")

SERVICES: list[Service] = [
    Service("sshd", "all", "ssh.service", 22),
    Service(
        "firewall",
        "all",
        "nftables.service",
        probe="nft list ruleset | grep -q 'hook input.*policy drop'",
    ),
    Service(
        "gateway",
        "gateway",
        "nginx.service",
        443,
        probe="curl -fsS -o /dev/null --max-time 5 --cacert /etc/sciplat/pki/ca.crt https://localhost/healthz",
    ),
    Service(
        "postgresql",
        "db",
        "postgresql@15-main.service",
        5432,
        probe="runuser -u postgres -- psql -XAtqc 'select 1' >/dev/null",
    ),
    Service(
        "mydb_quota",
        "db",
        "sciplat-mydb-quota.timer",
        probe="systemctl show -p Result --value sciplat-mydb-quota.service | grep -qx success",
    ),
    Service(
        "node_exporter",
        "all",
        "prometheus-node-exporter.service",
        9100,
        probe="curl -fsS -o /dev/null --max-time 5 http://localhost:9100/metrics",
        enabled_by=("node_exporter_enabled",),
    ),
    Service(
        "jupyterhub",
        "hub",
        "jupyterhub.service",
        8081,
        probe="curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:8081/hub/health",
    ),
    Service(
        "jupyterhub-proxy",
        "hub",
        "jupyterhub-proxy.service",
        8000,
        probe="curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:8000/hub/health",
    ),
    Service(
        "prometheus",
        "monitor",
        "prometheus.service",
        9090,
        probe="curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:9090/-/ready",
        enabled_by=("monitor_enabled",),
    ),
    Service(
        "alertmanager",
        "monitor",
        "prometheus-alertmanager.service",
        9093,
        probe="curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:9093/-/ready",
        enabled_by=("monitor_enabled",),
    ),
    Service(
        "postgres_exporter",
        "db",
        "prometheus-postgres-exporter.service",
        9187,
        probe="curl -fsS --max-time 5 http://localhost:9187/metrics | grep -q '^pg_up 1'",
        enabled_by=("monitor_enabled", "monitor_postgres_exporter_enabled"),
    ),
    Service(
        "nginx_exporter",
        "gateway",
        "prometheus-nginx-exporter.service",
        9113,
        probe="curl -fsS --max-time 5 http://localhost:9113/metrics | grep -q '^nginx_up 1'",
        enabled_by=("monitor_enabled", "monitor_nginx_exporter_enabled"),
    ),
    # the synthetic user: its last run's age and failing steps (sciplat_hub.probe status)
    Service(
        "probe",
        "monitor",
        "sciplat-probe.timer",
        probe="/usr/local/bin/sciplat-probe status",
        enabled_by=("probe_enabled",),
    ),
    Service(
        "slapd",
        "directory",
        "slapd.service",
        636,
        probe=(
            "LDAPTLS_CACERT=/etc/sciplat/pki/ca.crt LDAPTLS_REQCERT=demand "
            "ldapsearch -x -LLL -o nettimeout=5 -H ldaps://localhost -s base -b '' namingContexts >/dev/null"
        ),
    ),
    Service(
        "sssd",
        "all",
        "sssd.service",
        probe="sssctl domain-status sciplat --online | grep -q 'Online status: Online'",
    ),
    # Ceph (storage.backend ceph): the cluster's own verdict, with Ceph's reasons
    # when it is not HEALTH_OK; radosgw on every storage host; the CephFS
    # mounts on the hub and compute hosts.
    Service(
        "ceph",
        "storage",
        "ceph.target",
        probe='out=$(timeout 15 ceph --connect-timeout 10 health 2>&1); echo "$out"; '
        'case "$out" in HEALTH_OK*) exit 0;; esac; exit 1',
        selected_by=(_CEPH_BACKEND,),
    ),
    Service(
        "radosgw",
        "storage",
        "ceph-radosgw.target",
        7480,
        probe="curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:7480/",
        selected_by=(_CEPH_BACKEND,),
    ),
    *(
        Service(
            f"cephfs{where.replace('/', '-')}",
            group,
            f"{where[1:]}.mount",
            probe=f"timeout 10 stat -f {where} >/dev/null",
            selected_by=(("sciplat_storage_posix", "cephfs", "cephfs"),),
        )
        for group in ("hub", "compute")
        for where in ("/home", "/groups")
    ),
    # Slurm: the controller, accounting, every node's state (printed by the probes).
    Service("munge", "slurm_controller", "munge.service"),
    Service("munge", "compute", "munge.service"),
    Service(
        "slurmdbd",
        "slurm_controller",
        "slurmdbd.service",
        6819,
        probe="sacctmgr --noheader --parsable2 show cluster format=cluster >/dev/null",
    ),
    Service("slurmctld", "slurm_controller", "slurmctld.service", 6817, probe="scontrol ping | grep -q 'is UP'"),
    Service(
        "slurm-nodes",
        "slurm_controller",
        "slurmctld.service",
        # every node with its state; unhealthy when one is down or not responding (drained is maintenance)
        probe="sinfo -h -N -o '%N=%T' | sort -u | tr '\\n' ' '; ! sinfo -h -N -o '%T' | grep -qE 'down|fail|\\*'",
    ),
    Service(
        "slurmd",
        "compute",
        "slurmd.service",
        6818,
        probe='s=$(sinfo -h -N -n "$(hostname -s)" -o \'%T\' | head -n1); echo "node $s"; '
        "case \"$s\" in ''|*down*|*fail*|*'*') exit 1;; esac",
    ),
    Service(
        "slurm_exporter",
        "slurm_controller",
        "sciplat-slurm-exporter.service",
        9341,
        probe="curl -fsS --max-time 10 http://localhost:9341/metrics | grep -q '^slurm_up 1'",
    ),
]

# Runs on each host with python3 (which Ansible needs anyway); prints one JSON document.
_HOST_SCRIPT = r"""
import json, subprocess, sys
checks = json.loads(sys.argv[1])
def run(cmd):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
    return p.returncode, (p.stdout + p.stderr).strip()[-300:]
out = {"services": []}
for c in checks:
    state = run("systemctl is-active " + c["unit"])[1] or "unknown"
    item = {"name": c["name"], "unit": c["unit"], "state": state}
    healthy = state == "active"
    if c.get("port"):
        code, text = run("ss -Hltn 'sport = :%d'" % c["port"])
        item["port"] = c["port"]
        item["listening"] = code == 0 and bool(text)
        healthy = healthy and item["listening"]
    if c.get("probe"):
        code, text = run(c["probe"]) if state == "active" else (1, "not probed: unit " + state)
        item["probe"] = "ok" if code == 0 else "failed"
        if code or text:
            item["detail"] = text
        healthy = healthy and code == 0
    item["healthy"] = healthy
    out["services"].append(item)
code, text = run("systemctl list-units --state=failed --plain --no-legend --no-pager")
out["failed_units"] = [line.split()[0] for line in text.splitlines() if line.strip()]
print(json.dumps(out))
"""


def inventory_hostvars(
    inventory_dir: Path,
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Groups and merged host variables, as Ansible itself resolves them."""
    command = [
        str(Path(sys.executable).parent / "ansible-inventory"),
        "-i",
        str(inventory_dir / "hosts.yml"),
        "-i",
        str(inventory_dir / STATE_DIR / "inventory"),
        "--list",
    ]
    listing = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    hostvars: dict[str, dict[str, Any]] = listing.get("_meta", {}).get("hostvars", {})
    groups: dict[str, list[str]] = {}

    def members(group: str) -> list[str]:
        body = listing.get(group, {})
        found = list(body.get("hosts", []))
        for child in body.get("children", []):
            found += members(child)
        return found

    for group in listing:
        if group != "_meta":
            groups[group] = sorted(set(members(group)))
    for host in hostvars:
        groups.setdefault("all", [])
        if host not in groups["all"]:
            groups["all"].append(host)
    return groups, hostvars


def ssh_command(host: str, hostvars: dict[str, Any]) -> list[str]:
    command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=8"]
    if key := hostvars.get("ansible_ssh_private_key_file"):
        command += ["-i", str(key)]
    if port := hostvars.get("ansible_port"):
        command += ["-p", str(port)]
    for option in ("ansible_ssh_common_args", "ansible_ssh_extra_args"):
        if hostvars.get(option):
            command += shlex.split(str(hostvars[option]))
    user = hostvars.get("ansible_user", "root")
    command.append(f"{user}@{hostvars.get('ansible_host', host)}")
    return command


def check_host(host: str, hostvars: dict[str, Any], services: list[Service]) -> dict[str, Any]:
    checks = [{"name": s.name, "unit": s.unit, "port": s.port, "probe": s.probe} for s in services]
    remote = "python3 -c " + shlex.quote(_HOST_SCRIPT) + " " + shlex.quote(json.dumps(checks))
    try:
        done = subprocess.run([*ssh_command(host, hostvars), remote], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {
            "reachable": False,
            "healthy": False,
            "error": "ssh timed out after 60s",
            "services": [],
        }
    if done.returncode != 0:
        error = (done.stderr or done.stdout).strip()[-300:] or f"ssh exited {done.returncode}"
        return {"reachable": False, "healthy": False, "error": error, "services": []}
    report: dict[str, Any] = json.loads(done.stdout)
    report["reachable"] = True
    report["healthy"] = all(s["healthy"] for s in report["services"]) and not report["failed_units"]
    return report


def probe_url(url: str, ca_cert: Path | None) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert and ca_cert.exists() else None)
    target = url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(target, context=context, timeout=10) as response:
            return {"url": target, "healthy": response.status == 200, "status": response.status}
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return {"url": target, "healthy": False, "error": str(getattr(exc, "reason", exc))}


def collect(inventory_dir: Path, public_url: str, platform_name: str) -> dict[str, Any]:
    groups, hostvars = inventory_hostvars(inventory_dir)
    ca_cert = inventory_dir / "pki" / "ca.crt"
    plan = {
        # a host in several groups of one service (single-node: hub and compute) checks it once
        host: list(
            {
                (s.name, s.unit): s
                for s in SERVICES
                if host in groups.get(s.group, []) and service_enabled(s, hostvars[host])
            }.values()
        )
        for host in sorted(hostvars)
    }
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = {host: pool.submit(check_host, host, hostvars[host], svcs) for host, svcs in plan.items()}
        hosts = {host: future.result() for host, future in futures.items()}
    endpoint = probe_url(public_url, ca_cert)
    for host, report in hosts.items():
        report["groups"] = sorted(g for g, members in groups.items() if host in members and g != "all")
    healthy = all(r["healthy"] for r in hosts.values()) and endpoint["healthy"]
    return {
        "platform": platform_name,
        "url": public_url,
        "ca_cert": str(ca_cert.resolve()) if ca_cert.exists() else None,
        "healthy": healthy,
        "endpoint": endpoint,
        "hosts": hosts,
    }
