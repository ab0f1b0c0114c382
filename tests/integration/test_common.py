"""The common role on the deployed test bed: firewall, time sync, updates, journald.

The firewall tests start a throw-away listener on a port nobody declared and show
that it answers on the host itself but not from another test-bed host or from this
machine, while SSH and the declared ports still answer.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY

HOSTS = ["gw", "data", "c1", "c2"]
UNDECLARED_PORT = 18080


def address_of(name: str) -> str:
    """A test-bed host's address on the test bed's network (from hosts.yml)."""
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return str(inventory["all"]["hosts"][name]["ansible_host"])


def tcp_from_host(client: Any, address: str, port: int, timeout: int = 4) -> str:
    """Try a TCP connection from a test-bed host: 'open', 'refused' or 'dropped'."""
    done = client.run(f"timeout {timeout} bash -c 'exec 3<>/dev/tcp/{address}/{port}'")
    if done.rc == 0:
        return "open"
    return "dropped" if done.rc == 124 else "refused"


def tcp_from_here(address: str, port: int, timeout: float = 4.0) -> str:
    """Try a TCP connection from this machine: 'open', 'refused' or 'dropped'."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except TimeoutError:
            return "dropped"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:  # an ICMP reject would show up here
            return "dropped" if exc.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT) else "refused"
        return "open"


@contextlib.contextmanager
def listener(host: Any, port: int) -> Iterator[None]:
    """A python HTTP server on every address of `host`, stopped afterwards."""
    unit = f"sciplat-test-listen-{port}"
    host.run(f"systemctl stop {unit}")
    host.check_output(f"systemd-run --unit={unit} --collect python3 -m http.server {port} --bind 0.0.0.0")
    try:
        for _ in range(50):
            if host.run(f"ss -Htln 'sport = :{port}'").stdout.strip():
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the test listener on port {port} did not start")
        yield
    finally:
        host.run(f"systemctl stop {unit}")


@pytest.mark.parametrize("name", HOSTS)
def test_nftables_is_enabled_with_a_drop_policy(
    deployed: dict[str, Any], host_of: Callable[[str], Any], name: str
) -> None:
    host = host_of(name)
    assert host.service("nftables").is_enabled
    assert host.run("nft -c -f /etc/nftables.conf").rc == 0
    ruleset = host.check_output("nft list table inet sciplat")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "ct state established,related accept" in ruleset
    assert 'tcp dport 22 accept comment "common-ssh"' in ruleset


def test_gateway_ports_are_declared_on_gateway_hosts_only(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    gw_rules = host_of("gw").check_output("nft list table inet sciplat")
    assert 'tcp dport 443 accept comment "gateway-https"' in gw_rules
    assert 'tcp dport 80 accept comment "gateway-http"' in gw_rules
    c1_rules = host_of("c1").check_output("nft list table inet sciplat")
    assert "gateway-https" not in c1_rules


def test_an_undeclared_port_is_dropped_while_ssh_answers(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    data, gw = host_of("data"), host_of("gw")
    address = address_of("data")
    with listener(data, UNDECLARED_PORT):
        # the service is up: it answers on the host itself (loopback is allowed)
        assert tcp_from_host(data, "127.0.0.1", UNDECLARED_PORT) == "open"
        # ... but neither another test-bed host nor this machine gets through
        assert tcp_from_host(gw, address, UNDECLARED_PORT) == "dropped"
        assert tcp_from_here(address, UNDECLARED_PORT) == "dropped"
        # while SSH answers from both
        assert tcp_from_host(gw, address, 22) == "open"
        assert tcp_from_here(address, 22) == "open"


def test_a_declared_port_opens_to_its_source_groups_only(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    """postgresql declares 5432 on group db for its client groups (hub, i.e. gw, and compute, i.e. c1
    and c2, where MyDB's users' servers run); nothing else reaches it."""
    data = host_of("data")
    if not data.run("ss -Htln 'sport = :5432'").stdout.strip():
        pytest.skip("nothing listens on 5432 on data (postgresql not deployed)")
    rules = data.check_output("nft list table inet sciplat")
    assert 'comment "postgresql"' in rules
    address = address_of("data")
    assert tcp_from_host(host_of("gw"), address, 5432) == "open"
    assert tcp_from_host(host_of("c1"), address, 5432) == "open"
    assert tcp_from_here(address, 5432) == "dropped"


@pytest.mark.parametrize("name", HOSTS)
def test_time_sync_is_timesyncd_enabled_but_idle_in_a_container(
    deployed: dict[str, Any], host_of: Callable[[str], Any], name: str
) -> None:
    host = host_of(name)
    assert host.package("systemd-timesyncd").is_installed
    assert host.service("systemd-timesyncd").is_enabled
    # the test bed's hosts are containers: the clock is the machine's and the unit's
    # ConditionVirtualization=!container keeps it from starting
    assert host.check_output("systemd-detect-virt --container") != "none"
    assert not host.service("systemd-timesyncd").is_running


@pytest.mark.parametrize("name", HOSTS)
def test_unattended_upgrades_take_security_updates_only(
    deployed: dict[str, Any], host_of: Callable[[str], Any], name: str
) -> None:
    host = host_of(name)
    assert host.package("unattended-upgrades").is_installed
    periodic = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    origins = host.check_output("apt-config dump Unattended-Upgrade::Origins-Pattern")
    patterns = [
        line.split('"')[1] for line in origins.splitlines() if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")
    ]
    assert patterns, origins
    assert all("security" in p.lower() for p in patterns), patterns
    assert "Allowed-Origins::" not in host.check_output("apt-config dump Unattended-Upgrade::Allowed-Origins")
    # unattended-upgrade itself reads the same list
    dry = host.run("unattended-upgrade --dry-run --debug 2>&1 | grep -m1 '^Allowed origins are:'")
    allowed = dry.stdout.strip().removeprefix("Allowed origins are:").strip().split(", ")
    assert allowed and all("security" in origin.lower() for origin in allowed), dry.stdout


@pytest.mark.parametrize("name", HOSTS)
def test_journald_limits_apply(deployed: dict[str, Any], host_of: Callable[[str], Any], name: str) -> None:
    host = host_of(name)
    assert host.file("/etc/systemd/journald.conf.d/50-sciplat.conf").is_file
    merged = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=1G" in merged
    assert host.service("systemd-journald").is_running


@pytest.mark.parametrize("name", HOSTS)
def test_base_packages_are_installed(deployed: dict[str, Any], host_of: Callable[[str], Any], name: str) -> None:
    host = host_of(name)
    for package in ("ca-certificates", "curl", "nftables", "python3-apt"):
        assert host.package(package).is_installed, package
