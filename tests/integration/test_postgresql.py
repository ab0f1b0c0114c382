"""The postgresql role on the deployed test bed, as its clients see it.

The hub's declaration (playbooks/group_vars/all/hub.yml) lets hosts of group hub
(gw) reach database jupyterhub as user jupyterhub, over TLS, with a SCRAM
password; nothing else gets in: not without TLS, not with a wrong or md5-stored
password, not from a host outside the group (c1), not to another database.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY

CONNINFO = "host=data dbname=jupyterhub user=jupyterhub"
VERIFY = "sslmode=verify-full sslrootcert=/etc/sciplat/pki/ca.crt"


def address_of(name: str) -> str:
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return str(inventory["all"]["hosts"][name]["ansible_host"])


def psql(host: Any, conninfo: str, password: str, sql: str = "SELECT 1") -> Any:
    """psql on a test-bed host; the password travels in the environment."""
    return host.run(
        f"PGPASSWORD={shlex.quote(password)} PGCONNECT_TIMEOUT=5 "
        f"psql {shlex.quote(conninfo)} -XAtq -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}"
    )


def admin(data: Any, sql: str) -> str:
    """A query as the superuser over the local socket (peer)."""
    return str(data.check_output(f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}"))


@pytest.fixture(scope="module")
def password(secret: Callable[[str], Any]) -> str:
    return str(secret("hub_db_password"))


def test_hub_host_connects_with_tls_verify_full_and_scram(host_of: Callable[[str], Any], password: str) -> None:
    done = psql(
        host_of("gw"),
        f"{CONNINFO} {VERIFY}",
        password,
        "SELECT current_user || ' ' || s.ssl || ' ' || s.version FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()",
    )
    assert done.rc == 0, done.stderr
    user, ssl, version = done.stdout.split()
    assert (user, ssl) == ("jupyterhub", "true") and version in {"TLSv1.2", "TLSv1.3"}


def test_without_tls_the_connection_is_rejected(host_of: Callable[[str], Any], password: str) -> None:
    done = psql(host_of("gw"), f"{CONNINFO} sslmode=disable", password)
    assert done.rc != 0
    assert "pg_hba.conf rejects connection" in done.stderr and "no encryption" in done.stderr


def test_a_wrong_password_is_rejected(host_of: Callable[[str], Any], password: str) -> None:
    done = psql(host_of("gw"), f"{CONNINFO} {VERIFY}", password[::-1] + "x")
    assert done.rc != 0 and "password authentication failed" in done.stderr


def test_only_the_declared_database_is_reachable(host_of: Callable[[str], Any], password: str) -> None:
    done = psql(host_of("gw"), f"host=data dbname=postgres user=jupyterhub {VERIFY}", password)
    assert done.rc != 0 and "pg_hba.conf rejects connection" in done.stderr
    done = psql(host_of("gw"), f"host=data dbname=jupyterhub user=postgres {VERIFY}", password)
    assert done.rc != 0 and "pg_hba.conf rejects connection" in done.stderr


def test_a_host_outside_the_client_groups_cannot_connect(host_of: Callable[[str], Any]) -> None:
    # c1 (compute) is a declared client only for MyDB's users (+mydb_users: users' servers run
    # on compute hosts), so it may reach the port but no rule lets it in as jupyterhub
    c1 = host_of("c1")
    c1_address = ipaddress.ip_address(address_of("c1"))
    rules = [
        line.split("|")
        for line in admin(
            host_of("data"),
            "SELECT address || '/' || netmask, array_to_string(user_name, ',') FROM pg_hba_file_rules "
            "WHERE type LIKE 'host%' AND auth_method <> 'reject' AND address IS NOT NULL",
        ).splitlines()
    ]
    assert rules, "pg_hba.conf accepts nobody over the network"
    covering = {user for network, user in rules if c1_address in ipaddress.ip_network(network, strict=False)}
    assert covering <= {"+mydb_users"}, covering
    # the client tools go only where a declared client runs
    assert c1.package("postgresql-client").is_installed == bool(covering)
    assert host_of("gw").package("postgresql-client").is_installed


def test_pg_hba_is_only_the_declarations(host_of: Callable[[str], Any]) -> None:
    data = host_of("data")
    assert admin(data, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    rows = [
        line.split("|")
        for line in admin(
            data,
            "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), "
            "coalesce(address, ''), coalesce(netmask, ''), auth_method FROM pg_hba_file_rules ORDER BY line_number",
        ).splitlines()
    ]
    accepting = [row for row in rows if row[5] != "reject"]
    assert ["local", "all", "postgres", "", "", "peer"] in accepting
    network = [row for row in accepting if row[0] != "local"]
    assert network, rows
    declared = {("jupyterhub", "jupyterhub"), ("all", "mydb_admin"), ("all", "+mydb_users")}  # hub.yml, mydb.yml
    for kind, database, user, _address, netmask, method in network:
        assert (kind, method) == ("hostssl", "scram-sha-256") and (database, user) in declared, (database, user)
        assert netmask in {"255.255.255.255", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}
    assert address_of("gw") in {row[3] for row in network}
    assert rows[-1][0] == "host" and rows[-1][5] == "reject"


def test_server_settings(host_of: Callable[[str], Any]) -> None:
    data = host_of("data")
    settings = dict(
        line.split("|", 1)
        for line in admin(
            data,
            "SELECT name, setting FROM pg_settings WHERE name IN ('ssl', 'ssl_min_protocol_version', "
            "'password_encryption', 'listen_addresses', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', "
            "'shared_preload_libraries')",
        ).splitlines()
    )
    assert settings == {
        "ssl": "on",
        "ssl_min_protocol_version": "TLSv1.2",
        "password_encryption": "scram-sha-256",
        "listen_addresses": "*",
        "ssl_cert_file": "/etc/sciplat/pki/host.crt",
        "ssl_key_file": "/etc/sciplat/pki/host.key",
        "ssl_ca_file": "/etc/sciplat/pki/ca.crt",
        "shared_preload_libraries": "pg_stat_statements",
    }
    # the configuration as written is what runs: no errors, nothing waiting for a restart
    assert admin(data, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert admin(data, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    # shared_buffers is a quarter of the memory the role planned with (MB, 8 kB pages)
    assert int(admin(data, "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'")) > 0
    assert admin(data, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'") == "1"


def test_passwords_are_stored_as_scram_and_public_cannot_connect(host_of: Callable[[str], Any]) -> None:
    data = host_of("data")
    assert admin(data, "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'jupyterhub'") == "SCRAM-SHA-256$"
    assert admin(data, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'jupyterhub'") == "jupyterhub"
    assert admin(data, "SELECT has_database_privilege('public', 'jupyterhub', 'CONNECT')") == "f"


@pytest.fixture
def md5_stored_password(host_of: Callable[[str], Any], password: str) -> Iterator[None]:
    """jupyterhub's password stored as an md5 hash for the test, then SCRAM again."""
    data = host_of("data")
    literal = "'" + password.replace("'", "''") + "'"
    admin(data, f"SET password_encryption = 'md5'; ALTER ROLE jupyterhub PASSWORD {literal}")
    try:
        assert admin(data, "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'jupyterhub'") == "md5"
        yield
    finally:
        admin(data, f"SET password_encryption = 'scram-sha-256'; ALTER ROLE jupyterhub PASSWORD {literal}")


@pytest.mark.destructive
def test_a_password_stored_as_md5_cannot_log_in(
    md5_stored_password: None, host_of: Callable[[str], Any], password: str
) -> None:
    # the right password, but pg_hba.conf asks for scram-sha-256, which an md5 hash cannot answer
    done = psql(host_of("gw"), f"{CONNINFO} {VERIFY}", password)
    assert done.rc != 0 and "password authentication failed" in done.stderr
